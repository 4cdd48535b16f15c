"""The search from Python (a notebook): `search.run`, `search.load`, `search.retrain`.

Why keyword arguments become a command line: the flags have one home (search.flags.Flags)
and one parser and set of checks; a keyword is its flag underscored, turned back into
`--flag=value` and run through exactly what run_search.py runs (search.driver._main), so
a value the command line refuses is refused here with the same line, as a UsageError.
Results are read back by the analysis' reader (search.analysis.loading: every file
checked by search/schema.py, local folders and s3:// alike), which needs neither torch
nor Ray, so `search.load` works on a laptop. docs/api.md shows it at work.
"""

from __future__ import annotations

import difflib
import html
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ucrn.errors import RunFailed, UsageError, say

if TYPE_CHECKING:  # pandas loads with the results, not with `import search`
    import pandas as pd

__all__ = ["SearchResult", "load", "retrain", "run"]

TOP = 10  # trials in the notebook table
# what a search or re-training imports: loaded before it starts, Ctrl-C held (_preload)
RUN_MODULES = ("search.flags", "search.driver", "search.retraining", "search.journal",
               "search.analysis.loading", "ray.tune")


@dataclass(eq=False)
class SearchResult:
    """A search's results as read from STORAGE/NAME: the tables and the chosen config."""

    path: str  # STORAGE/NAME: an absolute folder or a URI
    trials: pd.DataFrame  # one row per trial (trials.parquet)
    epochs: pd.DataFrame  # one row per trial and epoch (epochs.parquet)
    retrain: pd.DataFrame  # one row per re-trained seed (retrain.parquet); empty before
    robustness: pd.DataFrame  # per seed, condition and repeat (robustness.parquet); or empty
    best_config: dict[str, Any]  # best_config.json; {} while the search has not finished
    metric: str = "MAE"
    mode: str = "min"
    warnings: list[str] = field(default_factory=list)  # files left out or rebuilt
    _search: Any = field(default=None, repr=False)  # the analysis' view, for the tables

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        frames = ("trials", "epochs", "retrain", "robustness")
        return (self.path, self.best_config, self.metric, self.mode) == (
            other.path, other.best_config, other.metric, other.mode) and all(
            getattr(self, f).equals(getattr(other, f)) for f in frames)

    __hash__ = None  # type: ignore[assignment] - mutable tables

    def best(self) -> dict[str, Any] | None:
        """The best rankable trial's row (not diverged or errored, finite metric)."""
        from search.analysis.tables import ranked

        r = ranked(self._search)
        return r.iloc[0].to_dict() if len(r) else None

    def __repr__(self) -> str:
        from search.analysis.tables import status_counts

        best = self.best()
        shown = (f"best {self.metric} {best[self.metric]:.4f} (trial {best['trial_id']})"
                 if best else f"no trial with a finite {self.metric}")
        seeds = f", {len(self.retrain)} re-trained seed(s)" if len(self.retrain) else ""
        return f"<SearchResult {self.path}: {status_counts(self._search)}; {shown}{seeds}>"

    def _repr_html_(self) -> str:
        """The best trials as a table (as analyze.py ranks them), and the re-training."""
        from search.analysis.formatting import format_frame
        from search.analysis.tables import leaderboard, retrain_tables, status_counts

        s = self._search
        board = leaderboard(s, TOP).drop(columns="search")
        parts = [f"<p><b>{html.escape(self.name)}</b> <code>{html.escape(self.path)}</code>: "
                 f"{html.escape(status_counts(s))}; the best {len(board)} by "
                 f"{html.escape(self.metric)} ({self.mode}):</p>",
                 format_frame(board).to_html(index=False)]
        if len(self.retrain):
            _, summary, seeds = retrain_tables(s)
            parts += [f"<p>re-trained on seeds {html.escape(str(seeds))}: mean ± std</p>",
                      summary.to_html(index=False)]
        if not self.best_config:
            parts.append("<p>no best_config.json: the search has not finished</p>")
        parts += [f"<p>warning: {html.escape(w)}</p>" for w in self.warnings]
        return "\n".join(parts)


