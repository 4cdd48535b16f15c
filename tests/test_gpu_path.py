"""The CUDA path's defects that a CPU can catch: data kept on the host and moved a batch at a
time, a capture that fails inside, compile and the partial batch, host syncs inside the
captured step, bf16 on CPU, per-device RNG and per-rank seeds, per-trial GPU memory."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import traceback
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from search.schema import FILE_COLUMNS, TRIALS
from ucrn.batches import HostSplit
from ucrn.data import load_dataset
from ucrn.gpumem import KEYS, GpuMemory
from ucrn.train import CudaStepGraph, TrainConfig, Trainer, fit, own_cuda_rng, rank_seed

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(device="cpu", threads=1, d_model=8, heads=2, layers=1)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", None, preset="tiny", seed=0)


# ---- 1. data on the host, one batch moved per step ------------------------------------


def test_splits_share_the_loaded_arrays(tiny):
    """The trainer's splits are the loaded arrays themselves (no copy, on the host), so
    trials on one machine hold the data once (Ray's object store) whatever their device."""
    tr = Trainer(TrainConfig(**SMALL), tiny)
    for name, split in tiny.splits.items():
        held = tr.splits[name]
        for x, a in zip(held.inputs, (split.text, split.audio, split.vision)):
            assert x.device.type == "cpu" and np.shares_memory(x.numpy(), a)


def test_batches_go_to_the_device_one_at_a_time(tiny):
    """Towards another device (`meta` stands in for a GPU), a batch arrives there with its
    rows; the split itself stays on the host. `batch_into` fills existing buffers (a
    graph's inputs) with the same rows as `batch`."""
    split = tiny.splits["train"]
    held = HostSplit.from_split(split, "lav", tiny.task, torch.device("meta"))
    idx = torch.tensor([5, 0, 17])
    (text, audio, vision), labels = held.batch(idx)
    assert {t.device.type for t in (text, audio, vision, labels)} == {"meta"}
    assert text.shape == (3, *split.text.shape[1:]) and labels.shape == (3, 1)
    assert all(x.device.type == "cpu" for x in held.inputs)

    host = HostSplit.from_split(split, "lav", tiny.task, torch.device("cpu"))
    (t, a, v), y = host.batch(idx)
    np.testing.assert_array_equal(t.numpy(), split.text[[5, 0, 17]])
    np.testing.assert_array_equal(y.numpy().ravel(), split.labels[[5, 0, 17]])
    static = (tuple(torch.zeros_like(x) for x in (t, a, v)), torch.zeros_like(y))
    host.batch_into(idx, static)
    for got, want in zip((*static[0], static[1]), (t, a, v, y)):
        assert torch.equal(got, want)
    (rt, _, _), ry = host.rows(3, 6)
    np.testing.assert_array_equal(rt.numpy(), split.text[3:6])


def test_training_reads_batches_through_the_host_split(tiny, monkeypatch):
    """Every step of an epoch, eager or replayed, takes its batch from HostSplit (one call
    per batch); nothing indexes a device copy of the split."""
    calls = []
    orig_batch, orig_into = HostSplit.batch, HostSplit.batch_into
    monkeypatch.setattr(HostSplit, "batch", lambda s, i: calls.append(len(i)) or orig_batch(s, i))
    monkeypatch.setattr(HostSplit, "batch_into",
                        lambda s, i, st: calls.append(len(i)) or orig_into(s, i, st))
    from tests.test_benchmarks import ReplayByRerun

    tr = Trainer(TrainConfig(**SMALL, batch_size=48), tiny, graph_factory=ReplayByRerun)
    tr.train_epoch()
    n = len(tiny.splits["train"])
    assert sum(calls) == n and len(calls) == math.ceil(n / 48), calls


# ---- 7. a capture that fails inside ---------------------------------------------------


class FakeCuda:
    """torch.cuda's capture machinery, as far as CudaStepGraph uses it: streams that are
    entered and left, and a graph whose capture_end fails after a failed step, as a real
    capture invalidated by an illegal call does."""

    def __init__(self):
        self.current = "default"
        self.ended = 0

    class Stream:
        pass

    def synchronize(self):
        pass

    @contextlib.contextmanager
    def stream(self, s):
        prev, self.current = self.current, s
        try:
            yield
        finally:
            self.current = prev

    def CUDAGraph(self):  # noqa: N802 - torch.cuda's name
        fake = self

        class Graph:
            capturing = False

            def capture_begin(self):
                self.capturing = True

            def capture_end(self):
                fake.ended += 1
                if getattr(fake, "step_failed", False):
                    raise RuntimeError("CUDA error: operation failed due to a previous error "
                                       "during capture")

            def replay(self):
                raise AssertionError("a failed capture is never replayed")

        return Graph()


def _failing(step):
    def run(fake):
        fake.step_failed = True
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing "
                           "(the real cause)")
    return run


