"""Robustness to missing and noisy modalities: measured (`python -m ucrn robustness`), and
trained for (`modality_dropout`, `input_noise`, `robust_MAE` of ucrn/train.py).

    python -m ucrn robustness --checkpoint PATH [--data_path DIR] [--dataset NAME] [--aligned]
                              --out FILE.parquet [--split test|valid|both] [--repeats 3]
                              [--seed 0] [--device cpu] [--batch_size 256]

Why: the UCRN paper says the model "is highly robust against missing modality and noisy
data"; this makes that a number. A checkpoint is scored on a split under

- `clean`: the reference;
- `missing`: a modality, or a pair, zeroed (the model keeps its shape; never all of them);
- `noise`: Gaussian noise of sigma x the training split's per-feature std, on one modality
  or on all;
- `time_drop`: time steps zeroed at random (each step of each sample with probability
  `level`, independently per modality), on one modality or on all.

Random conditions are repeated (`repeat` 0..R-1) with a generator seeded from (seed,
condition, modality, level, repeat); the draws are made in fixed chunks of CHUNK samples in
split order, so the inputs the model sees do not depend on the prediction batch size (its
outputs neither, up to the BLAS's rounding: some round a row differently in a batch of 7
than of 256, by about 1e-7). The random numbers come from the device's generator: the
same seed gives the same numbers on the same kind of device (CPU and CUDA generators
differ). Parquet rows: split, condition, modality ("" for clean, keys such as "l" or "av",
or "all"), level (0, sigma or rate), repeat, `loss` and the task's metrics, n.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from ucrn.config import SEED_MAX
from ucrn.data import MODALITIES, SPLITS, MultData, Split
from ucrn.errors import OneLineParser, UsageError, run_main
from ucrn.fileio import atomic_write
from ucrn.metrics import metric_mode, task_metrics
from ucrn.model import MODALITY_KEYS, UCRN
from ucrn.predict import open_scoring, split_metrics
from ucrn.train import DeviceSplit

CONDITIONS: tuple[str, ...] = ("clean", "missing", "noise", "time_drop")
RANDOM_CONDITIONS: tuple[str, ...] = ("noise", "time_drop")
NOISE_SIGMAS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # x the training per-feature std
DROP_RATES: tuple[float, ...] = (0.1, 0.3, 0.5)  # probability that a time step is zeroed
MAX_REPEATS = 100  # each repeat scores every random condition again: minutes, not hours
CHUNK = 256  # samples per block of random draws: numbers independent of the batch size
SPLIT_CHOICES: dict[str, tuple[str, ...]] = {"test": ("test",), "valid": ("valid",),
                                             "both": ("test", "valid")}
ROW_KEYS: tuple[str, ...] = ("split", "condition", "modality", "level", "repeat")
STD_CHUNK_ELEMS = 1 << 20  # float64 elements per block of feature_std (8 MB)
_NAME = dict(zip(MODALITY_KEYS, MODALITIES))  # l -> text, a -> audio, v -> vision

Inputs = tuple[Tensor | None, Tensor | None, Tensor | None]  # (text, audio, vision), batch-first


def own_keys(modalities: str) -> str:
    """A model's modalities in the canonical l, a, v order (rows and draws use this order)."""
    bad = [m for m in modalities if m not in MODALITY_KEYS]
    if bad or not modalities:
        raise ValueError(f"modalities={modalities!r}: expected a non-empty subset of "
                         f"{MODALITY_KEYS!r}")
    return "".join(m for m in MODALITY_KEYS if m in modalities)


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: `modality` is "" (clean), modality keys ("l", "av") or
    "all"; `level` is 0, the noise sigma or the time-drop rate."""

    condition: str
    modality: str = ""
    level: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", float(self.level))  # 1 and 1.0: one seed, one row
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition {self.condition!r}: expected one of "
                             f"{', '.join(CONDITIONS)}")
        if not (math.isfinite(self.level) and self.level >= 0):
            raise ValueError(f"{self.condition}: level={self.level}: expected a finite "
                             f"number >= 0")
        if self.condition == "time_drop" and self.level > 1:
            raise ValueError(f"time_drop: level={self.level}: expected a rate in [0, 1]")

    @property
    def random(self) -> bool:
        """Random conditions are repeated; deterministic ones run once (repeat 0)."""
        return self.condition in RANDOM_CONDITIONS

    def keys(self, modalities: str) -> str:
        """The modality keys this condition changes, for a model with `modalities`."""
        own = own_keys(modalities)
        if self.condition == "clean":
            return ""
        keys = own if self.modality == "all" else self.modality
        if not keys or any(k not in own for k in keys):
            raise ValueError(f"{self.condition} on {self.modality!r}: not among the model's "
                             f"modalities {own!r}")
        return own_keys(keys)


def conditions(modalities: str, sigmas: Sequence[float] = NOISE_SIGMAS,
               rates: Sequence[float] = DROP_RATES) -> list[Condition]:
    """Every condition for a model with `modalities`: clean; each modality and each pair
    missing (never all: a model without input has nothing to say); noise and time_drop on
    each modality and on "all" ("all" only when there are several: else it repeats one)."""
    own = own_keys(modalities)
    subsets = [m for m in own] + [a + b for i, a in enumerate(own) for b in own[i + 1:]]
    out = [Condition("clean")]
    out += [Condition("missing", s) for s in subsets if len(s) < len(own)]
    targets = [*own, *(["all"] if len(own) > 1 else [])]
    out += [Condition("noise", t, float(s)) for t in targets for s in sigmas]
    out += [Condition("time_drop", t, float(r)) for t in targets for r in rates]
    return out


def condition_seed(seed: int, cond: Condition, repeat: int) -> int:
    """A generator seed from (seed, condition, repeat): stable across runs and machines."""
    text = f"{seed}|{cond.condition}|{cond.modality}|{cond.level!r}|{repeat}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ---- statistics ----------------------------------------------------------------------


def feature_std(split: Split, modalities: str = MODALITY_KEYS,
                chunk_elems: int = STD_CHUNK_ELEMS) -> dict[str, np.ndarray]:
    """Per modality key, the (D,) float64 std of each feature over samples and time steps
    (ddof 0). Blocks of samples merged with Chan's update: MOSEI-sized float32 arrays need
    no float64 copy, only blocks of about `chunk_elems` elements."""
    out: dict[str, np.ndarray] = {}
    for key in own_keys(modalities):
        x = split.modality(_NAME[key])  # (N, T, D)
        n_samples, steps, dim = x.shape
        rows = max(1, chunk_elems // max(1, steps * dim))
        count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
        for start in range(0, n_samples, rows):
            block = x[start:start + rows].reshape(-1, dim).astype(np.float64)
            k = block.shape[0]
            if k == 0:
                continue
            b_mean = block.mean(axis=0)
            block -= b_mean
            b_m2 = np.einsum("ij,ij->j", block, block)
            delta, total = b_mean - mean, count + k
            mean += delta * (k / total)
            m2 += b_m2 + delta * delta * (count * k / total)
            count = total
        out[key] = np.sqrt(m2 / count) if count else np.zeros(dim)
        flat = int((out[key] == 0).sum())
        if flat:
            warnings.warn(f"{_NAME[key]}: {flat} of {dim} features are constant in the "
                          f"training split (std 0): noise scaled by the std adds nothing "
                          f"to them", RuntimeWarning, stacklevel=2)
    return out


def _scales(stds: dict[str, np.ndarray], keys: str, sigma: float,
            device: torch.device) -> dict[str, Tensor]:
    """sigma x std per feature, multiplied in float64, as float32 (D,) tensors."""
    return {k: torch.as_tensor((sigma * stds[k]).astype(np.float32), device=device)
            for k in keys}


# ---- conditions on tensors -----------------------------------------------------------


def apply_condition(inputs: Sequence[Tensor | None], cond: Condition, modalities: str,
                    scales: dict[str, Tensor] | None = None,
                    generator: torch.Generator | None = None) -> Inputs:
    """`inputs` (text, audio, vision) of samples [s, s + B) with s a multiple of CHUNK, under
    `cond`. Changed modalities are new tensors (the inputs are never written: on the CPU
    they share memory with the data); the others are returned as they are. Random draws go
    block by block of CHUNK samples, each changed modality in l, a, v order."""
    out = list(inputs)
    keys = cond.keys(modalities)
    if not keys:
        return tuple(out)
    pos = {k: MODALITY_KEYS.index(k) for k in keys}
    if cond.condition == "missing":
        for i in pos.values():
            out[i] = torch.zeros_like(inputs[i])
        return tuple(out)
    if generator is None:
        raise ValueError(f"{cond.condition} needs a generator")
    if cond.condition == "noise" and (scales is None or any(k not in scales for k in keys)):
        raise ValueError(f"noise on {keys!r} needs the per-feature scales of {keys!r}")
    n = int(inputs[pos[keys[0]]].shape[0])
    pieces: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start in range(0, n, CHUNK):
        for k, i in pos.items():
            x = inputs[i][start:start + CHUNK]
            if cond.condition == "noise":
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                pieces[k].append(x + noise * scales[k])
            else:  # time_drop: whole steps, independently per sample and modality
                keep = torch.rand(x.shape[:2], generator=generator, device=x.device) >= cond.level
                pieces[k].append(torch.where(keep[..., None], x, torch.zeros((), dtype=x.dtype,
                                                                              device=x.device)))
    for k, i in pos.items():
        out[i] = torch.cat(pieces[k])
    return tuple(out)


@torch.inference_mode()
def predict_condition(model: UCRN, split: DeviceSplit, cond: Condition,
                      scales: dict[str, Tensor] | None = None, seed: int = 0, repeat: int = 0,
                      batch_size: int = 256, autocast: torch.dtype | None = None) -> Tensor:
    """Model outputs (N, output_dim), float32 on the host, for the split under `cond`.
    Samples are perturbed in groups of whole CHUNKs and then predicted `batch_size` at a
    time; the model's train/eval mode is restored afterwards."""
    device = split.labels.device
    generator = None
    if cond.random:
        generator = torch.Generator(device=device)
        generator.manual_seed(condition_seed(seed, cond, repeat))
    group = max(1, batch_size // CHUNK) * CHUNK
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, split.n, group):
            part = [x[start:start + group] if x is not None else None for x in split.inputs]
            xs = apply_condition(part, cond, model.cfg.modalities, scales, generator)
            rows = int(split.labels[start:start + group].shape[0])
            for b in range(0, rows, batch_size):
                batch = [x[b:b + batch_size] if x is not None else None for x in xs]
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    out, _ = model(*batch)
                outs.append(out.float())
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu()