def run(**flags: Any) -> SearchResult:
    """Run a search (or, with `retrain=`, a re-training) as run_search.py would with these
    flags, underscored (`num_samples=64` is `--num-samples 64`); its results.

    Errors are the command line's lines, raised: UsageError before anything runs (bad
    keyword or value, storage, data), RunFailed when it ran and failed; Ctrl-C stops the
    trials, keeps the results and raises KeyboardInterrupt."""
    _preload(RUN_MODULES, flags.get("tracker"))
    argv = flags_argv(flags)
    _execute(argv)
    return load(_results_path(argv))


def retrain(path: str | os.PathLike, seeds: Any = None, **flags: Any) -> SearchResult:
    """Re-train search `path`'s best config (or `trial=`'s) once per seed and test it, as
    `run_search.py --retrain PATH --seeds ...`; the search's results, `.retrain` filled."""
    if "retrain" in flags:
        raise UsageError("retrain: the search to re-train is search.retrain's first argument")
    path = _path_text(path, "search.retrain")
    _preload(RUN_MODULES)
    argv = flags_argv({"retrain": path, "seeds": seeds, **flags})
    _execute(argv)
    return load(path)


def load(path: str | os.PathLike) -> SearchResult:
    """A search's results (finished, interrupted or running) read from STORAGE/NAME: a
    UsageError naming `path` when it holds no search."""
    _preload(("search.analysis.loading", "search.analysis.tables"))
    from search.analysis.files import filesystem, read_json
    from search.analysis.loading import load_searches
    from search.schema import BEST_CONFIG
    from ucrn.fileio import is_uri, local_folder

    where = _path_text(path, "search.load")
    if not is_uri(where):  # file:// is a local folder, as --storage file://... is
        try:
            where = str(local_folder(where))
        except ValueError as e:
            raise UsageError(f"search.load: {e}") from None
    s = load_searches([where], None)[0]  # AnalyzeError (a UsageError) naming the folder
    warnings = list(s.warnings)
    fs, base = filesystem(where)
    best, why = read_json(fs, f"{base}/{BEST_CONFIG}")
    if why is None and not isinstance(best, dict):
        why = "not a JSON object"
    if why is not None and not why.startswith("no "):  # there but unusable: said (an empty
        why = why.replace("search.json ", "")  # dict alone reads as "not finished")
        warnings.append(f"{s.location}/{BEST_CONFIG}: {why}; best_config is {{}}, the tables "
                        f"are read as they are")
    for line in warnings:
        say("warning", line)
    return SearchResult(
        path=s.location if "://" in where else where, trials=s.trials,
        epochs=_frame(s.epochs), retrain=_frame(s.retrain), robustness=_frame(s.robustness),
        best_config=best if why is None else {}, metric=s.metric, mode=s.mode,
        warnings=warnings, _search=s)


def _preload(modules: tuple[str, ...], trackers: Any = None) -> None:
    """Import what a call needs (torch, Ray, Tune, Optuna, pandas: seconds, once per
    process) with Ctrl-C held until the imports are done, then raised. Why: an import
    interrupted half-way stays in sys.modules half-initialised, so every later call in the
    notebook fails (ImportError: partially initialized module 'torch') or crashes the
    kernel (a segmentation fault was seen); the command line simply exits. Only the main
    thread receives signals."""
    from search.trackers import TRACKERS

    names = [*modules, *(TRACKERS[t] for t in _tracker_names(trackers))]
    if all(n in sys.modules for n in names):
        return
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum)) if main \
        else None
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:  # a tracker's missing package: its check says so
                pass
    finally:
        if main:  # (None: a handler set outside Python, unknown here)
            signal.signal(signal.SIGINT, signal.default_int_handler if old is None else old)
    if held and old is not signal.SIG_IGN:
        raise KeyboardInterrupt("stopped while loading torch and Ray; nothing ran")


def _tracker_names(value: Any) -> list[str]:
    from search.trackers import TRACKERS

    parts = value.split(",") if isinstance(value, str) else (
        value if isinstance(value, (list, tuple)) else [])
    return [n for n in (str(p).strip().lower() for p in parts) if n in TRACKERS]


def _path_text(path: Any, where: str) -> str:
    """A folder or URI given as str or os.PathLike (bytes decoded as the OS does); anything
    else is a UsageError naming the call, not os.fspath's TypeError from deep inside."""
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.fsdecode(path)
        if text.strip():
            return text
    raise UsageError(f"{where}({path!r}): expected a search folder STORAGE/NAME or its URI "
                     f"(a str or os.PathLike)")