def test_failed_capture_leaves_the_capture_stream_and_says_the_cause():
    """A step that fails inside the capture: the capture is ended, the thread is back on
    its own stream, and the error raised is the step's, not capture_end's."""
    fake = FakeCuda()
    with pytest.raises(RuntimeError, match="the real cause"):
        CudaStepGraph(lambda: _failing(None)(fake), None, cuda=fake)
    assert fake.current == "default" and fake.ended == 1


def test_trainer_falls_back_with_the_real_cause(tiny):
    """Through the trainer: one RuntimeWarning quoting the step's error, then eager steps
    with the numbers of a run without graphs."""
    fake = FakeCuda()

    def factory(step, opt):
        return CudaStepGraph(lambda: _failing(step)(fake), opt, cuda=fake)

    cfg = TrainConfig(**SMALL, batch_size=48, embed_dropout=0.0, attn_dropout=0.0,
                      relu_dropout=0.0, res_dropout=0.0, out_dropout=0.0)
    tr = Trainer(cfg, tiny, graph_factory=factory)
    with pytest.warns(RuntimeWarning, match="the real cause") as rec:
        got = [tr.train_epoch() for _ in range(2)]
    assert len(rec) == 1 and "previous error" not in str(rec[0].message)
    assert fake.current == "default"
    ref = Trainer(cfg, tiny)
    assert got == [ref.train_epoch() for _ in range(2)]


# ---- 8. compile and the partial batch --------------------------------------------------


@pytest.mark.slow
def test_compile_does_not_recompile_for_the_partial_batch(tiny):
    """512 training rows at batch 48: ten full batches and one of 32, two epochs. With a
    backend that counts compilations, the whole run compiles what its first step did."""
    torch._dynamo.reset()
    graphs: list[int] = []

    def counting(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    tr = Trainer(TrainConfig(**SMALL, batch_size=48, compile="default", cuda_graphs="off"),
                 tiny, compile_backend=counting)
    tr._train_step(torch.arange(48))
    first = len(graphs)
    assert first >= 1
    for _ in range(2):
        tr.train_epoch()
    assert len(graphs) == first, f"{len(graphs) - first} recompilations after the first step"
    torch._dynamo.reset()


# ---- no host sync inside the captured step ----------------------------------------------

# ops that read a tensor's value on the host (.item(), bool(t), .tolist()) or whose output
# shape depends on values: on CUDA each is a sync, and illegal inside a graph capture
SYNC_OPS = ("_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "unique",
            "_unique", "_unique2", "unique_consecutive", "unique_dim", "equal",
            "repeat_interleave", "bincount", "histc")


class SyncScan(TorchDispatchMode):
    """Records the sync ops run inside it, with where they came from. With `skip_optim`, the
    optimizer's own are left out: on the CPU Adam cannot be capturable (torch allows that on
    CUDA only) and reads its step counter on the host; on CUDA the trainer builds it
    capturable (test_graphs_use_a_capturable_optimizer)."""

    def __init__(self, skip_optim: bool = False):
        super().__init__()
        self.skip_optim = skip_optim
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in SYNC_OPS:
            stack = traceback.extract_stack()
            if not (self.skip_optim and any(f"torch{os.sep}optim{os.sep}" in f.filename
                                            for f in stack)):
                here = next((f"{Path(f.filename).name}:{f.lineno}"  # the innermost own code
                             for f in reversed(stack[:-1])
                             if "site-packages" not in f.filename), "?")
                self.found.append(f"{func.__name__} at {here}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("extra", [
    {},
    {"amp": "bf16"},
    {"mjs_variant": "authors", "clip": 0.0},
    {"modalities": "la", "modality_dropout": 0.3, "input_noise": 0.2},
    {"optim": "AdamW", "jsd_weight": 0.0},
])
def test_the_captured_step_never_syncs(tiny, extra):
    """The step that a CUDA graph records (`Trainer._step`: augmentation, forward, losses,
    backward, clip, Adam) runs no op that reads values on the host, over several configs."""
    tr = Trainer(TrainConfig(**{**SMALL, "batch_size": 32, **extra}), tiny)
    batch = tr.splits["train"].batch(torch.arange(32))
    tr._step(*batch)  # lazy state (Adam's moments) first, as the warm-up steps do
    with SyncScan(skip_optim=True) as scan:
        tr._step(*batch)
    assert scan.found == [], scan.found


