"""Analyze finished (or running) searches from their Parquet files alone.

    python analyze.py STORAGE/NAME [STORAGE/OTHER ...] [--top K] [--metric NAME]
                      [--format table|csv|json|md] [--out DIR] [--no-report]
                      [--importance ped-anova|fanova]

Why a separate script: the results of a search must be readable on a laptop without Ray
or a cluster, and without trusting anything but the files documented in docs/results.md
(trials.parquet/, epochs.parquet/, retrain.parquet/). It prints a leaderboard, the best
configuration per (dataset, aligned, modalities) group, hyperparameter importance (an
in-memory Optuna study fed with the trials), what ASHA saved and the re-training
summary, and writes the same as report.md with plots. Every file is read one by one, so
a bad file is named, and searches of different schemas are combined by column union.
Exit codes: 0 ok, 1 the report could not be written, 2 nothing usable / bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ucrn.metrics import IEMOCAP_METRICS, METRIC_MODES, REGRESSION_METRICS, metric_mode

METRIC_ORDER = ("loss", *REGRESSION_METRICS, *IEMOCAP_METRICS)
# Columns of docs/results.md that are not config columns (metric columns are recognised
# by name via METRIC_MODES, test metrics by their prefix).
RESULT_COLUMNS = frozenset({
    "search", "trial_id", "status", "error", "best_epoch", "epochs_run", "wall_seconds",
    "samples_per_s", "peak_gpu_mem_mb", "checkpoint", "node", "node_id", "executor",
    "search_metric", "search_mode", "epoch", "train_loss", "mjs", "current_lr", "seconds",
    "resumes",
})
GROUP_KEYS = ("dataset", "aligned", "modalities")
NOT_RANKED = ("diverged", "errored")  # counted, never "best"
STATUS_ORDER = ("completed", "stopped", "running", "diverged", "errored")
FORMATS = ("table", "csv", "json", "md")
EVALUATORS = ("ped-anova", "fanova")
MAX_CURVES = 8  # top trials drawn in curves.png; more is unreadable
PARAMS_PER_ROW = 4


class AnalyzeError(Exception):
    """Something the user must fix: printed as one line, exit code 2."""


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


@dataclass
class Search:
    """One search's rows plus what the analysis derives from them once."""

    label: str
    location: str
    trials: pd.DataFrame
    epochs: pd.DataFrame | None
    retrain: pd.DataFrame | None
    metric: str = "MAE"
    mode: str = "min"
    params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """Local paths and URIs pyarrow understands (s3://, gs://, ...), same code after."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as e:  # noqa: BLE001 - any filesystem error is the user's to fix
            raise AnalyzeError(f"{path}: cannot open: {_one_line(e)}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _file_info(fs: pafs.FileSystem, path: str, shown: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except Exception as e:  # noqa: BLE001
        raise AnalyzeError(f"{shown}: cannot access: {_one_line(e)}") from None


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Union of columns across files (missing = null); pandas when arrow cannot unify."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def read_dataset(fs: pafs.FileSystem, path: str, shown: str) -> pd.DataFrame | None:
    """A Parquet dataset folder (or single file) as one frame; None when absent.

    Files are read one at a time so that an unreadable one is named; hidden and
    underscore files (temporary files of the atomic writer, _SUCCESS) are skipped.
    """
    info = _file_info(fs, path, shown)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        files = [(path, shown)]
    else:
        try:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except Exception as e:  # noqa: BLE001
            raise AnalyzeError(f"{shown}: cannot list: {_one_line(e)}") from None
        files = sorted((f.path, shown + f.path[len(path):]) for f in found
                       if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                       and not f.base_name.startswith((".", "_")))
    tables = []
    for file, file_shown in files:
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, not Parquet, unreadable
            raise AnalyzeError(f"cannot read {file_shown}: {type(e).__name__}: "
                               f"{_one_line(e)}") from None
    return _concat(tables) if tables else pd.DataFrame()


def _read_search_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """search.json is optional: used only to fill a missing metric/mode."""
    try:
        with fs.open_input_stream(path) as fh:
            obj = json.loads(fh.read().decode())
        return obj if isinstance(obj, dict) else {}
    except Exception:  # noqa: BLE001 - absent or unreadable: the Parquet files suffice
        return {}


def _with_search_name(df: pd.DataFrame | None, default: str) -> pd.DataFrame | None:
    if df is None or df.empty:
        return df
    df = df.copy()
    if "search" not in df.columns:
        df["search"] = default
    df["search"] = df["search"].fillna(default).astype(str)
    return df


def load_search(path: str) -> Search:
    """Read one search folder; AnalyzeError (one line, naming the path) if unusable."""
    fs, base = _filesystem(path)
    shown = path.rstrip("/")
    info = _file_info(fs, base, shown)
    if info.type == pafs.FileType.NotFound:
        raise AnalyzeError(f"{shown}: no such file or directory")
    if info.type != pafs.FileType.Directory:
        raise AnalyzeError(f"{shown}: not a folder; expected a search folder STORAGE/NAME")
    trials = read_dataset(fs, f"{base}/trials.parquet", f"{shown}/trials.parquet")
    if trials is None:
        has_epochs = _file_info(fs, f"{base}/epochs.parquet", shown).type != \
            pafs.FileType.NotFound
        what = "only epochs.parquet/" if has_epochs else "no trials.parquet/"
        raise AnalyzeError(f"{shown}: {what} here, nothing to rank; expected a search folder "
                           f"STORAGE/NAME with trials.parquet/ (see docs/results.md)")
    if trials.empty:
        raise AnalyzeError(f"{shown}/trials.parquet: no trial rows yet "
                           f"(the search may have just started)")
    if "trial_id" not in trials.columns:
        raise AnalyzeError(f"{shown}/trials.parquet: no trial_id column; "
                           f"not a search's results (see docs/results.md)")
    epochs = read_dataset(fs, f"{base}/epochs.parquet", f"{shown}/epochs.parquet")
    retrain = read_dataset(fs, f"{base}/retrain.parquet", f"{shown}/retrain.parquet")
    name = base.rstrip("/").rsplit("/", 1)[-1]
    trials = _with_search_name(trials, name)
    trials = trials.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
    if "status" not in trials.columns:
        trials["status"] = "unknown"
    trials["status"] = trials["status"].fillna("unknown").astype(str)
    names = trials["search"].value_counts()
    label = name if name in names.index else str(names.index[0])
    search = Search(label=label, location=shown, trials=trials,
                    epochs=_with_search_name(epochs, name),
                    retrain=_with_search_name(retrain, name) if retrain is not None
                    and not retrain.empty else None)
    if len(names) > 1:  # e.g. another run writing into this folder: shown, not hidden
        search.notes.append("trials.parquet holds rows of several searches: " + ", ".join(
            f"{k} ({v})" for k, v in names.items()))
    search.notes.extend(_running_notes(search))
    meta = _read_search_json(fs, f"{base}/search.json")
    search.metric, search.mode = _search_metric(trials, meta)
    return search


def _running_notes(s: Search) -> list[str]:
    notes = []
    if s.epochs is not None and "trial_id" in s.epochs.columns:
        orphans = set(s.epochs["trial_id"].dropna()) - set(s.trials["trial_id"])
        if orphans:
            notes.append(f"{len(orphans)} trial(s) have epochs but no trials row yet "
                         f"(just started): {', '.join(sorted(map(str, orphans))[:5])}")
    if s.epochs is None:
        notes.append("no epochs.parquet/: no learning curves")
    return notes


def _first(df: pd.DataFrame, col: str) -> str | None:
    if col not in df.columns:
        return None
    values = df[col].dropna()
    return str(values.mode().iloc[0]) if len(values) else None


def _search_metric(trials: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    """The search's own objective; else search.json's; else MAE (loss without MAE), min."""
    metric = _first(trials, "search_metric") or meta.get("metric")
    mode = _first(trials, "search_mode") or meta.get("mode")
    if not metric:
        metric = "MAE" if "MAE" in trials.columns or "loss" not in trials.columns else "loss"
        mode = "min"
    if mode not in ("min", "max"):
        mode = METRIC_MODES.get(metric, "min")
    return str(metric), str(mode)


def load_searches(paths: Sequence[str], metric: str | None) -> list[Search]:
    searches = [load_search(p) for p in paths]
    labels = [s.label for s in searches]
    for s in searches:
        if labels.count(s.label) > 1:  # the same name under two storages
            s.label = f"{s.label} ({s.location})"
        if metric:
            s.metric, s.mode = metric, metric_mode(metric)
        if s.metric not in s.trials.columns:
            have = ", ".join(c for c in METRIC_ORDER if c in s.trials.columns) or "none"
            raise AnalyzeError(f"{s.location}/trials.parquet: no column {s.metric!r} to rank "
                               f"by (metric columns here: {have})")
        s.params = varying_params(s.trials)
    return searches


# --------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------


@functools.cache
def _train_config_fields() -> frozenset[str] | None:
    """docs/results.md: the config columns are TrainConfig's fields. None without torch
    (ucrn.train imports it): then every column the schema does not name counts."""
    try:
        from ucrn.train import TrainConfig
    except ImportError:
        return None
    return frozenset(f.name for f in dataclasses.fields(TrainConfig))


def config_columns(df: pd.DataFrame) -> list[str]:
    known = _train_config_fields()
    if known is not None:
        return [c for c in df.columns if c in known]
    return [c for c in df.columns if c not in RESULT_COLUMNS and c not in METRIC_MODES
            and not c.startswith(("test_", "_"))]


def varying_params(df: pd.DataFrame) -> list[str]:
    """Config columns with more than one value: the searched parameters."""
    out = []
    for c in config_columns(df):
        col = df[c].dropna()
        try:
            n = col.nunique()
        except TypeError:  # unhashable cells (lists): compare as text
            n = col.astype(str).nunique()
        if n > 1:
            out.append(c)
    return out


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in METRIC_ORDER if c in df.columns and df[c].notna().any()]


def ranked(s: Search) -> pd.DataFrame:
    """Rankable trials (not diverged/errored, finite metric), best first, with `rank`."""
    t = s.trials
    value = pd.to_numeric(t[s.metric], errors="coerce")
    ok = ~t["status"].isin(NOT_RANKED) & np.isfinite(value.to_numpy(dtype=float))
    out = t[ok].assign(**{s.metric: value[ok]})
    out = out.sort_values([s.metric, "trial_id"], ascending=[s.mode == "min", True],
                          kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def leaderboard(s: Search, top: int) -> pd.DataFrame:
    """Top trials: varying config, best epoch, status and all validation metrics."""
    r = ranked(s).head(top)
    front = ["rank", "trial_id", "status", "epochs_run", "best_epoch", s.metric]
    cols = [c for c in front if c in r.columns] + s.params
    cols += [m for m in metric_columns(r) if m not in cols]
    out = r[cols].copy()
    for c in ("epochs_run", "best_epoch"):  # int64 with nulls arrives as float
        if c in out.columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").round().astype("Int64")
    out.insert(0, "search", s.label)
    return out


def status_counts(s: Search) -> str:
    counts = s.trials["status"].value_counts()
    order = [st for st in STATUS_ORDER if st in counts] + \
        sorted(st for st in counts.index if st not in STATUS_ORDER)
    parts = ", ".join(f"{int(counts[st])} {st}" for st in order)
    return f"{len(s.trials)} trials: {parts}"


def best_per_group(searches: list[Search]) -> pd.DataFrame:
    """The best rankable trial per (dataset, aligned, modalities) across searches.

    Searches of one group that optimise different metrics cannot be compared, so the
    metric is part of the group.
    """
    rows = []
    for s in searches:
        r = ranked(s)
        if r.empty:
            continue
        best = r.iloc[0]
        key = {k: best.get(k, np.nan) for k in GROUP_KEYS}
        rows.append({**key, "metric": s.metric, "mode": s.mode, "value": best[s.metric],
                     "search": s.label, "trial_id": best["trial_id"],
                     "status": best["status"], "config": _config_text(best, s.params)})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = [*GROUP_KEYS, "metric"]
    df["_sort"] = np.where(df["mode"] == "min", df["value"], -df["value"])
    df = df.sort_values("_sort", kind="stable").groupby(keys, dropna=False, sort=True).head(1)
    return df.sort_values(keys).drop(columns=["_sort", "mode"]).reset_index(drop=True)


def _config_text(row: pd.Series, params: list[str]) -> str:
    return ", ".join(f"{p}={_fmt(row.get(p), p)}" for p in params) or "(nothing varied)"


# ---- hyperparameter importance -------------------------------------------------------


@dataclass
class ParamKind:
    name: str
    numeric: bool
    log: bool = False
    integer: bool = False
    choices: tuple = ()


def param_kind(values: pd.Series, name: str) -> ParamKind:
    """Numeric -> int/float (log when all > 0 and spanning more than a decade); else categorical."""
    v = values.dropna()
    if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
        x = v.astype(float)
        # int columns with nulls arrive as float: whole numbers plus a gap mean int
        integer = pd.api.types.is_integer_dtype(v) or bool(
            np.all(np.mod(x, 1) == 0) and values.isna().any())
        log = bool((x > 0).all() and x.max() / x.min() > 10)
        return ParamKind(name, True, log=log, integer=integer)
    choices = tuple(sorted({_py(c) for c in v}, key=lambda c: (str(type(c)), c)))
    return ParamKind(name, False, choices=choices)


def _py(v: Any) -> Any:
    """numpy scalars -> plain Python (Optuna's distributions accept only those)."""
    return v.item() if isinstance(v, np.generic) else v


def _distribution(kind: ParamKind, values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not kind.numeric:
        return CategoricalDistribution(kind.choices)
    lo, hi = float(values.min()), float(values.max())
    if kind.integer:
        return IntDistribution(int(lo), int(hi), log=kind.log)
    return FloatDistribution(lo, hi, log=kind.log)


@dataclass
class Importance:
    evaluator: str
    values: dict[str, float]
    n_trials: int
    message: str = ""


def importance(s: Search, evaluator: str = "ped-anova") -> Importance:
    """Optuna's importance of each searched parameter, from an in-memory study.

    The study gets one COMPLETE trial per rankable trial (ASHA-stopped trials included,
    with the best value they reached: they are most of a search and they are stopped for
    being bad). Rows missing a parameter are left out.
    """
    r = ranked(s)
    usable = r.dropna(subset=s.params) if s.params else r
    if not s.params:
        return Importance("-", {}, len(usable), "no config column varies: nothing to assess")
    if len(usable) < 2:
        return Importance("-", {}, len(usable), f"needs at least 2 trials with a {s.metric} "
                          f"value and all searched parameters; have {len(usable)}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = {p: param_kind(s.trials[p], p) for p in s.params}
    dists = {p: _distribution(kinds[p], usable[p]) for p in s.params}
    study = optuna.create_study(direction="minimize" if s.mode == "min" else "maximize")
    for _, row in usable.iterrows():
        params = {p: (int(row[p]) if kinds[p].integer else float(row[p])) if kinds[p].numeric
                  else _py(row[p]) for p in s.params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(row[s.metric])))
    ev, name, note = _evaluator(evaluator, len(usable))
    if len(s.params) == 1:
        note = (note + "; " if note else "") + "one searched parameter: importance 1 by definition"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = optuna.importance.get_param_importances(study, evaluator=ev,
                                                             params=list(s.params))
        except Exception as e:  # noqa: BLE001 - degenerate inputs must not end the report
            return Importance(name, {}, len(usable), f"failed: {_one_line(e)}")
    return Importance(name, dict(values), len(usable), note)


def _evaluator(which: str, n: int):
    """PED-ANOVA (Optuna's default, no extra dependency) or fANOVA (needs scikit-learn).

    PED-ANOVA asks which parameters matter for reaching the top quantile of trials. Its
    default (top 10%) holds one or two trials in a search of tens, so the quantile is the
    top quarter (as in the best-region table), raised to hold 5 trials, at most half.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    note = ""
    if which == "fanova":
        try:
            import sklearn  # noqa: F401
            return FanovaImportanceEvaluator(seed=0), "FanovaImportanceEvaluator(seed=0)", note
        except ImportError:
            note = "fanova needs scikit-learn (not installed): used PED-ANOVA instead"
    q = max(0.25, min(0.5, 5 / n))
    return (PedAnovaImportanceEvaluator(target_quantile=q),
            f"PedAnovaImportanceEvaluator(target_quantile={q:.2f}: what it takes to be in "
            f"the top {q:.0%} of {n} trials)", note)


def best_regions(s: Search, imp: Importance) -> pd.DataFrame:
    """Per searched parameter: where the top quartile of trials lies versus all trials
    (numeric), or the mean metric per choice (categorical)."""
    r = ranked(s)
    k = max(1, math.ceil(len(r) / 4))
    top = r.head(k)
    rows = []
    for p in s.params:
        kind = param_kind(s.trials[p], p)
        row = {"param": p, "importance": imp.values.get(p, np.nan),
               "kind": ("int" if kind.integer else "float") + (" (log)" if kind.log else "")
               if kind.numeric else "categorical"}
        if kind.numeric and len(r):
            row[f"top {k} of {len(r)}"] = _range_text(top[p], p)
            row["all trials"] = _range_text(s.trials[p], p)
            row["per choice: mean metric (n)"] = ""
        elif len(r):
            means = r.groupby(r[p].map(_py), dropna=False)[s.metric].agg(["mean", "count"])
            means = means.sort_values("mean", ascending=s.mode == "min")
            row[f"top {k} of {len(r)}"] = ", ".join(
                f"{_fmt(v, p)} x{n}" for v, n in top[p].map(_py).value_counts().items())
            row["all trials"] = ", ".join(_fmt(c, p) for c in kind.choices)
            row["per choice: mean metric (n)"] = ", ".join(
                f"{_fmt(c, p)}: {m:.4f} ({int(n)})" for c, (m, n) in means.iterrows())
        rows.append(row)
    df = pd.DataFrame(rows)
    per_choice = "per choice: mean metric (n)"
    if per_choice in df.columns and not df[per_choice].astype(bool).any():
        df = df.drop(columns=per_choice)
    return df


def _range_text(values: pd.Series, name: str) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "-"
    lo, hi, med = v.min(), v.max(), v.median()
    if lo == hi:
        return f"{_fmt(lo, name)} (all {len(v)})"
    return f"{_fmt(lo, name)} .. {_fmt(hi, name)} (median {_fmt(med, name)})"


# ---- ASHA and re-training ------------------------------------------------------------


def asha_savings(s: Search) -> dict[str, Any]:
    """Epochs run versus every trial running all its epochs, and stops per rung."""
    t = s.trials
    run = pd.to_numeric(t.get("epochs_run"), errors="coerce").fillna(0)
    has_budget = "num_epochs" in t.columns and t["num_epochs"].notna().all()
    if "num_epochs" in t.columns:
        budget = pd.to_numeric(t["num_epochs"], errors="coerce").fillna(run.max())
    else:  # an old search without config columns: the most epochs any trial ran
        budget = pd.Series(run.max(), index=t.index)
    stopped = t["status"] == "stopped"
    rungs = run[stopped].astype(int).value_counts().sort_index()
    return {
        "trials": len(t), "epochs_run": int(run.sum()), "budget": int(budget.sum()),
        "used_pct": 100.0 * run.sum() / budget.sum() if budget.sum() else float("nan"),
        "saved_by_asha": int((budget - run)[stopped].sum()),
        "saved_other": int((budget - run)[t["status"].isin(NOT_RANKED)].sum()),
        "running": int((t["status"] == "running").sum()),
        "stopped_per_rung": {int(k): int(v) for k, v in rungs.items()},
        "budget_known": has_budget,
    }


def asha_text(a: dict[str, Any]) -> list[str]:
    lines = [f"epochs run: {a['epochs_run']} of {a['budget']} (trials x max epochs) = "
             f"{a['used_pct']:.1f}%; saved {100 - a['used_pct']:.1f}%",
             f"epochs saved by ASHA stops: {a['saved_by_asha']}; by diverged/errored trials: "
             f"{a['saved_other']}"]
    if a["stopped_per_rung"]:
        lines.append("stopped at rung (epochs run): " + ", ".join(
            f"{k}: {v} trial(s)" for k, v in a["stopped_per_rung"].items()))
    else:
        lines.append("no trial was stopped by ASHA")
    if not a["budget_known"]:
        lines.append("note: no num_epochs for some trials: their max epochs is taken as the "
                     "most epochs any trial ran")
    if a["running"]:
        lines.append(f"{a['running']} trial(s) still running: their epochs are not final")
    return lines


def retrain_tables(s: Search) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """(one row per seed, mean ± std per validation/test metric, seeds)."""
    r = s.retrain
    assert r is not None
    r = r.sort_values("seed") if "seed" in r.columns else r
    val = metric_columns(r)
    test = [f"test_{m}" for m in METRIC_ORDER if f"test_{m}" in r.columns]
    cols = [c for c in ("seed", "trial_id", "best_epoch") if c in r.columns] + val + test
    seeds = [int(x) for x in r["seed"].dropna()] if "seed" in r.columns else []
    rows = []
    for m in dict.fromkeys([*val, *(t[5:] for t in test)]):
        row = {"metric": m}
        for split, col in (("validation", m), ("test", f"test_{m}")):
            v = pd.to_numeric(r[col], errors="coerce") if col in r.columns else pd.Series([])
            std = v.std(ddof=1) if v.count() > 1 else 0.0
            row[split] = f"{v.mean():.4f} ± {std:.4f}" if v.count() else "-"
        rows.append(row)
    return r[cols].reset_index(drop=True), pd.DataFrame(rows), seeds


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------


def _isnull(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _fmt(v: Any, col: str = "") -> str:
    """Readable cell text: metrics to 4 decimals, integers as integers, small floats in 3 s.f."""
    if _isnull(v):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if col in METRIC_MODES or col.startswith("test_") or col == "value":
            return f"{v:.4f}"
        if col == "importance":
            return f"{v:.3f}"
        if v.is_integer() and abs(v) < 1e9:
            return str(int(v))
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4g}"
    return str(v)


def format_frame(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: [_fmt(v, str(c)) for v in df[c]] for c in df.columns})


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    f = format_frame(df)
    esc = [[str(x).replace("|", "\\|") for x in row] for row in f.itertuples(index=False)]
    head = "| " + " | ".join(map(str, f.columns)) + " |"
    rule = "|" + "|".join("---" for _ in f.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in esc)])


def text_table(df: pd.DataFrame) -> str:
    return "(none)" if df.empty else format_frame(df).to_string(index=False)


@dataclass
class Section:
    """A titled list of paragraphs (str) and tables (DataFrame): rendered as text or md."""

    title: str
    blocks: list[str | pd.DataFrame] = field(default_factory=list)


def build_sections(searches: list[Search], top: int,
                   imps: dict[str, Importance]) -> list[Section]:
    sections = []
    for s in searches:
        head = Section(f"Search {s.label}", [
            f"location: {s.location}",
            f"{status_counts(s)}; ranked by {s.metric} ({s.mode}); diverged and errored "
            f"trials are never ranked",
            *(f"note: {n}" for n in s.notes)])
        board = leaderboard(s, top).drop(columns="search")
        sections.append(head)
        sections.append(Section(f"Top {min(top, len(board))} trials of {s.label} "
                                f"(validation metrics)", [board]))
        imp = imps[s.label]
        lines = [f"evaluator: optuna {imp.evaluator}, {imp.n_trials} trials; "
                 f"objective {s.metric} ({s.mode})"]
        if imp.message:
            lines.append(f"note: {imp.message}")
        lines.append("best region: where the top quarter of ranked trials lies (numeric), "
                     "mean metric per choice, best first (categorical)")
        blocks: list[str | pd.DataFrame] = [*lines]
        if s.params:
            blocks.append(best_regions(s, imp))
        sections.append(Section(f"Hyperparameter importance ({s.label})", blocks))
        sections.append(Section(f"ASHA ({s.label})", asha_text(asha_savings(s))))
        if s.retrain is not None:
            per_seed, summary, seeds = retrain_tables(s)
            sections.append(Section(f"Re-training ({s.label})", [
                per_seed, f"mean ± std (sample std, ddof=1) over seeds "
                f"{', '.join(map(str, seeds))} (n={len(seeds)}):", summary]))
    if len(searches) > 1:
        sections.append(Section("Best configuration per group (dataset, aligned, modalities)",
                                [best_per_group(searches)]))
    return sections


def render_text(sections: list[Section]) -> str:
    out = []
    for sec in sections:
        out += [sec.title, "=" * len(sec.title)]
        out += [text_table(b) if isinstance(b, pd.DataFrame) else b for b in sec.blocks]
        out.append("")
    return "\n".join(out)


def render_markdown(sections: list[Section], images: list[tuple[str, str]],
                    searches: list[Search]) -> str:
    out = [f"# Search report: {', '.join(s.label for s in searches)}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            out += [markdown_table(b) if isinstance(b, pd.DataFrame) else b, ""]
    if images:
        out += ["## Plots", ""]
        out += [f"### {title}\n\n![{title}]({name})\n" for name, title in images]
    return "\n".join(out)


def machine_output(searches: list[Search], top: int, fmt: str) -> str:
    board = pd.concat([leaderboard(s, top) for s in searches], ignore_index=True)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=1, double_precision=15) + "\n"
    return markdown_table(board) + "\n"


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STATUS_COLORS = {"completed": "tab:blue", "stopped": "tab:orange", "running": "tab:green"}


def plot_curves(searches: list[Search], path: Path, top: int) -> None:
    """Validation metric per epoch: top trials in colour, ASHA-stopped ones in grey."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(searches), figsize=(7 * len(searches), 4.6), squeeze=False)
    for ax, s in zip(axes[0], searches):
        ax.set_title(f"{s.label}: validation {s.metric} per epoch", fontsize=10)
        ep = s.epochs
        if ep is None or ep.empty or s.metric not in ep.columns or "epoch" not in ep.columns:
            ax.text(0.5, 0.5, "no per-epoch data", ha="center", transform=ax.transAxes)
            continue
        best = ranked(s).head(min(top, MAX_CURVES))
        stopped = s.trials.loc[s.trials["status"] == "stopped", "trial_id"]
        values: list[float] = []
        for i, tid in enumerate(stopped):
            x, y = _curve(ep, tid, s.metric)
            if tid not in set(best["trial_id"]):
                ax.plot(x, y, color="0.65", lw=1, marker="o", ms=3, zorder=1,
                        label="stopped by ASHA" if i == 0 else None)
                values += list(y)
        for i, (_, row) in enumerate(best.iterrows()):
            x, y = _curve(ep, row["trial_id"], s.metric)
            ax.plot(x, y, lw=2, marker="o", ms=4, color=f"C{i % 10}", zorder=3,
                    label=f"#{row['rank']} {row['trial_id']} ({row['status']}, "
                          f"{row[s.metric]:.3f})")
            values += list(y)
        for r in sorted(set(pd.to_numeric(s.trials.loc[s.trials["status"] == "stopped",
                                                        "epochs_run"], errors="coerce")
                            .dropna().astype(int))):
            ax.axvline(r, color="0.8", ls=":", lw=1, zorder=0)
        _robust_ylim(ax, values)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (dotted: ASHA rungs where trials stopped)")
        ax.set_ylabel(f"{s.metric} ({'lower' if s.mode == 'min' else 'higher'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve(ep: pd.DataFrame, tid: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    e = ep[ep["trial_id"] == tid].sort_values("epoch")
    y = pd.to_numeric(e[metric], errors="coerce")
    ok = np.isfinite(y.to_numpy(dtype=float))
    return e["epoch"].to_numpy()[ok], y.to_numpy(dtype=float)[ok]


def _robust_ylim(ax, values: list[float]) -> None:
    """Keep one exploding trial from flattening every other curve."""
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size < 2:
        return
    lo, hi = np.percentile(v, 0), np.percentile(v, 98)
    if hi > lo:
        pad = 0.06 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)


def plot_params(searches: list[Search], path: Path, imps: dict[str, Importance]) -> None:
    """Each searched parameter against the metric: scatter (numeric) or box+strip
    (categorical); at most PARAMS_PER_ROW panels a row, each search on its own rows."""
    plt = _pyplot()
    layout = [(s, s.params[i:i + PARAMS_PER_ROW] or [None])
              for s in searches for i in range(0, max(1, len(s.params)), PARAMS_PER_ROW)]
    ncols = max(len(ps) for _, ps in layout)
    fig, axes = plt.subplots(len(layout), ncols, figsize=(4.2 * ncols, 3.5 * len(layout) + 0.4),
                             squeeze=False, layout="constrained")
    for row, (s, params) in zip(axes, layout):
        for ax in row[len(params):]:
            ax.axis("off")
        if params == [None]:
            row[0].text(0.5, 0.5, f"{s.label}: no searched parameters", ha="center")
            row[0].axis("off")
            continue
        r = ranked(s)
        top_ids = set(r.head(max(1, math.ceil(len(r) / 4)))["trial_id"])
        diverged = s.trials[s.trials["status"] == "diverged"]
        for j, (ax, p) in enumerate(zip(row, params)):
            kind = param_kind(s.trials[p], p)
            if kind.numeric:
                _scatter_numeric(ax, r, p, s.metric, top_ids, diverged, kind.log)
            else:
                _strip_categorical(ax, r, p, s.metric, kind.choices)
            imp = imps[s.label].values.get(p)
            ax.set_title(p + (f"  (importance {imp:.2f})" if imp is not None else ""),
                         fontsize=10)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"{s.label}: {s.metric} ({s.mode})", fontsize=9)
            if j == 0 and kind.numeric and p == s.params[0]:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("searched parameters vs the metric (black edge: top quarter of trials; "
                 "x at the top: diverged)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scatter_numeric(ax, r: pd.DataFrame, p: str, metric: str, top_ids: set,
                     diverged: pd.DataFrame, log: bool) -> None:
    for status, g in r.groupby("status"):
        top = g["trial_id"].isin(top_ids)
        ax.scatter(g[p], g[metric], s=np.where(top, 46, 22),
                   color=STATUS_COLORS.get(str(status), "tab:purple"),
                   edgecolors=np.where(top, "black", "none"), linewidths=1, label=str(status))
    if len(diverged) and p in diverged.columns:  # no metric: mark x at the top edge
        ax.plot(diverged[p], np.full(len(diverged), 1.0), "x", color="tab:red", ms=7, mew=2,
                transform=ax.get_xaxis_transform(), clip_on=False, label="diverged")
    if log:  # plain numbers at 1 and 3 per decade: minor labels like 2x10^-4 collide
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _strip_categorical(ax, r: pd.DataFrame, p: str, metric: str, choices: tuple) -> None:
    groups = [r.loc[r[p].map(_py) == c, metric].to_numpy(dtype=float) for c in choices]
    pos = np.arange(len(choices))
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=pos, widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)
    for i, c in enumerate(choices):
        g = r[r[p].map(_py) == c]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(g)), g[metric], s=18, zorder=3,
                   color=[STATUS_COLORS.get(st, "tab:purple") for st in g["status"]])
    ax.set_xticks(pos, [_fmt(c, p) for c in choices], rotation=20)


