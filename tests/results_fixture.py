"""Fake-but-realistic search results, written exactly as docs/results.md describes.

Why: analyze.py must be testable in seconds, without Ray and without training. The rows
here have the shapes a real search produces (one Parquet file per trial in
trials.parquet/ and epochs.parquet/, ASHA-stopped trials at rungs 1 and 2, one diverged,
one errored trial) and metric values that depend mostly on `lr`, so that hyperparameter
importance has something to find. The configurations are sampled from a search space
(`SPACE`, the format of search/spaces/default.yaml), which is also written to search.json as
a real search does. Nothing here knows about the analysis' internals: a real small search
can replace it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ucrn.metrics import IEMOCAP_EMOTIONS, IEMOCAP_METRICS, REGRESSION_METRICS, metric_mode
from ucrn.train import TrainConfig

# the fake searches' space, as search.json holds it (search/spaces/default.yaml's format)
SPACE: dict[str, Any] = {
    "lr": {"loguniform": [1e-4, 1e-2]},
    "layers": {"int": [1, 5]},
    "heads": {"choice": [1, 2, 3, 5, 6]},  # divisors of d_model 30
    "jsd_weight": {"uniform": [0.0, 2.0]},
    "batch_size": {"choice": [16, 32, 64]},
}
RUNGS = (1, 2)  # ASHA with grace period 1 and reduction factor 2


def metric_names(task: str) -> list[str]:
    """Validation metric columns of a search on `task`, `loss` first."""
    return ["loss", *(IEMOCAP_METRICS if task == "iemocap" else REGRESSION_METRICS)]


def default_metric(task: str) -> str:
    return "loss" if task == "iemocap" else "MAE"


def _metrics_from_error(err: float, task: str, rng: np.random.Generator) -> dict[str, float]:
    """All validation metrics from one 'error' number (lower = better), plausibly related."""
    def clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
        return float(min(hi, max(lo, x)))

    if task == "iemocap":
        out: dict[str, float] = {"loss": err}
        for emo in IEMOCAP_EMOTIONS:
            acc = clip(0.98 - 0.35 * err + 0.01 * rng.standard_normal())
            out[f"{emo}_acc"], out[f"{emo}_F1"] = acc, clip(acc - 0.02)
        out["Mean_acc"] = float(np.mean([out[f"{e}_acc"] for e in IEMOCAP_EMOTIONS]))
        out["Mean_F1"] = float(np.mean([out[f"{e}_F1"] for e in IEMOCAP_EMOTIONS]))
        return out
    acc2 = clip(1.05 - 0.4 * err)
    return {
        "loss": err, "MAE": err, "Corr": clip(1.1 - 0.75 * err, -1.0),
        "Mult_acc_7": clip(0.75 - 0.45 * err), "Mult_acc_5": clip(0.78 - 0.45 * err),
        "Has0_acc_2": acc2, "Has0_F1_score": clip(acc2 - 0.005),
        "Non0_acc_2": clip(acc2 + 0.01), "Non0_F1_score": clip(acc2 + 0.005),
    }


def _final_error(cfg: dict[str, Any], rng: np.random.Generator) -> float:
    """lr dominates (optimum near 2e-3), layers matter a little, the rest is noise."""
    return (0.55 + 0.3 * (math.log10(cfg["lr"]) + 2.7) ** 2
            + 0.01 * (cfg["layers"] - 3) ** 2 + 0.01 * rng.standard_normal())


def _curve(final: float, epochs: int, rng: np.random.Generator) -> list[float]:
    """Error per epoch: starts high, approaches `final` at the last epoch, a little noise."""
    return [final + 0.5 * math.exp(-(e - 1) / 1.2) - 0.5 * math.exp(-(epochs - 1) / 1.2)
            + 0.004 * rng.standard_normal() for e in range(1, epochs + 1)]


def _write(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = pa.Table.from_pandas(df, preserve_index=False)
    # all-null columns (error, data_path) are strings, so that every file has one schema
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                        for f in table.schema]).remove_metadata()
    pq.write_table(table.cast(schema), tmp)
    tmp.replace(path)


def _trial_ids(name: str, n: int, seed: int) -> list[str]:
    tag = hashlib.sha1(f"{name}:{seed}".encode()).hexdigest()[:5]
    return [f"{tag}_{i:05d}" for i in range(n)]


def _sample(entry: Any, rng: np.random.Generator) -> Any:
    """One value of a space entry (a fixed value or {kind: args})."""
    if not isinstance(entry, dict):
        return entry
    kind, args = next(iter(entry.items()))
    if kind == "loguniform":
        return float(10 ** rng.uniform(math.log10(args[0]), math.log10(args[1])))
    if kind == "uniform":
        return float(round(rng.uniform(args[0], args[1]), 3))
    if kind == "int":
        return int(rng.integers(args[0], args[1] + 1))
    return rng.choice(np.asarray(args, dtype=object)) if kind == "choice" else None


def _configs(n: int, max_epochs: int, dataset: str, modalities: str,
             rng: np.random.Generator, space: dict[str, Any] | None = None
             ) -> list[dict[str, Any]]:
    base = TrainConfig(dataset=dataset, modalities=modalities, num_epochs=max_epochs,
                       select_metric="auto").to_dict()
    if dataset == "iemocap":
        base["preset"] = "iemocap_tiny"
    space = SPACE if space is None else space
    return [{**base, **{k: _sample(v, rng) for k, v in space.items()}} for _ in range(n)]


def _statuses(finals: list[float], max_epochs: int, running: bool) -> tuple[list[str], list[int]]:
    """Statuses and epochs run: last trial diverged, second-to-last errored, the worst of
    the rest stopped at rungs 1 and 2 (as many as rungs below max_epochs allow)."""
    n = len(finals)
    status, run = ["completed"] * n, [max_epochs] * n
    special = 2 if n >= 3 else 0
    if special:
        status[-1], run[-1] = "diverged", min(2, max_epochs)
        status[-2], run[-2] = "errored", 0
    normal = sorted(range(n - special), key=lambda i: -finals[i])  # worst first
    k = (n - special) // 3
    for rung in RUNGS:
        if rung >= max_epochs:
            break
        for i in normal[:k]:
            status[i], run[i] = "stopped", rung
        normal = normal[k:]
    if running:  # the rest are still going: one epoch short of the end
        for i in normal:
            status[i], run[i] = "running", max(1, max_epochs - 1)
    return status, run


def write_fake_search(root: Path, name: str, *, n_trials: int = 8, max_epochs: int = 4,
                      dataset: str = "synthetic", modalities: str = "lav",
                      task: str = "regression", seed: int = 0, metric: str | None = None,
                      running: bool = False, space: dict[str, Any] | None = None) -> Path:
    """Write root/name/{trials,epochs}.parquet/<trial_id>.parquet and search.json; returns
    root/name.

    `metric` is the search's objective (default MAE, or loss for IEMOCAP). With
    `running`, the search looks in progress: unfinished trials have status `running`, and
    one trial has epochs but no trials row yet. `space` replaces SPACE; it must keep `lr`
    and `layers`, which the fake metric depends on.
    """
    rng = np.random.default_rng(seed)
    metric = metric or default_metric(task)
    folder = Path(root) / name
    space = SPACE if space is None else space
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.json").write_text(json.dumps({
        "flags": {"name": name, "dataset": dataset, "modalities": modalities,
                  "num_samples": n_trials, "max_epochs": max_epochs, "seed": seed},
        "space": space, "metric": metric, "mode": metric_mode(metric),
        "searched": [k for k, v in space.items() if isinstance(v, dict)]}, indent=2))
    configs = _configs(n_trials, max_epochs, dataset, modalities, rng, space)
    if n_trials >= 3:  # the diverged trial had the largest lr
        configs[-1]["lr"] = 2 * max(c["lr"] for c in configs)
    finals = [_final_error(c, rng) for c in configs]
    status, epochs_run = _statuses(finals, max_epochs, running)
    ids = _trial_ids(name, n_trials + 1, seed)
    for i, (cfg, tid) in enumerate(zip(configs, ids)):
        errors = _curve(finals[i], max_epochs, rng)[:epochs_run[i]]
        records = [_metrics_from_error(e, task, rng) for e in errors]
        if status[i] == "diverged":  # looked best after epoch 1, then the loss blew up
            records[0] = _metrics_from_error(min(finals) - 0.05, task, rng)
            records[1:] = [dict.fromkeys(records[0], math.nan) for _ in records[1:]]
        epoch_rows = [{"search": name, "trial_id": tid, "epoch": e + 1,
                       "train_loss": math.inf if math.isnan(r[metric]) else r["loss"] * 0.9,
                       "mjs": 0.02 * cfg["jsd_weight"], **r, "current_lr": cfg["lr"],
                       "seconds": float(2.0 + rng.random()), **cfg}
                      for e, r in enumerate(records)]
        if epoch_rows:
            _write(pd.DataFrame(epoch_rows), folder / "epochs.parquet" / f"{tid}.parquet")
        row = _trial_row(name, tid, status[i], cfg, records, metric, task, folder, rng)
        _write(pd.DataFrame([row]).astype({"best_epoch": "Int64"}),
               folder / "trials.parquet" / f"{tid}.parquet")
    if running:  # a trial that reported its first epoch before its trials row was written
        cfg = _configs(1, max_epochs, dataset, modalities, rng, space)[0]
        rec = _metrics_from_error(_curve(_final_error(cfg, rng), max_epochs, rng)[0], task, rng)
        row = {"search": name, "trial_id": ids[-1], "epoch": 1, "train_loss": rec["loss"],
               "mjs": 0.01, **rec, "current_lr": cfg["lr"], "seconds": 2.0, **cfg}
        _write(pd.DataFrame([row]), folder / "epochs.parquet" / f"{ids[-1]}.parquet")
    return folder


def _trial_row(name: str, tid: str, status: str, cfg: dict[str, Any],
               records: list[dict[str, float]], metric: str, task: str, folder: Path,
               rng: np.random.Generator) -> dict[str, Any]:
    """The trials.parquet row: the best epoch's validation metrics plus bookkeeping."""
    sign = 1.0 if metric_mode(metric) == "min" else -1.0
    scores = [sign * r[metric] if not math.isnan(r[metric]) else math.inf for r in records]
    best = int(np.argmin(scores)) + 1 if records else None
    metrics = records[best - 1] if best else dict.fromkeys(metric_names(task), math.nan)
    return {
        "search": name, "trial_id": tid, "status": status,
        "error": ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
                  if status == "errored" else None),
        "best_epoch": best,
        "epochs_run": len(records), **metrics,
        "wall_seconds": float(len(records) * 2.5 + rng.random()),
        "samples_per_s": float(4000 + 500 * rng.random()),
        "peak_gpu_mem_mb": math.nan,
        "checkpoint": (str(folder / "checkpoints" / tid / f"checkpoint_{best:06d}")
                       if best else None),
        "node": f"node-{'ab'[int(rng.integers(2))]}", "node_id": f"{int(rng.integers(1 << 48)):012x}",
        "executor": "train", "search_metric": metric, "search_mode": metric_mode(metric),
        **cfg,
    }


