"""--tracker tensorboard,mlflow,wandb: every trial's per-epoch metrics and its config in
the experiment trackers people already use (docs/trackers.md).

Ray Tune's own logger callbacks do the logging (TBXLoggerCallback, MLflowLoggerCallback,
WandbLoggerCallback). This module chooses where they write (files need no server:
STORAGE/NAME/tensorboard/, STORAGE/NAME/mlflow.db, STORAGE/NAME/wandb/), gives them the
trial's epoch as their step (the key of epochs.parquet, where Tune would count reports) and
only the trial's metrics (not Tune's bookkeeping, hostnames or pids), and keeps a tracker
that fails (a server gone, a full disk) from stopping the search: one warning line, and
that tracker records nothing more.
"""

from __future__ import annotations

import importlib
import logging
import netrc
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ucrn.errors import UsageError, say
from ucrn.fileio import redact

log = logging.getLogger("ucrn.search")

# tracker -> the package its Ray callback imports
TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
INSTALL = "pip install -e '.[trackers]'"
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
# Result keys that are Tune's bookkeeping or where a trial ran, not how it learns: left out,
# so what a tracker shows is the trial's own metrics (its config is logged on its own)
SKIPPED = frozenset({
    "config", "timestamp", "pid", "hostname", "node_ip", "date", "time_this_iter_s",
    "time_total_s", "time_since_restore", "iterations_since_restore", "timesteps_since_restore",
    "timesteps_total", "episodes_total", "experiment_tag", "experiment_id", "trial_id",
    "checkpoint_dir_name", "done", "should_checkpoint", "node", "node_id", "ended_at",
    "replay", "replayed_epoch", "final"})
# A server that does not answer would hold the driver (and so every trial) for minutes in
# MLflow's retries (7, about 4 minutes, and 120 s timeouts): seconds instead, unless set
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
WANDB_UPLOAD_TIMEOUT_S = 300  # at the end, how long W&B may upload (Ray's default: 30 min)


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """`--tracker` as names, in order, once each; '' or None: none."""
    names: list[str] = []
    for part in (text or "").split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise UsageError(f"--tracker {part.strip()}: unknown tracker; expected any of "
                             f"{', '.join(TRACKERS)}, comma-separated")
        if name not in names:
            names.append(name)
    return tuple(names)


def check_trackers(text: str | None, store: Any, search: str, saved: bool = False) -> None:
    """Before Ray, creating nothing: each tracker's package imports, W&B's mode is one it
    knows, the trackers' folder can be written. `saved`: the trackers came from a resumed
    search's search.json, not from this command line."""
    names = parse_trackers(text)
    shown = " (this search's own, from search.json; --tracker '' resumes without)" if saved else ""
    for name in names:
        module = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing = ((isinstance(e, ModuleNotFoundError) and e.name == module)
                       or sys.modules.get(module, False) is None)  # (None: import refused)
            why = (f"the {module} package is not installed" if missing else
                   f"the {module} package cannot be imported ({type(e).__name__}: {e})")
            raise UsageError(f"--tracker {name}{shown}: {why} ({INSTALL})") from None
    if "mlflow" in names:
        _check_mlflow_uri()
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if "wandb" in names and mode and mode not in WANDB_MODES:
        raise UsageError(f"--tracker wandb: WANDB_MODE={mode}: expected online, offline or "
                         f"disabled")
    if names:
        folder = tracker_folder(store, search)
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(f"--tracker {','.join(names)}: cannot write {folder}, where the "
                             f"trackers' files go")
        for name in names:
            _check_tracker_file(name, folder)


# what each tracker writes under the trackers' folder, and what it must be if it is there
_TRACKER_FILES = {"tensorboard": ("tensorboard", "folder"), "wandb": ("wandb", "folder"),
                  "mlflow": ("mlflow.db", "SQLite database")}


def _check_tracker_file(name: str, folder: Path) -> None:
    """A resumed search's tensorboard/, wandb/ or mlflow.db that is something else (a file,
    a folder, not SQLite) would fail the tracker at its first write, and the search would
    go on without it: one line before Ray instead."""
    if name == "mlflow" and os.environ.get("MLFLOW_TRACKING_URI"):
        return  # not ours: MLflow's server or file
    entry, kind = _TRACKER_FILES[name]
    path = folder / entry
    if not os.path.lexists(path):
        return
    if kind == "folder":
        bad = not path.is_dir()
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(16)
            bad = not path.is_file() or (head and head != b"SQLite format 3\x00")
        except OSError:
            bad = True
    if bad:
        raise UsageError(f"--tracker {name}: {path} is not the {kind} {name} writes (move it "
                         f"away, or resume with --tracker '' for none)")


