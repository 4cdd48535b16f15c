"""The search's results store: Parquet dataset folders, one file per trial.

Why one file per trial: a trial's rows are rewritten whole (temporary name, then
rename) whenever it reports, so a crash never leaves a torn file, a resumed search
overwrites rather than duplicates, and the cost of a write depends on that trial
alone, not on how many trials came before. `pandas.read_parquet(folder)` reads them
all. Names and types come from search/schema.py (docs/results.md). No Ray here: the
driver's callback feeds it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from search.schema import (
    EPOCHS,
    FILE_COLUMNS,
    GPU_MEMORY,
    METRICS,
    RETRAIN,
    ROBUSTNESS,
    STATUSES,
    TRIALS,
    SchemaError,
    check_config_fields,
    config_type,
)
from search.schema import column_type as _schema_type
from ucrn.config import TrainConfig
from ucrn.fileio import atomic_write, child_uri, is_uri, json_bytes, open_uri

__all__ = ["CONFIG_KEYS", "CONFIG_TYPES", "EPOCHS", "METRICS", "RETRAIN", "ROBUSTNESS",
           "STATUSES", "TRIALS",
           "ResultsStore", "TrialBook", "column_type", "to_table"]

# Config fields are columns by their own names: a field named like a result column would
# overwrite it in every row (as `mjs` once did), so importing the writer refuses that.
check_config_fields((f.name for f in fields(TrainConfig)), "ucrn.config.TrainConfig")
CONFIG_TYPES = {f.name: config_type(f.default) for f in fields(TrainConfig)}
CONFIG_KEYS = tuple(CONFIG_TYPES)
# epoch columns taken from a trial's report (the rest are the book's own or the config)
_EPOCH_REPORTED = tuple(c for c in FILE_COLUMNS[EPOCHS] if c not in ("search", "trial_id",
                                                                     "epoch"))


def column_type(name: str) -> pa.DataType:
    """The schema's type of a column (search/schema.py); SchemaError for undeclared names."""
    return _schema_type(name, CONFIG_TYPES)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    schema = pa.schema([(n, column_type(n)) for n in names])
    cols = {n: [_cell(r.get(n), schema.field(n).type) for r in rows] for n in names}
    return pa.table(cols, schema=schema)


