"""The results schema: every file, column, type, status and metric of a search's results.

Why one module: a name declared in two places drifts (the config field `mjs` once
overwrote the per-epoch MJS value in epochs.parquet). The writer (search/results.py) and
the analysis (search/analysis/) take names and types from here, docs/results.md is checked
against it (tests/test_schema.py), and it imports neither torch nor Ray, so the analysis
runs on a laptop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from ucrn.gpumem import KEYS as GPU_MEMORY
from ucrn.metrics import IEMOCAP_METRICS, REGRESSION_METRICS, ROBUST_METRICS, SIMS_METRICS

TRIALS, EPOCHS, RETRAIN = "trials.parquet", "epochs.parquet", "retrain.parquet"
ROBUSTNESS = "robustness.parquet"
SEARCH_JSON, BEST_CONFIG = "search.json", "best_config.json"
# what best_config.json was chosen from (search/results.py TrialBook.keep_best_config)
BEST_TRIAL = "best_trial.json"
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
    "rebuilt": Column(_S, "why this trials row was rebuilt from the trial's epoch rows (its "
                          "file was damaged or missing); null when written as it reported"),
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
             "node_id", "resumes", "executor", "search_metric", "search_mode", "rebuilt"),
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


# ---- what the files must hold: the one check every reader of the results applies ----------
# Why: a hand-edited file (a renamed metric column, an unknown status, a deleted trial file)
# once changed the answer without a word: analyze.py dropped the trial, `--resume` rewrote
# best_config.json to a worse one, an unknown status was ranked first. Every reader
# (search/results.py TrialBook for --resume, --retrain and --warm-start; search/analysis/
# for analyze.py) hands the files it read to `check_results`, which names each file that
# does not hold what this module declares (one warning line), leaves it out, and rebuilds
# what the epoch rows can rebuild: a trial's summary row is a function of its epoch rows.

CONDITIONS = ("clean", "missing", "noise", "time_drop")  # ucrn.conditions.CONDITIONS
SPLITS = ("train", "valid", "test")  # ucrn.data.SPLITS
# The values a categorical column may hold.
VALUES: dict[str, tuple[str, ...]] = {
    "status": tuple(STATUSES), "executor": ("train", "tune"), "search_mode": ("min", "max"),
    "search_metric": METRICS, "split": SPLITS, "condition": CONDITIONS,
}
# Columns each file must hold, never null (seed: a config field; retrain and robustness rows
# are one seed's).
REQUIRED: dict[str, tuple[str, ...]] = {
    TRIALS: ("trial_id", "status", "epochs_run"),
    EPOCHS: ("trial_id", "epoch"),
    RETRAIN: ("trial_id", "best_epoch", "seed"),
    ROBUSTNESS: ("trial_id", "split", "condition", "seed"),
}
ONE_ROW = (TRIALS, RETRAIN)  # one file per trial, or per (trial, seed)
LOWEST = {"epoch": 1, "best_epoch": 1, "epochs_run": 0, "resumes": 0, "repeat": 0, "n": 0}
# The config string a writer before the config field `mjs` became `mjs_variant` left in
# the float column `mjs`: read as missing (a note), not as damage.
LEGACY_TEXT = {"mjs"}
FRESH_S = 120.0  # an epoch file this recent with only epoch 1 may be a trial just started
CONFIG_LIKE = (pa.bool_(), pa.int64(), pa.float64(), pa.string())  # CONFIG_RULE's types


def file_key(trial_id: str) -> str:
    """The name (without .parquet) of a trial's file in trials.parquet/ and epochs.parquet/."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in trial_id)


