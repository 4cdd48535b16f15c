"""Training speed of our `Trainer` against a naive eager loop, in the same process.

Why: docs/benchmarks.md states the speed goals as ratios against a baseline measured in the
same run, so that machine, load and library versions cancel out. The baseline is the same
UCRN math written the way the authors' loop runs it: data on the host and copied per
batch, a host sync (`loss.item()`) every step, the authors' (MulT's) attention (bmm, a
causal mask rebuilt as a float tensor in every call, softmax, bmm), fp32, no autocast, no
compile, default Adam. `--baseline-attention mask` keeps everything but swaps in SDPA with
that mask: it isolates what the loop itself costs.
Ours is `ucrn.train.Trainer` itself (its `train_epoch` and `evaluate`), so the numbers
measure the code that trials run.

    python -m benchmarks.train_speed              # MOSEI and MOSI unaligned shapes, batch 32 and 128
    python -m benchmarks.train_speed --small      # tiny shapes, seconds (CI)
    python -m benchmarks.train_speed --device cuda --json out.json
    python -m benchmarks.train_speed --device cuda --variants default,eager_bf16,eager_fp32 \
        --profile prof/                           # GPU: each fast path's share, and a profile

On a GPU "ours" is measured in several forms (`--variants`): the trainer's defaults (a
replayed whole-step CUDA graph with bf16 autocast), eager bf16 and eager fp32, each
against the baseline of the same run, so that what each fast path buys is visible.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/train_speed.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from ucrn.data import MultData, Split, from_raw, make_synthetic  # noqa: E402
from ucrn.errors import OneLineParser, run_main  # noqa: E402
from ucrn.fileio import atomic_write  # noqa: E402
from ucrn.losses import mjs_divergence  # noqa: E402
from ucrn.model import UCRN, SelfAttention  # noqa: E402
from ucrn.train import TrainConfig, Trainer, resolve_device, task_loss  # noqa: E402

# name -> (synthetic preset, real n_train, real n_valid); shapes are the MulT unaligned files
SHAPES: dict[str, tuple[str, int, int]] = {
    "mosei": ("mosei", 16326, 1871),  # text 50x300, audio 500x74, vision 500x35
    "mosi": ("mosi", 1284, 229),  # text 50x300, audio 375x5, vision 500x20
}
SMALL_SEQ_LENS = (20, 40, 40)
MiB = 1 << 20
# our trainer in several forms: TrainConfig overrides on top of the defaults (and --set).
# "default" is what trials run: on one CUDA device the replayed whole-step graph with bf16
# autocast; on a CPU eager fp32. The others switch the fast paths off one at a time.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "eager_bf16": {"cuda_graphs": "off", "amp": "bf16"},
    "eager_fp32": {"cuda_graphs": "off", "amp": "off"},
}
VARIANT_LABELS = {"default": "ours", "eager_bf16": "eager bf16", "eager_fp32": "eager fp32"}
# the goals (docs/benchmarks.md) for one trial on a GPU (MOSEI unaligned, batch 32), and for
# evaluation on any device
TARGETS = {"samples_s": 10_000.0, "ratio": 50.0, "val_epoch_pct": 10.0}


# --------------------------------------------------------------------------------------
# the naive baseline
# --------------------------------------------------------------------------------------


class MaskedSelfAttention(SelfAttention):
    """Same attention math, but causal through a float mask built on the host and copied
    to the device in every call, as the authors' code does, instead of `is_causal`."""

    def _mask(self, T: int, device: torch.device) -> Tensor | None:
        if not (self.causal and T > 1):
            return None
        return torch.full((T, T), float("-inf")).triu(1).to(device)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        p = self.attn_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = self._attend(q, k, v, self._mask(T, x.device))
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class ManualSelfAttention(MaskedSelfAttention):
    """The authors' (MulT's) attention: bmm, add the mask, softmax in fp32, dropout, bmm."""

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores + mask
        w = F.softmax(scores.float(), dim=-1).type_as(scores)
        return F.dropout(w, self.attn_dropout, self.training) @ v


BASELINE_ATTENTION = {"mask": MaskedSelfAttention, "manual": ManualSelfAttention}


def naive_model(model: UCRN, attention: str = "manual") -> UCRN:
    """A copy of `model` (same weights) whose attention layers take the naive path."""
    naive = copy.deepcopy(model)
    cls = BASELINE_ATTENTION[attention]
    for module in naive.modules():
        if type(module) is SelfAttention:
            module.__class__ = cls
    return naive


