"""The trainer's fast paths compute what the naive baseline computes, the CUDA-graph
bookkeeping is exact (checked on CPU with a stand-in graph), and the benchmark runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.train_speed import NaiveLoop, naive_model
from ucrn.data import load_dataset
from ucrn.train import GRAPH_WARMUP_STEPS, TrainConfig, Trainer, use_cuda_graphs

ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = dict(embed_dropout=0.0, attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0,
                  out_dropout=0.0)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", None, preset="tiny", seed=0)


def _inputs(tr: Trainer, n: int):
    return tr.splits["valid"].batch(torch.arange(n))[0]


@pytest.mark.parametrize("attention", ["mask", "manual"])
def test_model_output_matches_naive_baseline(tiny, attention):
    """Same weights, same batch: fused causal attention == explicit float mask (fp32)."""
    tr = Trainer(TrainConfig(device="cpu", threads=1), tiny)
    naive = naive_model(tr.model, attention)
    tr.model.eval()
    naive.eval()
    with torch.no_grad():
        out, reps = tr.model(*_inputs(tr, 64))
        out_n, reps_n = naive(*_inputs(tr, 64))
    torch.testing.assert_close(out, out_n, rtol=0, atol=1e-5)
    for r, rn in zip(reps, reps_n):
        torch.testing.assert_close(r, rn, rtol=0, atol=1e-5)


def test_training_step_matches_naive_step(tiny):
    """One step of the trainer (foreach Adam, device-side accumulation) vs the naive loop
    (per-parameter Adam, loss.item()): same weights afterwards, dropout off."""
    tr = Trainer(TrainConfig(device="cpu", threads=1, **NO_DROPOUT), tiny)
    # the same attention kernel on both sides: Adam's first step is ~lr*sign(grad), so
    # rounding-level gradient differences of another kernel would flip tiny coordinates
    naive = NaiveLoop(tr.cfg, tiny.splits["train"], tiny.task, naive_model(tr.model, "mask"),
                      torch.device("cpu"))
    idx = np.arange(32)
    tr.model.train()
    tr._acc.zero_()
    tr._train_step(torch.as_tensor(idx))
    loss = naive.step(idx)
    l1, mjs = (tr._acc / 32).tolist()
    assert l1 + tr.cfg.jsd_weight * mjs == pytest.approx(loss, abs=1e-5)
    for (name, p), pn in zip(tr.model.named_parameters(), naive.model.parameters()):
        torch.testing.assert_close(p, pn, rtol=0, atol=1e-5, msg=name)


class ReplayByRerun:
    """Stand-in for CudaStepGraph on CPU. Like a capture, construction runs nothing and
    freezes the optimizer's hyperparameters (a graph bakes in the LR); replay reruns the
    recorded step, on the same index buffer, with those frozen values."""

    made: list["ReplayByRerun"] = []

    def __init__(self, step, opt: torch.optim.Optimizer):
        self.step, self.opt, self.replays = step, opt, 0
        self.frozen = [g["lr"] for g in opt.param_groups]
        ReplayByRerun.made.append(self)

    def replay(self) -> None:
        self.replays += 1
        current = [g["lr"] for g in self.opt.param_groups]
        for g, lr in zip(self.opt.param_groups, self.frozen):
            g["lr"] = lr
        self.step()
        for g, lr in zip(self.opt.param_groups, current):
            g["lr"] = lr


def _train(data, graphed: bool, lr_drop_after: int = 1, epochs: int = 3):
    cfg = TrainConfig(device="cpu", threads=1, d_model=16, heads=2, layers=2, batch_size=48)
    tr = Trainer(cfg, data, graph_factory=ReplayByRerun if graphed else None)
    losses = []
    for epoch in range(epochs):
        losses.append(tr.train_epoch())
        if epoch + 1 == lr_drop_after:  # what ReduceLROnPlateau does
            for g in tr.opt.param_groups:
                g["lr"] *= 0.1
    return tr, losses


def test_graph_bookkeeping_is_exact(tiny):
    """Warm-up, capture-then-replay, partial last batch, recapture after an LR change:
    with a replay that reruns the step, the numbers equal the eager path bit for bit."""
    ReplayByRerun.made.clear()
    eager, eager_losses = _train(tiny, graphed=False)
    graphed, graphed_losses = _train(tiny, graphed=True)
    assert graphed_losses == eager_losses
    for p, q in zip(eager.model.parameters(), graphed.model.parameters()):
        assert torch.equal(p, q)
    full = len(tiny.splits["train"]) // 48  # 512 // 48 = 10 full batches, one partial of 32
    assert len(ReplayByRerun.made) == 2  # first capture, and one after the LR drop
    replays = sum(g.replays for g in ReplayByRerun.made)
    assert replays == 3 * full - GRAPH_WARMUP_STEPS
    assert graphed._warm_steps == GRAPH_WARMUP_STEPS


def test_failed_capture_falls_back_to_eager(tiny):
    """If a GPU refuses the capture, the run goes on eagerly with a warning, same numbers."""
    eager, eager_losses = _train(tiny, graphed=False)
    cfg = TrainConfig(device="cpu", threads=1, d_model=16, heads=2, layers=2, batch_size=48)
    def refuse(step, opt):
        raise RuntimeError("operation not permitted when stream is capturing")

    tr = Trainer(cfg, tiny, graph_factory=refuse)
    losses = []
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        for epoch in range(3):
            losses.append(tr.train_epoch())
            if epoch == 0:
                for g in tr.opt.param_groups:
                    g["lr"] *= 0.1
    assert losses == eager_losses and tr._graph_factory is None


def test_restore_drops_the_graph(tiny):
    tr, _ = _train(tiny, graphed=True, epochs=1)
    assert tr._graph is not None
    tr.restore(tr.checkpoint())
    assert tr._graph is None and tr._warm_steps == 0


def test_cuda_graph_choice():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_cuda_graphs(TrainConfig(), cuda, 1)
    assert not use_cuda_graphs(TrainConfig(), cpu, 1)
    assert not use_cuda_graphs(TrainConfig(), cuda, 2)  # DDP
    assert not use_cuda_graphs(TrainConfig(optim="SGD"), cuda, 1)
    assert not use_cuda_graphs(TrainConfig(compile="default"), cuda, 1)
    assert not use_cuda_graphs(TrainConfig(cuda_graphs="off"), cuda, 1)
    with pytest.raises(ValueError, match="cuda_graphs='on' needs one CUDA device"):
        use_cuda_graphs(TrainConfig(cuda_graphs="on"), cpu, 1)
    with pytest.raises(ValueError, match="cuda_graphs='maybe'"):
        TrainConfig.from_dict({"cuda_graphs": "maybe"})
    with pytest.raises(ValueError, match="compile='max'"):
        TrainConfig.from_dict({"compile": "max"})
    with pytest.raises(ValueError, match="cuda_graphs='on' needs compile='off'"):
        TrainConfig.from_dict({"cuda_graphs": "on", "optim": "SGD"})


@pytest.mark.slow
def test_small_benchmark_prints_table(tmp_path):
    out = tmp_path / "speed.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_speed", "--small", "--steps", "2", "--windows",
         "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    header = next(line for line in res.stdout.splitlines() if line.startswith("| setting"))
    assert "ratio" in header and "samples/s baseline" in header
    rows = [line for line in res.stdout.splitlines() if line.startswith("| mos")]
    assert len(rows) == 4  # mosei, mosi x batch 32, 128
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"] == torch.__version__
    assert all(r["ratio"] > 0 and r["ours_samples_s"] > 0 for r in saved["rows"])
