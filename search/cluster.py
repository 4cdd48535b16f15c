"""The Ray side shared by a search and a re-training run: starting or joining Ray, checking
the cluster fits the flags, the trainable, and stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from unittest.mock import patch

from search.flags import Flags
from search.objstore import join
from search.settings import TrialSettings
from ucrn.errors import STOP_SIGNALS, UsageError, interrupt, raised_by_a_stop_handler
from ucrn.fileio import answered, secret_name

CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                   "AWS_SESSION_TOKEN")


def keep_credentials_out_of_ray_logs() -> None:
    """Ray Tune copies AWS credentials from the driver's environment into every trial's
    runtime environment, and Ray's runtime-env agent logs that environment in plain text
    (/tmp/ray/session_*/logs/runtime_env_agent.log). The trials do not need the copy: on
    the driver's machine they inherit the environment Ray started with; on a cluster every
    node has its own (instance profile, or its environment: docs/cluster.md)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, set):  # the AWS ones, and any other secret a Ray adds there
        propagated.difference_update({*CREDENTIAL_VARS, *(
            v for v in propagated if secret_name(v) and not v.endswith("_ID"))})


def skip_callback_census() -> None:
    """Tune counts the callbacks of every search for Ray's usage statistics by comparing
    them with Ray's MLflow, W&B and Comet callbacks, which means importing those
    integrations, and with them mlflow and wandb where they are installed (the trackers
    extra): 1.6 to 3 s of CPU at the start of every search, for a count that says "custom
    callback" of ours. The count is skipped; nothing else in Tune reads it."""
    try:
        from ray.air._internal import usage
    except ImportError:
        return
    if callable(getattr(usage, "tag_callbacks", None)):
        usage.tag_callbacks = lambda callbacks: False


# Tune's own per-trial loggers (result.json, progress.csv, params.json/.pkl and an event
# file in each trial's folder, written by the driver at every report and copied to the
# storage at every sync) are off unless the environment turns them on ("0"): the Parquet
# files and --tracker hold the same. They were half of the driver's CPU in a 200-trial
# search (41-44 against 20-23 CPU-s; 56-63 against 40-45 s of wall time: docs/benchmarks.md).
TUNE_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"

_TUNE_ENV: dict[str, Any] = {}  # Tune's own copy of what it puts in trial actors' environment