class NaiveLoop:
    """The authors' style of training loop around a naive model: host data indexed and
    copied per batch (like a DataLoader), `loss.item()` every step, fp32 eager."""

    def __init__(self, cfg: TrainConfig, split: Split, task: str, model: UCRN,
                 device: torch.device):
        self.cfg, self.split, self.task, self.device = cfg, split, task, device
        self.model = model.to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        self.order, self.pos = self.rng.permutation(len(split)), 0
        self.last_loss = float("nan")

    def _next_index(self) -> np.ndarray:
        if self.pos + self.cfg.batch_size > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.split)), 0
        idx = self.order[self.pos:self.pos + self.cfg.batch_size]
        self.pos += self.cfg.batch_size
        return idx

    def _batch(self, idx: np.ndarray) -> tuple[list[Tensor | None], Tensor]:
        mods = self.model.cfg.modalities
        arrays = (("l", self.split.text), ("a", self.split.audio), ("v", self.split.vision))
        inputs = [torch.from_numpy(a[idx]).to(self.device) if m in mods else None
                  for m, a in arrays]
        labels = torch.from_numpy(self.split.labels[idx])
        labels = labels.long() if self.task == "iemocap" else labels.float().view(-1, 1)
        return inputs, labels.to(self.device)

    def step(self, idx: np.ndarray) -> float:
        """One training step on host rows `idx`; returns the loss (a host sync)."""
        self.model.train()
        inputs, labels = self._batch(idx)
        out, reps = self.model(*inputs)
        loss = task_loss(out, labels, self.task)
        if self.cfg.jsd_weight > 0:
            loss = loss + self.cfg.jsd_weight * mjs_divergence(reps, self.cfg.mjs_variant)
        self.opt.zero_grad()
        loss.backward()
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.opt.step()
        self.last_loss = loss.item()
        return self.last_loss

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step(self._next_index())


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of fn(), with the device drained before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class MemoryProbe:
    """Peak memory of one phase above what was allocated when it began.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set size
    (VmHWM, reset through /proc/self/clear_refs) minus its RSS at the start, after
    malloc_trim; where the peak cannot be reset it falls back to the growth of
    getrusage's max RSS, which is only a lower bound once an earlier phase went higher.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else self._cpu_method()

    @staticmethod
    def _cpu_method() -> str:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return "VmHWM (RSS peak, reset per phase)"
        except OSError:
            return "getrusage max RSS growth (lower bound)"

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:  # hand freed heap back so that RSS reflects live memory
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        if self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status_kib("VmRSS") * 1024
        else:
            import resource

            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / MiB
        if self.method.startswith("VmHWM"):
            return (self._status_kib("VmHWM") * 1024 - self.base) / MiB
        import resource

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / MiB


@dataclass
class Row:
    shape: str
    batch_size: int
    steps_per_window: int
    windows: int
    ours_samples_s: float
    baseline_samples_s: float
    ratio: float
    ours_ms_step: float
    baseline_ms_step: float
    val_samples: int  # validation samples measured
    val_ms: float  # one validation pass, scaled to the real split size
    val_epoch_pct: float  # val pass / one training epoch of the real split, at our speed
    ours_step_mem_mib: float
    baseline_step_mem_mib: float
    ours_windows_s: list[float] = field(default_factory=list)
    baseline_windows_s: list[float] = field(default_factory=list)
    # every measured form of ours ("default" included): samples_s, ms_step, ratio (against
    # this row's baseline), step_mem_mib, windows_s, and the path it took (graph, amp)
    variants: dict[str, dict] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        return f"{self.shape} b{self.batch_size}"


def build_data(shape: str, n_train: int, n_valid: int, small: bool, seed: int = 0) -> MultData:
    """Synthetic data with the shape's real dims; only as many samples as timing needs."""
    preset = SHAPES[shape][0]
    raw = make_synthetic(preset, seed, n_train=n_train, n_valid=n_valid, n_test=1,
                         seq_lens=SMALL_SEQ_LENS if small else None)
    return from_raw(raw, f"synthetic:{preset}:benchmark")