def _cell(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_integer(typ):
        return int(value) if not (isinstance(value, float) and math.isnan(value)) else None
    if pa.types.is_string(typ):
        return str(value)
    return value


class ResultsStore:
    """STORAGE/NAME on a local disk or any pyarrow filesystem URI (s3://, gs://, ...).
    Every file is written whole or not at all (ucrn.fileio.atomic_write)."""

    MAX_JSON_BYTES = 16 << 20

    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        if is_uri(uri):
            self.fs, self.root = open_uri(uri)  # credentials in the URI: refused
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(uri.removeprefix("file://")).expanduser().resolve())
        self.uri = uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def location(self) -> str:
        """What other processes (Ray's) get: an absolute folder, or the URI."""
        return self.root if self.is_local else self.uri

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def show(self, *parts: str) -> str:
        """A file's name for the user: its local path, or its URI."""
        return self.path(*parts) if self.is_local else child_uri(self.uri, *parts)

    def _write(self, name: str, write: Any) -> None:
        atomic_write(self.path(name), write, fs=None if self.is_local else self.fs)

    def write_rows(self, folder: str, key: str, rows: list[dict[str, Any]]) -> None:
        table = to_table(rows)
        self._write(f"{folder}/{_safe(key)}.parquet", lambda f: pq.write_table(table, f))

    def read_rows(self, folder: str, unreadable: list[str] | None = None
                  ) -> dict[str, list[dict[str, Any]]]:
        """Rows per file key. An unreadable file is skipped and its key appended to
        `unreadable`, so that the caller can rebuild it or say it is lost."""
        out: dict[str, list[dict[str, Any]]] = {}
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            base = info.base_name
            if info.type != pafs.FileType.File or base.startswith((".", "_")):
                continue
            if not base.endswith(".parquet"):
                continue
            try:
                rows = pq.read_table(info.path, filesystem=self.fs).to_pylist()
            except (pa.ArrowException, OSError):
                if unreadable is not None:
                    unreadable.append(base.removesuffix(".parquet"))
                continue
            out[base.removesuffix(".parquet")] = rows
        return out

    def write_json(self, name: str, obj: Any) -> None:
        self._write(name, json_bytes(obj))

    def read_json(self, name: str, missing_ok: bool = True) -> Any | None:
        """The parsed file, or None when it does not exist (with `missing_ok`); anything
        unreadable (not a regular file, too big, not UTF-8 JSON) is one ValueError line."""
        path = self.path(name)
        if self.is_local:
            if missing_ok and not os.path.lexists(path):
                return None
            from ucrn.safeload import load_json

            return load_json(path, name)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound and missing_ok:
            return None
        if info.type != pafs.FileType.File or (info.size or 0) > self.MAX_JSON_BYTES:
            raise ValueError(f"{self.uri}/{name}: not a JSON file of at most "
                             f"{self.MAX_JSON_BYTES >> 20} MB")
        with self.fs.open_input_stream(path) as f:
            data = f.read()
        try:
            return json.loads(data.decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"{self.uri}/{name}: not valid JSON ({type(e).__name__})") from None

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def list(self) -> list[str]:
        """Names of the files and folders directly in STORAGE/NAME."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector)]

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(name))

    def write_bytes(self, name: str, data: bytes) -> str:
        self._write(name, data)
        return self.show(name)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


class TrialBook:
    """The driver's record of every trial: epoch rows and one summary row per trial.

    Epoch rows are keyed by (trial, epoch) and upserted, so a replayed or repeated
    report never duplicates a row. On resume the book is reloaded from the files.
    """

    def __init__(self, store: ResultsStore, search: str, metric: str, mode: str,
                 executor: str, prefix: str = "", read_only: bool = False):
        self.store, self.search, self.metric, self.mode = store, search, metric, mode
        self.executor = executor
        self.read_only = read_only  # another search's book (a warm start): never written
        # re-training runs keep their own rows (prefix "retrain/"), apart from the search's
        self.trials_dir, self.epochs_dir = prefix + TRIALS, prefix + EPOCHS
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.trials: dict[str, dict[str, Any]] = {}

    def load(self) -> list[str]:
        """Read the files back (a resumed search, the summary). A trial file that cannot be
        read (damaged since) is rebuilt from the trial's epoch rows and rewritten (only in
        memory when read_only); the returned notes say which files were damaged and what
        became of them."""
        bad_epochs: list[str] = []
        bad_trials: list[str] = []
        for rows in self.store.read_rows(self.epochs_dir, bad_epochs).values():
            for row in rows:
                self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = _conform(row)
        for rows in self.store.read_rows(self.trials_dir, bad_trials).values():
            for row in rows:
                self.trials[row["trial_id"]] = _conform(row)
        notes = [f"{self.store.show(self.epochs_dir, k + '.parquet')} is unreadable: that "
                 f"trial's per-epoch rows are lost" for k in bad_epochs]
        for key in bad_trials:
            path = self.store.show(self.trials_dir, key + ".parquet")
            tid = next((t for t in self.epochs if _safe(t) == key), None)
            if tid is None or tid in self.trials:
                notes.append(f"{path} is unreadable and trial {key} has no epoch rows: it is "
                             f"left out")
                continue
            rows = self._epoch_rows(tid)
            config = {k: rows[-1][k] for k in CONFIG_KEYS if k in rows[-1]}
            self.finish(tid, config)
            notes.append(f"{path} was unreadable: trial {tid} rebuilt from its {len(rows)} "
                         f"epoch row(s) as {self.trials[tid]['status']}")
        return notes

    def add_result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """Record one reported epoch (upsert) and refresh the trial's summary. A report
        re-sent from a checkpoint has its epoch under `replayed_epoch` (search/trial.py)."""
        epoch = int(result["epoch"] if "epoch" in result else result["replayed_epoch"])
        row = {"search": self.search, "trial_id": trial_id, "epoch": epoch}
        row.update({k: result[k] for k in _EPOCH_REPORTED if k in result})
        row.update({k: result[k] for k in METRICS if k in result})
        row.update(config)
        if epoch >= 1:
            self.epochs.setdefault(trial_id, {})[epoch] = row
            self.store.write_rows(self.epochs_dir, trial_id, self._epoch_rows(trial_id))
        info = self.trials.get(trial_id, {})
        extra = {k: result[k] for k in ("node", "node_id", "samples_per_s", *GPU_MEMORY,
                                        "checkpoint") if result.get(k) is not None}
        if result.get("replay") and epoch == 1:  # a restarted run re-reports from its checkpoint
            extra["resumes"] = int(info.get("resumes") or 0) + 1
        status = "diverged" if result.get("diverged") else info.get("status", "running")
        self._summarise(trial_id, config, status, info.get("error"),
                        wall=result.get("wall_seconds", info.get("wall_seconds")), extra=extra)

    def finish(self, trial_id: str, config: dict[str, Any], status: str | None = None,
               error: str | None = None) -> dict[str, Any]:
        """Close a trial: completed (all epochs), stopped (early, by ASHA), diverged or errored."""
        info = self.trials.get(trial_id, {})
        if status is None:
            if info.get("status") == "diverged":
                status = "diverged"
            else:
                done = len(self.epochs.get(trial_id, {}))
                status = "completed" if done >= int(config.get("num_epochs", 0)) else "stopped"
        return self._summarise(trial_id, config, status, error, wall=info.get("wall_seconds"),
                               extra={})

    def _epoch_rows(self, trial_id: str) -> list[dict[str, Any]]:
        return [self.epochs[trial_id][e] for e in sorted(self.epochs[trial_id])]

    def _summarise(self, trial_id: str, config: dict[str, Any], status: str, error: str | None,
                   wall: Any, extra: dict[str, Any]) -> dict[str, Any]:
        rows = self._epoch_rows(trial_id) if trial_id in self.epochs else []
        best = self._best_row(rows)
        prev = self.trials.get(trial_id, {})
        summary: dict[str, Any] = {
            "search": self.search, "trial_id": trial_id, "status": status, "error": error,
            "best_epoch": best["epoch"] if best else None, "epochs_run": len(rows),
        }
        summary.update({k: (best or {}).get(k, math.nan) for k in METRICS
                        if best is not None and k in best})
        summary.update({
            "wall_seconds": wall if wall is not None else math.nan,
            "samples_per_s": extra.get("samples_per_s", prev.get("samples_per_s", math.nan)),
            **{k: extra.get(k, prev.get(k, math.nan)) for k in GPU_MEMORY},
            "checkpoint": extra.get("checkpoint", prev.get("checkpoint")),
            "node": extra.get("node", prev.get("node")),
            "node_id": extra.get("node_id", prev.get("node_id")),
            "resumes": extra.get("resumes", prev.get("resumes") or 0),
            "executor": self.executor, "search_metric": self.metric, "search_mode": self.mode,
        })
        summary.update({k: config.get(k) for k in CONFIG_KEYS if k in config})
        self.trials[trial_id] = summary
        if not self.read_only:
            self.store.write_rows(self.trials_dir, trial_id, [summary])
        return summary

    def _best_row(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        scored = [r for r in rows if _finite(r.get(self.metric))]
        if not scored:
            return rows[-1] if rows else None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda r: r[self.metric])

    def best_trial(self) -> dict[str, Any] | None:
        """The best finished trial; diverged, errored and running trials never qualify."""
        ok = [t for t in self.trials.values()
              if t["status"] in ("completed", "stopped") and _finite(t.get(self.metric))]
        if not ok:
            return None
        pick = min if self.mode == "min" else max
        return pick(ok, key=lambda t: t[self.metric])


def _conform(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older writer, as the schema types it now, so that a resumed search can
    rewrite it: columns no longer known are dropped, values of the wrong type (the string
    config `mjs` in the float column `mjs`) become null."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        try:
            out[name] = _cell(value, column_type(name))
        except SchemaError:
            continue
        except (TypeError, ValueError, OverflowError):
            out[name] = None
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