def tune_actor_env(local: bool) -> dict[str, str]:
    """What Tune would put in every trial actor's runtime_env; for a local Ray, Tune is
    told to put nothing there, and the values are returned for the Ray processes to inherit.

    Why: an actor with a runtime_env of its own never runs in the worker processes Ray
    starts with the node (ray already imported, seconds saved per trial); it waits for a
    new process. Tune copies a few variables (PL_DISABLE_FORK, Ray Train's settings) into
    each trial actor's runtime_env, which a local Ray's workers inherit anyway. Connected
    to a cluster (`local` False), Tune's copy is left as Tune made it."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return {}
    defaults, propagated = class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE
    if not _TUNE_ENV:
        _TUNE_ENV.update(defaults=dict(defaults), propagated=set(propagated))
    defaults.clear()
    propagated.clear()
    if not local:
        defaults.update(_TUNE_ENV["defaults"])
        propagated.update(_TUNE_ENV["propagated"])
        keep_credentials_out_of_ray_logs()
        return {}
    return {**_TUNE_ENV["defaults"], **{k: os.environ[k] for k in _TUNE_ENV["propagated"]
                                        if k in os.environ and k not in CREDENTIAL_VARS}}


def start_ray(address: str | None, threads: int, log_file: Path | None,
              data_bytes: int = 0) -> None:
    """Start a local Ray or connect to `address`, with the job's environment set.

    Ray's state API, asked from the job's processes, finds the cluster through
    /tmp/ray/ray_current_cluster unless told, and another Ray instance on the same machine
    may have overwritten that file (Ray Train's placement-group cleaner, which asked it,
    timed out and the search hung; it is no longer started: search.groups). So the job
    tells its processes where this cluster is: the dashboard URL (local) or the GCS
    address (--address).
    Ray's own log records go to `log_file`, not the terminal: the user's terminal shows our
    progress lines and, on failure, one error line. A local Ray's object store is sized to
    hold `data_bytes` without spilling (`object_store_bytes`).
    """
    import optuna
    import ray

    from search.trial import trial_env

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keep_credentials_out_of_ray_logs()
    skip_callback_census()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines, not Tune's tables
    if os.environ.setdefault(TUNE_LOGGERS_OFF, "1") not in ("0", "1"):
        # Ray turns the loggers on for anything but "1" ("true" would have meant on)
        raise UsageError(f"environment variable {TUNE_LOGGERS_OFF}="
                         f"{os.environ[TUNE_LOGGERS_OFF]!r}: expected 1 (Tune's per-trial "
                         "loggers off, the default) or 0 (on)")
    env_vars = trial_env(threads)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    if address is None:
        port = _free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # The environment reaches the trials through the Ray processes this call starts (they
        # inherit it), not as a job runtime_env: Ray then gives the first trials the worker
        # processes it starts with the node (ray is imported there already), where a job
        # with a runtime_env waits for new ones (1.5 s against 4 to 11 s per trial here).
        # (this process's own environment is as it was once Ray has started)
        env_vars.update(tune_actor_env(local=True))
        with patch.dict(os.environ, env_vars), _ray_stop_as_interrupt():
            # "local": always a new instance, never a stale /tmp/ray/ray_current_cluster
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=port, log_to_driver=False, configure_logging=True,
                     logging_level="ERROR", object_store_memory=object_store_bytes(data_bytes))
    else:
        tune_actor_env(local=False)
        if ":" in address and "://" not in address:
            env_vars["RAY_ADDRESS"] = address
        try:
            with _ray_stop_as_interrupt():
                ray.init(address=address, log_to_driver=False,
                         runtime_env={"env_vars": env_vars}, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as e:
            cause = e.__cause__ or e
            hint = ""
            if "auth" in str(cause).lower():
                hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and "
                        "the token in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            raise UsageError(f"--address {address}: could not connect{hint}") from None
    if main:  # ray.init's own handler exits 15 at once; ours stops cleanly (exit 130)
        signal.signal(signal.SIGTERM, sigterm)
    _ray_logs_to(log_file)


def stop_ray() -> None:
    """The end of a run on Ray: this job's leftover placement groups released (bounded in
    time, never raising: this runs in the signal handling's `finally`), then
    ray.shutdown()."""
    import ray

    from search.groups import release_at_end

    release_at_end()
    ray.shutdown()


@contextmanager
def _ray_stop_as_interrupt() -> Iterator[None]:
    """While ray.init runs, Ray's own SIGTERM handler is in force: it exits with code 15
    and no word (a SIGTERM while Ray started). That exit becomes the usual stop: one line,
    exit 130, the resume command."""
    try:
        yield
    except SystemExit as e:
        if e.code in STOP_SIGNALS and raised_by_a_stop_handler(e.__traceback__):
            interrupt(int(e.code))
        raise


SPILL_AT = 0.8  # Ray writes objects to disk once its object store is this full


def object_store_bytes(data_bytes: int) -> int | None:
    """A local Ray's object store size: Ray's default (30 % of the memory), unless the data
    would fill it past SPILL_AT. Ray would then write the data to disk and read it back in
    every trial (a 6 GB MOSEI-shaped file on a 24 GB machine: 6 GB spilled at 200 MB/s).
    Never more than the shared-memory folder can give or 70 % of the memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = int(data_bytes / SPILL_AT) + (256 << 20)  # room for the trials' small objects
    if need <= int(0.3 * total):
        return None
    try:
        shm = os.statvfs("/dev/shm")
        limit = min(shm.f_bavail * shm.f_frsize, int(0.7 * total))
    except OSError:  # no /dev/shm: Ray falls back to a file-backed store
        limit = int(0.7 * total)
    return max(min(need, limit), int(0.3 * total))


