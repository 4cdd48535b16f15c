"""The search's Optuna study as a journal, STORAGE/NAME/optuna.journal, written as it runs.

Why: Tune keeps Optuna's study only inside its pickled searcher state, which no Optuna tool
reads. An Optuna journal (one JSON line per operation, appended under a file lock) can be
read while the search appends to it: `optuna.load_study`, `optuna-dashboard`, importance
and plots (docs/dashboard.md). The searcher's study *is* the journal, so a reader sees what
the sampler learns from. The study is named after the search (--name); each trial carries
its Tune trial id (user attribute `trial_id`, the key of trials.parquet), its epochs as
intermediate values (step = epoch) and the search's status (user attribute `status`):

    completed          -> COMPLETE, value: its best epoch's (trials.parquet's metric)
    stopped (ASHA, --epoch-budget, lost with a dead driver)
                       -> PRUNED, value: its last epoch's (Optuna's rule)
    errored, diverged  -> FAIL (and a trial that never reported an epoch)

On object storage the journal is a local file in a temporary folder (a file lock and
appends need a file system), uploaded to STORAGE/NAME/optuna.journal every few seconds and
whenever a trial ends; --resume downloads it first.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from search.progress import storage_guard
from search.results import ResultsStore
from search.searchers import ResumableOptuna, optuna_params
from search.trial import REPLAYED_EPOCH
from ucrn.errors import UsageError, say

log = logging.getLogger("ucrn.search")

JOURNAL = "optuna.journal"
TRIAL_ID = "trial_id"  # user attribute: the Tune trial id (trials.parquet's key)
STATUS = "status"  # user attribute: the search's status of the trial (docs/results.md)
UPLOAD_S = 5.0  # on object storage: the longest a running trial's epochs wait for upload

# The local journal of the run in this process. A restored Tune run unpickles its searcher
# and callback with the path of the run that made them (on object storage a temporary
# folder long gone): they use this one instead.
_this_run: str | None = None


def journal_storage(path: str | Path) -> JournalStorage:
    """Optuna's journal storage on a local file (created when missing)."""
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def load_study(path: str | Path, name: str | None = None) -> optuna.Study:
    """A search's study as Optuna reads it (the name: the search's --name; None: the only
    study in the file)."""
    return optuna.load_study(study_name=name, storage=journal_storage(path))


def check_journal(path: str | Path, shown: str) -> str | None:
    """Before a resumed search appends to its journal: a UsageError for a journal it cannot
    continue, or a note of what was repaired. Why: Optuna's reader skips a last record cut
    short (a full disk, a killed driver), but its next append joins the half line, and from
    then on no reader gets past that line; a line that is not a record (edited by hand) stops
    every reader; a symbolic link would have the appends land in its target."""
    p = Path(path)
    if p.is_symlink():
        raise UsageError(f"--resume: {shown} is a symbolic link (to {os.readlink(p)}); the "
                         f"search appends only to a journal file of its own: replace the link "
                         f"with the file itself")
    if not p.exists():
        return None  # a search from before the journal, or one deleted: written anew
    if not p.is_file():
        raise UsageError(f"--resume: {shown} is not a file; expected the search's Optuna "
                         f"journal (move it away to resume with a new one)")
    data = p.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    for number, line in enumerate(whole.splitlines(), 1):
        try:
            record = json.loads(line)
            bad = None if isinstance(record, dict) and "op_code" in record else "no op_code"
        except ValueError as e:  # (UnicodeDecodeError too)
            bad = type(e).__name__
        if bad is not None:
            raise UsageError(f"--resume: {shown} line {number} is not an Optuna journal record "
                             f"({bad}: edited by hand or damaged?), and no reader of the study "
                             f"gets past it; repair the line, or move the file away to resume "
                             f"with a new journal of the trials from here on")
    try:
        journal_storage(p).get_all_studies()  # a record Optuna cannot apply
    except Exception as e:  # noqa: BLE001 - any refusal of Optuna's is the file's
        raise UsageError(f"--resume: {shown} is not a journal Optuna can read ({type(e).__name__}"
                         f": {' '.join(str(e).split())[:200]}); move it away to resume with a "
                         f"new journal of the trials from here on") from None
    if len(whole) == len(data):
        return None
    os.truncate(p, len(whole))
    return (f"{shown}: its last record was cut short ({len(data) - len(whole)} bytes; written "
            f"as the disk filled or the driver died?) and is dropped, as Optuna's reader drops "
            f"it, so that the next record does not join it")