def write_fake_retrain(root: Path, name: str, *, seeds: tuple[int, ...] = (1111, 1112, 1113,
                                                                            1114, 1115),
                       task: str = "regression", trial_id: str = "fake_00000",
                       seed: int = 0) -> Path:
    """Write root/name/retrain.parquet/seed_<s>.parquet, one row per seed; returns the folder."""
    rng = np.random.default_rng(seed)
    dataset = "iemocap" if task == "iemocap" else "synthetic"
    cfg = _configs(1, 10, dataset, "lav", rng)[0]
    folder = Path(root) / name / "retrain.parquet"
    for s in seeds:
        err = 0.6 + 0.03 * rng.standard_normal()
        val = _metrics_from_error(err, task, rng)
        test = _metrics_from_error(err + 0.02 + 0.03 * rng.standard_normal(), task, rng)
        row = {"search": name, "trial_id": trial_id, "retrain_trial": f"retrain_{s}",
               "best_epoch": int(rng.integers(5, 11)),
               **val, **{f"test_{k}": v for k, v in test.items()},
               "checkpoint": str(Path(root) / name / "retrain" / f"seed_{s}" / "checkpoint.pt"),
               **cfg, "seed": s}
        _write(pd.DataFrame([row]), folder / f"seed_{s}.parquet")
    return folder


