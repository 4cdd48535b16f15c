"""The results schema: every file, column, type, status and metric of a search's results.

Why one module: a name declared in two places drifts (the config field `mjs` once
overwrote the per-epoch MJS value in epochs.parquet). The writer (search/results.py) and
the analysis (search/analysis/) take names and types from here, docs/results.md is checked
against it (tests/test_schema.py), and it imports neither torch nor Ray, so the analysis
runs on a laptop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import pyarrow as pa

from ucrn.gpumem import KEYS as GPU_MEMORY
from ucrn.metrics import IEMOCAP_METRICS, REGRESSION_METRICS, ROBUST_METRICS, SIMS_METRICS

TRIALS, EPOCHS, RETRAIN = "trials.parquet", "epochs.parquet", "retrain.parquet"
ROBUSTNESS = "robustness.parquet"
SEARCH_JSON, BEST_CONFIG = "search.json", "best_config.json"
# search.json's "space": parameter name -> a fixed value or {kind: args}, kind one of these
# (search/space.py validates a space file; the analysis reads the kinds back from here).
SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
# Each is a Parquet dataset folder: one file per trial (or seed), rewritten whole.
FILES: dict[str, str] = {
    TRIALS: "one row per trial (one file per trial inside: <trial_id>.parquet)",
    EPOCHS: "one row per (trial, epoch) (one file per trial inside)",
    RETRAIN: "after run_search.py --retrain: one row per re-trained (trial, seed), one file each",
    ROBUSTNESS: "after run_search.py --retrain: the selected model of each (trial, seed) under "
                "missing and noisy inputs, one row per (split, condition, modality, level, "
                "repeat); one file per (trial, seed)",
}

STATUSES: dict[str, str] = {
    "running": "still reporting epochs",
    "completed": "ran all its epochs",
    "stopped": "stopped early by ASHA",
    "diverged": "non-finite loss; its metrics are not results",
    "errored": "raised an error (first line in `error`)",
}
FAILED = ("diverged", "errored")  # never the best trial

METRICS: tuple[str, ...] = tuple(dict.fromkeys(  # each name once (MAE is in two tasks)
    ("loss", *REGRESSION_METRICS, *SIMS_METRICS, *IEMOCAP_METRICS, *ROBUST_METRICS)))
METRIC_TYPE = pa.float64()
TEST_PREFIX = "test_"  # test metrics: retrain.parquet only; unprefixed ones are validation
TEST_METRICS: tuple[str, ...] = tuple(TEST_PREFIX + m for m in METRICS)

CONFIG_RULE = ("every field of the training config (ucrn.train.TrainConfig), by its own name, "
               "typed by its default: bool -> bool, int -> int64, float -> float64, "
               "anything else -> string")


class Column(NamedTuple):
    type: pa.DataType
    meaning: str


_S, _I, _F = pa.string(), pa.int64(), pa.float64()
# Every column that is neither a metric nor a config field, declared once for all files.
COLUMNS: dict[str, Column] = {
    "search": Column(_S, "search name"),
    "trial_id": Column(_S, "Ray Tune trial id (retrain.parquet: the re-trained trial, or "
                       "`best`)"),
    "retrain_trial": Column(_S, "Ray Tune trial id of the re-training run"),
    "status": Column(_S, "trial status: " + ", ".join(STATUSES)),
    "error": Column(_S, "first line of the error of an errored trial (null otherwise)"),
    "epoch": Column(_I, "epoch number, 1-based"),
    "best_epoch": Column(_I, "epoch with the best value of the search (or selection) metric"),
    "epochs_run": Column(_I, "epochs reported"),
    "train_loss": Column(_F, "mean training task loss (L1 / CE)"),
    "mjs": Column(_F, "mean training MJS value (0 when jsd_weight is 0)"),
    "current_lr": Column(_F, "learning rate after this epoch's scheduler step"),
    "seconds": Column(_F, "wall time of the epoch (train + validation)"),
    "ended_at": Column(_F, "when the epoch was reported, in Unix seconds (orders epochs "
                           "across trials: best-so-far curves, budgets)"),
    "wall_seconds": Column(_F, "trial wall time so far"),
    "samples_per_s": Column(_F, "training samples per second of the training pass, without "
                                "validation (median over epochs)"),
    "peak_gpu_mem_mb": Column(_F, "peak GPU memory the trial's tensors took "
                                  "(torch.cuda.max_memory_allocated since the trial started; "
                                  "NaN on CPU)"),
    "peak_gpu_reserved_mb": Column(_F, "peak GPU memory torch's caching allocator held for the "
                                       "trial: its tensors, the cache and CUDA-graph pools "
                                       "(max_memory_reserved; NaN on CPU)"),
    "gpu_process_mb": Column(_F, "the trial process's whole GPU memory as the driver (NVML) "
                                 "reports it, largest at an epoch's end: adds the CUDA context "
                                 "and libraries; NaN on CPU or where NVML cannot say"),
    "checkpoint": Column(_S, "checkpoint location (retrain.parquet: the selected state_dict "
                         "file, loaded with torch.load(..., weights_only=True))"),
    "node": Column(_S, "hostname of the node that ran the trial"),
    "node_id": Column(_S, "Ray node id (of the trial, or of the epoch's report)"),
    "resumes": Column(_I, "times the trial restarted from its checkpoint"),
    "executor": Column(_S, "`train` (Ray Train) or `tune` (plain Tune function)"),
    "search_metric": Column(_S, "the search's objective metric, e.g. MAE"),
    "search_mode": Column(_S, "the objective's direction: min or max"),
    "split": Column(_S, "the split scored: test (or valid)"),
    "condition": Column(_S, "clean, missing (inputs zeroed), noise (Gaussian) or time_drop "
                            "(random time steps zeroed)"),
    "modality": Column(_S, "the modalities the condition touches (l, a, v, pairs, all); "
                           "empty for clean"),
    "level": Column(_F, "noise sigma (x the training split's per-feature std) or the share "
                        "of time steps zeroed; 0 otherwise"),
    "repeat": Column(_I, "repeat of a random condition (0 for deterministic ones)"),
    "n": Column(_I, "samples scored"),
}

METRIC_GROUP, TEST_GROUP, CONFIG_GROUP = "metric columns", "test metric columns", "config columns"
GROUPS: dict[str, str] = {
    METRIC_GROUP: f"validation metrics, unprefixed: {', '.join(METRICS)}",
    TEST_GROUP: f"{TEST_PREFIX} + each metric: the selected epoch's test metrics",
    CONFIG_GROUP: CONFIG_RULE,
}
# Per file: its declared columns (in writing order) and the groups of columns it holds.
FILE_COLUMNS: dict[str, tuple[str, ...]] = {
    TRIALS: ("search", "trial_id", "status", "error", "best_epoch", "epochs_run",
             "wall_seconds", "samples_per_s", *GPU_MEMORY, "checkpoint", "node",
             "node_id", "resumes", "executor", "search_metric", "search_mode"),
    EPOCHS: ("search", "trial_id", "epoch", "train_loss", "mjs", "current_lr", "seconds",
             "ended_at", "node_id"),
    RETRAIN: ("search", "trial_id", "retrain_trial", "best_epoch", "checkpoint"),
    ROBUSTNESS: ("search", "trial_id", "split", "condition", "modality", "level", "repeat",
                 "n"),
}
FILE_GROUPS: dict[str, tuple[str, ...]] = {
    TRIALS: (METRIC_GROUP, CONFIG_GROUP),
    EPOCHS: (METRIC_GROUP, CONFIG_GROUP),
    RETRAIN: (METRIC_GROUP, TEST_GROUP, CONFIG_GROUP),
    ROBUSTNESS: (METRIC_GROUP, CONFIG_GROUP),
}
DECLARED: frozenset[str] = frozenset(COLUMNS) | frozenset(METRICS) | frozenset(TEST_METRICS)


class SchemaError(ValueError):
    """A column name the schema does not allow: a programming error, one line."""


def declared_type(name: str) -> pa.DataType | None:
    """The type of a declared (non-config) column; None for any other name."""
    if name in COLUMNS:
        return COLUMNS[name].type
    return METRIC_TYPE if name in METRICS or name in TEST_METRICS else None


def file_columns(file: str) -> tuple[str, ...]:
    """Every declared column a file may hold: its own, then its metric groups."""
    groups = FILE_GROUPS[file]
    return (*FILE_COLUMNS[file], *(METRICS if METRIC_GROUP in groups else ()),
            *(TEST_METRICS if TEST_GROUP in groups else ()))


def config_type(default: Any) -> pa.DataType:
    """CONFIG_RULE as code: the column type of a config field with this default."""
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, int):
        return pa.int64()
    if isinstance(default, float):
        return pa.float64()
    return pa.string()


def check_config_fields(names: Iterable[str], where: str = "the training config") -> None:
    """Config fields become columns by their own names: none may be a declared column."""
    clash = sorted(set(names) & DECLARED)
    if clash:
        raise SchemaError(f"{where}: field(s) {', '.join(clash)} collide with result columns "
                          f"declared in search/schema.py; rename the field(s)")


def column_type(name: str, config_types: Mapping[str, pa.DataType]) -> pa.DataType:
    """One type per column name across every file, so the folders read as one table."""
    declared = declared_type(name)
    if declared is not None:
        return declared
    if name in config_types:
        return config_types[name]
    raise SchemaError(f"column {name!r} is neither a config field nor declared in "
                      f"search/schema.py; declare it there (and in docs/results.md)")