def _head(data: MultData, n: int) -> MultData:
    """The same data with the training split cut to n samples (views, no copy)."""
    s = data.splits["train"]
    train = Split(s.text[:n], s.audio[:n], s.vision[:n], s.labels[:n], s.ids[:n])
    return MultData({**data.splits, "train": train}, data.task, data.source)


def variant_config(base_cfg: dict, variant: str, batch_size: int,
                   device: torch.device) -> TrainConfig:
    """Our trainer's config for one form of `VARIANTS`, on `device`."""
    return TrainConfig(**{**base_cfg, **VARIANTS[variant], "batch_size": batch_size,
                          "device": str(device)})


def trainer_path(tr: Trainer) -> dict:
    """Which fast paths a trainer really took: graph captured and replaying, autocast."""
    return {"cuda_graphs": bool(getattr(tr, "uses_cuda_graphs", False)),
            "graph_replaying": getattr(tr, "_graph", None) is not None,
            "amp": str(tr.autocast_dtype).replace("torch.", "") if tr.autocast_dtype else "off"}


def measure(shape: str, batch_size: int, data: MultData, device: torch.device, *, steps: int,
            windows: int, warmup_epochs: int, baseline_attention: str,
            base_cfg: dict, variants: tuple[str, ...] = ("default",)) -> Row:
    """Median-of-windows throughput of ours (each form in `variants`, "default" first) and
    of the baseline, interleaved window by window so that load from other processes hits
    them alike."""
    n = steps * batch_size
    data_b = _head(data, n)
    probe = MemoryProbe(device)
    variants = ("default", *(v for v in variants if v != "default"))

    trainers: dict[str, Trainer] = {}
    mems: dict[str, float] = {}
    for name in variants:
        tr = Trainer(variant_config(base_cfg, name, batch_size, device), data_b)
        probe.start()  # one epoch == `steps` full batches
        for _ in range(warmup_epochs):
            tr.train_epoch()
        mems[name] = probe.peak_mib()
        trainers[name] = tr
    ours = trainers["default"]

    naive = NaiveLoop(ours.cfg, data_b.splits["train"], data_b.task,
                      naive_model(ours.model, baseline_attention), device)
    probe.start()
    naive.steps(max(2, steps))
    base_mem = probe.peak_mib()

    times: dict[str, list[float]] = {name: [] for name in variants}
    base_t: list[float] = []
    for _ in range(windows):
        for name, tr in trainers.items():
            times[name].append(timed(tr.train_epoch, device))
        base_t.append(timed(partial(naive.steps, steps), device))
    base_s = statistics.median(base_t)
    recs = {}
    for name, tr in trainers.items():
        med = statistics.median(times[name])
        recs[name] = {"samples_s": n / med, "ms_step": med / steps * 1000,
                      "ratio": base_s / med, "step_mem_mib": mems[name],
                      "windows_s": times[name], **trainer_path(tr)}
    ours_s = statistics.median(times["default"])

    ours.evaluate("valid")  # warm-up
    val_s = statistics.median(timed(partial(ours.evaluate, "valid"), device) for _ in range(3))
    _, real_train, real_valid = SHAPES[shape]
    n_valid = ours.splits["valid"].n
    val_ms = val_s * 1000 * real_valid / n_valid
    epoch_ms = real_train / (n / ours_s) * 1000
    row = Row(shape, batch_size, steps, windows, n / ours_s, n / base_s, base_s / ours_s,
              ours_s / steps * 1000, base_s / steps * 1000, n_valid, val_ms,
              100 * val_ms / epoch_ms, mems["default"], base_mem, times["default"], base_t,
              recs)
    return row


def check_targets(rows: list[Row], device: torch.device, small: bool) -> list[dict]:
    """The goals (docs/benchmarks.md) against this run's rows: met True/False, or None where a goal
    does not apply (speed goals are for the real MOSEI shapes on a GPU)."""
    out = []
    speed_na = ("needs CUDA" if device.type != "cuda" else
                "small shapes" if small else None)
    mosei32 = next((r for r in rows if r.shape == "mosei" and r.batch_size == 32), None)
    for key, text in (("samples_s", "MOSEI b32, one trial: >= {:,.0f} train samples/s"),
                      ("ratio", "MOSEI b32: >= {:.0f}x the baseline (same run)")):
        value = None if mosei32 is None else getattr(
            mosei32, "ours_samples_s" if key == "samples_s" else "ratio")
        na = speed_na or (None if mosei32 is not None else "MOSEI b32 not measured")
        out.append({"target": text.format(TARGETS[key]), "value": value,
                    "met": None if na else value >= TARGETS[key], "not_applicable": na})
    worst = max(rows, key=lambda r: r.val_epoch_pct, default=None)
    out.append({"target": f"validation < {TARGETS['val_epoch_pct']:.0f} % of an epoch "
                          "(every setting)",
                "value": None if worst is None else worst.val_epoch_pct,
                "met": None if worst is None else all(
                    r.val_epoch_pct < TARGETS["val_epoch_pct"] for r in rows),
                "not_applicable": None if worst is not None else "nothing measured"})
    return out