def plot_parallel(searches: list[Search], path: Path, top: int) -> None:
    """Top trials across the searched parameters (each axis spans the range of all ranked
    trials, so it shows where the best sit in the search space; the metric axis spans the
    shown trials), lines coloured by the metric (dark = better)."""
    plt = _pyplot()
    from matplotlib import cm, colors

    width = max(7.0, 1.7 * (1 + max(len(s.params) for s in searches)))
    fig, axes = plt.subplots(len(searches), 1, figsize=(width, 4.4 * len(searches)),
                             squeeze=False)
    for ax, s in zip(axes[:, 0], searches):
        r = ranked(s)
        shown = r.head(max(top, 2))
        names = [*s.params, s.metric]
        ax.set_title(f"{s.label}: top {len(shown)} of {len(r)} ranked trials", fontsize=10)
        if shown.empty:
            ax.text(0.5, 0.5, "no ranked trials", ha="center", transform=ax.transAxes)
            continue
        scaled, labels = zip(*(_axis_scale(r if n != s.metric else shown, shown, n)
                               for n in names))
        base = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, 256))  # no pale yellow
        cmap = colors.ListedColormap(base if s.mode == "min" else base[::-1])
        vals = shown[s.metric].to_numpy(dtype=float)
        norm = colors.Normalize(vals.min(), vals.max() if vals.max() > vals.min()
                                else vals.min() + 1e-9)
        xs = np.arange(len(names))
        for i in np.argsort(-vals if s.mode == "min" else vals):  # best drawn last
            ys = [col[i] for col in scaled]
            ax.plot(xs, ys, color=cmap(norm(vals[i])), lw=2.2 if i == 0 else 1.4, alpha=0.9)
        for x, ticks in zip(xs, labels):
            ax.axvline(x, color="0.3", lw=0.8)
            if len(ticks) == 2:  # numbers (or two choices): below and above the axis
                ax.text(x, -0.06, ticks[0][1], ha="center", va="top", fontsize=7)
                ax.text(x, 1.06, ticks[1][1], ha="center", va="bottom", fontsize=7)
            else:  # every choice beside the axis at its position
                for y, text in ticks:
                    ax.text(x + 0.04, y, text, ha="left", va="center", fontsize=7,
                            bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5))
        ax.set_xticks(xs, names, fontsize=9)
        ax.tick_params(axis="x", pad=16)
        ax.set_yticks([])
        ax.set_ylim(-0.15, 1.15)
        ax.set_xlim(-0.3, len(names) - 0.7)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02,
                     label=f"{s.metric} ({s.mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _axis_scale(r: pd.DataFrame, shown: pd.DataFrame, name: str
                ) -> tuple[list[float], list[tuple[float, str]]]:
    """Values of `shown` scaled to [0, 1] over the range of `r`, and the axis labels as
    (position, text): min and max for numbers, every choice for categories."""
    kind = param_kind(r[name], name)
    if not kind.numeric:
        k = max(1, len(kind.choices) - 1)
        pos = {c: (i / k if len(kind.choices) > 1 else 0.5) for i, c in enumerate(kind.choices)}
        return ([pos.get(_py(v), 0.5) for v in shown[name]],
                [(pos[c], _fmt(c, name)) for c in kind.choices])
    x_all = pd.to_numeric(r[name], errors="coerce").astype(float)
    x = pd.to_numeric(shown[name], errors="coerce").astype(float)
    if kind.log:
        x_all, x = np.log10(x_all), np.log10(x)
    lo, hi = float(np.nanmin(x_all)), float(np.nanmax(x_all))
    scaled = ((x - lo) / (hi - lo) if hi > lo else x * 0 + 0.5).fillna(0.5).tolist()
    raw = pd.to_numeric(r[name], errors="coerce")
    return scaled, [(0.0, _fmt(raw.min(), name)), (1.0, _fmt(raw.max(), name))]


