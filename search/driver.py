"""run_search.py: a Ray Tune search (Optuna TPE + ASHA) over UCRN trials, results in Parquet.

Everything that can be wrong with the flags, the space file, the storage or the data
is checked before Ray starts, and reported in one line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any

from search.flags import (
    UsageError,
    build_parser,
    check_address,
    check_flags,
    check_storage,
)
from search.progress import fmt, interrupted_event, make_recorder, storage_failure
from search.results import RETRAIN, ResultsStore, TrialBook
from search.space import SpaceError, first_value, load_space, searched
from ucrn.data import DataError, load_dataset
from ucrn.metrics import mean_std, metric_mode
from ucrn.train import TrainConfig

# ---- Ray ---------------------------------------------------------------------------------

def start_ray(address: str | None, threads: int) -> None:
    """Start a local Ray or connect to `address`, with the job's environment set.

    Ray Train frees the workers of a stopped trial from an actor that finds the cluster
    through the state API; left to itself, that actor reads /tmp/ray/ray_current_cluster,
    which another Ray instance on the same machine may have overwritten (it then times out
    and the freed CPUs stay reserved: the search hangs). So the job tells its processes
    where this cluster is: the dashboard URL (local) or the GCS address (--address).
    """
    import optuna
    import ray

    from search.trial import trial_env

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines, not Tune's tables
    env_vars = trial_env(threads)
    if address is None:
        port = _free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # "local": always a new instance, never a stale /tmp/ray/ray_current_cluster
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, log_to_driver=False, runtime_env={"env_vars": env_vars},
                 configure_logging=True, logging_level="ERROR")
        return
    if ":" in address and "://" not in address:
        env_vars["RAY_ADDRESS"] = address
    try:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env_vars},
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError) as e:
        cause = e.__cause__ or e
        hint = ""
        if "auth" in str(cause).lower():
            hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and the "
                    "token in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
        raise UsageError(f"--address {address}: could not connect{hint}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_cluster(ns: argparse.Namespace) -> None:
    import ray

    if ns.gpus_per_trial > 0:
        most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        if most == 0:
            raise UsageError(f"--gpus-per-trial {ns.gpus_per_trial}: no node of the cluster has "
                             "a GPU (an autoscaling cluster must keep one GPU node up: "
                             "min_workers >= 1)")
        if ns.gpus_per_trial > most:
            raise UsageError(f"--gpus-per-trial {ns.gpus_per_trial}: more than any node has "
                             f"(the largest has {most:g} GPUs)")


def auto_concurrency(ns: argparse.Namespace) -> int:
    """Trials that fit the cluster now: more would only park trial drivers waiting for
    workers (each holding a process and 0.1 CPU)."""
    import ray

    res = ray.cluster_resources()
    w = ns.workers_per_trial
    fits = int(res.get("CPU", 0) // (ns.cpus_per_trial * w))
    if ns.gpus_per_trial > 0:
        fits = min(fits, int(res.get("GPU", 0) // (ns.gpus_per_trial * w)))
    for name, amount in ns.extra_resources.items():
        fits = min(fits, int(res.get(name, 0) // amount))
    return max(1, fits)


def trial_settings(ns: argparse.Namespace, uri: str, base: dict[str, Any],
                   save_models: bool) -> dict[str, Any]:
    workers = ns.workers_per_trial
    driver_cpu = 0.1 if ns.executor == "train" else 0.0
    return {
        "base": base, "workers": workers, "gpus": ns.gpus_per_trial,
        "cpus_per_worker": ns.cpus_per_trial - driver_cpu / workers,
        "extra_resources": ns.extra_resources,
        "max_failures": ns.max_failures, "train_storage": f"{uri.rstrip('/')}/train_runs",
        "results_uri": uri, "save_models": save_models,
    }


def make_trainable(ns: argparse.Namespace, data, settings: dict[str, Any]):
    import ray
    from ray import tune

    from search.trial import train_trial, tune_trial

    box = [ray.put(data)]  # once per search; trials on a node share it from the object store
    if ns.executor == "train":
        fn, res = train_trial, {"CPU": 0.1}
    else:
        fn, res = tune_trial, {"CPU": ns.cpus_per_trial, "GPU": ns.gpus_per_trial,  # 1 worker
                               **ns.extra_resources}
    return tune.with_resources(tune.with_parameters(fn, data_box=box, settings=settings), res)


def base_config(ns: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    """The fixed part of every trial's config: flags plus the space's fixed values."""
    threads = max(1, int(ns.cpus_per_trial))
    base = {"dataset": ns.dataset, "data_path": ns.data_path, "aligned": ns.aligned,
            "preset": ns.preset, "modalities": ns.modalities, "num_epochs": ns.max_epochs,
            "seed": ns.seed, "threads": threads, "select_metric": ns.metric,
            "device": "cpu" if ns.gpus_per_trial == 0 else "auto"}
    base.update({k: v for k, v in spec.items() if not isinstance(v, dict)})
    sample = {k: first_value(v) for k, v in spec.items() if isinstance(v, dict)}
    try:  # one complete config: flags and the space's fixed values agree with the trainer
        TrainConfig.from_dict({**base, **sample}, where="flags and space")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return base


# ---- the search ------------------------------------------------------------------------

def run_search(ns: argparse.Namespace) -> int:
    storage = check_storage(ns.storage)
    uri = f"{storage.rstrip('/')}/{ns.name}"
    store = ResultsStore(uri)
    if ns.resume:
        saved = store.read_json("search.json")
        if saved is None:
            raise UsageError(f"--resume: no search named {ns.name!r} under {storage} "
                             "(search.json not found)")
        for key, value in saved["flags"].items():  # the interrupted search's own settings
            if key not in ("resume", "address"):
                setattr(ns, key, value)
    elif store.exists("search.json"):
        raise UsageError(f"--name {ns.name}: a search already exists at {uri}; "
                         "use --resume to continue it or another --name")
    check_flags(ns)
    try:
        spec = load_space(ns.space)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    base = base_config(ns, spec)
    data = load_data(ns.dataset, ns.data_path, ns.aligned, ns.preset)
    check_address(ns.address)

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search.space import to_tune

    mode = metric_mode(ns.metric)
    param_space = to_tune({k: v for k, v in spec.items() if isinstance(v, dict)})
    start_ray(ns.address, base["threads"])
    import ray

    try:
        check_cluster(ns)
        if not ns.resume:
            store.write_json("search.json", {
                "flags": vars(ns), "space": spec, "metric": ns.metric, "mode": mode,
                "searched": searched(spec), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        settings = trial_settings(ns, uri, base, save_models=False)
        trainable = make_trainable(ns, data, settings)
        recorder = make_recorder(uri, ns.name, ns.metric, mode, ns.executor, base,
                                  ns.num_samples, retrain=False)
        print(f"search {ns.name}: {ns.num_samples} trials x up to {ns.max_epochs} epochs, "
              f"executor {ns.executor}, {ns.metric} ({mode}); searching {', '.join(searched(spec))}"
              f"\nresults: {uri}", flush=True)
        if ns.resume:
            tuner = tune.Tuner.restore(uri, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, param_space=param_space)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=ns.metric, mode=mode, num_samples=ns.num_samples,
                    reuse_actors=ns.executor == "tune",  # no new process per tiny trial
                    max_concurrent_trials=ns.max_concurrent or auto_concurrency(ns),
                    search_alg=OptunaSearch(seed=ns.seed),
                    scheduler=ASHAScheduler(time_attr="epoch", max_t=ns.max_epochs,
                                            grace_period=ns.grace_period,
                                            reduction_factor=ns.reduction_factor)),
                run_config=tune.RunConfig(
                    name=ns.name, storage_path=storage, callbacks=[recorder], verbose=0,
                    failure_config=tune.FailureConfig(max_failures=ns.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
            )
        try:
            with _graceful_stop(ns, uri):
                tuner.fit()
        except Exception as e:  # noqa: BLE001 - only a storage failure is ours to explain
            failure = storage_failure(e)
            if failure is None:
                raise
            print(f"error: {failure}; the Parquet files written so far are complete up to this "
                  f"point; fix the storage, then: python run_search.py --resume --name {ns.name} "
                  f"--storage {ns.storage}", file=sys.stderr, flush=True)
            return 1
        return summarize(store, ns, mode)
    finally:
        ray.shutdown()


class _graceful_stop:
    """SIGINT/SIGTERM: Tune stops its trials and saves its state (we forward the signal as
    the SIGUSR1 Tune listens to), Parquet is already flushed per report; then we say how
    to resume and exit 130. A second signal interrupts at once."""

    def __init__(self, ns: argparse.Namespace, uri: str):
        self.ns, self.uri, self.hit = ns, uri, False

    def __enter__(self):
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards it instead
        self.old = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _stop(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        interrupted_event.set()
        print("\nstopping: finishing the current step and saving the search state "
              "(signal again to stop at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, typ, exc, tb):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if typ is KeyboardInterrupt or self.hit:
            print(f"interrupted: results so far are in {self.uri}\nresume with: python "
                  f"run_search.py --resume --name {self.ns.name} --storage {self.ns.storage}",
                  file=sys.stderr, flush=True)
            raise SystemExit(130)
        return False


def load_data(dataset: str, data_path: str | None, aligned: bool, preset: str, seed: int = 0):
    """The dataset, once, on the driver; a data problem is a usage error (one line)."""
    try:
        return load_dataset(dataset, data_path, aligned, preset=preset, seed=seed)
    except DataError as e:
        raise UsageError(str(e)) from None


def summarize(store: ResultsStore, ns: argparse.Namespace, mode: str) -> int:
    book = TrialBook(store, ns.name, ns.metric, mode, ns.executor)
    book.load()
    counts: dict[str, int] = {}
    for t in book.trials.values():
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    print(f"\ntrials: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
    best = book.best_trial()
    if best is None:
        print("no trial finished with a finite metric; nothing to recommend", file=sys.stderr)
        return 1
    config = {k: best[k] for k in TrainConfig.__dataclass_fields__ if k in best}
    store.write_json("best_config.json", TrainConfig.from_dict(config).to_dict())
    metrics = {k: best[k] for k in ("loss", "MAE", "Corr", "Mult_acc_7", "Has0_acc_2",
                                    "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                                    "Mean_acc", "Mean_F1") if k in best}
    print(f"best trial {best['trial_id']} ({best['status']}, best epoch {best['best_epoch']}): "
          + "  ".join(f"{k} {fmt(v)}" for k, v in metrics.items()))
    print("config: " + ", ".join(f"{k}={fmt(best[k])}" for k in searched(
        store.read_json("search.json")["space"])))
    print(f"results: {store.path('trials.parquet')}, {store.path('epochs.parquet')}, "
          f"{store.path('best_config.json')}\nanalyse: python analyze.py {store.uri}")
    return 0


# ---- re-training the best configuration on several seeds ---------------------------------

def run_retrain(ns: argparse.Namespace) -> int:
    store = ResultsStore(ns.retrain)
    try:
        seeds = [int(s) for s in ns.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {ns.seeds!r}: expected comma-separated integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {ns.seeds!r}: expected distinct seeds")
    config, trial_id = _retrain_config(store, ns)
    if ns.workers_per_trial > 1:  # DDP runs on Ray Train
        ns.executor = "train"
    check_flags(ns)
    data = load_data(config["dataset"], config["data_path"], config["aligned"],
                     config["preset"], config["data_seed"])
    check_address(ns.address)

    from ray import tune

    start_ray(ns.address, max(1, int(ns.cpus_per_trial)))
    import ray

    try:
        check_cluster(ns)
        base = {k: v for k, v in config.items() if k != "seed"}
        base["threads"] = max(1, int(ns.cpus_per_trial))
        base["device"] = "cpu" if ns.gpus_per_trial == 0 else "auto"  # this run's resources
        settings = trial_settings(ns, store.uri, base, save_models=True)
        trainable = make_trainable(ns, data, settings)
        metric = config["select_metric"] if config["select_metric"] != "auto" else (
            "loss" if data.task == "iemocap" else "MAE")
        recorder = make_recorder(store.uri, f"{store.uri.rstrip('/').rsplit('/', 1)[-1]}-retrain",
                                  metric, metric_mode(metric), ns.executor, base, len(seeds),
                                  retrain=True)
        print(f"re-training trial {trial_id} on seeds {seeds}, {config['num_epochs']} epochs each",
              flush=True)
        tuner = tune.Tuner(
            trainable, param_space={"seed": tune.grid_search(seeds)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=ns.max_concurrent or auto_concurrency(ns)),
            run_config=tune.RunConfig(
                name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=f"{store.uri.rstrip('/')}/retrain_runs", callbacks=[recorder],
                verbose=0, failure_config=tune.FailureConfig(max_failures=ns.max_failures)),
        )
        tuner.fit()
        finals = recorder.finals
    finally:
        ray.shutdown()
    rows = []
    for tid, fin in finals.items():
        row = {"search": ns.retrain, "trial_id": trial_id, "retrain_trial": tid}
        row.update({k: v for k, v in fin.items() if _is_metric_key(k)})
        row.update({"best_epoch": fin["best_epoch"], "checkpoint": fin["model_checkpoint"]})
        row.update(base)
        row["seed"] = int(fin["seed"])
        rows.append(row)
    if len(rows) != len(seeds):
        print(f"error: {len(seeds) - len(rows)} of {len(seeds)} re-training runs did not finish",
              file=sys.stderr)
    if not rows:
        return 1
    for row in rows:
        store.write_rows(RETRAIN, f"seed_{row['seed']}", [row])
    keys = [k for k in rows[0] if _is_metric_key(k)]
    print(f"\nmean ± std over seeds {sorted(r['seed'] for r in rows)} ({len(rows)} runs):")
    for split, pick in (("valid", lambda k: not k.startswith("test_")),
                        ("test", lambda k: k.startswith("test_"))):
        parts = []
        for k in filter(pick, keys):
            mean, std = mean_std([r[k] for r in rows])
            parts.append(f"{k.removeprefix('test_')} {mean:.4f}±{std:.4f}")
        print(f"  {split}: " + "  ".join(parts))
    print(f"results: {store.path(RETRAIN)}")
    return 0 if len(rows) == len(seeds) else 1


def _is_metric_key(k: str) -> bool:
    from search.results import METRICS

    return k in METRICS or (k.startswith("test_") and k[5:] in METRICS)


def _retrain_config(store: ResultsStore, ns: argparse.Namespace) -> tuple[dict[str, Any], str]:
    where = store.path("best_config.json")
    if ns.trial:
        book = TrialBook(store, "", "MAE", "min", "")
        book.load()
        row = book.trials.get(ns.trial)
        if row is None:
            raise UsageError(f"--trial {ns.trial}: no such trial in {store.path('trials.parquet')}")
        raw = {k: row[k] for k in TrainConfig.__dataclass_fields__ if k in row}
        where = f"trial {ns.trial}"
        trial_id = ns.trial
    else:
        raw = store.read_json("best_config.json")
        if raw is None:
            raise UsageError(f"--retrain {ns.retrain}: no best_config.json there "
                             "(is it a finished search?)")
        trial_id = "best"
    try:
        return TrainConfig.from_dict(raw, where=where).to_dict(), trial_id
    except ValueError as e:
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
        if ns.retrain:
            return run_retrain(ns)
        return run_search(ns)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

