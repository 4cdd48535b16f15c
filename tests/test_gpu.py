"""The CUDA paths, which no CPU run can prove: the whole-step CUDA graph against the eager
step (fp32 and bf16, through an LR change and a checkpoint restore), graphs on and off
over a short run, the fallback when a capture is refused, peak GPU memory in a real
search's Parquet, and DDP with two workers on one GPU.

Tests marked `gpu` need CUDA and are skipped with the reason without it; they are still
collected on CPU, and `python -m benchmarks.gpu_check` runs them (`-m gpu`). The
step-comparison harness also runs on CPU here (unmarked), with the stand-in graph of
tests/test_benchmarks.py and bf16 autocast, together with faults it must catch, so that
its tolerances are known to bite before a GPU ever runs them. The last test runs the
GPU check's CPU mode end to end.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_benchmarks import ReplayByRerun
from ucrn.data import load_dataset
from ucrn.train import GRAPH_WARMUP_STEPS, CudaStepGraph, TrainConfig, Trainer, fit

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
HAS_RAY = importlib.util.find_spec("ray") is not None
NO_DROPOUT = dict(embed_dropout=0.0, attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0,
                  out_dropout=0.0)

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA (torch.cuda.is_available() is "
                                                 "False on this machine)")
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs Ray (not installed here)")

# fp32, dropout off, from the same weights and optimizer state: a replayed graph runs the
# very kernels the eager step runs, so only the order of atomic additions may differ.
FP32_ATOL = 1e-5  # parameters after the step (absolute)
FP32_LOSS_RTOL = 1e-5  # the step's training loss (relative)
# bf16: the same kernels again, but a reordered fp32 sum that lands next to a bf16 rounding
# boundary moves that activation by one bf16 step (2^-8 relative), and Adam turns a
# gradient whose sign flips near zero into a full step of the other sign. So no element
# bound tighter than Adam's own step holds; what a correct replay guarantees is
#  - the step's loss within 1e-3 (relative): the forward is the same computation on the
#    same weights, and a batch-mean of bf16 roundings moves far less than one rounding;
#  - the parameters' mean disagreement under 5 % of the mean update of that step (a
#    replay on stale weights, a missing update or a stale learning rate disagrees by the
#    whole update or more);
#  - no parameter further apart than 2.5 x lr (two Adam steps of opposite sign, plus
#    margin).
BF16_LOSS_RTOL = 1e-3
BF16_MEAN_UPDATE_FRACTION = 0.05
BF16_MAX_LR_MULTIPLE = 2.5


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", None, preset="tiny", seed=0)


class CountingFactory:
    """Wraps a graph factory and counts its captures."""

    def __init__(self, inner: Callable[..., Any]):
        self.inner, self.captures = inner, 0

    def __call__(self, step: Callable[[], None], opt: torch.optim.Optimizer) -> Any:
        self.captures += 1
        return self.inner(step, opt)


def _param_vector(tr: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in tr.model.parameters()])


def compare_graph_and_eager(data, device: str, amp: str, graph_factory: Callable[..., Any],
                            batch_size: int = 32, **model: Any) -> list[dict[str, Any]]:
    """One step at a time: the graphed trainer takes a step through `_graphed_step`, an
    eager trainer loaded with the same weights and optimizer state takes the same batch
    through `_train_step`; returns, per step, the loss and parameter disagreement.

    The sequence covers the eager warm-up, the capture and its first replay, replays on
    new batches, a learning-rate change (recapture), and `restore(checkpoint())` (graph
    dropped, warm-up again, new capture)."""
    cfg = dict(device=device, amp=amp, batch_size=batch_size, threads=1, **NO_DROPOUT, **model)
    graphed = Trainer(TrainConfig(**cfg), data, graph_factory=graph_factory)
    eager = Trainer(TrainConfig(**{**cfg, "cuda_graphs": "off"}), data)
    dev = graphed.device
    perm = torch.randperm(len(data.splits["train"]), generator=torch.Generator().manual_seed(7))
    # host indices, as the trainer's own loop gives them (the data stays on the host)
    batches = iter([perm[i:i + batch_size]
                    for i in range(0, len(perm) - batch_size + 1, batch_size)] * 4)
    records: list[dict[str, Any]] = []

    def step(label: str) -> None:
        idx = next(batches)
        # the eager side starts from the graphed side's exact state
        eager.model.load_state_dict(copy.deepcopy(graphed.model.state_dict()))
        eager.opt.load_state_dict(copy.deepcopy(graphed.opt.state_dict()))
        before = _param_vector(graphed)
        for tr in (graphed, eager):
            tr.model.train()
            tr._acc.zero_()
        graphed._graphed_step(idx)
        eager._train_step(idx)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        pg, pe = _param_vector(graphed), _param_vector(eager)
        lg, le = graphed._acc[0].item(), eager._acc[0].item()
        diff = (pg - pe).abs()
        records.append({"step": label, "lr": graphed.opt.param_groups[0]["lr"],
                        "loss_rel": abs(lg - le) / max(abs(le), 1e-12),
                        "max_param_diff": diff.max().item(),
                        "mean_param_diff": diff.mean().item(),
                        "mean_update": (pe - before).abs().mean().item(),
                        "graph": graphed._graph is not None})

    for i in range(GRAPH_WARMUP_STEPS):
        step(f"warm-up {i + 1}")
    step("capture + first replay")
    step("replay")
    step("replay")
    for g in graphed.opt.param_groups:  # what ReduceLROnPlateau does
        g["lr"] *= 0.1
    step("recapture after LR change")
    step("replay")
    graphed.restore(graphed.checkpoint())
    for i in range(GRAPH_WARMUP_STEPS):
        step(f"after restore: warm-up {i + 1}")
    step("after restore: capture + first replay")
    step("after restore: replay")
    return records


def violations(records: list[dict[str, Any]], amp: str) -> list[str]:
    """The steps outside the stated tolerance for `amp`, one line each."""
    bad = []
    for r in records:
        if amp == "off":
            ok = r["max_param_diff"] <= FP32_ATOL and r["loss_rel"] <= FP32_LOSS_RTOL
        else:
            ok = (r["loss_rel"] <= BF16_LOSS_RTOL
                  and r["mean_param_diff"] <= BF16_MEAN_UPDATE_FRACTION * r["mean_update"]
                  and r["max_param_diff"] <= BF16_MAX_LR_MULTIPLE * r["lr"])
        if not ok:
            bad.append(f"{r['step']}: loss rel {r['loss_rel']:.2e}, max |dp| "
                       f"{r['max_param_diff']:.2e}, mean |dp| {r['mean_param_diff']:.2e} "
                       f"(mean update {r['mean_update']:.2e}, lr {r['lr']:.1e})")
    return bad


# ---- on CPU: the harness and its tolerances ------------------------------------------

SMALL = dict(d_model=16, heads=2, layers=2)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_step_comparison_on_cpu_is_exact(tiny, amp):
    """With the stand-in graph (replay = rerun the step) the two paths are the same
    arithmetic, bf16 autocast included: every step agrees exactly, and the capture count
    shows the recapture after the LR change and after the restore."""
    factory = CountingFactory(ReplayByRerun)
    records = compare_graph_and_eager(tiny, "cpu", amp, factory, **SMALL)
    assert violations(records, amp) == []
    assert all(r["max_param_diff"] == 0 and r["loss_rel"] == 0 for r in records), records
    assert factory.captures == 3
    assert [r["graph"] for r in records] == [False] * 3 + [True] * 5 + [False] * 3 + [True] * 2


class FrozenForever(ReplayByRerun):
    """A faulty graph: every capture keeps the first capture's learning rate (as if the
    recapture after an LR change had not happened)."""

    first: list[float] | None = None

    def __init__(self, step, opt):
        super().__init__(step, opt)
        if FrozenForever.first is None:
            FrozenForever.first = list(self.frozen)
        self.frozen = list(FrozenForever.first)


class NoUpdate(ReplayByRerun):
    """A faulty graph whose replay computes the loss but never moves the weights."""

    def replay(self) -> None:
        saved = [p.detach().clone() for g in self.opt.param_groups for p in g["params"]]
        super().replay()
        with torch.no_grad():
            params = [p for g in self.opt.param_groups for p in g["params"]]
            for p, s in zip(params, saved):
                p.copy_(s)


@pytest.mark.parametrize("fault, first_bad", [(FrozenForever, "recapture after LR change"),
                                              (NoUpdate, "capture + first replay")])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_step_comparison_catches_faults(tiny, amp, fault, first_bad):
    """The stated tolerances are tight enough to see a stale learning rate and a replay
    that does not update, in bf16 as in fp32."""
    FrozenForever.first = None
    records = compare_graph_and_eager(tiny, "cpu", amp, fault, **SMALL)
    bad = violations(records, amp)
    assert bad and bad[0].startswith(first_bad + ":"), bad


class NoisyReplay(ReplayByRerun):
    """A correct replay whose weights carry fp32 rounding noise (2^-23 relative, more than
    a reordered reduction leaves): the stated tolerances must accept it."""

    def replay(self) -> None:
        with torch.no_grad():
            for g in self.opt.param_groups:
                for p in g["params"]:
                    p.mul_(1 + 2**-23 * torch.randn_like(p))
        super().replay()


def test_bf16_tolerance_admits_rounding_noise(tiny):
    """The bf16 tolerance is not tighter than a correct replay on a GPU whose reductions
    are not deterministic. (The fp32 bound of 1e-5 is the issue's. Under this noise, more
    than reordered sums leave, early Adam steps of the default model reach 0.8e-5 and of
    this small one 1.6e-5. So if the GPU test misses 1e-5 narrowly while the mean
    disagreement stays near 1e-7, suspect reduction order, not the replay: a stale LR or
    a missing update disagrees by 1e-4 and more.)"""
    records = compare_graph_and_eager(tiny, "cpu", "bf16", NoisyReplay, **SMALL)
    assert violations(records, "bf16") == []
    assert max(r["max_param_diff"] for r in records) > 0  # the noise did reach the step


# ---- on CUDA --------------------------------------------------------------------------

@gpu
@needs_cuda
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_graph_step_matches_eager(tiny, amp):
    """A replayed CUDA graph of the whole step (capturable Adam, foreach clip) equals the
    eager step: fp32 within 1e-5, bf16 within the tolerance stated above; after an LR
    change (recapture) and after restore(checkpoint()) too."""
    factory = CountingFactory(CudaStepGraph)
    records = compare_graph_and_eager(tiny, "cuda", amp, factory)
    worst = max(records, key=lambda r: r["max_param_diff"])
    print(json.dumps({"amp": amp, "worst": worst, "records": records}))
    assert violations(records, amp) == []
    assert factory.captures == 3


def _mae_runs(data, cuda_graphs: str, seeds: tuple[int, ...]) -> list[tuple[float, bool]]:
    out = []
    for seed in seeds:
        used: list[bool] = []

        def on_epoch(epoch, rec, tr, used=used) -> None:
            used.append(tr._graph is not None)

        cfg = TrainConfig(device="cuda", num_epochs=3, seed=seed, cuda_graphs=cuda_graphs)
        res = fit(cfg, data, on_epoch=on_epoch)
        out.append((res.history[-1]["MAE"], any(used)))
    return out


@gpu
@needs_cuda
def test_graphs_auto_and_off_reach_the_same_mae(tiny):
    """3 epochs (dropout on, bf16 where supported), 3 seeds each: the graph path learns
    like the eager one. Dropout draws differ between the two paths, so the criterion is
    statistical: the means differ by less than 3 standard errors of the difference (or
    0.02, whichever is larger)."""
    seeds = (1, 2, 3)
    auto, off = _mae_runs(tiny, "auto", seeds), _mae_runs(tiny, "off", seeds)
    assert all(used for _, used in auto), "cuda_graphs='auto' never replayed a graph"
    assert not any(used for _, used in off)
    a, o = [m for m, _ in auto], [m for m, _ in off]
    assert all(math.isfinite(m) for m in a + o), (a, o)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(o) / len(o))
    tol = max(3 * se, 0.02)
    print(json.dumps({"auto": a, "off": o, "tolerance": tol}))
    assert abs(statistics.mean(a) - statistics.mean(o)) <= tol, (a, o, tol)


@gpu
@needs_cuda
def test_refused_capture_falls_back_to_eager_on_cuda(tiny):
    """A capture the GPU refuses: one RuntimeWarning, then the run trains eagerly on CUDA,
    with the numbers of a cuda_graphs='off' run (fp32: same kernels, no replay)."""
    def refuse(step, opt):
        raise RuntimeError("operation not permitted when stream is capturing")

    cfg = dict(device="cuda", amp="off", num_epochs=3, **NO_DROPOUT)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        res = fit(TrainConfig(**cfg), tiny, graph_factory=refuse)
    ref = fit(TrainConfig(**cfg, cuda_graphs="off"), tiny)
    assert res.status == "completed"
    assert next(iter(res.model_state.values())).device.type == "cuda"
    got = [h["train_loss"] for h in res.history]
    want = [h["train_loss"] for h in ref.history]
    assert got == pytest.approx(want, rel=1e-4)


def _search(tmp_path: Path, env: dict[str, str], args: list[str],
            timeout: float) -> tuple[subprocess.CompletedProcess, Any, Any]:
    """run_search.py in its own process session (a hang ends the test with the output,
    and stops the Ray it started); returns its result and the trials/epochs tables."""
    import pandas as pd

    from tests.raynodes import kill_session

    storage = tmp_path / "st"
    cmd = [sys.executable, str(ROOT / "run_search.py"), "--storage", str(storage), "--name",
           "g", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"run_search.py {' '.join(args)} hung for {timeout:.0f} s:\n{err[-3000:]}")
    finally:
        kill_session(proc.pid)  # whatever it left behind
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    trials = epochs = None
    if (storage / "g" / "trials.parquet").exists():
        trials = pd.read_parquet(storage / "g" / "trials.parquet")
    if (storage / "g" / "epochs.parquet").exists():
        epochs = pd.read_parquet(storage / "g" / "epochs.parquet")
    return res, trials, epochs


@gpu
@needs_cuda
@needs_ray
def test_peak_gpu_mem_is_recorded(tmp_path, ray_env):
    """A tiny real search on the GPU fills peak_gpu_mem_mb (finite, > 0) for every trial."""
    res, trials, _ = _search(tmp_path, ray_env, [
        "--gpus-per-trial", "0.5", "--executor", "tune", "--num-samples", "2",
        "--max-epochs", "1"], timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    assert trials is not None and len(trials) == 2
    print(trials[["trial_id", "status", "peak_gpu_mem_mb", "samples_per_s"]].to_string())
    assert (trials["status"] == "completed").all()
    mem = trials["peak_gpu_mem_mb"].astype(float)
    assert mem.map(math.isfinite).all() and (mem > 0).all(), mem.tolist()
    reserved = trials["peak_gpu_reserved_mb"].astype(float)
    assert (reserved >= mem).all(), (reserved.tolist(), mem.tolist())
    print("gpu_process_mb:", trials["gpu_process_mb"].tolist())  # NaN where NVML cannot say


@gpu
@needs_cuda
def test_gpu_memory_is_per_trial(tiny):
    """Two trials in turn in one process (as Tune's reused actors run them): a large one,
    then a small one. The second reports its own, smaller peak, not the first's; the data
    never sits on the GPU whole (a batch at a time)."""
    big = Trainer(TrainConfig(device="cuda", batch_size=256, d_model=64, heads=4), tiny)
    big.train_epoch()
    first = big.gpu_memory.read()
    del big
    small = Trainer(TrainConfig(device="cuda", batch_size=8, d_model=8, heads=2, layers=1), tiny)
    small.train_epoch()
    second = small.gpu_memory.read()
    print(json.dumps({"first": first, "second": second}))
    assert 0 < second["peak_gpu_mem_mb"] < first["peak_gpu_mem_mb"]
    for r in (first, second):
        assert r["peak_gpu_reserved_mb"] >= r["peak_gpu_mem_mb"]
    assert all(x.device.type == "cpu" for x in small.splits["train"].inputs if x is not None)


@gpu
@needs_cuda
@needs_ray
def test_ddp_two_workers_on_two_gpus(tmp_path, ray_env):
    """DDP through Ray Train, two workers on two GPUs (1 each): the search ends and trains
    both epochs. (Two workers on one GPU are refused by the flags before Ray starts:
    nccl refuses two ranks on one device; tests/test_search.py checks that on CPU.)"""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs (this machine has {torch.cuda.device_count()})")
    res, trials, epochs = _search(tmp_path, ray_env, [
        "--workers-per-trial", "2", "--gpus-per-trial", "1", "--executor", "train",
        "--num-samples", "1", "--max-epochs", "2", "--max-failures", "0"], timeout=150)
    assert trials is not None and len(trials) == 1, (res.returncode, res.stderr[-3000:])
    row = trials.iloc[0]
    print(json.dumps({"status": row["status"], "error": row.get("error"),
                      "rc": res.returncode}, default=str))
    assert row["status"] == "completed", (row.to_dict(), res.stderr[-3000:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(epochs["epoch"].tolist()) == [1, 2]