def write_report(searches: list[Search], sections: list[Section], out: Path, top: int,
                 imps: dict[str, Importance]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = [("curves.png", "Learning curves: top trials and ASHA-stopped trials"),
              ("params.png", "Searched parameters against the metric"),
              ("parallel.png", "Parallel coordinates of the top trials")]
    plot_curves(searches, out / "curves.png", top)
    plot_params(searches, out / "params.png", imps)
    plot_parallel(searches, out / "parallel.png", top)
    md = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(render_markdown(sections, images, searches))
    os.replace(tmp, md)
    return md


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (via AnalyzeError)
        raise AnalyzeError(f"{self.prog}: {message}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _Parser(prog="analyze.py", description="Leaderboard, importance, ASHA savings and "
                "plots of searches, from their Parquet files only.")
    p.add_argument("searches", nargs="+", metavar="STORAGE/NAME", help="search folder(s)")
    p.add_argument("--top", type=int, default=10, help="trials in the leaderboard (10)")
    p.add_argument("--metric", help="sort by this validation metric instead of the search's")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table: the full report; csv/json/md: the leaderboard only")
    p.add_argument("--out", help="report folder (default STORAGE/NAME/report of the first)")
    p.add_argument("--no-report", action="store_true", help="print only; write no files")
    p.add_argument("--importance", choices=EVALUATORS, default="ped-anova",
                   help="Optuna evaluator: ped-anova (default) or fanova (needs scikit-learn)")
    args = p.parse_args(list(argv))
    if args.top < 1:
        raise AnalyzeError(f"--top {args.top}: expected an integer >= 1")
    if args.metric:
        try:
            metric_mode(args.metric)
        except ValueError as e:
            raise AnalyzeError(f"--metric: {e}") from None
    return args


def default_out(first: Search) -> Path:
    if "://" in first.location:  # remote storage: write the report here instead
        return Path.cwd() / f"{first.label}-report"
    return Path(first.location) / "report"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        searches = load_searches(args.searches, args.metric)
    except AnalyzeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if args.format != "table":
        sys.stdout.write(machine_output(searches, args.top, args.format))
    imps = {s.label: importance(s, args.importance) for s in searches}
    sections = build_sections(searches, args.top, imps)
    if args.format == "table":
        print(render_text(sections))
    if args.no_report:
        return 0
    out = Path(args.out) if args.out else default_out(searches[0])
    try:
        md = write_report(searches, sections, out, args.top, imps)
    except OSError as e:
        print(f"error: cannot write the report to {out}: {_one_line(e)}", file=sys.stderr)
        return 1
    if args.format == "table":
        print(f"report: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
