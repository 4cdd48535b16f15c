"""The search's results store: Parquet dataset folders, one file per trial.

Why one file per trial: a trial's rows are rewritten whole (temporary name, then
rename) whenever it reports, so a crash never leaves a torn file, a resumed search
overwrites rather than duplicates, and the cost of a write depends on that trial
alone, not on how many trials came before. `pandas.read_parquet(folder)` reads them
all. Names and types come from search/schema.py (docs/results.md). No Ray here: the
driver's callback feeds it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import fields
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from search.schema import (
    BEST_CONFIG,
    BEST_TRIAL,
    EPOCHS,
    FILE_COLUMNS,
    GPU_MEMORY,
    METRICS,
    RETRAIN,
    ROBUSTNESS,
    STATUSES,
    TRIALS,
    SchemaError,
    best_epoch_row,
    check_config_fields,
    check_results,
    config_type,
    file_key,
    same_value,
)
from search.schema import column_type as _schema_type
from ucrn.config import TrainConfig
from ucrn.fileio import atomic_write, child_uri, is_uri, json_bytes, local_folder, open_uri

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
            self.root = str(local_folder(uri))  # ValueError: a file URI it refuses
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
        self._write(f"{folder}/{file_key(key)}.parquet", lambda f: pq.write_table(table, f))

    def read_tables(self, folder: str) -> tuple[dict[str, pa.Table | str], dict[str, float]]:
        """Each file of a dataset folder by its key: its table, or why it cannot be read;
        and each file's modification time. Temporary and hidden files are skipped."""
        out: dict[str, pa.Table | str] = {}
        mtimes: dict[str, float] = {}
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            base = info.base_name
            if info.type != pafs.FileType.File or base.startswith((".", "_")) \
                    or not base.endswith(".parquet"):
                continue
            key = base.removesuffix(".parquet")
            mtimes[key] = info.mtime.timestamp() if info.mtime is not None else 0.0
            try:
                out[key] = pq.read_table(info.path, filesystem=self.fs)
            except (pa.ArrowException, OSError) as e:
                out[key] = f"was unreadable ({type(e).__name__})"
        return out, mtimes

    def read_rows(self, folder: str, unreadable: list[str] | None = None
                  ) -> dict[str, list[dict[str, Any]]]:
        """Rows per file key, as they are (benchmarks; readers of a search's results go
        through TrialBook, which checks them). An unreadable file is skipped and its key
        appended to `unreadable`."""
        tables, _ = self.read_tables(folder)
        if unreadable is not None:
            unreadable += [k for k, t in tables.items() if isinstance(t, str)]
        return {k: t.to_pylist() for k, t in tables.items() if not isinstance(t, str)}

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
        from ucrn.safeload.textfiles import parse_json

        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ValueError(f"{self.uri}/{name}: not valid JSON (not UTF-8)") from None
        return parse_json(text, f"{self.uri}/{name}", expect=None)  # duplicate keys refused

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
        """Read the files back (a resumed search, the summary, --retrain --trial, a warm
        start's source), each checked against search/schema.py (check_results, as
        analyze.py does): a file that does not hold what the schema says is left out, and a
        trial whose summary row is damaged, disagrees with its epoch rows or is missing is
        rebuilt from them and rewritten (only in memory when read_only). Returns one line
        per file left out or rebuilt, then notes."""
        # The trials rows first: a writer writes them after the epoch rows, so a row read
        # first never runs ahead of its epoch rows. A read-only book is another search's,
        # which may be running: a lone new first epoch there is a trial just started.
        read: dict[str, dict[str, pa.Table | str]] = {}
        read[TRIALS], _ = self.store.read_tables(self.trials_dir)
        read[EPOCHS], mtimes = self.store.read_tables(self.epochs_dir)
        folder = {TRIALS: self.trials_dir, EPOCHS: self.epochs_dir}
        checked = check_results(
            read, lambda f, k: self.store.show(folder[f], k + ".parquet"), self.metric,
            self.mode, CONFIG_TYPES, mtimes if self.read_only else None)
        for table in checked.tables[EPOCHS].values():
            for row in table.to_pylist():
                self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = _conform(row)
        for key, table in checked.tables[TRIALS].items():
            row = _conform(table.to_pylist()[0])
            if key in checked.rebuilt:
                row = {**row, "search": row.get("search") or self.search,
                       "executor": self.executor or None}
                if not self.read_only:
                    self.store.write_rows(self.trials_dir, row["trial_id"], [row])
            self.trials[row["trial_id"]] = row
        return checked.warnings + checked.notes

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
        status = "diverged" if result.get("diverged") else (  # rebuilt, yet reporting: it runs
            "running" if info.get("rebuilt") else info.get("status", "running"))
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
            "rebuilt": None,  # written as it reported (schema.rebuild_trial says otherwise)
        })
        summary.update({k: config.get(k) for k in CONFIG_KEYS if k in config})
        self.trials[trial_id] = summary
        if not self.read_only:
            self.store.write_rows(self.trials_dir, trial_id, [summary])
        return summary

    def _best_row(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return best_epoch_row(rows, self.metric, self.mode)

    def best_trial(self) -> dict[str, Any] | None:
        """The best finished trial; diverged, errored and running trials never qualify."""
        ok = [t for t in self.trials.values()
              if t["status"] in ("completed", "stopped") and _finite(t.get(self.metric))]
        if not ok:
            return None
        pick = min if self.mode == "min" else max
        return pick(ok, key=lambda t: t[self.metric])

    # ---- best_config.json: never rewritten from less than it was chosen from -------------

    def keep_best_config(self, config: dict[str, Any]) -> str | None:
        """Why best_config.json must stay as it is rather than become `config` (None: write
        it). It was chosen from the trials best_trial.json records with their statuses and
        values; a --resume that no longer reads all of them as they were (a trial file
        damaged, deleted, rebuilt as another status) chooses from less, and once rewrote it
        to a worse trial. Tune retries errored trials on --resume, so only they may change,
        and not by a rebuild. And the file must be what the record chose, or at least the
        config of a finished trial read now (an older search without a record, a write cut
        between the two files): one edited by hand is never overwritten."""
        name = self.store.show(BEST_CONFIG)
        try:
            existing = self.store.read_json(BEST_CONFIG)
        except ValueError as e:
            existing = str(e)
        if existing is None:
            return None
        try:
            record = self.store.read_json(BEST_TRIAL)
        except ValueError:
            record = None
        trials = record.get("trials") if isinstance(record, dict) else None
        if isinstance(trials, dict) and record.get("metric") == self.metric:
            lost = [tid for tid, was in trials.items() if self._changed(tid, was)]
            if lost:
                return (f"{name} kept as it was (trial {record.get('trial_id')}, {self.metric} "
                        f"{record.get('value')}): it was chosen from {len(trials)} trials, "
                        f"and {len(lost)} of them are missing or changed now "
                        f"({', '.join(sorted(lost)[:5])}); restore their files, or delete "
                        f"{name} to have it chosen from what is here")
            if isinstance(existing, dict) and config_digest(existing) == record.get("config"):
                return None
        if isinstance(existing, dict) and any(
                self._eligible(t) and _same_config(t, existing) for t in self.trials.values()):
            return None
        return (f"{name} kept as it was: it is neither the config {BEST_TRIAL} records nor "
                f"that of a finished trial read now (edited by hand, or its trial's file "
                f"damaged or gone?); delete it to have it chosen from what is here")

    def write_best_config(self, best: dict[str, Any], config: dict[str, Any]) -> None:
        """best_config.json, then the record of what it was chosen from (cut between the
        two, the file is still a finished trial's config: the next write goes ahead)."""
        self.store.write_json(BEST_CONFIG, config)
        self.store.write_json(BEST_TRIAL, {
            "trial_id": best["trial_id"], "metric": self.metric, "mode": self.mode,
            "value": best.get(self.metric), "config": config_digest(config),
            "trials": {tid: [t.get("status"), t.get(self.metric)]
                       for tid, t in sorted(self.trials.items())}})

    def _eligible(self, t: dict[str, Any]) -> bool:
        return t.get("status") in ("completed", "stopped") and _finite(t.get(self.metric))

    def _changed(self, tid: str, was: Any) -> bool:
        now = self.trials.get(tid)
        if now is None or not isinstance(was, list) or len(was) != 2:
            return True
        if was[0] == "errored" and not now.get("rebuilt"):
            return False  # Tune retried it on --resume
        return now.get("status") != was[0] or not same_value(now.get(self.metric), was[1])


def config_digest(config: dict[str, Any]) -> str:
    """A config's fingerprint in best_trial.json: which best_config.json it chose."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _same_config(row: dict[str, Any], config: dict[str, Any]) -> bool:
    try:
        mine = TrainConfig.from_dict({k: row[k] for k in CONFIG_KEYS if k in row}).to_dict()
        return mine == TrainConfig.from_dict(config).to_dict()
    except (ValueError, TypeError):
        return False


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