def test_sync_scan_sees_a_sync(tiny, monkeypatch):
    """The scan is not blind: an .item() inside the step is found and located."""
    import ucrn.train

    real = ucrn.train.training_loss

    def syncing(*args, **kwargs):
        total, loss, mjs = real(*args, **kwargs)
        if loss.item() > 1e9:  # a host-side decision on a value: a sync
            pass
        return total, loss, mjs

    monkeypatch.setattr(ucrn.train, "training_loss", syncing)
    tr = Trainer(TrainConfig(**SMALL, batch_size=32), tiny)
    batch = tr.splits["train"].batch(torch.arange(32))
    with SyncScan(skip_optim=True) as scan:
        tr._step(*batch)
    assert len(scan.found) == 1 and "test_gpu_path.py" in scan.found[0], scan.found


def test_graphs_use_a_capturable_optimizer(tiny, monkeypatch):
    """Where the step is captured, Adam keeps its step counter on the device (capturable):
    the optimizer part of the step then reads nothing on the host."""
    import ucrn.train

    monkeypatch.setattr(ucrn.train, "use_cuda_graphs", lambda cfg, device, world: True)
    for optim in ("Adam", "AdamW"):
        tr = Trainer(TrainConfig(**SMALL, optim=optim), tiny)
        assert tr.opt.defaults["capturable"] is True and tr.opt.defaults["foreach"] is True


def test_iemocap_step_never_syncs():
    """Classification (cross-entropy over four emotions) too."""
    data = load_dataset("synthetic", None, preset="iemocap_tiny", seed=0)
    tr = Trainer(TrainConfig(**SMALL, batch_size=16), data)
    batch = tr.splits["train"].batch(torch.arange(16))
    tr._step(*batch)
    with SyncScan(skip_optim=True) as scan:
        tr._step(*batch)
    assert scan.found == [], scan.found


# ---- bf16 on CPU -------------------------------------------------------------------------


@pytest.mark.slow
def test_whole_fit_in_bf16_on_cpu(tiny):
    """amp=bf16 on the CPU: every epoch's numbers finite, the loss falls, and the model
    beats predicting the training mean."""
    cfg = TrainConfig(**{**SMALL, "d_model": 16, "layers": 2}, amp="bf16", num_epochs=4,
                      batch_size=32, lr=2e-3)
    res = fit(cfg, tiny)
    assert res.trainer.autocast_dtype == torch.bfloat16 and res.status == "completed"
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["MAE"]) for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    labels = tiny.splits["valid"].labels
    const = float(np.abs(labels - tiny.splits["train"].labels.mean()).mean())
    assert res.best["MAE"] < const, (res.best["MAE"], const)


# ---- 9. RNG: the own device on restore, a stream per DDP rank ---------------------------


def test_own_cuda_rng_takes_the_trainer_device():
    one = torch.arange(4, dtype=torch.uint8)
    assert own_cuda_rng(one, 3) is one  # this version: the trainer's own device only
    old = [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]
    assert own_cuda_rng(old, 1) is old[1]  # earlier versions: one per visible GPU
    assert own_cuda_rng(old, 2) is None  # saved with fewer GPUs than this machine sees
    assert own_cuda_rng([], 0) is None and own_cuda_rng(None, 0) is None


def test_rank_seeds_differ():
    seeds = {rank_seed(s, r, e) for s in (0, 1) for r in (1, 2, 3) for e in (0, 5)}
    assert len(seeds) == 12 and all(0 <= x < 2**63 for x in seeds)


def _in_group(rank: int, world: int, store: str, out: str, body) -> None:
    """`body()` in a gloo process group of `world` ranks; its result saved to `out`.

    Its objects (DDP modules hold the group) are gone and every rank is done before the
    group is destroyed: a rank that exited with a DDP module still holding the group
    aborted at exit ("terminate called without an active exception"; 1 run in 3)."""
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(body(), out)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _masks_body() -> dict:
    import torch.distributed as dist

    data = load_dataset("synthetic", None, preset="tiny", seed=0)
    tr = Trainer(TrainConfig(**SMALL, embed_dropout=0.5), data)
    weights = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    draws = torch.rand(8)
    ckpt = tr.checkpoint()  # what rank 0 saves; every rank restores from it
    dist.broadcast_object_list(obj := [ckpt], src=0)
    tr.restore(obj[0])
    after = torch.rand(8)
    return {"weights": weights, "draws": draws, "after": after}