def best_epoch_row(rows: list[dict[str, Any]], metric: str, mode: str
                   ) -> dict[str, Any] | None:
    """The writer's rule for a trial's best epoch: the first with the best finite value of
    the search metric; the last epoch when none has one."""
    scored = [r for r in rows if _finite(r.get(metric))]
    if not scored:
        return rows[-1] if rows else None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r[metric])


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def same_value(a: Any, b: Any) -> bool:
    """Equal as the writer wrote both (NaN and null are both "no value")."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _type_fits(array: pa.ChunkedArray, expected: pa.DataType) -> bool:
    actual = array.type
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected):
        if pa.types.is_integer(actual):
            return True
        if not pa.types.is_floating(actual):
            return False
        values = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
        return bool(np.all(np.isnan(values) | (values == np.round(values))))  # pandas' ints
    return actual == expected


def _missing(array: pa.ChunkedArray) -> int:
    """Nulls, and NaN where pandas wrote NaN for a missing integer."""
    n = array.null_count
    if pa.types.is_floating(array.type):
        values = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
        n = int(np.isnan(values).sum())
    return n


def check_file(file: str, table: pa.Table, key: str = "",
               config_types: Mapping[str, pa.DataType] | None = None) -> str | None:
    """What is wrong with one file of `file` (TRIALS, EPOCHS, ...) against this schema, in
    words (None: nothing). `key` is its name without .parquet (empty for a single-file
    dataset); `config_types` the training config's columns (None where torch is not at hand:
    the analysis), without which undeclared columns need only a config column's type."""
    if table.num_rows == 0:
        return "holds no rows"
    if file in ONE_ROW and key and table.num_rows != 1:
        return f"holds {table.num_rows} rows (one file holds one row)"
    for name in REQUIRED[file]:
        if name not in table.column_names:
            return f"has no column {name!r} (renamed or deleted?)"
    seen: set[str] = set()
    for name, array in zip(table.column_names, table.columns):
        if name in seen:
            return f"has the column {name!r} twice"
        seen.add(name)
        expected = declared_type(name)
        if expected is None and config_types is not None:
            expected = config_types.get(name)
            if expected is None:
                return (f"has the column {name!r}, which is neither declared in "
                        f"search/schema.py nor a config field (renamed?)")
        if expected is None:
            if not any(_type_fits(array, t) for t in CONFIG_LIKE):
                return f"has the column {name!r} of type {array.type}, not a config column's"
        elif not _type_fits(array, expected) and not (
                name in LEGACY_TEXT and pa.types.is_string(array.type)):
            return f"has the column {name!r} of type {array.type}, not {expected}"
    for name in REQUIRED[file]:
        if _missing(table.column(name)):
            return f"has no value of {name!r} in {_missing(table.column(name))} row(s)"
    for name, allowed in VALUES.items():
        if name in seen:
            bad = [v for v in table.column(name).to_pylist() if v is not None and v not in allowed]
            if bad:
                return (f"has {name} {_show(bad[0])}, not one of "
                        f"{', '.join(allowed) if len(allowed) <= 8 else 'search/schema.py'}")
    for name, low in LOWEST.items():
        if name in seen:
            values = [v for v in table.column(name).to_pylist() if _finite(v)]
            if values and min(values) < low:
                return f"has {name} {min(values):g}, below {low}"
    if file in (TRIALS, EPOCHS) and key:
        ids = set(table.column("trial_id").to_pylist())
        if len(ids) != 1 or file_key(str(next(iter(ids)))) != key:
            return (f"holds trial(s) {', '.join(sorted(map(_show, ids)))[:120]}, not "
                    f"{key} (a trial's rows are in the file of its name)")
    if file == EPOCHS:
        epochs = table.column("epoch").to_pylist()
        if len(set(epochs)) != len(epochs):
            return "holds an epoch twice"
    if file == TRIALS:
        row = table.slice(0, 1).to_pylist()[0]
        best, run = row.get("best_epoch"), row.get("epochs_run")
        if _finite(best) and _finite(run) and best > run:
            return f"has best_epoch {best:g} after its epochs_run {run:g}"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Checked:
    """What `check_results` found: the files that hold (trials rebuilt where they could be),
    one warning line per file left out or rebuilt, and notes (old writers, running trials)."""

    tables: dict[str, dict[str, pa.Table]]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rebuilt: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> rebuilt row


Read = dict[str, "pa.Table | str"]  # file key -> its table, or why it could not be read