class _QuietFileHandler(logging.FileHandler):
    """A log file that fails silently: on a full disk the log is the first to go, and its
    failure must not print tracebacks over the one line that explains it. Opening the file
    (at the first record: `delay`) is outside logging's own guard: with the results folder
    moved away mid-run, it raised out of Tune's error handling and ended the search with
    tracebacks."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except Exception:  # noqa: BLE001 - the log is the first thing to give up
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def _ray_logs_to(log_file: Path | None) -> None:
    """Ray's and Tune's log records (tracebacks of failed writes among them) to a file."""
    handler: logging.Handler = logging.NullHandler()
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = _QuietFileHandler(log_file, delay=True)
        except OSError:
            pass
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("ray", "ray.tune", "ray.train", "ucrn.search"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):  # terminal handlers, and an earlier run's (search.run)
            if isinstance(h, (_QuietFileHandler, logging.NullHandler)) or (
                    isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)):
                lg.removeHandler(h)
                if isinstance(h, _QuietFileHandler):
                    h.close()
        lg.addHandler(handler)
        lg.propagate = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_cluster(fl: Flags) -> None:
    """A trial that no node can host would wait forever: one line instead."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    per_worker = {"CPU": fl.cpus_per_trial,
                  **{k: v / fl.workers_per_trial for k, v in fl.extra_resources.items()}}
    for key, need in per_worker.items():
        most = max((r.get(key, 0.0) for r in nodes), default=0.0)
        if most < need:
            flag = "--cpus-per-trial" if key == "CPU" else "--trial-resources"
            have = f"the largest has {most:g}" if most else "none has it"
            raise UsageError(f"{flag}: each trial worker needs {need:g} of resource {key!r} "
                             f"but no node of the cluster has that much ({have}); a trial "
                             f"would wait forever")
    if fl.gpus_per_trial > 0:
        most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        if most == 0:
            raise UsageError(f"--gpus-per-trial {fl.gpus_per_trial}: no node of the cluster has "
                             "a GPU (an autoscaling cluster must keep one GPU node up: "
                             "min_workers >= 1)")
        if fl.gpus_per_trial > most:
            raise UsageError(f"--gpus-per-trial {fl.gpus_per_trial}: more than any node has "
                             f"(the largest has {most:g} GPUs)")


# Executor "train": a trial is a Tune trial (its driver) that starts Ray Train workers, and
# Ray reserves the two separately (a zero-CPU driver is refused). The driver reserves
# DRIVER_CPU; DRIVER_ROOM is taken off the trial's CPUs for its workers, so that a node
# running a worker still fits ten drivers. With driver = room (0.1 + 0.9 on a 1-CPU node),
# two drivers on one node left 0.8 CPU, no worker fitted there, and a search whose other
# node was lost waited forever (seen in CI).
DRIVER_CPU = 0.01
DRIVER_ROOM = 0.1