def _ddp_rank(rank: int, world: int, store: str, out: str) -> None:
    _in_group(rank, world, store, out, _masks_body)


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_masks(tmp_path):
    """Two gloo ranks: the same initial weights, different random draws (dropout masks),
    and still different after both restore rank 0's checkpoint."""
    r0, r1 = _two_ranks(tmp_path, _ddp_rank)
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["draws"], r1["draws"])
    assert not torch.equal(r0["after"], r1["after"])


def _resume_body() -> dict:
    """Three epochs in one go, then one epoch, rank 0's checkpoint, a new Trainer restored
    from it and two epochs more: the train losses of each rank (DDP averages them)."""
    import torch.distributed as dist

    data = load_dataset("synthetic", None, preset="tiny", seed=0)
    cfg = TrainConfig(**{**SMALL, "embed_dropout": 0.3, "out_dropout": 0.3})
    whole = Trainer(cfg, data)
    straight = []
    for _ in range(3):
        straight.append(whole.train_epoch()[0])
        whole.epoch += 1  # as ucrn.train.fit counts them
    first = Trainer(cfg, data)
    resumed = [first.train_epoch()[0]]
    first.epoch = 1
    dist.broadcast_object_list(obj := [first.checkpoint()], src=0)
    again = Trainer(cfg, data)
    again.restore(obj[0])
    for _ in range(2):
        resumed.append(again.train_epoch()[0])
        again.epoch += 1
    return {"straight": straight, "resumed": resumed}


def _ddp_resume_rank(rank: int, world: int, store: str, out: str) -> None:
    _in_group(rank, world, store, out, _resume_body)


def _two_ranks(tmp_path: Path, target) -> list[dict]:
    ctx = torch.multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"r{r}.pt") for r in range(2)]
    os.environ.setdefault("PYTHONPATH", os.pathsep.join([str(ROOT), *sys.path]))
    procs = [ctx.Process(target=target, args=(r, 2, str(tmp_path / "store"), outs[r]))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0, f"rank exit code {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return [torch.load(o) for o in outs]


@pytest.mark.slow
def test_a_resumed_ddp_run_trains_as_an_uninterrupted_one(tmp_path):
    """Rank 1 reseeded once at a restore drew other dropout masks than in a run that was
    never stopped: a DDP trial whose worker was killed resumed to other losses (attack
    round: epoch 5 MAE 1.1073 against 1.1063). Now each epoch reseeds from its number."""
    for r in _two_ranks(tmp_path, _ddp_resume_rank):
        assert r["resumed"] == r["straight"], r


# ---- 2. GPU memory per trial -------------------------------------------------------------


class FakeMemCuda:
    def __init__(self):
        self.calls: list[str] = []
        self.allocated, self.reserved = 300 * 2**20, 500 * 2**20

    def empty_cache(self):
        self.calls.append("empty_cache")

    def reset_peak_memory_stats(self, device):
        self.calls.append("reset")

    def max_memory_allocated(self, device):
        return self.allocated

    def max_memory_reserved(self, device):
        return self.reserved

    def _get_nvml_device_index(self, device):
        return 0


def test_gpu_memory_is_reset_per_trial_and_reads_three_peaks(monkeypatch):
    fake = FakeMemCuda()
    used = iter([900 * 2**20, 700 * 2**20])
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=5),
            types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=next(used))])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    mem = GpuMemory(torch.device("cuda", 0), cuda=fake)
    assert fake.calls == ["empty_cache", "reset"]  # an earlier trial's peak is gone
    first, second = mem.read(), mem.read()
    assert first == {"peak_gpu_mem_mb": 300.0, "peak_gpu_reserved_mb": 500.0,
                     "gpu_process_mb": 900.0}
    assert second["gpu_process_mb"] == 900.0  # the largest seen, not the last
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no nvidia-ml-py: unknown, not 0
    assert math.isnan(GpuMemory(torch.device("cuda", 0), cuda=fake).read()["gpu_process_mb"])
    assert all(math.isnan(v) for v in GpuMemory(torch.device("cpu")).read().values())
    assert set(KEYS) <= set(FILE_COLUMNS[TRIALS])


def test_no_warning_for_read_only_arrays(tiny):
    """Arrays from Ray's object store are read-only; holding them says nothing."""
    split = tiny.splits["valid"]
    frozen = {}
    for name in ("text", "audio", "vision", "labels"):
        a = getattr(split, name).copy()
        a.setflags(write=False)
        frozen[name] = a
    ro = dataclasses.replace(split, **frozen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HostSplit.from_split(ro, "lav", tiny.task, torch.device("cpu"))