def check_results(read: Mapping[str, Read], show: Callable[[str, str], str], metric: str,
                  mode: str, config_types: Mapping[str, pa.DataType] | None = None,
                  mtimes: Mapping[str, float] | None = None,
                  now: float | None = None) -> Checked:
    """Every file a reader read (`read[file][key]`), checked against this schema and against
    each other; `show(file, key)` names a file for the user; `metric`/`mode` are the search's
    (a row's own search_metric wins); `mtimes` the epoch files' modification times where a
    search may be running (a lone first epoch newer than FRESH_S is a trial just started,
    not a lost trials row; None: no other writer)."""
    out = Checked(tables={f: {} for f in read})
    bad: dict[str, dict[str, str]] = {f: {} for f in read}
    for file, files in read.items():
        for key, table in files.items():
            why = table if isinstance(table, str) else check_file(file, table, key,
                                                                   config_types)
            if why is None:
                out.tables[file][key] = table
            else:
                bad[file][key] = why
        _agree_on_metrics(file, out.tables[file], bad[file])
    for file in read:
        if file in (TRIALS, EPOCHS):
            continue
        out.warnings += [f"{show(file, k)} {why}: left out" for k, why in bad[file].items()]
    if TRIALS not in read:
        return out
    epochs = {k: sorted(t.to_pylist(), key=lambda r: r["epoch"])
              for k, t in out.tables.get(EPOCHS, {}).items()}
    out.warnings += [f"{show(EPOCHS, k)} {why}: that trial's epoch rows are left out"
                     for k, why in bad.get(EPOCHS, {}).items()]
    disagree = set()  # trials rows whose values their epoch rows do not give
    for key, table in list(out.tables[TRIALS].items()):
        row = table.to_pylist()[0]
        why = _missing_metric(row, metric)
        if why is None:
            why = _against_epochs(row, epochs.get(key), metric, mode, config_types is None)
            if why is not None:
                disagree.add(key)
        if why is not None:
            bad[TRIALS][key] = why
            del out.tables[TRIALS][key]
        elif key not in epochs and (row.get("epochs_run") or 0) > 0 and EPOCHS in read:
            out.warnings.append(f"{show(TRIALS, key)}: trial {row['trial_id']} ran "
                                f"{row['epochs_run']} epoch(s) but has no epoch rows "
                                f"({show(EPOCHS, key)} is missing or left out): ranked on its "
                                f"trials row, no learning curve")
    now = time.time() if now is None else now
    fresh = [k for k in epochs if k not in out.tables[TRIALS] and k not in bad[TRIALS]
             and mtimes is not None and now - mtimes.get(k, 0.0) < FRESH_S
             and [r["epoch"] for r in epochs[k]] == [1]]
    if fresh:
        out.notes.append(f"{len(fresh)} trial(s) have epochs but no trials row yet (just "
                         f"started): {', '.join(sorted(fresh)[:5])}")
    lost = set(epochs) - set(out.tables[TRIALS]) - set(fresh)  # rows, no trials row
    for key in sorted(set(bad[TRIALS]) | lost):
        why = bad[TRIALS].get(key, "is missing")
        damaged = read[TRIALS].get(key)
        old = damaged.to_pylist()[0] if isinstance(damaged, pa.Table) and \
            damaged.num_rows == 1 else {}
        if key not in epochs:
            out.warnings.append(f"{show(TRIALS, key)} {why}: left out (no epoch rows of "
                                f"{key} to rebuild it from)")
            continue
        row = rebuild_trial(epochs[key], metric, mode, old.get("status"),
                            f"its file {why}"[:300])
        out.tables[TRIALS][key] = pa.Table.from_pylist([row])
        out.rebuilt[key] = row
        if key in disagree:  # which of the two was edited cannot be known: both named
            why = (f"and {show(EPOCHS, key)} disagree (the trials row {why}; one of them was "
                   f"changed after the search wrote it)")
        out.warnings.append(f"{show(TRIALS, key)} {why}: trial {row['trial_id']} rebuilt from "
                            f"its {len(epochs[key])} epoch row(s) as {row['status']}")
    return out