def targets_text(targets: list[dict]) -> str:
    lines = ["targets:"]
    for t in targets:
        v = t["value"]
        shown = "-" if v is None else f"{v:,.1f}"
        verdict = (f"n/a ({t['not_applicable']})" if t["met"] is None
                   else "met" if t["met"] else "MISSED")
        lines.append(f"  {t['target']}: {shown} -> {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------


def _self_device_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _device_type(evt) -> str:
    dtype = getattr(evt, "device_type", None)
    return getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])


# DeviceType names of events that run on an accelerator (kernels, memcpy, memset)
DEVICE_EVENT_TYPES = frozenset({"CUDA", "PrivateUse1", "MTIA", "XPU"})


def is_device_event(evt) -> bool:
    """Whether `evt` is device-side work, counted as torch's own "Self CUDA time total"
    counts it (torch/autograd/profiler_util.py, `_build_table`): a kineto event of a device
    type, not a user annotation, or a legacy-profiler CPU event (which held its kernels'
    time). A CPU op's self device time is its kernels' time again: adding both would count
    every kernel twice."""
    name = _device_type(evt)
    if name == "CPU":
        return bool(getattr(evt, "is_legacy", False))
    return name in DEVICE_EVENT_TYPES and not getattr(evt, "is_user_annotation", False)


def top_ops(prof, steps: int, on_gpu: bool, top: int,
            wall_ms_per_step: float | None = None) -> dict:
    """Per step: device time (kernels, memcpy, memset: each once), CPU time, and the top
    rows: on a GPU the kernels by device time (`top`) and the CPU ops by self CPU time
    (`top_cpu`); on a CPU the ops by self CPU time. With `wall_ms_per_step` on a GPU, the
    GPU's busy share of the wall time (summed kernel time: above 100 % only where kernels
    of several streams overlap)."""
    events = list(prof.key_averages())
    device = [e for e in events if is_device_event(e)]
    host = [e for e in events if _device_type(e) == "CPU"]  # not the GPU-side annotations
    total_dev = sum(_self_device_us(e) for e in device)
    total_cpu = sum(float(e.self_cpu_time_total) for e in events)

    def rows(evts: list, key: Callable) -> list[dict]:
        out = []
        for e in sorted(evts, key=key, reverse=True)[:top]:
            dev = _self_device_us(e) if is_device_event(e) else 0.0
            out.append({"name": e.key[:90], "calls_per_step": e.count / steps,
                        "self_device_ms_per_step": dev / 1000 / steps,
                        "self_cpu_ms_per_step": float(e.self_cpu_time_total) / 1000 / steps,
                        "device_pct": 100 * dev / total_dev if total_dev else 0.0})
        return out

    def cpu_key(e) -> float:
        return float(e.self_cpu_time_total)

    rec = {"device_ms_per_step": total_dev / 1000 / steps,
           "cpu_ms_per_step": total_cpu / 1000 / steps,
           "top": rows(device, _self_device_us) if on_gpu else rows(host, cpu_key)}
    if on_gpu:
        rec["top_cpu"] = rows(host, cpu_key)
        if wall_ms_per_step:
            rec["gpu_busy_pct"] = 100 * rec["device_ms_per_step"] / wall_ms_per_step
    return rec


