"""The driver's Tune callback: Parquet as trials report, and a compact progress view.

Also how the driver stops: after SIGINT/SIGTERM (the driver marks its results folder,
search/lock.py) trials that Tune ends are not closed (they resume), and a failing results
store stops the search. Nothing else raised in a callback may end the driver: a config
the trainer refuses is the trial's error, recorded as `errored`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.lock import INTERRUPTED, lease_lost
from search.results import ResultsStore, TrialBook
from ucrn.config import TrainConfig

log = logging.getLogger("ucrn.search")
OnFinal = Callable[[Any, dict[str, Any]], None]  # (trial, its final report) -> None


def make_recorder(uri: str, search: str, metric: str, mode: str, executor: str,
                  base: dict[str, Any], total: int, on_final: OnFinal | None = None):
    """The run's Tune callback (a class made here: Ray is imported only once a search
    really starts, never for the checks before it). Re-training passes `on_final`,
    which gets each seed's final report (test metrics, checkpoint) as it arrives."""
    from ray import tune

    class Recorder(tune.Callback):
        """Writes Parquet as trials report and prints a compact progress view."""

        def __init__(self) -> None:
            self.uri, self.search, self.metric, self.mode = uri, search, metric, mode
            self.executor, self.base, self.total = executor, base, total
            self.retrain = on_final is not None
            self.book: TrialBook | None = None
            self.last_print = 0.0
            self.t0 = time.time()

        def setup(self, **info: Any) -> None:
            self.book = TrialBook(ResultsStore(self.uri), self.search, self.metric, self.mode,
                                  self.executor, prefix="retrain/" if self.retrain else "")
            if not self.retrain:  # a resumed search continues its book
                for note in self.book.load():
                    print(f"warning: {note}", flush=True)
            self.t0 = time.time()

        def config_of(self, trial) -> dict[str, Any]:
            """The trial's full config; as drawn when the trainer refuses it (the trial
            itself then fails with that reason and is recorded `errored`)."""
            merged = {**self.base, **trial.config}
            try:
                return TrainConfig.from_dict(merged).to_dict()
            except ValueError:
                return merged

        def on_trial_start(self, iteration, trials, trial, **info):
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in trial.config.items())
            print(f"[{self._clock()}] start {trial.trial_id}: {shown}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if lease_lost():  # another driver holds the folder now
                return
            with storage_guard(self.uri):
                self._on_result(trials, trial, dict(result))

        def _on_result(self, trials, trial, result: dict[str, Any]) -> None:
            if "checkpoint_path" in result:
                result["checkpoint"] = result["checkpoint_path"]
            elif trial.checkpoint is not None:
                result["checkpoint"] = trial.checkpoint.path
            if result.get("final"):
                if on_final is not None:
                    on_final(trial, result)
                return
            self.book.add_result(trial.trial_id, self.config_of(trial), result)
            if time.time() - self.last_print > 15:
                self._table(trials)

        def interrupted(self) -> bool:
            return lease_lost() or self.book.store.exists(INTERRUPTED)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.interrupted():  # Tune ends interrupted trials; they resume later
                return
            with storage_guard(self.uri):
                row = self.book.finish(trial.trial_id, self.config_of(trial))
            self._line(row)

        def on_trial_error(self, iteration, trials, trial, **info):
            if lease_lost():
                return
            with storage_guard(self.uri):
                row = self.book.finish(trial.trial_id, self.config_of(trial), "errored",
                                       _first_error_line(trial))
            self._line(row)

        def on_experiment_end(self, trials, **info):
            # trials finished before a driver crash may never have been closed here
            if self.interrupted():
                return
            for trial in trials:
                row = self.book.trials.get(trial.trial_id)
                if row is None or row["status"] != "running":
                    continue
                if trial.status == "TERMINATED":
                    self.book.finish(trial.trial_id, self.config_of(trial))
                elif trial.status == "ERROR":
                    self.book.finish(trial.trial_id, self.config_of(trial), "errored",
                                     _first_error_line(trial))

        def _line(self, row: dict[str, Any]) -> None:
            done = sum(t["status"] != "running" for t in self.book.trials.values())
            best = self.book.best_trial()
            value = row.get(self.metric, math.nan)
            msg = (f"[{self._clock()}] {done}/{self.total} {row['trial_id']} {row['status']}"
                   f" after {row['epochs_run']} epoch(s): {self.metric} {fmt(value)}")
            if row.get("error"):
                msg += f"  error: {row['error']}"
            if best is not None:
                msg += f"  | best {best['trial_id']} {self.metric} {fmt(best[self.metric])}"
            print(msg, flush=True)

        def _table(self, trials) -> None:
            self.last_print = time.time()
            by_status: dict[str, int] = {}
            for t in self.book.trials.values():
                by_status[t["status"]] = by_status.get(t["status"], 0) + 1
            best = self.book.best_trial()
            running = [t for t in self.book.trials.values() if t["status"] == "running"]
            parts = [f"{k} {v}" for k, v in sorted(by_status.items())]
            print(f"[{self._clock()}] trials: {', '.join(parts)}; pending "
                  f"{max(0, self.total - len(self.book.trials))}"
                  + (f"; best {self.metric} {fmt(best[self.metric])}" if best else ""), flush=True)
            for t in running:
                print(f"           {t['trial_id']} epoch {t['epochs_run']}: {self.metric} "
                      f"{fmt(t.get(self.metric, math.nan))}", flush=True)

        def _clock(self) -> str:
            s = int(time.time() - self.t0)
            return f"{s // 60:02d}:{s % 60:02d}"

    return Recorder()


class StorageFailure(RuntimeError):
    """The results storage refused a write; the search stops rather than lose rows."""


class storage_guard:
    """Around a callback's work: a storage error stops the search (StorageFailure); any
    other error is logged and printed as one warning line, and the search goes on."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        import pyarrow as pa

        if exc is None or not isinstance(exc, Exception):
            return False
        if isinstance(exc, (OSError, pa.ArrowException)):
            raise StorageFailure(f"results storage {self.uri} failed: "
                                 f"{(str(exc).splitlines() or [type(exc).__name__])[0]}")
        log.exception("recording a trial result failed")
        print(f"warning: recording a trial result failed ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:300]}); the search goes on", flush=True)
        return True


def storage_failure(exc: BaseException) -> StorageFailure | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFailure):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _first_error_line(trial) -> str:
    """The exception line of the trial's latest failure (Tune writes its local error file
    before calling back; the synced copy may lag)."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text()
        elif (err := trial.get_error()) is not None:
            text = str(err)
    except Exception:  # noqa: BLE001 - the error file may be gone; the status says enough
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # the last line of a traceback is the exception itself
    useful = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "^", "The above"))]
    return (useful[-1] if useful else "unknown error")[:500]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
