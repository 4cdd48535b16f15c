"""Training speed of our `Trainer` against a naive eager loop, in the same process.

Why: performance.md states the speed goals as ratios against a baseline measured in the
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
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime as dt
import gc
import json
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
            loss = loss + self.cfg.jsd_weight * mjs_divergence(reps, self.cfg.mjs)
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


def measure(shape: str, batch_size: int, data: MultData, device: torch.device, *, steps: int,
            windows: int, warmup_epochs: int, baseline_attention: str,
            base_cfg: dict) -> Row:
    """Median-of-windows throughput of ours and the baseline, interleaved window by window
    so that load from other processes hits both alike."""
    n = steps * batch_size
    data_b = _head(data, n)
    cfg = TrainConfig(**{**base_cfg, "batch_size": batch_size, "device": str(device)})
    probe = MemoryProbe(device)

    tr = Trainer(cfg, data_b)  # one epoch == `steps` full batches
    probe.start()
    for _ in range(warmup_epochs):
        tr.train_epoch()
    ours_mem = probe.peak_mib()

    naive = NaiveLoop(cfg, data_b.splits["train"], data_b.task,
                      naive_model(tr.model, baseline_attention), device)
    probe.start()
    naive.steps(max(2, steps))
    base_mem = probe.peak_mib()

    ours_t, base_t = [], []
    for _ in range(windows):
        ours_t.append(timed(tr.train_epoch, device))
        base_t.append(timed(partial(naive.steps, steps), device))
    ours_s, base_s = statistics.median(ours_t), statistics.median(base_t)

    tr.evaluate("valid")  # warm-up
    val_s = statistics.median(timed(partial(tr.evaluate, "valid"), device) for _ in range(3))
    _, real_train, real_valid = SHAPES[shape]
    n_valid = tr.splits["valid"].n
    val_ms = val_s * 1000 * real_valid / n_valid
    epoch_ms = real_train / (n / ours_s) * 1000
    row = Row(shape, batch_size, steps, windows, n / ours_s, n / base_s, base_s / ours_s,
              ours_s / steps * 1000, base_s / steps * 1000, n_valid, val_ms,
              100 * val_ms / epoch_ms, ours_mem, base_mem, ours_t, base_t)
    return row


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
    head = ("| setting | samples/s ours | samples/s baseline | ratio | val-pass ms | "
            "val/epoch % | step mem ours MiB |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r.setting} | {r.ours_samples_s:.1f} | {r.baseline_samples_s:.1f} | "
            f"{r.ratio:.2f}x | {r.val_ms:.0f} | {r.val_epoch_pct:.1f} | "
            f"{r.ours_step_mem_mib:.0f} |"
        )
    notes = [
        "ratio = ours / baseline samples/s (median of windows, interleaved).",
        "val-pass ms: Trainer.evaluate('valid'), scaled to the real validation split "
        f"({', '.join(f'{k} {v[2]}' for k, v in SHAPES.items())}); val/epoch % against one "
        f"training epoch of the real split ({', '.join(f'{k} {v[1]}' for k, v in SHAPES.items())}) "
        "at our speed.",
        f"step mem: peak during our first epochs above memory at their start ({mem_method}); "
        "the device-resident data is not included.",
    ]
    return "\n".join(lines + [""] + notes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed",
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
    p.add_argument("--json", metavar="OUT", help="write environment and rows as JSON")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.shapes = [s for s in args.shapes.split(",") if s]
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        p.error(f"--shapes: unknown {bad}; expected some of {', '.join(SHAPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    overrides = dict(kv.split("=", 1) for kv in args.set)
    base_cfg = TrainConfig.from_dict({**overrides, "threads": args.threads}).to_dict()

    rows: list[Row] = []
    env: dict = {}
    mem_method = MemoryProbe(device).method
    for shape in args.shapes:
        real_valid = SHAPES[shape][2]
        n_valid = args.n_valid or (64 if args.small else real_valid if gpu else min(real_valid, 256))
        t0 = time.perf_counter()
        data = build_data(shape, steps * max(args.batch_sizes), n_valid, args.small)
        print(f"[{shape}] data {data.summary()} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if not env:
            env = environment(device, trainer_info(
                TrainConfig(**{**base_cfg, "device": str(device)}), data))
            print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        for b in args.batch_sizes:
            t0 = time.perf_counter()
            row = measure(shape, b, data, device, steps=steps, windows=windows,
                          warmup_epochs=warmup, baseline_attention=args.baseline_attention,
                          base_cfg=base_cfg)
            rows.append(row)
            gc.collect()  # free this setting's trainers before the next one
            if gpu:
                torch.cuda.empty_cache()
            print(f"[{row.setting}] ours {row.ours_ms_step:.1f} ms/step, baseline "
                  f"{row.baseline_ms_step:.1f} ms/step ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        del data
        gc.collect()

    print()
    print(f"baseline: naive eager loop, attention={args.baseline_attention}; "
          f"{windows} windows x {steps} steps, warm-up excluded; "
          f"{'small shapes ' + str(SMALL_SEQ_LENS) if args.small else 'real shapes'}")
    print(table(rows, mem_method))
    if args.json:
        out = {"environment": env, "mode": "small" if args.small else "full",
               "baseline_attention": args.baseline_attention, "memory_method": mem_method,
               "rows": [asdict(r) | {"setting": r.setting} for r in rows]}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
