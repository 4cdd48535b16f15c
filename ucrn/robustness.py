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

The conditions and scoring under them live in ucrn/conditions.py, the training-time
augmentation in ucrn/augment.py (both below training); this module holds the tables, the
files and the command line.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ucrn.batches import HostSplit
from ucrn.conditions import (
    CHUNK,
    DROP_RATES,
    NOISE_SIGMAS,
    Condition,
    conditions,
    feature_std,
    noise_scales,
    own_keys,
    predict_condition,
)
from ucrn.config import SEED_MAX
from ucrn.data import SPLITS, MultData
from ucrn.errors import OneLineParser, UsageError, run_main
from ucrn.fileio import atomic_write
from ucrn.metrics import metric_mode
from ucrn.model import UCRN
from ucrn.predict import open_scoring, split_metrics

MAX_REPEATS = 100  # each repeat scores every random condition again: minutes, not hours
SPLIT_CHOICES: dict[str, tuple[str, ...]] = {"test": ("test",), "valid": ("valid",),
                                             "both": ("test", "valid")}
ROW_KEYS: tuple[str, ...] = ("split", "condition", "modality", "level", "repeat")


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
        on_device = HostSplit.from_split(split, mods, data.task, device)
        for cond in conds:
            scales = (noise_scales(stds, cond.keys(mods), cond.level, device)
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
