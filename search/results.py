"""The search's results store: Parquet dataset folders, one file per trial.

Why one file per trial: a trial's rows are rewritten whole (temporary name, then
rename) whenever it reports, so a crash never leaves a torn file, a resumed search
overwrites rather than duplicates, and the cost of a write depends on that trial
alone, not on how many trials came before. `pandas.read_parquet(folder)` reads them
all. Schema: docs/results.md. No Ray here: the driver's callback feeds it.
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

from ucrn.metrics import IEMOCAP_METRICS, REGRESSION_METRICS
from ucrn.train import TrainConfig

TRIALS, EPOCHS, RETRAIN = "trials.parquet", "epochs.parquet", "retrain.parquet"
STATUSES = ("running", "completed", "stopped", "diverged", "errored")
METRICS = ("loss", *REGRESSION_METRICS, *IEMOCAP_METRICS)

_FIXED_TYPES: dict[str, pa.DataType] = {
    "search": pa.string(), "trial_id": pa.string(), "status": pa.string(), "error": pa.string(),
    "best_epoch": pa.int64(), "epochs_run": pa.int64(), "epoch": pa.int64(), "seed": pa.int64(),
    "wall_seconds": pa.float64(), "samples_per_s": pa.float64(), "peak_gpu_mem_mb": pa.float64(),
    "checkpoint": pa.string(), "node": pa.string(), "node_id": pa.string(),
    "executor": pa.string(), "search_metric": pa.string(), "search_mode": pa.string(),
    "resumes": pa.int64(), "retrain_trial": pa.string(),
    "train_loss": pa.float64(), "mjs": pa.float64(), "current_lr": pa.float64(),
    "seconds": pa.float64(),
}


def _config_type(default: Any) -> pa.DataType:
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, int):
        return pa.int64()
    if isinstance(default, float):
        return pa.float64()
    return pa.string()


CONFIG_TYPES = {f.name: _config_type(f.default) for f in fields(TrainConfig)}
CONFIG_KEYS = tuple(CONFIG_TYPES)


def column_type(name: str) -> pa.DataType:
    """One type per column name across every file, so the folders read as one table."""
    if name in CONFIG_TYPES:
        return CONFIG_TYPES[name]
    if name in _FIXED_TYPES:
        return _FIXED_TYPES[name]
    return pa.float64()  # metrics, test_ metrics


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
    """STORAGE/NAME on a local disk or any pyarrow filesystem URI (s3://, gs://, ...)."""

    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        if "://" in uri and not uri.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(uri.removeprefix("file://")).resolve())
        self.uri = uri

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _atomic_write(self, final: str, write) -> None:
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{name}.{os.getpid()}.tmp"  # dot-files are invisible to dataset readers
        write(tmp)
        self.fs.move(tmp, final)

    def write_rows(self, folder: str, key: str, rows: list[dict[str, Any]]) -> None:
        table = to_table(rows)
        self._atomic_write(self.path(folder, f"{_safe(key)}.parquet"),
                           lambda p: pq.write_table(table, p, filesystem=self.fs))

    def read_rows(self, folder: str) -> dict[str, list[dict[str, Any]]]:
        """Rows per file key; unreadable files are skipped (they are rewritten on the
        trial's next report)."""
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
                continue
            out[base.removesuffix(".parquet")] = rows
        return out

    def write_json(self, name: str, obj: Any) -> None:
        data = (json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n").encode()

        def write(p: str) -> None:
            with self.fs.open_output_stream(p) as f:
                f.write(data)

        self._atomic_write(self.path(name), write)

    def read_json(self, name: str) -> Any | None:
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> str:
        def write(p: str) -> None:
            with self.fs.open_output_stream(p) as f:
                f.write(data)

        self._atomic_write(self.path(name), write)
        return self.path(name) if isinstance(self.fs, pafs.LocalFileSystem) else \
            f"{self.uri.rstrip('/')}/{name}"


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


class TrialBook:
    """The driver's record of every trial: epoch rows and one summary row per trial.

    Epoch rows are keyed by (trial, epoch) and upserted, so a replayed or repeated
    report never duplicates a row. On resume the book is reloaded from the files.
    """

    def __init__(self, store: ResultsStore, search: str, metric: str, mode: str,
                 executor: str, prefix: str = ""):
        self.store, self.search, self.metric, self.mode = store, search, metric, mode
        self.executor = executor
        # re-training runs keep their own rows (prefix "retrain/"), apart from the search's
        self.trials_dir, self.epochs_dir = prefix + TRIALS, prefix + EPOCHS
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.trials: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        for rows in self.store.read_rows(self.epochs_dir).values():
            for row in rows:
                self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = row
        for rows in self.store.read_rows(self.trials_dir).values():
            for row in rows:
                self.trials[row["trial_id"]] = row

    def add_result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """Record one reported epoch (upsert) and refresh the trial's summary."""
        epoch = int(result["epoch"])
        row = {"search": self.search, "trial_id": trial_id, "epoch": epoch}
        row.update({k: result[k] for k in ("train_loss", "mjs", "current_lr", "seconds",
                                           "node_id") if k in result})
        row.update({k: result[k] for k in METRICS if k in result})
        row.update(config)
        if epoch >= 1:
            self.epochs.setdefault(trial_id, {})[epoch] = row
            self.store.write_rows(self.epochs_dir, trial_id, self._epoch_rows(trial_id))
        info = self.trials.get(trial_id, {})
        extra = {k: result[k] for k in ("node", "node_id", "samples_per_s", "peak_gpu_mem_mb",
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
            "peak_gpu_mem_mb": extra.get("peak_gpu_mem_mb", prev.get("peak_gpu_mem_mb", math.nan)),
            "checkpoint": extra.get("checkpoint", prev.get("checkpoint")),
            "node": extra.get("node", prev.get("node")),
            "node_id": extra.get("node_id", prev.get("node_id")),
            "resumes": extra.get("resumes", prev.get("resumes") or 0),
            "executor": self.executor, "search_metric": self.metric, "search_mode": self.mode,
        })
        summary.update({k: config.get(k) for k in CONFIG_KEYS if k in config})
        self.trials[trial_id] = summary
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


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