def missing_one_mae(model: UCRN, split: DeviceSplit, batch_size: int = 256,
                    autocast: torch.dtype | None = None, task: str = "regression") -> float:
    """robust_MAE: the mean MAE over the conditions "each of the model's modalities zeroed
    in turn" (one modality: the MAE with it zeroed). One pass per modality."""
    labels = split.labels.cpu().numpy().reshape(-1)
    maes = [task_metrics(task, predict_condition(model, split, Condition("missing", k),
                                                 batch_size=batch_size, autocast=autocast
                                                 ).numpy().reshape(-1), labels)["MAE"]
            for k in own_keys(model.cfg.modalities)]
    return float(np.mean(maes))


def robustness_rows(model: UCRN, data: MultData, splits: Sequence[str] = ("test",),
                    repeats: int = 3, seed: int = 0, device: torch.device | str | None = None,
                    batch_size: int = 256, conds: Sequence[Condition] | None = None,
                    autocast: torch.dtype | None = None) -> list[dict[str, Any]]:
    """One row per (split, condition, modality, level, repeat): those keys, `loss` and every
    metric of the task (as `ucrn predict` computes them; all NaN when a prediction is not
    finite), and `n`. The model must already be on `device` (default: where it is)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected an integer >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits={list(splits)}: expected names among {', '.join(SPLITS)}")
    where = next(model.parameters()).device
    device = where if device is None else torch.device(device)
    if device.type != where.type or (device.index is not None and device.index != where.index):
        raise ValueError(f"the model is on {where}, not on device={device}: move it first")
    mods = own_keys(model.cfg.modalities)
    conds = conditions(mods) if conds is None else list(conds)
    stds = feature_std(data.splits["train"], mods) if any(
        c.condition == "noise" for c in conds) else {}
    rows: list[dict[str, Any]] = []
    for name in splits:
        split = data.splits[name]
        on_device = DeviceSplit.from_split(split, mods, data.task, device)
        for cond in conds:
            scales = (_scales(stds, cond.keys(mods), cond.level, device)
                      if cond.condition == "noise" else None)
            for repeat in range(repeats if cond.random else 1):
                out = predict_condition(model, on_device, cond, scales, seed, repeat,
                                        batch_size, autocast)
                rows.append({"split": name, "condition": cond.condition,
                             "modality": cond.modality, "level": float(cond.level),
                             "repeat": repeat, **split_metrics(out.numpy(), split, data.task),
                             "n": len(split)})
    return rows


def rows_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """The rows as a typed table: split, condition, modality (string), level (float64),
    repeat (int64), the metrics (float64), n (int64)."""
    if not rows:
        raise ValueError("no rows")
    metrics = [k for k in rows[0] if k not in (*ROW_KEYS, "n")]
    types = {"split": pa.string(), "condition": pa.string(), "modality": pa.string(),
             "level": pa.float64(), "repeat": pa.int64(), **dict.fromkeys(metrics, pa.float64()),
             "n": pa.int64()}
    return pa.table({k: pa.array([r[k] for r in rows], type=t) for k, t in types.items()})


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path,
               meta: dict[str, Any] | None = None) -> None:
    """Parquet, written whole or not at all."""
    table = rows_table(rows).replace_schema_metadata(
        {"ucrn_robustness": json.dumps(meta or {})})
    atomic_write(path, lambda f: pq.write_table(table, f))


def main_metric(rows: Sequence[dict[str, Any]]) -> str:
    """MAE for sentiment regression, Mean_acc for IEMOCAP."""
    return "MAE" if rows and "MAE" in rows[0] else "Mean_acc"


def summary_table(rows: Sequence[dict[str, Any]], metric: str | None = None) -> str:
    """Per split: each condition's metric, mean over its repeats, and the change from clean."""
    metric = metric or main_metric(rows)
    worse = "+" if metric_mode(metric) == "min" else "-"
    lines: list[str] = []
    for split in dict.fromkeys(r["split"] for r in rows):
        groups: dict[tuple[str, str, float], list[float]] = {}
        for r in rows:
            if r["split"] == split:
                groups.setdefault((r["condition"], r["modality"], r["level"]), []).append(
                    float(r[metric]))
        clean = [v for (c, _, _), vals in groups.items() if c == "clean" for v in vals]
        ref = float(np.mean(clean)) if clean else math.nan
        n = next(r["n"] for r in rows if r["split"] == split)
        if lines:
            lines.append("")
        lines.append(f"{split} ({n} samples): {metric}, mean over repeats; change from clean "
                     f"({worse} = worse)")
        lines.append(f"{'condition':<10} {'modality':<8} {'level':>5} {'repeats':>7} "
                     f"{metric:>9} {'change':>8}")
        for (cond, mod, level), vals in groups.items():
            mean = float(np.mean(vals))
            lines.append(f"{cond:<10} {mod or '-':<8} {level:>5.2f} {len(vals):>7} "
                         f"{mean:>9.4f} {mean - ref:>+8.4f}")
    return "\n".join(lines)