def make_pre_rename(folder: Path) -> Path:
    """Rewrite a fake search as the writer wrote it before the config field `mjs` was
    renamed `mjs_variant`: the config string overwrote the per-epoch MJS value, so every
    file has a string column `mjs` ("jsd") and none has `mjs_variant`."""
    for sub in ("trials.parquet", "epochs.parquet"):
        for f in (Path(folder) / sub).glob("*.parquet"):
            table = pq.read_table(f)
            if "mjs" in table.column_names:
                table = table.drop_columns(["mjs"])
            if "mjs_variant" in table.column_names:
                table = table.drop_columns(["mjs_variant"])
            pq.write_table(table.append_column("mjs", pa.array(["jsd"] * len(table))), f)
    return Path(folder)


# Test MAE drop of each condition in write_fake_robustness: what the analysis must report.
FAKE_DROPS = {("missing", "l"): 0.30, ("missing", "a"): 0.10, ("missing", "v"): 0.05,
              ("missing", "la"): 0.40, ("noise", "all"): 0.20}


def write_fake_robustness(root: Path, name: str, *, seeds: tuple[int, ...] = (1111, 1112, 1113),
                          trial_id: str = "best", offset: float = 0.0,
                          repeats: int = 2, seed: int = 0) -> Path:
    """Write root/name/robustness.parquet/<key>.parquet for each seed: clean, missing
    conditions and noise at one level on `all`, with the drops of FAKE_DROPS (the repeats of
    noise scatter symmetrically around it, so their mean is exact)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name / "robustness.parquet"
    cfg = _configs(1, 10, "synthetic", "lav", rng)[0]
    for s in seeds:
        clean = 0.6 + offset + 0.02 * rng.standard_normal()
        rows = [{"split": "test", "condition": "clean", "modality": "", "level": 0.0,
                 "repeat": 0, "MAE": clean}]
        for (cond, mod), drop in FAKE_DROPS.items():
            n = repeats if cond == "noise" else 1
            jitter = [0.01 * (2 * r - (n - 1)) for r in range(n)]  # sums to 0
            for r, j in enumerate(jitter):
                rows.append({"split": "test", "condition": cond, "modality": mod,
                             "level": 0.5 if cond == "noise" else 0.0, "repeat": r,
                             "MAE": clean + drop + j})
        df = pd.DataFrame([{"search": name, "trial_id": trial_id, **r, "n": 128,
                            "loss": r["MAE"], **cfg, "seed": s} for r in rows])
        _write(df, folder / f"{trial_id}-seed_{s}.parquet")
    return folder
