"""run_search.py --retrain STORAGE/NAME: the best (or a chosen) configuration of a search,
re-trained once per seed in parallel and scored on the test split.

Plan -> run -> summarise, like a search. Each seed's row (validation and test metrics,
the selected checkpoint) is written to retrain.parquet the moment that seed finishes, so
an interrupted run loses only the seeds still training; `--retrain ... --resume` runs
just the seeds that have no row yet.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# The same building blocks as search/driver.py (both runs are plan -> run -> summarise on
# Ray); only the plan and the summary differ.
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
from search.dataload import data_bytes, load_data
from search.flags import Flags, auto_executor, check_address, check_flags
from search.groups import group_sweepers
from search.lock import ResultsLock
from search.objstore import check_remote, join, ray_storage
from search.progress import make_recorder
from search.results import (
    CONFIG_TYPES,
    METRICS,
    RETRAIN,
    ResultsStore,
    TrialBook,
    config_digest,
)
from search.schema import BEST_TRIAL, SEARCH_JSON, check_results
from search.settings import TrialSettings
from search.trial import retrain_key
from ucrn.cli import parse_seeds
from ucrn.config import TrainConfig, defaulted_fields, missing_fields, normalize_keys
from ucrn.errors import UsageError
from ucrn.fileio import is_uri, redact
from ucrn.metrics import ROBUST_METRICS, mean_std, metric_mode


@dataclass(frozen=True)
class RetrainPlan:
    flags: Flags
    store: ResultsStore
    trial_id: str  # "best" or the chosen trial
    config: dict[str, Any]  # the re-trained configuration (its seed is replaced per run)
    seeds: list[int]  # all requested
    todo: list[int]  # those without a row yet
    metric: str
    settings: TrialSettings
    diverged: list[int] = field(default_factory=list)  # seeds this run saw diverge

    @property
    def resume_command(self) -> str:
        """The command that finishes this run: with the flags it was given that decide
        what the remaining seeds record or how they run (a re-training keeps no file of
        its flags, so a resume without them ran the rest with the defaults)."""
        trial = f" --trial {self.trial_id}" if self.trial_id != "best" else ""
        kept = "".join(f" {arg}" for arg in _kept_flags(self.flags))
        return (f"python run_search.py --retrain {shlex.quote(self.flags.retrain)}{trial} "
                f"--seeds {','.join(map(str, self.seeds))}{kept} --resume")


# the flags of a re-training that its resume must repeat: what the remaining seeds record
# (the robustness repeats) and the resources and executor they run with
RESUME_KEEPS = ("robustness_repeats", "executor", "cpus_per_trial", "gpus_per_trial",
                "workers_per_trial", "trial_resources", "max_concurrent", "max_failures")


def _kept_flags(fl: Flags) -> list[str]:
    out = []
    for name in RESUME_KEEPS:
        value = getattr(fl, name)
        default = (auto_executor(fl.workers_per_trial) if name == "executor"
                   else Flags.__dataclass_fields__[name].default)
        if value != default:
            out.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    return out


def run_retrain(fl: Flags, fail_if: dict[str, Any] | None = None) -> int:
    check_flags(fl)  # --executor auto is already resolved: train for DDP (Flags)
    if is_uri(fl.retrain):
        check_remote(fl.retrain, "--retrain")
    try:
        store = ResultsStore(fl.retrain)
    except ValueError as e:  # a file URI with a host, a user or a password
        raise UsageError(f"--retrain {e}") from None
    if not store.exists("trials.parquet") and not store.exists(
            "best_config.json"):
        raise UsageError(f"--retrain {redact(fl.retrain)}: not a search folder (no "
                         "trials.parquet or best_config.json there)")
    with ResultsLock(store, "re-training") as lock:
        plan = plan_retrain(fl, store, fail_if)
        if plan.todo:
            code = run(plan, [load_data(plan.config)], lock)  # emptied into Ray's store
            if code:
                return code
        else:
            print(f"every seed of {plan.seeds} already has a row; nothing to run")
        return summarise(plan)


def plan_retrain(fl: Flags, store: ResultsStore, fail_if: dict[str, Any] | None
                 ) -> RetrainPlan:
    seeds = parse_seeds(fl.seeds)
    config, trial_id = _retrain_config(store, fl)
    done = _done_seeds(store, trial_id)
    clash = sorted(set(done) & set(seeds))
    if clash and not fl.resume:
        raise UsageError(f"--retrain {fl.retrain}: seeds {clash} of {trial_id} are already "
                         f"re-trained; add --resume to run only the missing seeds")
    check_address(fl.address)
    base = {k: v for k, v in config.items() if k != "seed"}
    base["threads"] = base_resources_threads(fl)
    base["device"] = "cpu" if fl.gpus_per_trial == 0 else "auto"  # this run's resources
    select = config["select_metric"]
    metric = select if select != "auto" else ("loss" if config["dataset"] == "iemocap" else "MAE")
    settings = trial_settings(fl, store.location, base, save_models=True, fail_if=fail_if,
                              retrain_of=trial_id, robustness_repeats=fl.robustness_repeats)
    return RetrainPlan(flags=fl, store=store, trial_id=trial_id, config=config, seeds=seeds,
                       todo=[s for s in seeds if s not in done], metric=metric,
                       settings=settings)


def _retrain_config(store: ResultsStore, fl: Flags) -> tuple[dict[str, Any], str]:
    where = store.show("best_config.json")
    if fl.trial:
        try:
            meta = store.read_json(SEARCH_JSON) or {}
        except ValueError:
            meta = {}
        metric = meta.get("metric") if isinstance(meta, dict) else None
        metric = metric if metric in METRICS else "MAE"
        book = TrialBook(store, "", metric, metric_mode(metric), "", read_only=True)
        for note in book.load():
            print(f"warning: {note}", file=sys.stderr)
        row = book.trials.get(fl.trial)
        if row is None:
            raise UsageError(f"--trial {fl.trial}: no such trial in "
                             f"{store.show('trials.parquet')}")
        raw = {k: row[k] for k in TrainConfig.__dataclass_fields__ if k in row}
        where, trial_id = f"trial {fl.trial}", fl.trial
    else:
        raw = store.read_json("best_config.json", missing_ok=True)
        if raw is None:
            raise UsageError(f"--retrain {fl.retrain}: no best_config.json there "
                             "(is it a finished search?)")
        if not isinstance(raw, dict):
            raise UsageError(f"{where}: expected a JSON object of config keys, got "
                             f"{type(raw).__name__}")
        trial_id = "best"
        try:
            record = store.read_json(BEST_TRIAL)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("config") != config_digest(raw):
            print(f"warning: {where} is not the config {store.show(BEST_TRIAL)} records for "
                  f"trial {record.get('trial_id')} (edited since the search chose it?): "
                  f"re-training it as it is", file=sys.stderr)
    try:
        raw = normalize_keys(raw, where)
    except ValueError as e:
        raise UsageError(str(e)) from None
    missing = missing_fields(raw) if not fl.trial else []  # trial rows: fields of their day
    if missing:
        raise UsageError(f"{where}: incomplete, missing {', '.join(missing)} (expected the "
                         f"full config a search writes)")
    newer = defaulted_fields(raw)
    if newer:
        print(f"note: {where} predates {', '.join(newer)}: using the defaults (what its run "
              f"used)", file=sys.stderr)
    try:
        return TrainConfig.from_dict(raw, where=where).to_dict(), trial_id
    except ValueError as e:
        raise UsageError(str(e)) from None


def _done_seeds(store: ResultsStore, trial_id: str) -> dict[int, dict[str, Any]]:
    """Seeds of `trial_id` that have a row. Each file is checked as every reader of the
    results checks it (search/schema.py check_results): one that is unreadable or does not
    hold a re-training row is named and counts as not done."""
    tables, _ = store.read_tables(RETRAIN)
    checked = check_results({RETRAIN: tables}, lambda f, k: store.show(f, k + ".parquet"),
                            "MAE", "min", CONFIG_TYPES)
    for line in checked.warnings:
        print(f"warning: {line} (that seed counts as not re-trained)", file=sys.stderr)
    rows = [r for t in checked.tables[RETRAIN].values() for r in t.to_pylist()]
    return {int(r["seed"]): r for r in rows if r.get("trial_id") == trial_id}


def _is_metric(k: str) -> bool:
    return k in METRICS or (k.startswith("test_") and k[5:] in METRICS)


def run(plan: RetrainPlan, holder: list[Any], lock: ResultsLock) -> int:
    from ray import tune

    fl, store = plan.flags, plan.store

    def write_row(trial: Any, final: dict[str, Any]) -> None:
        """A seed finished: its row goes to disk now, not after the others."""
        seed = int(trial.config["seed"])
        row = {"search": fl.retrain, "trial_id": plan.trial_id, "retrain_trial": trial.trial_id}
        row.update({k: v for k, v in final.items() if _is_metric(k)})
        row.update({"best_epoch": final["best_epoch"], "checkpoint": final["model_checkpoint"]})
        row.update(plan.settings.base)
        row["seed"] = seed
        store.write_rows(RETRAIN, retrain_key(plan.trial_id, seed), [row])
        shown = "MAE" if plan.metric in ROBUST_METRICS else plan.metric  # valid-only metric
        print(f"seed {seed}: test {shown} {row.get('test_' + shown, math.nan):.4f} "
              f"(row written)", flush=True)

    start_ray(fl.address, plan.settings.base["threads"], None, data_bytes(holder[0]))
    with GracefulStop(plan.resume_command, store.uri, lock.mark_interrupted) as stop:
        try:
            check_cluster(fl)
            trainable = make_trainable(fl, holder, plan.settings)
            name = f"{store.root.rstrip('/').rsplit('/', 1)[-1]}-retrain"
            recorder = make_recorder(store.location, name, plan.metric, metric_mode(plan.metric),
                                     fl.executor, plan.settings.base, len(plan.todo),
                                     on_final=write_row)
            print(f"re-training trial {plan.trial_id} on seeds {plan.todo}, "
                  f"{plan.config['num_epochs']} epochs each\nif cut off, resume with: "
                  f"{plan.resume_command}", flush=True)
            tuner = tune.Tuner(
                trainable, param_space={"seed": tune.grid_search(plan.todo)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=fl.max_concurrent or auto_concurrency(fl),
                    # seed after seed in one process, as a search's trials (its imports
                    # are seconds of each new process's start)
                    reuse_actors=fl.executor == "tune"),
                run_config=tune.RunConfig(
                    name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
                    **ray_storage(join(store.location, "retrain_runs")),
                    callbacks=[recorder, *group_sweepers(fl.executor)],
                    verbose=0, failure_config=tune.FailureConfig(max_failures=fl.max_failures)),
            )
            stop.tune_started()
            tuner.fit()
            plan.diverged.extend(sorted(
                int(t["seed"]) for t in (recorder.book.trials if recorder.book else {}).values()
                if t.get("status") == "diverged" and t.get("seed") is not None))
            return 0
        finally:  # inside the signal handling: a second signal here still exits 130
            stop_ray()


def summarise(plan: RetrainPlan) -> int:
    done = _done_seeds(plan.store, plan.trial_id)
    rows = [done[s] for s in plan.seeds if s in done]
    missing = [s for s in plan.seeds if s not in done]
    if missing:
        diverged = [s for s in missing if s in plan.diverged]
        retry = [s for s in missing if s not in diverged]
        why = (f"; seeds {diverged} diverged (the training loss or the validation MAE became "
               "non-finite), which a --resume would repeat: the configuration "
               f"({plan.trial_id}) needs another learning rate or clip" if diverged else "")
        again = f"; run again with --resume for seeds {retry}" if retry else ""
        print(f"error: {len(missing)} of {len(plan.seeds)} re-training runs did not finish "
              f"(seeds {missing}){why}{again}", file=sys.stderr)
    if not rows:
        return 1
    keys = [k for k in rows[0] if _is_metric(k)]
    print(f"\nmean ± std over seeds {sorted(r['seed'] for r in rows)} ({len(rows)} runs):")
    for split, pick in (("valid", lambda k: not k.startswith("test_")),
                        ("test", lambda k: k.startswith("test_"))):
        parts = []
        for k in filter(pick, keys):
            mean, std = mean_std([r[k] if r[k] is not None else math.nan for r in rows])
            parts.append(f"{k.removeprefix('test_')} {mean:.4f}±{std:.4f}")
        print(f"  {split}: " + "  ".join(parts))
    print(f"results: {plan.store.show(RETRAIN)}")
    return 0 if not missing else 1