def open_journal(store: ResultsStore) -> str:
    """This run's local journal: STORAGE/NAME/optuna.journal on a local disk; on object
    storage a temporary copy, downloaded when the store has one (a resumed search)."""
    global _this_run
    if store.is_local:
        _this_run = store.path(JOURNAL)
        return _this_run
    folder = tempfile.mkdtemp(prefix="ucrn-journal-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    local = Path(folder) / JOURNAL
    if store.exists(JOURNAL):
        with store.fs.open_input_stream(store.path(JOURNAL)) as f:
            local.write_bytes(f.read())
        note = check_journal(local, store.show(JOURNAL))
        if note:
            say("warning", note)
    _this_run = str(local)
    return _this_run


def this_run(made_with: str) -> str:
    """The journal to use: this run's, else the one an object was made with (tests)."""
    return _this_run or made_with


def close_trial(study: optuna.Study, frozen: FrozenTrial, status: str | None,
                num_epochs: int) -> None:
    """Tell the study how a trial ended (the table in the module docstring); `status` None:
    completed or stopped, by its epochs, as TrialBook.finish decides."""
    values = [v for _, v in sorted(frozen.intermediate_values.items())]
    finite = [v for v in values if math.isfinite(v)]
    if status is None:
        status = "completed" if len(values) >= num_epochs else "stopped"
    state, value = TrialState.FAIL, None
    if status == "completed" and finite:
        best = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        state, value = TrialState.COMPLETE, best(finite)
    elif status == "stopped" and values:
        state = TrialState.PRUNED
    if not values:
        status = "not run"
    study._storage.set_trial_user_attr(frozen._trial_id, STATUS, status)
    study.tell(frozen.number, value, state=state, skip_if_finished=True)


def _config(result: dict[str, Any] | None) -> dict[str, Any]:
    """A Tune result's trial config, flattened ("a/b") as Optuna's space is; Tune passes
    results flattened to on_trial_complete ("config/lr") and nested to on_trial_result."""
    result = result or {}
    if isinstance(result.get("config"), dict):
        return optuna_params(result["config"])
    return {k.removeprefix("config/"): v for k, v in result.items() if k.startswith("config/")}


class JournalOptuna(ResumableOptuna):
    """ResumableOptuna on the search's journal: trials named by their Tune id, reported per
    epoch (not per Tune iteration: a resumed trial re-reports its epochs, a diverged one ends
    with a repeat) and closed as PRUNED/FAIL as well as COMPLETE. A restored run takes its
    trials from the journal, which is written at once, rather than from the pickled state,
    which Tune saves every few seconds: no trial is made twice."""

    def __init__(self, *, journal: str, study_name: str, num_epochs: int, **kw: Any):
        self._journal, self._num_epochs = journal, num_epochs
        super().__init__(study_name=study_name, storage=journal_storage(journal), **kw)

    def _setup_study(self, mode: str | list) -> None:
        self._storage = journal_storage(this_run(self._journal))
        known = {s.study_name: s._study_id for s in self._storage.get_all_studies()}
        points = self._points_to_evaluate
        if self._study_name in known and self._storage.get_all_trials(
                known[self._study_name], deepcopy=False):  # resumed: its points are in it
            self._points_to_evaluate = []
        try:
            super()._setup_study(mode)
        finally:
            self._points_to_evaluate = points

    def save(self, checkpoint_path: str) -> None:
        """Tune's saved state without the study and its trials, which restore() reads from
        the journal (a pickled journal storage also grows with the file)."""
        kept = {k: self.__dict__.pop(k) for k in ("_storage", "_ot_study", "_ot_trials")}
        try:
            super().save(checkpoint_path)
        finally:
            self.__dict__.update(kept)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._storage = journal_storage(this_run(self._journal))
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        self._ot_trials = {}
        for frozen in self._ot_study.get_trials(deepcopy=False):
            tid = frozen.user_attrs.get(TRIAL_ID)
            if tid is None:
                continue
            if frozen.state == TrialState.RUNNING:
                self._ot_trials[tid] = optuna.Trial(self._ot_study, frozen._trial_id)
            elif frozen.state.is_finished():
                self._completed_trials.add(tid)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            with storage_guard(this_run(self._journal)):
                self._ot_trials[trial_id].set_user_attr(TRIAL_ID, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with storage_guard(this_run(self._journal)):  # a full disk stops the search
            self._on_result(trial_id, result)

    def _on_result(self, trial_id: str, result: dict) -> None:
        epoch = result.get("epoch", result.get(REPLAYED_EPOCH))
        value = result.get(self.metric)
        if trial_id in self._completed_trials or result.get("diverged") or epoch is None \
                or value is None:
            return
        trial = self._trial(trial_id, result)
        if trial is None:
            return
        frozen = self._storage.get_trial(trial._trial_id)
        if not frozen.state.is_finished() and int(epoch) not in frozen.intermediate_values:
            trial.report(float(value), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        with storage_guard(this_run(self._journal)):
            if result and not error:  # the last epoch: Tune withholds a stopping result
                self._on_result(trial_id, result)  # from on_trial_result
            self._completed_trials.add(trial_id)
            self._on_complete(trial_id, result, error)

    def _on_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        trial = self._trial(trial_id, result)
        if trial is None:
            return
        status = "errored" if error else "diverged" if (result or {}).get("diverged") else None
        num_epochs = int(_config(result).get("num_epochs") or self._num_epochs)
        close_trial(self._ot_study, self._storage.get_trial(trial._trial_id), status,
                    num_epochs)

    def _trial(self, trial_id: str, result: dict | None) -> optuna.Trial | None:
        """The trial's Optuna trial; one its restored state never suggested (Tune's state
        and the journal from different moments on object storage) is added as running."""
        if trial_id in self._ot_trials:
            return self._ot_trials[trial_id]
        config = _config(result)
        if not isinstance(self._space, dict) or not set(self._space) <= set(config):
            return None  # nothing Optuna could learn from
        try:
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=TrialState.RUNNING, params={k: config[k] for k in self._space},
                distributions=self._space, user_attrs={TRIAL_ID: trial_id}))
        except ValueError as e:  # outside the space
            log.warning("optuna journal: trial %s not added (%s)", trial_id, e)
            return None
        frozen = self._ot_study.get_trials(deepcopy=False)[-1]
        self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
        return self._ot_trials[trial_id]


def make_journal_callback(uri: str, journal: str, study_name: str, num_epochs: int):
    """The run's Tune callback for the journal: closes the trials Tune ended without telling
    its searcher (--epoch-budget, trials lost with a dead driver) when the search finishes,
    and uploads the journal to object storage. A class made here: Ray is imported only when
    a search starts."""
    from ray import tune

    from search.lock import INTERRUPTED, lease_lost

    class JournalSync(tune.Callback):
        """Keeps STORAGE/NAME/optuna.journal complete and, on object storage, current."""

        def __init__(self) -> None:
            self.uri, self.journal, self.study_name = uri, journal, study_name
            self.num_epochs = num_epochs
            self.store: ResultsStore | None = None
            self.uploaded = 0.0
            self.warned = False

        def setup(self, **info: Any) -> None:
            self.store = ResultsStore(self.uri)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if time.time() - self.uploaded >= UPLOAD_S:
                self._upload()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._upload()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._upload()

        def on_experiment_end(self, trials, **info):
            # as the recorder: an interrupted run's trials stay running (they resume)
            if lease_lost() or self.store.exists(INTERRUPTED):
                return
            path = this_run(self.journal)
            if not Path(path).is_file():
                return  # a search from before the journal
            try:
                self._close(trials, path)
            except Exception as e:  # noqa: BLE001 - the journal is a view: never fail the run
                log.warning("optuna journal: closing trials failed (%s)", e)
            self._upload()

        def _close(self, trials, path: str) -> None:
            study = optuna.load_study(study_name=self.study_name, storage=journal_storage(path),
                                      sampler=optuna.samplers.RandomSampler())
            tune_trials = {t.trial_id: t for t in trials}
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                t = tune_trials.get(frozen.user_attrs.get(TRIAL_ID))
                if t is not None and t.status not in ("TERMINATED", "ERROR"):
                    continue  # Tune still has it (pending, paused): --resume runs it
                status = "errored" if t is not None and t.status == "ERROR" else (
                    None if t is not None else "stopped")  # not in Tune's state: lost
                config = (t.config if t is not None else {}) or {}
                close_trial(study, frozen, status,
                            int(config.get("num_epochs") or self.num_epochs))

        def _upload(self) -> None:
            if self.store is None or self.store.is_local:
                return
            path = Path(this_run(self.journal))
            try:
                if path.is_file():
                    self.store.write_bytes(JOURNAL, path.read_bytes())
                self.uploaded = time.time()
            except Exception as e:  # noqa: BLE001 - retried at the next upload
                if not self.warned:
                    say("warning", f"uploading {self.store.show(JOURNAL)} failed "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                                   "retried as the search goes on")
                self.warned = True

    return JournalSync()