def auto_concurrency(fl: Flags) -> int:
    """Trials that fit the cluster now: more would only park trial drivers waiting for
    workers (each holding a process)."""
    import ray

    res = ray.cluster_resources()
    w = fl.workers_per_trial
    fits = int(res.get("CPU", 0) // (fl.cpus_per_trial * w))
    if fl.gpus_per_trial > 0:
        fits = min(fits, int(res.get("GPU", 0) // (fl.gpus_per_trial * w)))
    for name, amount in fl.extra_resources.items():
        fits = min(fits, int(res.get(name, 0) // amount))
    return max(1, fits)


def trial_settings(fl: Flags, uri: str, base: dict[str, Any], save_models: bool,
                   fail_if: dict[str, str] | None, retrain_of: str = "",
                   robustness_repeats: int = 0) -> TrialSettings:
    workers = fl.workers_per_trial
    room = DRIVER_ROOM if fl.executor == "train" else 0.0
    return TrialSettings(
        base=dict(base), workers=workers, cpus_per_worker=fl.cpus_per_trial - room / workers,
        gpus_per_worker=fl.gpus_per_trial, extra_resources=fl.extra_resources,
        max_failures=fl.max_failures, train_storage=join(uri, "train_runs"),
        results_uri=uri, save_models=save_models, retrain_of=retrain_of,
        robustness_repeats=robustness_repeats,
        fail_if={str(k): str(v) for k, v in (fail_if or {}).items()})


def make_trainable(fl: Flags, holder: list[Any], settings: TrialSettings):
    """The trial function with its resources; the data in `holder` moves to Ray's object
    store (the holder is emptied: the driver keeps no copy)."""
    from ray import tune

    from search.dataload import share
    from search.trial import restorable, train_trial, tune_trial

    box = [share(holder)]  # once per run; trials on a node share it from the object store
    if fl.executor == "train":
        fn, res = train_trial, {"CPU": DRIVER_CPU}
    else:
        fn, res = tune_trial, {"CPU": fl.cpus_per_trial, "GPU": fl.gpus_per_trial,  # 1 worker
                               **fl.extra_resources}
    trainable = restorable(tune.with_parameters(fn, data_box=box, settings=settings),
                           fn.__name__)
    return tune.with_resources(trainable, res)


def base_resources_threads(fl: Flags) -> int:
    """Torch/OpenMP threads per worker: its whole-CPU share (at least one)."""
    return max(1, int(fl.cpus_per_trial))


STUCK_S = 5.0  # how long a stop signal waits for the main thread before the run leaves anyway


class GracefulStop:
    """SIGINT/SIGTERM/SIGHUP during a run: Tune stops its trials and saves its state (we
    forward the signal as the SIGUSR1 Tune listens to), the Parquet files are already
    current; then we print how to resume and exit 130. A second signal interrupts at once.
    `mark` records the interruption where the run's callback looks
    (ResultsLock.mark_interrupted). Entered right after Ray starts; before `tune_started()`
    a signal stops at once (no trial runs yet, nothing to save).

    Python runs a signal handler in the main thread between two bytecodes, so one that
    waits inside Ray's C++ client never ran: with the cluster gone, a SIGTERM did nothing
    and the driver exited 1 a minute later with Ray's own line. The signal also wakes a
    thread (`signal.set_wakeup_fd`); when the handler has not run STUCK_S later, that
    thread marks the run interrupted, prints how to resume and leaves (exit 130)."""

    def __init__(self, resume_command: str, where: str, mark: Callable[[], None]):
        self.resume_command, self.where, self.mark = resume_command, where, mark
        self.interrupted = threading.Event()
        self._tune = False
        self._handled = 0  # handler runs: the watch thread compares
        self._wake: tuple[int, int] | None = None

    def __enter__(self) -> GracefulStop:
        self.old = {}
        if threading.current_thread() is not threading.main_thread():
            return self  # search.run from a thread: only the main thread may set handlers
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards it instead
        self.old = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        # until Tune installs its own, a forwarded SIGUSR1 must not end the process
        self.old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: None)
        self._watch_stuck()
        return self

    def tune_started(self) -> None:
        self._tune = True

    def _watch_stuck(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(r, True)
        try:
            self._old_wake = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):  # not allowed here: the handlers alone
            os.close(r)
            os.close(w)
            return
        self._wake = (r, w)
        threading.Thread(target=self._watch, args=(r,), name="stop-watch", daemon=True).start()

    def _watch(self, r: int) -> None:
        try:
            while True:
                seen = self._handled  # before the signal: a handler run from now on counts
                data = os.read(r, 512)
                if not data or 0 in data:  # closed, or the run's end
                    return
                if not any(b in STOP_SIGNALS for b in data):
                    continue
                end = time.monotonic() + STUCK_S
                while self._handled == seen and time.monotonic() < end:
                    time.sleep(0.05)
                if self._handled == seen:
                    self._leave_stuck()
        finally:
            os.close(r)

    def _leave_stuck(self) -> NoReturn:
        """The main thread never ran the handler: say so, keep what is written, leave."""
        self.interrupted.set()
        try:
            answered(self.mark)  # bounded: the store may be what stopped answering
        except Exception:  # noqa: BLE001 - leaving anyway; --resume finds the trials
            pass
        print(f"\nstopping: the run did not answer the signal within {STUCK_S:.0f} s (its "
              f"Ray cluster gone?); leaving without saving Tune's state\n{self._ended()}",
              file=sys.stderr, flush=True)
        os._exit(130)

    def _ended(self) -> str:
        return f"interrupted: results so far are in {self.where}\nresume with: {self.resume_command}"

    def _stop(self, signum, frame) -> None:
        self._handled += 1
        if self.interrupted.is_set() or not self._tune:
            self.interrupted.set()
            interrupt(signum)
        self.interrupted.set()
        try:
            self.mark()
        except OSError:
            pass
        print(f"\nstopping: finishing the current step and saving the state (signal again "
              f"to stop at once); resume later with: {self.resume_command}", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, typ, exc, tb) -> bool:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if self._wake is not None:
            signal.set_wakeup_fd(self._old_wake)
            r, w = self._wake
            os.write(w, b"\0")  # the watch thread ends (and closes its end)
            os.close(w)
            self._wake = None
        if typ is KeyboardInterrupt or self.interrupted.is_set():
            print(self._ended(), file=sys.stderr, flush=True)
            raise SystemExit(130)
        return False