def profile_steps(shape: str, batch_size: int, data: MultData, device: torch.device, *,
                  base_cfg: dict, variants: tuple[str, ...], steps: int, warmup_epochs: int,
                  out_dir: Path | None = None, top: int = 15,
                  trace_max_mib: float = 12.0) -> dict:
    """torch.profiler over `steps` training steps of each form of ours (after warm-up, so
    the graph is captured): where a step's time goes. With CUDA, kernels by GPU time and
    the GPU's busy share of the wall time (a launch-bound step is mostly idle GPU).
    `out_dir` gets one gzipped chrome trace of all forms (profile_trace.json.gz) when it
    compresses under `trace_max_mib`."""
    import gzip
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    data_b = _head(data, steps * batch_size)
    result: dict = {"setting": f"{shape} b{batch_size}", "steps": steps, "variants": {}}
    events: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("default", *(v for v in variants if v != "default")):
            tr = Trainer(variant_config(base_cfg, name, batch_size, device), data_b)
            for _ in range(warmup_epochs):
                tr.train_epoch()
            _sync(device)
            with profile(activities=acts) as prof:
                wall = timed(tr.train_epoch, device)
            rec = top_ops(prof, steps, device.type == "cuda", top,
                          wall_ms_per_step=wall * 1000 / steps)
            rec.update(wall_ms_per_step=wall * 1000 / steps, **trainer_path(tr))
            result["variants"][name] = rec
            if out_dir is not None:
                path = Path(tmp) / f"{name}.json"
                prof.export_chrome_trace(str(path))
                events += json.loads(path.read_text()).get("traceEvents", [])
            del tr, prof
            gc.collect()
    if out_dir is not None and events:
        blob = gzip.compress(json.dumps({"traceEvents": events}).encode(), compresslevel=6)
        if len(blob) <= trace_max_mib * MiB:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "profile_trace.json.gz").write_bytes(blob)
            result["trace"] = "profile_trace.json.gz"
        else:
            result["trace"] = None
            result["trace_note"] = (f"trace not written: {len(blob) / MiB:.1f} MiB gzipped "
                                    f"> {trace_max_mib} MiB")
    return result


def profile_text(prof: dict, cpu_rows: int = 8) -> str:
    """Markdown: per form, time per step; on a GPU the top kernels by device time, then
    the top CPU ops (what launches them); on a CPU the top ops."""
    lines = [f"Profile of {prof['steps']} training steps, {prof['setting']} "
             "(torch.profiler; times per step, inflated by the profiler):", ""]
    for name, rec in prof["variants"].items():
        on_gpu = "top_cpu" in rec
        busy = rec.get("gpu_busy_pct")
        where = (f"device {rec['device_ms_per_step']:.2f} ms/step (kernels, memcpy, memset), "
                 f"GPU busy {'-' if busy is None else f'{busy:.0f}'} % of the wall time, "
                 if on_gpu else "")
        lines += [f"**{VARIANT_LABELS.get(name, name)}** ({name}: graph "
                  f"{'replaying' if rec['graph_replaying'] else 'no'}, amp {rec['amp']}): "
                  f"wall {rec['wall_ms_per_step']:.2f} ms/step, {where}CPU "
                  f"{rec['cpu_ms_per_step']:.2f} ms/step", ""]
        if on_gpu:
            lines += ["| kernel | calls/step | device ms/step | device % |", "|---|---|---|---|"]
            lines += [f"| `{_md(r['name'])}` | {r['calls_per_step']:.1f} | "
                      f"{r['self_device_ms_per_step']:.3f} | {r['device_pct']:.1f} |"
                      for r in rec["top"]]
            lines.append("")
        cpu = rec["top_cpu"][:cpu_rows] if on_gpu else rec["top"]
        lines += ["| CPU op | calls/step | self CPU ms/step |", "|---|---|---|"]
        lines += [f"| `{_md(r['name'])}` | {r['calls_per_step']:.1f} | "
                  f"{r['self_cpu_ms_per_step']:.3f} |" for r in cpu]
        lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device, trainer_info: dict) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other processes skew CPU timings
        "python": platform.python_version(),
        **trainer_info,
    }
    return env


def trainer_info(cfg: TrainConfig, data: MultData) -> dict:
    """Which fast paths our trainer takes on this device (read off a real Trainer)."""
    tr = Trainer(cfg, _head(data, 1))
    info = {"amp": str(tr.autocast_dtype).replace("torch.", "") if tr.autocast_dtype else "off",
            "cuda_graphs": getattr(tr, "uses_cuda_graphs", False),
            "compile": getattr(cfg, "compile", "off"),
            "optimizer": type(tr.opt).__name__}
    del tr
    return info