def _check_mlflow_uri() -> None:
    """MLFLOW_TRACKING_URI of a kind MLflow has no store for (a typo, a garbage value) is
    known before Ray: one line, rather than a search that runs without the tracker asked
    for. Through MLflow's own registry of stores (plugins included); an MLflow without it
    leaves the URI to the tracker's warning."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:
        return
    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception:  # noqa: BLE001 - its text repeats the URI unredacted
        raise UsageError(f"--tracker mlflow: MLFLOW_TRACKING_URI={redact(uri)}: no MLflow "
                         f"tracking store of that kind; expected http(s)://HOST[:PORT], "
                         f"sqlite:///FILE, postgresql://..., databricks, or unset (then "
                         f"STORAGE/NAME/mlflow.db)") from None


def tracker_folder(store: Any, name: str) -> Path:
    """Where the trackers write files: the search's own folder when it is local; with
    object storage, ./trackers/NAME on the driver's machine (TensorBoard's event files,
    MLflow's SQLite store and W&B's run folders are local files)."""
    if store.is_local:
        return Path(store.root)
    return Path("trackers", name).resolve()


def wandb_mode() -> str:
    """WANDB_MODE when set; otherwise online for a user logged in to W&B (WANDB_API_KEY, or
    `wandb login`'s ~/.netrc entry), offline for anyone else: a search never stops at a
    login prompt, and `wandb sync` uploads an offline run later."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY", "").strip():
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        if host and netrc.netrc(path).authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


@contextmanager
def env_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """`defaults` in the environment for the duration, for the variables not set."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def make_trackers(text: str | None, store: Any, search: str) -> list[Any]:
    """The Tune callbacks of `--tracker` (none: []); prints where each one writes."""
    names = parse_trackers(text)
    if not names:
        return []
    folder = tracker_folder(store, search)
    folder.mkdir(parents=True, exist_ok=True)
    made, where = [], []
    for name in names:
        callback, env, shown = _MAKERS[name](folder, search)
        made.append(_guarded(name, callback, env))
        where.append(f"{name} {shown}")
    if not store.is_local:
        print(f"note: --tracker with object storage: the trackers write on this machine, "
              f"under {folder} (not in {store.uri})", flush=True)
    print(redact(f"trackers: {'; '.join(where)}"), flush=True)
    return made


def _tensorboard(folder: Path, search: str) -> tuple[Any, dict[str, str], str]:
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoard(TBXLoggerCallback):
        """Ray's TensorBoard logger, writing TENSORBOARD/<trial id>/ (Ray's own writes into
        each trial's staging folder, on the storage only when Tune syncs)."""

        def __init__(self, logdir: Path):
            super().__init__()
            self.logdir = logdir

        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            self._trial_writer[trial] = self._summary_writer_cls(
                str(self.logdir / trial.trial_id), flush_secs=30)
            self._trial_result[trial] = {}

    return TensorBoard(folder / "tensorboard"), {}, str(folder / "tensorboard")


def _mlflow(folder: Path, search: str) -> tuple[Any, dict[str, str], str]:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's set-up lines
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow's file store is refused by MLflow 3 (maintenance mode): a SQLite file is the
    # serverless store, read by `mlflow ui --backend-store-uri sqlite:///...`
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or search
    callback = MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                    tags={"ucrn.search": search})
    return callback, MLFLOW_HTTP, f"{uri} (experiment {experiment})"


def _wandb(folder: Path, search: str) -> tuple[Any, dict[str, str], str]:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class Wandb(WandbLoggerCallback):
        """Ray's W&B logger (each trial's run logged from an actor on the driver's node),
        without Ray's copy of WANDB_API_KEY into that actor's runtime environment, which
        Ray's runtime-env agent logs in plain text. The actor needs no copy: a local Ray's
        processes inherit the driver's environment; on a cluster, the driver's node has
        its own (the environment of its `ray start`, or `wandb login`)."""

        def _start_logging_actor(self, trial: Any, exclude_results: list[str],
                                 **wandb_init_kwargs: Any) -> None:
            key = os.environ.pop("WANDB_API_KEY", None)
            try:
                super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)
            finally:
                if key is not None:
                    os.environ["WANDB_API_KEY"] = key

        def _cleanup_logging_actors(self, timeout: int = 0,
                                    kill_on_timeout: bool = False) -> None:
            """Ray's, which drops a logging actor's failure (wandb.init refused: a bad key,
            no network, W&B down) without a word, so a search ran with nothing logged: here
            the failure is raised, and the guard makes it one warning."""
            import ray

            futures = list(self._trial_logging_futures.values())
            done, _ = ray.wait(futures, num_returns=len(futures), timeout=timeout)
            failure = None
            for future in done:
                try:
                    ray.get(future)
                except Exception as e:  # noqa: BLE001 - the first one is reported
                    failure = failure or e
            super()._cleanup_logging_actors(0, kill_on_timeout)  # (the wait is done)
            if failure is not None and not getattr(self, "failed", False):
                self.failed = True  # once: not again from __del__, where it would print
                cause = getattr(failure, "cause", None)  # the actor's own exception
                raise cause if isinstance(cause, Exception) else failure

    mode = wandb_mode()
    project = os.environ.get("WANDB_PROJECT") or search
    # given to wandb.init in the actor, which (on a cluster) may not see this environment
    init: dict[str, Any] = {"mode": mode, "dir": str(folder), "resume": "allow",
                            "settings": {"symlink": False}}  # no latest-run link to race for
    if os.environ.get("WANDB_ENTITY"):
        init["entity"] = os.environ["WANDB_ENTITY"]
    if os.environ.get("WANDB_BASE_URL"):
        init["settings"]["base_url"] = os.environ["WANDB_BASE_URL"]
    callback = Wandb(project=project, upload_timeout=WANDB_UPLOAD_TIMEOUT_S, **init)
    # Ray's set-up asks for a login unless WANDB_MODE says offline or disabled
    return callback, {"WANDB_MODE": mode}, f"{folder / 'wandb'} ({mode}, project {project})"


_MAKERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def _guarded(name: str, inner: Any, env: dict[str, str]) -> Any:
    """`inner` behind a guard: the epoch as its step, and an exception in it one warning."""
    from ray.tune import Callback

    class Tracker(Callback):
        """A tracker's Ray callback, called with each trial's epochs once each, in order
        (a trial resumed from its checkpoint reports its earlier epochs again: those this
        driver logged are not sent twice), and disabled at its first exception."""

        def __init__(self) -> None:
            self.tracker, self.inner, self.env = name, inner, env
            self.started: set[str] = set()
            self.logged: dict[str, int] = {}  # trial id -> the last epoch sent

        def _call(self, hook: str, *args: Any, **kw: Any) -> None:
            if self.inner is None:
                return
            try:
                with env_defaults(self.env):
                    getattr(self.inner, hook)(*args, **kw)
            except Exception as e:  # noqa: BLE001 - a tracker never stops the search
                self.inner = None
                log.warning("--tracker %s failed in %s:\n%s", self.tracker, hook,
                            redact(traceback.format_exc()))  # (a server's URL may hold a password)
                text = " ".join(str(e).split())
                text = text if len(text) <= 300 else text[:297] + "..."
                say("warning", f"--tracker {self.tracker} failed ({type(e).__name__}: {text}); "
                               f"it records nothing more of this search, which goes on")

        def setup(self, **info: Any) -> None:
            self._call("setup", **info)

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.started.add(trial.trial_id)
            self._call("on_trial_start", iteration, trials, trial, **info)

        def on_trial_restore(self, iteration, trials, trial, **info) -> None:
            if trial.trial_id in self.started:
                self._call("on_trial_restore", iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            epoch = result.get("epoch", result.get("replayed_epoch"))
            if not isinstance(epoch, Real) or isinstance(epoch, bool) or epoch < 1 \
                    or result.get("final") or epoch <= self.logged.get(trial.trial_id, 0):
                return  # not an epoch, or one sent already
            if trial.trial_id not in self.started:
                self.on_trial_start(iteration, trials, trial)
            self.logged[trial.trial_id] = int(epoch)
            metrics = {k: v for k, v in result.items() if k not in SKIPPED
                       and isinstance(v, Real) and not isinstance(v, bool)}
            metrics.update(epoch=int(epoch), training_iteration=int(epoch))  # the step
            self._call("on_trial_result", iteration, trials, trial, metrics, **info)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            if trial.trial_id in self.started:
                self.started.discard(trial.trial_id)
                self._call("on_trial_complete", iteration, trials, trial, **info)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            if trial.trial_id in self.started:
                self.started.discard(trial.trial_id)
                self._call("on_trial_error", iteration, trials, trial, **info)

        def on_experiment_end(self, trials, **info) -> None:
            self._call("on_experiment_end", trials, **info)

    return Tracker()


def is_tracker(callback: Any) -> bool:
    return hasattr(callback, "tracker") and hasattr(callback, "inner")


def use_trackers(tuner: Any, trackers: list[Any]) -> None:
    """The trackers join the Tuner once it has saved tuner.pkl, so they are never pickled
    there: a restored Tuner gets the run's own --tracker (which --resume may change), not
    the callbacks the search began with."""
    if not trackers:
        return
    local = getattr(tuner, "_local_tuner", None)
    run_config = local.get_run_config() if local is not None else None
    if run_config is None:  # Ray Client (ray://): the Tuner runs on the cluster
        say("warning", "--tracker: not with a Ray Client address (ray://); the search goes "
                       "on without trackers")
        return
    kept = [c for c in run_config.callbacks or [] if not is_tracker(c)]
    run_config.callbacks = kept + list(trackers)