# ---- training: modality_dropout and input_noise ---------------------------------------


def modality_keep_mask(batch: int, m: int, p: float, device: torch.device | str,
                       generator: torch.Generator | None = None) -> Tensor:
    """(batch, m) bool, False where a sample's modality is dropped: per sample, with
    probability p, one of the m modalities chosen uniformly; so never all when m > 1.
    Device tensors only, no host sync (a training step may be a CUDA graph)."""
    drop = torch.rand(batch, device=device, generator=generator) < p  # (B,)
    which = torch.randint(0, m, (batch,), device=device, generator=generator)  # (B,)
    chosen = which[:, None] == torch.arange(m, device=device)  # (B, m)
    return ~(chosen & drop[:, None])


class TrainingAugment:
    """modality_dropout and input_noise applied to a training batch (text, audio, vision):
    noise first, then the drop, so a dropped modality is exactly zero as in `missing`.
    Torch's default RNG on the device, so a captured step draws fresh numbers each replay."""

    def __init__(self, modalities: str, dropout: float, noise: float, train: Split,
                 device: torch.device):
        self.keys = own_keys(modalities)
        self.dropout = dropout if len(self.keys) > 1 else 0.0  # one modality: never drop it
        self.scales = (_scales(feature_std(train, self.keys), self.keys, noise, device)
                       if noise > 0 else {})

    @property
    def active(self) -> bool:
        return self.dropout > 0 or bool(self.scales)

    def __call__(self, inputs: Sequence[Tensor | None]) -> Inputs:
        out = list(inputs)
        for k, scale in self.scales.items():
            i = MODALITY_KEYS.index(k)
            out[i] = out[i] + torch.randn_like(out[i]) * scale
        if self.dropout > 0:
            x0 = out[MODALITY_KEYS.index(self.keys[0])]
            keep = modality_keep_mask(x0.shape[0], len(self.keys), self.dropout, x0.device)
            for j, k in enumerate(self.keys):
                i = MODALITY_KEYS.index(k)
                out[i] = torch.where(keep[:, j, None, None], out[i], out[i].new_zeros(()))
        return tuple(out)


