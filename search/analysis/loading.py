"""Search folders (local or any pyarrow URI) as `Search` objects: rows, notes, space.

Why notes rather than errors for old or odd content: a search's results stay readable
across versions of the writer. Older files are read as the schema says the columns are
now: a declared numeric column holding text (epochs' `mjs`, overwritten by the config
string before the config field was renamed `mjs_variant`) is treated as missing, with a
note; an unusable search.json only costs the parameter kinds, with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

import search.schema as schema
from search.analysis.files import (
    AnalyzeError,
    concat,
    file_info,
    filesystem,
    read_files,
    read_json,
)
from search.analysis.kinds import ParamKind, parse_space
from ucrn.fileio import display_uri, is_uri, local_path
from ucrn.metrics import METRIC_MODES, metric_mode


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
    space: dict[str, ParamKind] = field(default_factory=dict)  # from search.json
    robustness: pd.DataFrame | None = None  # robustness.parquet, after --retrain
    warnings: list[str] = field(default_factory=list)  # files left out or rebuilt


def _numeric_as_declared(df: pd.DataFrame | None, file: str) -> tuple[pd.DataFrame | None,
                                                                      list[str]]:
    """Declared numeric columns of `file` that hold text: numbers kept, the rest missing."""
    if df is None or df.empty:
        return df, []
    notes = []
    for col in schema.file_columns(file):
        typ = schema.declared_type(col)
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]) or not (
                pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = df[col][df[col].notna() & num.isna()]
        if len(bad):
            why = (" (a search written before the config field mjs was renamed mjs_variant)"
                   if col == "mjs" else "")
            notes.append(f"{file}: column {col!r} holds non-numeric values (e.g. "
                         f"{bad.iloc[0]!r}) in {len(bad)} row(s): treated as missing{why}")
        df = df.assign(**{col: num.astype(float)})
    return df, notes


def _with_search_name(df: pd.DataFrame | None, default: str) -> pd.DataFrame | None:
    if df is None or df.empty:
        return df
    df = df.copy()
    if "search" not in df.columns:
        df["search"] = default
    df["search"] = df["search"].fillna(default).astype(str)
    return df


def load_search(path: str) -> Search:
    """Read one search folder; AnalyzeError (one line, naming the path) if unusable. Every
    file goes through search/schema.py check_results, as for every reader of the results:
    one that does not hold what the schema says is named in a warning and left out, and a
    trial whose summary row is damaged or missing is rebuilt from its epoch rows."""
    if not is_uri(path):  # file:///PATH is that path: its report beside it, as for PATH
        try:
            path = local_path(path)
        except ValueError as e:
            raise AnalyzeError(str(e)) from None
    fs, base = filesystem(path)
    shown = display_uri(path) if is_uri(path) else path.rstrip("/")  # one spelling
    info = file_info(fs, base, shown)
    if info.type == pafs.FileType.NotFound:
        raise AnalyzeError(f"{shown}: no such file or directory")
    if info.type != pafs.FileType.Directory:
        raise AnalyzeError(f"{shown}: not a folder; expected a search folder STORAGE/NAME")
    found = {f: read_files(fs, f"{base}/{f}", f"{shown}/{f}") for f in schema.FILES}
    meta, why = read_json(fs, f"{base}/{schema.SEARCH_JSON}")
    if found[schema.TRIALS] is None and (why is not None or found[schema.EPOCHS] is None):
        what = (f"only {schema.EPOCHS}/" if found[schema.EPOCHS] is not None
                else f"no {schema.TRIALS}/")
        raise AnalyzeError(f"{shown}: {what} here, nothing to rank; expected a search folder "
                           f"STORAGE/NAME with {schema.TRIALS}/ (see docs/results.md)")
    read = {f: r[0] for f, r in found.items() if r is not None}
    read.setdefault(schema.TRIALS, {})  # gone, beside search.json: rebuilt from the epochs
    metric, mode = _search_metric(_raw_rows(read[schema.TRIALS]),
                                  meta if isinstance(meta, dict) else {})
    epochs_found = found[schema.EPOCHS]
    checked = schema.check_results(
        read, lambda f, k: f"{shown}/{f}/{k}.parquet" if k else f"{shown}/{f}", metric, mode,
        mtimes=epochs_found[1] if epochs_found else None)
    frames, notes = {}, []
    for file in schema.FILES:
        df = concat(list(checked.tables[file].values())) if file in read else None
        frames[file], more = _numeric_as_declared(df, file)
        notes += more
    trials = frames[schema.TRIALS]
    if trials is None or trials.empty:
        if checked.warnings:
            raise AnalyzeError(f"{shown}/{schema.TRIALS}: no usable trial rows: "
                               f"{checked.warnings[0]}")
        raise AnalyzeError(f"{shown}/{schema.TRIALS}: no trial rows yet "
                           f"(the search may have just started)")
    name = base.rstrip("/").rsplit("/", 1)[-1]
    trials = _with_search_name(trials, name)
    trials = trials.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
    trials["status"] = trials["status"].astype(str)
    names = trials["search"].value_counts()
    label = name if name in names.index else str(names.index[0])
    retrain, robust = frames[schema.RETRAIN], frames[schema.ROBUSTNESS]
    search = Search(label=label, location=shown, trials=trials,
                    epochs=_with_search_name(frames[schema.EPOCHS], name),
                    retrain=_with_search_name(retrain, name) if retrain is not None
                    and not retrain.empty else None,
                    robustness=robust if robust is not None and not robust.empty else None,
                    warnings=checked.warnings)
    if len(names) > 1:  # e.g. another run writing into this folder: shown, not hidden
        search.notes.append(f"{schema.TRIALS} holds rows of several searches: " + ", ".join(
            f"{k} ({v})" for k, v in names.items()))
    if search.epochs is None:
        search.notes.append(f"no {schema.EPOCHS}/: no learning curves")
    search.notes.extend(checked.notes + notes)
    if why is None:
        search.space, space_notes = parse_space(meta)
        search.notes.extend(space_notes)
    else:
        search.notes.append(f"{why}: parameter kinds are inferred from values")
    search.metric, search.mode = _search_metric(trials, meta if isinstance(meta, dict) else {})
    return search


def _raw_rows(tables: dict[str, pa.Table | str]) -> pd.DataFrame:
    """The trials files as read, their columns and search_metric/search_mode cells: the
    search's metric is known before the files are checked against it."""
    cols = ("search_metric", "search_mode")
    read = [t for t in tables.values() if isinstance(t, pa.Table) and t.num_rows]
    rows = [{c: t.column(c)[0].as_py() for c in cols if c in t.column_names} for t in read]
    names = dict.fromkeys([*cols, *(c for t in read for c in t.column_names)])
    return pd.DataFrame(rows, columns=list(names))


def _first(df: pd.DataFrame, col: str) -> str | None:
    if col not in df.columns:
        return None
    values = df[col].dropna()
    return str(values.mode().iloc[0]) if len(values) else None


def _search_metric(trials: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    """The search's own objective; else search.json's; else MAE (loss without MAE), min."""
    meta_metric, meta_mode = meta.get("metric"), meta.get("mode")
    metric = _first(trials, "search_metric") or (meta_metric if isinstance(meta_metric, str)
                                                 else None)
    mode = _first(trials, "search_mode") or (meta_mode if isinstance(meta_mode, str) else None)
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
            have = ", ".join(c for c in schema.METRICS if c in s.trials.columns) or "none"
            raise AnalyzeError(f"{s.location}/{schema.TRIALS}: no column {s.metric!r} to rank "
                               f"by (metric columns here: {have})")
        s.params = varying_params(s.trials)
    return searches


def config_columns(df: pd.DataFrame) -> list[str]:
    """schema.CONFIG_RULE: every column the schema does not declare is a config field
    (no torch needed to import the training config)."""
    return [c for c in df.columns if c not in schema.DECLARED and not str(c).startswith("_")]


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