def _agree_on_metrics(file: str, tables: dict[str, pa.Table], bad: dict[str, str]) -> None:
    """Files of one search hold the same metric columns (its task's): a file that lacks one
    the others have had it renamed or deleted. The usual set is the one most files hold (the
    larger on a tie); trials rows without an epoch (errored at once) hold none."""
    sets: dict[str, frozenset[str]] = {}
    for key, table in tables.items():
        if file == TRIALS and not (table.column("epochs_run").to_pylist()[0] or 0):
            continue
        sets[key] = frozenset(c for c in table.column_names
                              if c in METRICS or c in TEST_METRICS)
    if len(set(sets.values())) < 2:
        return
    counts: dict[frozenset[str], int] = {}
    for s in sets.values():
        counts[s] = counts.get(s, 0) + 1
    usual = max(counts, key=lambda s: (counts[s], len(s)))
    for key, s in sets.items():
        if s != usual:
            gone, extra = sorted(usual - s), sorted(s - usual)
            bad[key] = (f"lacks the metric column(s) {', '.join(gone)} that the other files "
                        f"have (renamed or deleted?)" if gone else
                        f"has the metric column(s) {', '.join(extra)} that no other file has")
            del tables[key]


def _row_metric(row: dict[str, Any], metric: str) -> str:
    """The metric a trials row was ranked by: its own search_metric, else the search's."""
    return row.get("search_metric") if row.get("search_metric") in METRICS else metric


def _missing_metric(row: dict[str, Any], metric: str) -> str | None:
    """A trials row that trained and lacks its search's metric column."""
    metric = _row_metric(row, metric)
    if metric not in row and (row.get("epochs_run") or 0) > 0:
        return f"has no column {metric!r}, the search's metric (renamed or deleted?)"
    return None


def _against_epochs(row: dict[str, Any], rows: list[dict[str, Any]] | None, metric: str,
                    mode: str, check_names: bool) -> str | None:
    """A trials row against its epoch rows, from which the writer made it: its epochs_run,
    best epoch, that epoch's metrics and the config. A running trial's row may lag its epoch
    rows by a report (it is written after them)."""
    metric = _row_metric(row, metric)
    mode = row.get("search_mode") if row.get("search_mode") in ("min", "max") else mode
    if rows is None:
        return None
    run = int(row["epochs_run"])
    if len(rows) < run or (len(rows) != run and row["status"] != "running"):
        return f"says {run} epoch(s) ran, its epoch rows hold {len(rows)}"
    best = best_epoch_row(rows[:run], metric, mode)
    if best is None:
        return None
    if not same_value(row.get("best_epoch"), best["epoch"]):
        return (f"has best_epoch {row.get('best_epoch')}, its epoch rows' best by {metric} is "
                f"{best['epoch']}")
    for name, value in row.items():
        if name in best and (name in METRICS or declared_type(name) is None) \
                and not same_value(value, best[name]):
            return (f"has {name} {_show(value)}, its epoch {best['epoch']} row "
                    f"{_show(best[name])}")
    if check_names:  # no config at hand: the trial's config columns are its epoch rows'
        extra = sorted(n for n in row if declared_type(n) is None and n not in best)
        if extra:
            return f"has the column {extra[0]!r}, which its epoch rows have not (renamed?)"
    return None


def rebuild_trial(rows: list[dict[str, Any]], metric: str, mode: str,
                  status: str | None = None, why: str | None = None) -> dict[str, Any]:
    """A trial's summary row as the writer makes it, from its epoch rows alone. The status:
    a failed one the damaged row still names (never ranked best), diverged where an epoch
    row shows a non-finite loss, else completed when it ran all its epochs, else stopped
    (a trial that diverged or failed without a trace in its epoch rows cannot be told
    apart: the warning says it was rebuilt). What the epoch rows do not hold (wall time,
    checkpoint) is missing."""
    last, best = rows[-1], best_epoch_row(rows, metric, mode)
    if status not in FAILED:
        done = _finite(last.get("num_epochs")) and len(rows) >= last["num_epochs"]
        status = "completed" if done else "stopped"
        if any(isinstance(r.get(k), float) and not math.isfinite(r[k])
               for r in rows for k in ("train_loss", "loss")):
            status = "diverged"  # where an epoch row shows it
    out: dict[str, Any] = {"search": last.get("search"), "trial_id": last["trial_id"],
                           "status": status, "error": None, "rebuilt": why,
                           "best_epoch": best["epoch"] if best else None,
                           "epochs_run": len(rows)}
    out.update({k: v for k, v in (best or {}).items() if k in METRICS})
    out.update({"node_id": last.get("node_id"), "search_metric": metric, "search_mode": mode})
    out.update({k: v for k, v in last.items() if declared_type(k) is None})
    return out