def training_augment(modalities: str, dropout: float, noise: float, train: Split,
                     device: torch.device) -> Callable[[Sequence[Tensor | None]], Inputs] | None:
    """The Trainer's input augmentation, or None when it would change nothing."""
    if not (0 <= dropout < 1 and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"modality_dropout={dropout}, input_noise={noise}: expected a "
                         f"probability in [0, 1) and a finite number >= 0")
    aug = TrainingAugment(modalities, dropout, noise, train, device)
    return aug if aug.active else None


# ---- command line --------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m ucrn robustness",
                      description="Score a checkpoint under missing modalities, noise and "
                      "dropped time steps; write Parquet.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt bundle of a run")
    p.add_argument("--data_path", "--data-path", dest="data_path",
                   help="folder with the MulT pickle, or the file (synthetic: optional)")
    p.add_argument("--dataset", help="synthetic | mosi | mosei_senti | iemocap "
                   "(default: the checkpoint's)")
    p.add_argument("--aligned", action="store_true", default=None,
                   help="word-aligned files (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--split", default="test", help="test | valid | both (default test)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each random condition")
    p.add_argument("--seed", type=int, default=0, help="seed of the random conditions")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=256,
                   help="prediction batch size (the numbers do not depend on it)")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.split not in SPLIT_CHOICES:
        raise UsageError(f"--split {args.split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    if not 1 <= args.repeats <= MAX_REPEATS:
        raise UsageError(f"--repeats {args.repeats}: expected an integer from 1 to "
                         f"{MAX_REPEATS}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed {args.seed}: expected an integer in 0..{SEED_MAX}")
    ckpt, out_path, device, bundle, model, data, dataset = open_scoring(args)
    splits = SPLIT_CHOICES[args.split]
    rows = robustness_rows(model, data, splits, args.repeats, args.seed, device,
                           args.batch_size)
    meta = {"checkpoint": str(ckpt), "epoch": bundle.get("epoch"), "dataset": dataset,
            "source": data.source, "splits": list(splits), "repeats": args.repeats,
            "seed": args.seed, "device": device.type, "chunk": CHUNK,
            "noise_sigmas": list(NOISE_SIGMAS), "drop_rates": list(DROP_RATES)}
    write_rows(rows, out_path, meta)
    print(f"checkpoint {ckpt} (epoch {bundle.get('epoch', '?')}), data {data.source}, "
          f"modalities {own_keys(model.cfg.modalities)}, {args.repeats} repeat(s), "
          f"seed {args.seed}")
    print(summary_table(rows))
    print(f"rows: {len(rows)} in {args.out}")
    return 0


def robustness_main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m ucrn robustness`; 0 ok, 2 for any bad input, 1 for I/O."""
    return run_main(run, argv)