def table(rows: list[Row], mem_method: str) -> str:
    extra = [v for v in VARIANTS if v != "default" and any(v in r.variants for r in rows)]
    head = ("| setting | samples/s ours | samples/s baseline | ratio | "
            + "".join(f"{VARIANT_LABELS[v]} samples/s (ratio) | " for v in extra)
            + "val-pass ms | val/epoch % | step mem ours MiB |")
    lines = [head, "|" + "---|" * (7 + len(extra))]
    for r in rows:
        cells = "".join(
            f"{r.variants[v]['samples_s']:.1f} ({r.variants[v]['ratio']:.2f}x) | "
            if v in r.variants else "- | " for v in extra)
        lines.append(
            f"| {r.setting} | {r.ours_samples_s:.1f} | {r.baseline_samples_s:.1f} | "
            f"{r.ratio:.2f}x | {cells}{r.val_ms:.0f} | {r.val_epoch_pct:.1f} | "
            f"{r.ours_step_mem_mib:.0f} |"
        )
    path = rows[0].variants.get("default", {}) if rows else {}
    notes = [
        "ours = the trainer's defaults (what trials run): CUDA graph "
        f"{'replaying' if path.get('graph_replaying') else 'off'}, amp {path.get('amp', '?')}"
        + (f"; {', '.join(VARIANT_LABELS[v] for v in extra)}: the same trainer with "
           "cuda_graphs=off (and amp=off for fp32)" if extra else "") + ".",
        "ratio = ours / baseline samples/s (median of windows, interleaved).",
        "val-pass ms: Trainer.evaluate('valid'), scaled to the real validation split "
        f"({', '.join(f'{k} {v[2]}' for k, v in SHAPES.items())}); val/epoch % against one "
        f"training epoch of the real split ({', '.join(f'{k} {v[1]}' for k, v in SHAPES.items())}) "
        "at our speed.",
        f"step mem: peak during our first epochs above memory at their start ({mem_method}); "
        "the data, held in host memory, is not included.",
    ]
    return "\n".join(lines + [""] + notes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.train_speed",
                      description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes, a few steps (CI)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--shapes", default="mosei,mosi")
    p.add_argument("--steps", type=int, default=0, help="steps per timed window (0 = by device)")
    p.add_argument("--windows", type=int, default=0, help="timed windows (0 = by device)")
    p.add_argument("--n-valid", type=int, default=0,
                   help="validation samples to time (0 = real size on GPU, <= 256 on CPU)")
    p.add_argument("--baseline-attention", choices=sorted(BASELINE_ATTENTION), default="manual",
                   help="manual: the authors' (MulT's) bmm + mask + softmax attention "
                        "(default); mask: SDPA with a float mask built per call")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default; --small: 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig field for our trainer, e.g. --set cuda_graphs=off")
    p.add_argument("--variants", default="auto",
                   help="forms of ours to time, comma-separated from "
                        f"{', '.join(VARIANTS)} (auto: all on CUDA, default on CPU)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="after timing, profile the first shape and batch size (torch.profiler) "
                        "and write DIR/profile_trace.json.gz")
    p.add_argument("--profile-steps", type=int, default=5, help="steps profiled per form")
    p.add_argument("--budget-s", type=float, default=0,
                   help="skip the remaining settings once this many seconds have passed (0 = no "
                        "limit)")
    p.add_argument("--json", metavar="OUT", help="write environment and rows as JSON")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        p.error(f"--batch-sizes {args.batch_sizes}: expected integers like 32,128")
    args.shapes = [s for s in args.shapes.split(",") if s]
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        p.error(f"--shapes: unknown {bad}; expected some of {', '.join(SHAPES)}")
    if not args.shapes or not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--shapes and --batch-sizes need at least one value each (batch sizes >= 1)")
    if args.variants != "auto":
        names = [v for v in args.variants.split(",") if v]
        bad = [v for v in names if v not in VARIANTS]
        if bad or not names:
            p.error(f"--variants {args.variants}: expected some of {', '.join(VARIANTS)}")
        args.variants = names
    if min(args.steps, args.windows, args.n_valid, args.threads) < 0 or args.profile_steps < 1:
        p.error("--steps, --windows, --n-valid and --threads must be >= 0, --profile-steps >= 1")
    if not (math.isfinite(args.budget_s) and args.budget_s >= 0):  # nan: never reached
        p.error(f"--budget-s {args.budget_s}: expected a number of seconds >= 0 (0 = no limit)")
    for kv in args.set:
        if "=" not in kv:
            p.error(f"--set {kv}: expected KEY=VALUE, e.g. --set cuda_graphs=off")
    return args


Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, log: Log = _print) -> dict:
    """Time every (shape, batch size), then profile if asked; returns the JSON document
    (environment, rows as `Row`s, targets, profile). ValueError for a bad config or device."""
    if args.small and not args.threads:
        args.threads = 1  # a CI smoke run: never oversubscribe cores shared with other jobs
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.small:
        steps, windows, warmup = args.steps or 3, args.windows or 2, 1
    else:
        steps, windows, warmup = args.steps or (20 if gpu else 3), args.windows or (5 if gpu else 3), 2 if gpu else 1
    variants = tuple(args.variants) if args.variants != "auto" else (
        tuple(VARIANTS) if gpu else ("default",))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    base_cfg = TrainConfig.from_dict({**overrides, "threads": args.threads}).to_dict()

    t_start = time.perf_counter()
    rows: list[Row] = []
    skipped: list[str] = []
    env: dict = {}
    prof: dict | None = None
    mem_method = MemoryProbe(device).method
    for shape in args.shapes:
        if args.budget_s and time.perf_counter() - t_start > args.budget_s:
            skipped += [f"{shape} b{b}" for b in args.batch_sizes]
            continue
        real_valid = SHAPES[shape][2]
        n_valid = args.n_valid or (64 if args.small else real_valid if gpu else min(real_valid, 256))
        t0 = time.perf_counter()
        data = build_data(shape, steps * max(args.batch_sizes), n_valid, args.small)
        log(f"[{shape}] data {data.summary()} ({time.perf_counter() - t0:.1f} s)")
        if not env:
            env = environment(device, trainer_info(
                TrainConfig(**{**base_cfg, "device": str(device)}), data))
            log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        for b in args.batch_sizes:
            if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                skipped.append(f"{shape} b{b}")
                continue
            t0 = time.perf_counter()
            row = measure(shape, b, data, device, steps=steps, windows=windows,
                          warmup_epochs=warmup, baseline_attention=args.baseline_attention,
                          base_cfg=base_cfg, variants=variants)
            rows.append(row)
            gc.collect()  # free this setting's trainers before the next one
            if gpu:
                torch.cuda.empty_cache()
            forms = ", ".join(f"{VARIANT_LABELS[k]} {v['ms_step']:.1f}"
                              for k, v in row.variants.items())
            log(f"[{row.setting}] ms/step: {forms}, baseline {row.baseline_ms_step:.1f} "
                f"({time.perf_counter() - t0:.0f} s)")
        if args.profile and prof is None and rows:
            t0 = time.perf_counter()
            prof = profile_steps(shape, args.batch_sizes[0], data, device, base_cfg=base_cfg,
                                 variants=variants, steps=args.profile_steps,
                                 warmup_epochs=warmup, out_dir=Path(args.profile))
            log(f"[{prof['setting']}] profiled ({time.perf_counter() - t0:.0f} s)")
        del data
        gc.collect()
    if skipped:
        log(f"time budget of {args.budget_s:g} s spent: skipped {', '.join(skipped)}")
    return {"environment": env, "mode": "small" if args.small else "full",
            "baseline_attention": args.baseline_attention, "memory_method": mem_method,
            "steps": steps, "windows": windows, "variants": list(variants),
            "rows": rows, "skipped": skipped,
            "targets": check_targets(rows, device, args.small), "profile": prof}


def to_json(doc: dict) -> dict:
    """`run`'s document with the rows as plain dicts."""
    return {**doc, "rows": [asdict(r) | {"setting": r.setting} for r in doc["rows"]]}


def main(argv: list[str] | None = None) -> int:
    """One line and exit code 2 for a bad flag, --set value or --device (ucrn.errors)."""
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    doc = run(args)
    print()
    print(f"baseline: naive eager loop, attention={args.baseline_attention}; "
          f"{doc['windows']} windows x {doc['steps']} steps, warm-up excluded; "
          f"{'small shapes ' + str(SMALL_SEQ_LENS) if args.small else 'real shapes'}")
    print(table(doc["rows"], doc["memory_method"]))
    print(targets_text(doc["targets"]))
    if doc["profile"] is not None:
        print()
        print(profile_text(doc["profile"]))
    if args.json:
        atomic_write(args.json, json.dumps(to_json(doc), indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
