"""A process that runs trial after trial (the `tune` executor reuses its Tune actors) carries
nothing from one trial to the next: the second trial reports exactly what it reports in a
fresh process (seeds, RNG, torch threads, compiled code, GPU peaks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ucrn.data import load_dataset
from ucrn.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
# what differs between two runs of the same trial by nature: clocks and where it ran
VOLATILE = {"seconds", "train_seconds", "wall_seconds", "ended_at", "samples_per_s", "node",
            "node_id"}
SCRIPT = r"""
import json, math, sys
import torch
from search.trial import run_body
from ucrn.data import load_dataset

data = load_dataset("synthetic", None, preset="tiny", seed=0)
volatile = set(json.loads(sys.argv[2]))
runs = []
for cfg in json.loads(sys.argv[1]):
    reports = []

    def report(metrics, checkpoint_dir, reports=reports):
        kept = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in metrics.items() if k not in volatile}
        reports.append({**kept, "torch_threads": torch.get_num_threads(),
                        "next_random": torch.rand(1).item()})

    run_body(cfg, data, report, None)
    runs.append(reports)
print("RUNS " + json.dumps(runs))
"""

A = dict(threads=1, d_model=16, heads=2, layers=2, batch_size=32, num_epochs=2, seed=5,
         lr=0.01, modality_dropout=0.2, input_noise=0.1, mjs_variant="authors")
B = dict(threads=0, d_model=8, heads=2, layers=1, batch_size=48, num_epochs=2, seed=7,
         lr=0.003)


def _runs(configs: list[dict]) -> list[list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(configs),
                          json.dumps(sorted(VOLATILE))], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RUNS "))
    return json.loads(line[5:])


@pytest.mark.slow
def test_second_trial_in_a_process_equals_a_fresh_one():
    """Trial B after trial A in one process (A: one thread, other seed, augmentation, the
    authors' MJS) reports, epoch by epoch, exactly what B reports alone in a new process,
    down to torch's thread count and the next random number drawn."""
    reused = _runs([A, B])[1]
    fresh = _runs([B])[0]
    assert len(reused) == B["num_epochs"]
    assert reused == fresh


@pytest.mark.slow
def test_compiled_trials_keep_compiling_in_a_reused_process():
    """Dynamo stops compiling a function after `recompile_limit` (8) recompilations: without
    a reset per trial, the ninth trial of a reused process ran uncompiled. With the limit
    at 2 here (fast), each of 4 trials' models still compiles."""
    data = load_dataset("synthetic", None, preset="tiny", seed=0)
    compiled_per_trial = []
    with torch._dynamo.config.patch(recompile_limit=2):
        for trial in range(4):
            graphs: list[int] = []

            def counting(gm, example_inputs, graphs=graphs):
                graphs.append(1)
                return gm.forward

            tr = Trainer(TrainConfig(device="cpu", threads=1, d_model=8, heads=2, layers=1,
                                     batch_size=32, compile="default", cuda_graphs="off",
                                     seed=trial), data, compile_backend=counting)
            tr._train_step(torch.arange(32))
            compiled_per_trial.append(len(graphs))
    torch._dynamo.reset()
    assert all(n >= 1 for n in compiled_per_trial), compiled_per_trial


def test_a_changed_default_dtype_does_not_reach_the_trial():
    """A process whose default dtype an earlier trial (or a library) set to float64 built
    float64 parameters against float32 data: the step failed with torch's own error."""
    data = load_dataset("synthetic", None, preset="tiny", seed=0)
    torch.set_default_dtype(torch.float64)
    try:
        tr = Trainer(TrainConfig(device="cpu", threads=1, d_model=8, heads=2, layers=1,
                                 batch_size=32), data)
        tr._train_step(torch.arange(32))
        assert {p.dtype for p in tr.model.parameters()} == {torch.float32}
    finally:
        torch.set_default_dtype(torch.float32)
