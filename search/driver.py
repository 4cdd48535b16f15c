"""run_search.py: a Ray Tune search (Optuna TPE + ASHA) over UCRN trials, results in Parquet.

A run reads as plan -> run -> summarise. The plan checks everything that can be wrong
with the flags, the space file, the storage and the data before Ray starts (one line,
exit code 2, nothing written) and holds the results folder's lock for the whole run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from search.cluster import (
    GracefulStop,
    auto_concurrency,
    base_resources_threads,
    check_cluster,
    make_trainable,
    start_ray,
    stop_ray,
    trial_settings,
)
from search.dataload import data_bytes, load_data, with_data_path
from search.flags import (
    Flags,
    check_address,
    check_flags,
    check_given,
    check_metric_task,
    check_storage,
    parse_flags,
    resolve_metric,
)
from search.lock import ResultsLock
from search.objstore import join, ray_storage
from search.progress import fmt, make_recorder, storage_failure
from search.results import METRICS, ResultsStore, TrialBook
from search.settings import TrialSettings
from search.space import SpaceError, first_value, load_space, searched, validate_space
from search.trackers import check_trackers, make_trackers, use_trackers
from search.warm import WarmStart, warm_start
from ucrn.config import TrainConfig
from ucrn.data import MultData
from ucrn.errors import UsageError, run_main, say
from ucrn.fileio import is_uri, local_path
from ucrn.metrics import metric_mode


@dataclass(frozen=True)
class SearchPlan:
    """Everything a search run needs, checked, before Ray starts."""

    flags: Flags
    storage: str  # what Ray gets: an absolute folder or a URI
    store: ResultsStore  # STORAGE/NAME
    space: dict[str, Any]
    mode: str
    settings: TrialSettings
    restore: bool  # --resume of a search whose Tune state exists
    saved_data_id: dict[str, Any] | None = None  # what the search began with (--resume)
    data_id: dict[str, Any] | None = None  # what this run loaded (MultData.identity)
    warm: WarmStart = WarmStart()  # --warm-start: earlier trials for the sampler

    @property
    def resume_command(self) -> str:
        return (f"python run_search.py --resume --name {self.flags.name} "
                f"--storage {self.flags.storage}")


def main(argv: list[str] | None = None, fail_if: dict[str, Any] | None = None) -> int:
    """`fail_if` is for tests: trials whose config has KEY == VALUE raise when they start."""
    return run_main(lambda args: _main(args, fail_if), argv)


def _main(argv: list[str], fail_if: dict[str, Any] | None) -> int:
    fl, given = parse_flags(argv)
    check_given(fl, given)
    if fl.retrain:
        from search.retraining import run_retrain

        return run_retrain(fl, fail_if)
    return run_search(fl, fail_if, given)


# ---- plan --------------------------------------------------------------------------------

def base_config(fl: Flags, spec: dict[str, Any]) -> dict[str, Any]:
    """The fixed part of every trial's config: flags plus the space's fixed values."""
    base = {"dataset": fl.dataset or "synthetic", "data_path": fl.data_path,
            "data_format": fl.data_format, "target": fl.target,
            "aligned": fl.aligned, "preset": fl.preset, "modalities": fl.modalities,
            "num_epochs": fl.max_epochs, "seed": fl.seed, "threads": base_resources_threads(fl),
            "select_metric": fl.metric, "device": "cpu" if fl.gpus_per_trial == 0 else "auto",
            "robust_metrics": fl.robust_metrics or fl.metric == "robust_MAE"}
    base.update({k: v for k, v in spec.items() if not isinstance(v, dict)})
    sample = {k: first_value(v) for k, v in spec.items() if isinstance(v, dict)}
    try:  # one complete config: flags and the space's fixed values agree with the trainer
        TrainConfig.from_dict({**base, **sample}, where="flags and space")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return base


def plan_search(fl: Flags, store: ResultsStore, storage: str,
                fail_if: dict[str, Any] | None, given: set[str] = frozenset()) -> SearchPlan:
    """Every check before Ray (the caller holds STORAGE/NAME's lock)."""
    restore, saved_space, saved_data = False, None, None
    if fl.resume:
        saved = store.read_json("search.json", missing_ok=True)
        if saved is None:
            raise UsageError(f"--resume: no search named {fl.name!r} under {storage} "
                             "(search.json not found)")
        if not isinstance(saved, dict) or "flags" not in saved:
            raise UsageError(f"--resume: {store.show('search.json')} is damaged (expected an "
                             f"object with 'flags')")
        _same_place(fl.name, saved, store)
        _flags_unedited(saved, store)
        fl = fl.resumed_from(saved["flags"], store.show("search.json"),
                             given - {"resume", "address", "storage", "name"})
        _check_resumed_flags(fl, given, store)
        saved_space = saved.get("space")  # the space it ran with, not the file as it is now
        if not isinstance(saved_space, dict) or not saved_space:
            raise UsageError(f"--resume: {store.show('search.json')} is damaged ('space' is "
                             f"not a mapping of parameters)")
        restore = _tune_state_exists(store)
        if restore:
            check_trusted(store)
            _same_executor(fl, saved["flags"], store)
        if store.is_local:  # on object storage: its copy, once downloaded (open_journal)
            from search.journal import JOURNAL, check_journal

            note = check_journal(store.path(JOURNAL), store.show(JOURNAL))
            if note:
                say("warning", note)
        saved_data = saved.get("data")
    elif store.exists("search.json"):
        raise UsageError(f"--name {fl.name}: a search already exists at {store.uri}; "
                         "use --resume to continue it or another --name")
    else:
        foreign = sorted(n for n in store.list() if not n.startswith("."))
        if foreign:  # a search's files among them would be unreadable, or theirs lost
            raise UsageError(f"--name {fl.name}: {store.uri} already holds other things "
                             f"({', '.join(foreign[:5])}) and no search; use another --name")
    fl = with_data_path(fl)
    fl = replace(fl, metric=resolve_metric(fl))
    base_probe = base_config(fl, {})
    try:
        if saved_space is not None:
            spec = saved_space
            validate_space(spec, store.show("search.json"), base_probe)
        else:
            spec = load_space(fl.space, base=base_probe)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    if not searched(spec):
        raise UsageError(f"--space {fl.space or 'default'}: every parameter has a fixed value, "
                         f"so there is nothing to search; give at least one a range "
                         f"(e.g. lr: {{choice: [0.001]}} for a fixed trial repeated)")
    base = base_config(fl, spec)
    check_address(fl.address)
    settings = trial_settings(fl, store.location, base, save_models=False, fail_if=fail_if)
    return SearchPlan(flags=fl, storage=storage, store=store, space=spec,
                      mode=metric_mode(fl.metric), settings=settings, restore=restore,
                      saved_data_id=saved_data)


def _same_place(name: str, saved: dict[str, Any], store: ResultsStore) -> None:
    """A search resumes where it was made: Tune's saved state (its recorder and its trials'
    storage) holds that folder's path and the Optuna study its name, so a search renamed,
    moved or copied would be resumed there, writing into the old folder (or one made anew
    at its path) rather than this one. Where it was made: search.json's `location`, or for
    a search from before that key, flags.storage when it is an absolute path."""
    flags = saved.get("flags") if isinstance(saved.get("flags"), dict) else {}
    was_name = flags.get("name")
    was = saved.get("location")
    storage = flags.get("storage")
    if was is None and isinstance(was_name, str) and isinstance(storage, str) \
            and not is_uri(storage):
        try:
            folder = local_path(storage)
        except ValueError:  # search.json edited by hand: no folder to compare with
            folder = ""
        if os.path.isabs(folder):
            was = os.path.join(folder, was_name)
    moved = (store.is_local and isinstance(was, str) and not is_uri(was)
             and os.path.realpath(was) != store.root)
    if isinstance(was_name, str) and was_name != name:
        why = f"the search {was_name!r} (flags.name), in a folder named {name!r}"
    elif moved:
        why = f"the search made at {was}"
    else:
        return
    raise UsageError(f"--resume: {store.show('search.json')} is {why}: renamed, moved or "
                     f"copied? Tune's saved state would write to where it was made; put the "
                     f"folder back there to resume it, or start a new search")


def flags_digest(flags: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()


def _flags_unedited(saved: dict[str, Any], store: ResultsStore) -> None:
    """A resumed search runs with the settings it started with (Tune restores its own
    searcher and scheduler), so search.json's flags edited since would be a false record
    of what ran; searches older than the digest are taken as they are."""
    digest = saved.get("flags_sha256")
    if digest is not None and (not isinstance(saved["flags"], dict)
                               or digest != flags_digest(saved["flags"])):
        raise UsageError(f"--resume: {store.show('search.json')}: its flags were edited after "
                         f"the search started (they no longer match flags_sha256); a resumed "
                         f"search keeps the settings it started with: undo the edit, or start "
                         f"a new search under another --name")


def _check_resumed_flags(fl: Flags, given: set[str], store: ResultsStore) -> None:
    """check_flags on a resumed search's flags: a failing value this command line did not
    give came from search.json, and the line says so (not a flag the user never typed)."""
    try:
        check_flags(fl)
    except UsageError as e:
        named = str(e).split(" ", 1)[0].split("=", 1)[0]
        key = named.removeprefix("--").replace("-", "_")
        if named.startswith("--") and key in Flags.__dataclass_fields__ and key not in given:
            raise UsageError(f"{store.show('search.json')}: the saved flags fail a check "
                             f"({e}); was the file edited?") from None
        raise


def _same_data(plan: SearchPlan, data: MultData) -> None:
    """A resumed search must see the data it began with (searches before this check
    recorded none)."""
    was, now = plan.saved_data_id, plan.data_id
    if not isinstance(was, dict) or now is None:
        return
    diff = [k for k in now if k in was and was[k] != now[k]]
    if diff:
        raise UsageError(f"--resume: the data changed since the search began ({data.source}: "
                         f"{', '.join(f'{k} {was[k]} -> {now[k]}' for k in diff)[:300]}); one "
                         f"search must see one dataset: start a new --name")


def check_trusted(store: ResultsStore) -> None:
    """Tune restores its state from pickles (tuner.pkl, searcher state, trial data), and
    loading a pickle can run any code it names. So, as ssh does with keys, only files that
    are this user's own and writable by nobody else are restored: a results folder on a
    shared disk that another user could write is refused. (Object storage cannot be
    checked: whoever may write the bucket is trusted, docs/reliability.md.)"""
    if not store.is_local:
        return
    me = os.getuid()
    for folder, _dirs, files in os.walk(store.root):
        for name in [None, *files]:
            path = folder if name is None else os.path.join(folder, name)
            try:  # a link's own mode is always 777: its target's counts (W&B's logs link)
                st = os.stat(path) if os.path.islink(path) else os.lstat(path)
            except OSError:
                continue
            shared_group = st.st_mode & 0o020 and not _private_group(st.st_gid)
            if st.st_uid != me or st.st_mode & 0o002 or shared_group:
                who = (f"owned by uid {st.st_uid}" if st.st_uid != me
                       else "writable by other users")
                raise UsageError(
                    f"--resume: {path} is {who}; Tune's saved state is pickle data, which runs "
                    f"code when loaded, so only a folder that is yours alone is restored "
                    f"(check it, then chown -R / chmod -R go-w {store.root})")


def _private_group(gid: int) -> bool:
    """A group of this user alone (the usual one-user group that umask 002 writes for)."""
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return gid == os.getgid() and set(group.gr_mem) <= {user}


def _tune_state_exists(store: ResultsStore) -> bool:
    """Tune saves its experiment state once the search has started; interrupted before
    that, a resumed search simply starts (nothing had run). A state Tune left half-written
    (its writes are not atomic: a full disk truncates them) would resume a search that
    forgot some trials, so it is refused."""
    from ray import tune

    try:
        if not tune.Tuner.can_restore(**ray_storage(store.location, "path")):
            return False
    except Exception:  # noqa: BLE001 - unreadable storage: plan's own checks report it
        return False
    states = sorted(n for n in store.list() if n.startswith("experiment_state-")
                    and n.endswith(".json"))
    if states:
        try:
            store.read_json(states[-1], missing_ok=False)
        except ValueError:
            raise UsageError(f"--resume: Tune's saved state {store.show(states[-1])} is damaged "
                             f"(written when the storage failed?); the finished trials are in "
                             f"{store.show('trials.parquet')}; start a new search under "
                             f"another --name") from None
    return True


# the trainable each executor's trials run as (search/cluster.py make_trainable)
TRAINABLE_EXECUTOR = {"train_trial": "train", "tune_trial": "tune"}


def _same_executor(fl: Flags, saved_flags: dict[str, Any], store: ResultsStore) -> None:
    """Tune restores only the trainable its state was made with: an executor in search.json
    other than the state's (an edited file, "auto" resolving otherwise, a missing key) is
    one line naming both, not Tune's error about trainables."""
    states = sorted(n for n in store.list() if n.startswith("experiment_state-")
                    and n.endswith(".json"))
    if not states:
        return
    try:
        state = store.read_json(states[-1], missing_ok=False)
    except ValueError:  # over the JSON size cap (a search of thousands of trials), or
        return  # damaged: this check is a courtesy; Tune's restore says what it finds
    ran: set[str] = set()
    for entry in state.get("trial_data", []) if isinstance(state, dict) else []:
        try:
            name = json.loads(entry[0]).get("trainable_name")
        except (TypeError, IndexError, KeyError, AttributeError, ValueError):
            continue
        if name in TRAINABLE_EXECUTOR:
            ran.add(TRAINABLE_EXECUTOR[name])
    if len(ran) == 1 and fl.executor not in ran:
        (was,) = ran
        written = (f"is {saved_flags['executor']!r}" if "executor" in saved_flags
                   else "is missing")
        raise UsageError(f"--resume: {store.show('search.json')} flags.executor {written} "
                         f"(runs as {fl.executor}) but Tune's saved state "
                         f"{store.show(states[-1])} ran its trials with executor {was}; a "
                         f"search resumes only with its own executor: set flags.executor "
                         f"to {was!r} there")


# ---- run ---------------------------------------------------------------------------------

def run_search(fl: Flags, fail_if: dict[str, Any] | None = None,
               given: set[str] = frozenset()) -> int:
    check_flags(fl)
    storage = check_storage(fl.storage)
    if is_uri(storage):  # recorded as parsed: one spelling wherever it is shown or saved
        fl = replace(fl, storage=storage)
    store = ResultsStore(join(storage, fl.name))
    with ResultsLock(store, "search") as lock:
        plan = plan_search(fl, store, storage, fail_if, given)
        fl = plan.flags
        check_trackers(fl.tracker, store, fl.name, saved=fl.resume and "tracker" not in given)
        data = load_data(plan.settings.base)
        check_metric_task(fl.metric, data.task, data.splits["valid"].labels)
        if fl.data_path is not None:  # the format the files turned out to have, recorded
            fl = replace(fl, data_format=data.format)
            plan = replace(plan, flags=fl, settings=replace(
                plan.settings, base={**plan.settings.base, "data_format": data.format}))
        plan = replace(plan, data_id=data.identity())
        _same_data(plan, data)
        if fl.warm_start and not plan.restore:
            try:
                plan = replace(plan, warm=warm_start(fl.warm_start, plan.space,
                                                     plan.settings.base, fl.metric, plan.mode,
                                                     plan.data_id))
            except ValueError as e:
                raise UsageError(str(e)) from None
            if fl.search_alg == "random" and plan.warm.rewards is not None:
                raise UsageError("--warm-start with --search-alg random on the same data: a "
                                 "random search learns nothing from earlier results; use "
                                 "--search-alg tpe")
            for note in plan.warm.notes:
                print(f"note: warm start: {note}", flush=True)
        holder = [data]
        del data  # the data now lives in `holder`, which the run empties into Ray's store
        code = run(plan, holder, lock)
        return code if code else summarise(plan)


def run(plan: SearchPlan, holder: list[MultData], lock: ResultsLock) -> int:
    """The search on Ray; 0 when Tune finished, 1 when the results storage failed."""
    fl, store = plan.flags, plan.store
    start_ray(fl.address, plan.settings.base["threads"], _log_file(store),
              data_bytes(holder[0]))
    with GracefulStop(plan.resume_command, store.uri, lock.mark_interrupted) as stop:
        try:
            check_cluster(fl)
            if not store.exists("search.json"):
                store.write_json("search.json", {
                    "flags": fl.saved(), "flags_sha256": flags_digest(fl.saved()),
                    "location": store.location, "space": plan.space,
                    "metric": fl.metric,
                    "mode": plan.mode, "searched": searched(plan.space),
                    "data": plan.data_id, "warm_start": plan.warm.record(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")})
            tuner = _tuner(plan, holder)
            use_trackers(tuner, make_trackers(fl.tracker, store, fl.name))  # not in tuner.pkl
            print(f"search {fl.name}: {fl.num_samples} trials x up to {fl.max_epochs} epochs, "
                  f"executor {fl.executor}, {fl.metric} ({plan.mode}); searching "
                  f"{', '.join(searched(plan.space))}\nresults: {store.uri}\n"
                  # said now: a run cut off with no word of its own (its Ray cluster lost,
                  # the driver killed) prints no resume line at its end
                  f"if cut off, resume with: {plan.resume_command}", flush=True)
            stop.tune_started()
            try:
                tuner.fit()
            except Exception as e:  # noqa: BLE001 - only a storage failure is ours to explain
                failure = storage_failure(e)
                if failure is None:
                    raise
                print(f"error: {failure}; the Parquet files written so far are complete up "
                      f"to this point; fix the storage, then: {plan.resume_command}",
                      file=sys.stderr, flush=True)
                return 1
            return 0
        finally:  # inside the signal handling: a second signal here still exits 130
            stop_ray()


def _tuner(plan: SearchPlan, holder: list[MultData]):
    """A new Tuner, or the interrupted one restored from its saved state."""
    from ray import tune

    from search.journal import open_journal
    from search.space import to_tune

    fl, store = plan.flags, plan.store
    trainable = make_trainable(fl, holder, plan.settings)
    param_space = to_tune({k: v for k, v in plan.space.items() if isinstance(v, dict)})
    journal = open_journal(store)  # the Optuna study's file (a restored run's too)
    if not plan.restore:
        recorder = make_recorder(store.location, fl.name, fl.metric, plan.mode, fl.executor,
                                 plan.settings.base, fl.num_samples)
        return _new_tuner(plan, trainable, param_space, recorder, journal)
    try:
        return tune.Tuner.restore(**ray_storage(store.location, "path"), trainable=trainable,
                                  resume_unfinished=True,
                                  resume_errored=True, param_space=param_space)
    except Exception as e:  # noqa: BLE001 - Tune's own files, damaged or from another version
        raise UsageError(f"--resume: Tune's saved state in {store.uri} cannot be restored "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); the "
                         f"finished trials are in {store.show('trials.parquet')}; start a new "
                         f"search under another --name") from None


def search_algorithm(plan: SearchPlan, journal: str):
    """Optuna's TPE, random or GP sampler, seeded, with the warm start's points; its study
    is the search's journal (search/journal.py). TPE's settings are given in full, so that
    a search does the same on every Optuna version (Optuna 5 turned `multivariate` and the
    constant liar on by default)."""
    import optuna

    from search.journal import JournalOptuna

    fl, warm = plan.flags, plan.warm
    seed = warm.sampler_seed(fl.seed)
    if fl.search_alg == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif fl.search_alg == "gp":  # learns from COMPLETE trials only (not those ASHA stopped)
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=fl.multivariate,
                                             constant_liar=fl.constant_liar)
    return JournalOptuna(journal=journal, study_name=fl.name,
                         num_epochs=plan.settings.base["num_epochs"], sampler=sampler,
                         points_to_evaluate=list(warm.points) or None,
                         evaluated_rewards=list(warm.rewards) if warm.rewards else None)


def _new_tuner(plan: SearchPlan, trainable: Any, param_space: dict[str, Any], recorder: Any,
               journal: str):
    from ray import tune

    from search.budget import EpochBudget
    from search.groups import group_sweepers
    from search.journal import make_journal_callback
    from search.schedulers import make_scheduler
    from search.searchers import ResumableLimiter

    fl = plan.flags
    scheduler, searcher = make_scheduler(fl, plan.mode, search_algorithm(plan, journal))
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=fl.metric, mode=plan.mode, num_samples=fl.num_samples,
            reuse_actors=fl.executor == "tune",  # no new process per tiny trial
            search_alg=ResumableLimiter(searcher,
                                        max_concurrent=fl.max_concurrent or auto_concurrency(fl)),
            scheduler=scheduler),
        run_config=tune.RunConfig(
            name=fl.name, **ray_storage(plan.storage), verbose=0,
            callbacks=[recorder, make_journal_callback(plan.store.uri, journal, fl.name,
                                                       plan.settings.base["num_epochs"]),
                       *group_sweepers(fl.executor)],
            # on a remote store Tune keeps its state locally and uploads it every
            # sync_period: a driver killed in between resumes from an old state
            sync_config=tune.SyncConfig(sync_period=SYNC_S, sync_timeout=SYNC_TIMEOUT_S),
            stop=EpochBudget(fl.epoch_budget) if fl.epoch_budget else None,
            failure_config=tune.FailureConfig(max_failures=fl.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def _log_file(store: ResultsStore):
    """Ray's own log records of this run: beside the results when they are local."""
    from pathlib import Path

    return Path(store.path("logs", "driver.log")) if store.is_local else None


# ---- summarise ---------------------------------------------------------------------------

LOST = "lost with its driver (not in Tune's saved state)"
SYNC_S = 5  # how often Tune's state reaches a remote store (Ray's default: 300 s)
SYNC_TIMEOUT_S = 30  # and how long one upload may take (Ray: 30 min; a dead store hung the driver)


def summarise(plan: SearchPlan) -> int:
    fl, store = plan.flags, plan.store
    book = TrialBook(store, fl.name, fl.metric, plan.mode, fl.executor)
    for note in book.load():
        print(f"warning: {note}", file=sys.stderr)
    lost = [t for t in book.trials.values() if t["status"] == "running"]
    for t in lost:  # Tune finished without them: started after its last saved state
        book.finish(t["trial_id"], {k: t[k] for k in TrainConfig.__dataclass_fields__ if k in t},
                    "stopped", LOST)
    if lost:
        print(f"note: {len(lost)} trial(s) started just before the driver died were not in "
              f"Tune's saved state, so never resumed: recorded as stopped ({LOST})")
    counts: dict[str, int] = {}
    for t in book.trials.values():
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    print(f"\ntrials: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
    spent = sum(int(t.get("epochs_run") or 0) for t in book.trials.values())
    if fl.epoch_budget:
        print(f"epochs trained: {spent} (budget {fl.epoch_budget})")
    elif len(book.trials) < fl.num_samples:
        print(f"note: {len(book.trials)} of {fl.num_samples} trials have results")
    best = book.best_trial()
    if best is None:
        why = _undefined_metric(plan, book)
        print(f"no trial finished with a finite {fl.metric}; nothing to recommend"
              + (f": {why}; choose another --metric" if why else ""), file=sys.stderr)
        return 1
    config = {k: best[k] for k in TrainConfig.__dataclass_fields__ if k in best}
    config = TrainConfig.from_dict(config).to_dict()
    kept = book.keep_best_config(config)  # never from less than it was chosen from
    if kept:
        print(f"warning: {kept}", file=sys.stderr)
    else:
        book.write_best_config(best, config)
    metrics = {k: best[k] for k in METRICS if k in best and best[k] is not None}
    # kept: best_config.json is another trial's; this line says what the files say now
    head = "best trial now (best_config.json kept)" if kept else "best trial"
    print(f"{head} {best['trial_id']} ({best['status']}, best epoch {best['best_epoch']}): "
          + "  ".join(f"{k} {fmt(v)}" for k, v in metrics.items()))
    print("config: " + ", ".join(f"{k}={fmt(best[k])}" for k in searched(plan.space)))
    print(f"results: {store.show('trials.parquet')}, {store.show('epochs.parquet')}, "
          f"{store.show('best_config.json')}\nanalyse: python analyze.py {store.uri}")
    return 0


def _undefined_metric(plan: SearchPlan, book: TrialBook) -> str | None:
    """Why no trial has a value of the search's metric, when the validation labels say so
    (Corr of constant labels, a class metric of one class): the data are read again, only
    when no epoch of any trial has a finite value."""
    from ucrn.config import data_args
    from ucrn.data import load_dataset
    from ucrn.metrics import undefined_metric

    metric = plan.flags.metric
    values = [r.get(metric) for rows in book.epochs.values() for r in rows.values()]
    if any(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    try:
        data = load_dataset(**data_args(plan.settings.base))
        return undefined_metric(metric, data.splits["valid"].labels, data.task)
    except Exception:  # noqa: BLE001 - only an explanation: without it, the line as before
        return None


if __name__ == "__main__":
    sys.exit(main())