# ---- keywords as the command line ---------------------------------------------------------

def flags_argv(given: Mapping[str, Any]) -> list[str]:
    """Keywords as run_search.py's arguments: True gives a switch, None leaves a flag at its
    default, a list or tuple is comma-separated (`seeds=[1, 2]`), a dict is JSON
    (`trial_resources={"gpu_node": 1}`); an unknown keyword is one line naming the closest
    flag."""
    from dataclasses import fields

    from search.flags import Flags

    known = {f.name: f for f in fields(Flags)}
    argv: list[str] = []
    for key, value in given.items():
        f = known.get(key)
        if f is None:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else " (see docs/api.md)"
            raise UsageError(f"{key}: no such flag{hint}")
        flag = "--" + key.replace("_", "-")
        if f.metadata.get("action") == "store_true":
            if not isinstance(value, bool) and value is not None:
                raise UsageError(f"{key}={value!r}: expected True or False ({flag} is a switch)")
            argv += [flag] if value else []
        elif value is not None:
            text = _text(value)
            if isinstance(value, bool):
                raise UsageError(f"{key}={value!r}: {flag} takes a value, not True or False")
            if text is None:
                raise UsageError(f"{key}={value!r}: expected a str, a number, a path, a list or "
                                 f"tuple of those, or a dict ({flag} takes a value)")
            argv.append(f"{flag}={text}")  # '=': a value may begin with '-'
    return argv


def _text(value: Any, inner: bool = False) -> str | None:
    """A keyword's value as its flag's text; None for what no flag takes (bytes would be
    "b'...'", True "True", a nested list flattened, a set in no fixed order)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if inner:
        return None
    if isinstance(value, (list, tuple)):
        parts = [_text(v, inner=True) for v in value]
        return None if None in parts else ",".join(parts)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return json.dumps(value)
    return None


def _results_path(argv: list[str]) -> str:
    """STORAGE/NAME of the run these arguments made (the folder re-trained, with retrain)."""
    from search.flags import parse_flags
    from search.objstore import join
    from ucrn.fileio import is_uri, local_folder

    fl, _ = parse_flags(argv)
    if fl.retrain:
        return fl.retrain
    storage = fl.storage if is_uri(fl.storage) else str(local_folder(fl.storage))
    return join(storage, fl.name)


def _execute(argv: list[str]) -> None:
    """run_search.py's own run (search.driver._main), its outcome as Python's: a search
    stopped by SIGINT/SIGTERM (which the command line exits 130 on) is KeyboardInterrupt,
    a failed run RunFailed; data and config errors (exit 2 there) are UsageErrors."""
    from search.driver import _main
    from search.lock import LEASE_LOST
    from ucrn.errors import redacted_output, warning_lines

    LEASE_LOST.clear()  # an earlier run's lost lease in this process is not this run's
    if _ray_running():
        raise UsageError("Ray is already initialised in this process (ray.init): a search "
                         "starts and stops its own; call ray.shutdown() first (address= "
                         "joins a running cluster)")
    with redacted_output(), warning_lines():
        try:
            code = _main(argv, None)
        except KeyboardInterrupt:  # before the trials started (data, Ray starting): no
            if _ray_running():  # Ray of this run left behind for the next call to trip on
                import ray

                ray.shutdown()
            raise
        except SystemExit as e:  # search/cluster.py GracefulStop: stopped, results kept
            if e.code == 130:
                raise KeyboardInterrupt(f"stopped; the results so far are in "
                                        f"{_results_path(argv)} (resume=True continues)"
                                        ) from None
            raise
        except UsageError:
            raise
        except ValueError as e:  # DataError, config errors: one line, as the command says
            text = str(e).strip()
            raise UsageError(text.splitlines()[0] if text else type(e).__name__) from None
    if code:
        raise RunFailed(f"the run ended with exit code {code} (see the error line above); "
                        f"what it wrote is kept")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running (and not imported here)
    return ray is not None and ray.is_initialized()


def _frame(df: pd.DataFrame | None) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame() if df is None else df
