"""Does the search earn its keep? Six ways to spend the same epochs, on three tasks.

    python -m benchmarks.search_efficiency --out docs/search                 # everything left
    python -m benchmarks.search_efficiency --out docs/search --tasks lr      # one part
    python -m benchmarks.search_efficiency --out docs/search --report        # tables, plots
    python -m benchmarks.search_efficiency --out DIR --small                 # CI: minutes

Every search runs through the real run_search.py (`--executor tune`, 2 trials at once)
against one local Ray head started here in its own session (stopped by its pids), with an
epoch budget (`--epoch-budget`): every method gets the same compute. Methods (METHODS):
random search to full budget (MMSA's tune mode), the 1-epoch baseline (Egele et al. 2023),
TPE + ASHA (the project's default), TPE with Optuna 5's defaults + ASHA, GPSampler + ASHA,
TPE + Hyperband. Tasks (TASKS): synthetic data whose labels need different things, each
with its space. Seeds are paired: seed s seeds the trials and the sampler of every method.

Each finished (task, method, seed) is one record, DIR/run-TASK-METHOD-sSEED.json, written
atomically once the search and the re-training of its pick on the test split are done; a
rerun skips every record already there, so the study can be run in parts and stopped at
any time. After the runs (or with --report alone) DIR/study.md (the tables) and
DIR/TASK.png (best validation MAE against epochs and against wall time) are rebuilt from
all records in DIR.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/search_efficiency.py` from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.processes import RayHead, kill_session  # noqa: E402
from benchmarks.study_stats import binned, explained, spearman, wilcoxon_signed_rank  # noqa: E402
from search.analysis.formatting import markdown_table  # noqa: E402
from ucrn.errors import OneLineParser, RunFailed, UsageError, run_main  # noqa: E402
from ucrn.fileio import atomic_write  # noqa: E402
from ucrn.locks import Held, take_flock  # noqa: E402

_COMMON = """\
layers: {int: [1, 3]}
d_model: {choice: [8, 16, 32]}
heads: {choice: [1, 2]}
jsd_weight: {choice: [0.0, 0.1, 1.0]}
out_dropout: {uniform: [0.0, 0.6]}
batch_size: {choice: [32, 64, 128]}
"""


@dataclass(frozen=True)
class Task:
    labels: str  # ucrn.data.synthetic.LABEL_MODELS
    space: str
    about: str


TASKS: dict[str, Task] = {
    "lr": Task("fusion", "lr: {loguniform: [1.0e-5, 3.0e-2]}\n" + _COMMON,
               "mostly linear labels, learning rates over three decades: a good lr is most "
               "of a good configuration"),
    "arch": Task("fusion", "lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
                 "temp_proj: {choice: [0, 1, 4]}\n" + _COMMON,
                 "the same labels, learning rates within one good decade: the model's shape, "
                 "the temporal projection, batch size and dropout decide"),
    "crossmodal": Task("interaction", "lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
                       "temp_proj: {choice: [0, 1, 4]}\n" + _COMMON,
                       "labels in products of two modalities' latents, which no single "
                       "modality carries: meant to reward the cross-modal stages, depth and "
                       "the temporal projection"),
}
SMALL_SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
layers: {choice: [1, 2]}
d_model: 8
heads: 2
"""
KEEP = 3  # the 1-epoch baseline continues the 3 best: docs/search.md says why
BRACKETS = 3  # of the 4 that 6-epoch trials with ASHA's default rungs (1, 2, 4) allow
METHODS: dict[str, tuple[str, list[str]]] = {  # id: (what the docs call it, its flags)
    "random": ("random, full budget (MMSA's tune mode)",
               ["--search-alg", "random", "--scheduler", "fifo"]),
    "1-epoch": ("1-epoch, then the best {keep} to the end",
                ["--search-alg", "random", "--scheduler", "one-epoch", "--keep", "{keep}"]),
    "tpe-asha": ("TPE + ASHA (the default)", []),
    "tpe5-asha": ("TPE with Optuna 5's defaults + ASHA", ["--multivariate", "--constant-liar"]),
    "gp-asha": ("GPSampler + ASHA", ["--search-alg", "gp"]),
    "tpe-hyperband": ("TPE + Hyperband ({brackets} brackets)", ["--brackets", "{brackets}"]),
}
DEFAULT = "tpe-asha"
BASELINE = "random"
RECORD = "run-{task}-{method}-s{seed}.json"


# what makes records comparable: a folder holds one study's records, all made with these
SETTINGS = ("budget", "max_epochs", "concurrency", "keep", "small")


def record_path(out: Path, task: str, method: str, seed: int) -> Path:
    return out / RECORD.format(task=task, method=method, seed=seed)


def label(method: str, small: bool = False) -> str:
    return METHODS[method][0].format(**variant(small))


def variant(small: bool) -> dict[str, int]:
    """The 1-epoch baseline's --keep and Hyperband's brackets: the small mode's 8-epoch
    budget of 2-epoch trials leaves room for 2 of each (2-epoch trials have one rung)."""
    return {"keep": 2, "brackets": 2} if small else {"keep": KEEP, "brackets": BRACKETS}


def check_record(rec: Any) -> str | None:
    """What is wrong with a loaded record (a key and what was expected), or None: records
    are files a person can edit, and the report trusts nothing it did not check."""
    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    def count(v: Any, low: int = 1) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(rec, dict):
        return "expected a JSON object"
    rules = [("task", rec.get("task") in TASKS, f"one of {', '.join(TASKS)}"),
             ("method", rec.get("method") in METHODS, f"one of {', '.join(METHODS)}"),
             ("seed", count(rec.get("seed"), 0), "an integer >= 0"),
             *((k, count(rec.get(k)), "an integer >= 1")
               for k in ("budget", "max_epochs", "concurrency", "keep", "epochs", "trials")),
             ("small", isinstance(rec.get("small"), bool), "true or false"),
             *((k, num(rec.get(k)), "a finite number")
               for k in ("best_val_mae", "picked_test_mae", "wall_s")),
             *((k, isinstance(rec.get(k), list) and len(rec[k]) == rec.get("epochs")
                and all(num(v) for v in rec[k]), "a list of finite numbers, one per epoch")
               for k in ("curve_mae", "curve_s")),
             ("trial_table", isinstance(rec.get("trial_table"), list)
              and all(isinstance(t, dict) for t in rec["trial_table"]), "a list of objects")]
    for key, ok, expected in rules:
        if not ok:
            return f"{key}={_short(rec.get(key))}: expected {expected}"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def read_record(path: Path) -> dict[str, Any]:
    """A record, checked; one line naming the file and the key otherwise."""
    from ucrn.safeload import load_json

    rec = load_json(path, "record")
    why = check_record(rec)
    if why:
        raise UsageError(f"record {path}: {why}; fix or delete the file (a deleted record "
                         f"is run again)")
    if path.name != record_path(path.parent, rec["task"], rec["method"], rec["seed"]).name:
        raise UsageError(f"record {path}: holds task {rec['task']}, method {rec['method']}, "
                         f"seed {rec['seed']}, which is not its name; fix or delete the file")
    return rec


def pending(out: Path, tasks: list[str], methods: list[str], seeds: list[int],
            settings: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The (task, method, seed) asked for that have no record in `out` yet, in the order
    they run: task by task, seed by seed, every method of a seed together (paired). A
    record made with other settings (another budget, --small) is refused, never counted."""
    todo = []
    for t in tasks:
        for s in seeds:
            for m in methods:
                path = record_path(out, t, m, s)
                if not path.exists() and not path.is_symlink():
                    todo.append((t, m, s))
                    continue
                rec = read_record(path)
                other = {k: rec[k] for k in SETTINGS if rec[k] != settings[k]}
                if other:
                    mine = {k: settings[k] for k in other}
                    raise UsageError(f"record {path}: made with {other}, this run has {mine}; "
                                     f"one folder holds one study: use another --out")
    return todo


class Study:
    def __init__(self, out: Path, small: bool, budget: int, max_epochs: int, concurrency: int,
                 address: str | None = None):
        self.out, self.small, self.address = out, small, address
        self.budget, self.max_epochs, self.concurrency = budget, max_epochs, concurrency
        self.keep = variant(small)["keep"]
        self.work = Path()  # made by run(), removed at its end
        self.env: dict[str, str] = {}
        self.t0 = time.time()

    def _start(self) -> None:
        """The work folder (data, spaces, results of the search running) and the searches'
        environment."""
        self.work = Path(tempfile.mkdtemp(prefix="search-study-"))
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
        if not self.address:  # its own head, with its own token (a given one: the caller's)
            # trials at normal priority (Ray starts workers at niceness 15), so that other
            # low-priority work on the machine takes less from the measured wall times
            self.env["RAY_worker_niceness"] = "0"
            token = self.work / "auth_token"
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))

    def settings(self) -> dict[str, Any]:
        return {"budget": self.budget, "max_epochs": self.max_epochs,
                "concurrency": self.concurrency, "keep": self.keep, "small": self.small}

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.0f} s] {msg}", flush=True)

    def data(self, task: str) -> Path:
        """The task's data file (the `tiny` shapes, data seed 0, its label model)."""
        from ucrn.data import data_file_name, make_synthetic, write_mult_pickle

        folder = self.work / "data" / task
        path = folder / data_file_name("synthetic", False)
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_mult_pickle(make_synthetic("tiny", 0, labels=TASKS[task].labels), path)
        return folder

    def space(self, task: str) -> Path:
        path = self.work / f"space-{task}.yaml"
        path.write_text(SMALL_SPACE if self.small else TASKS[task].space)
        return path

    def run(self, todo: list[tuple[str, str, int]]) -> None:
        self._start()
        head = None if self.address else RayHead(self.env, gpus=0, cpus=2, work=self.work)
        address = self.address or head.address
        failed = False
        try:
            self.log(f"Ray at {address}; {len(todo)} searches; work in {self.work}")
            for task, method, seed in todo:
                rec = self.search(address, task, method, seed)
                atomic_write(record_path(self.out, task, method, seed),
                             json.dumps(rec, indent=1).encode())
        except RunFailed:
            failed = True  # its results and output stay in the work folder
            raise
        finally:
            if head is not None:
                head.stop()
            if not failed:
                shutil.rmtree(self.work, ignore_errors=True)

    def search(self, address: str, task: str, method: str, seed: int) -> dict[str, Any]:
        flags = METHODS[method][1]
        name = f"{task}-{method}-s{seed}"
        argv = [sys.executable, str(ROOT / "run_search.py"), "--address", address,
                "--storage", str(self.work / "results"), "--name", name, "--executor", "tune",
                "--data-path", str(self.data(task)), "--space", str(self.space(task)),
                "--seed", str(seed), "--max-epochs", str(self.max_epochs), "--num-samples",
                "100000", "--epoch-budget", str(self.budget), "--max-concurrent",
                str(self.concurrency), "--cpus-per-trial", f"{2 / self.concurrency:g}",
                *(f.format(**variant(self.small)) for f in flags)]
        t = time.time()
        code, out, err = run_search(argv, self.env)
        wall = time.time() - t
        if code != 0:
            (self.work / f"{name}.log").write_text(out + err)
            last = (err or out).strip().splitlines()[-1:] or ["no output"]
            raise RunFailed(f"{name}: run_search.py exited {code}: {last[0]}; its output is "
                            f"in {self.work / name}.log")
        folder = self.work / "results" / name
        rec = {"task": task, "method": method, "seed": seed, "flags": argv[2:],
               **self.settings(), "wall_s": round(wall, 1),
               **read_search(folder)}
        rec["picked_test_mae"] = picked_test_mae(rec["best_config"])
        rec["environment"] = environment()
        shutil.rmtree(folder, ignore_errors=True)
        self.log(f"{name}: {rec['trials']} trials, {rec['epochs']} epochs, best val MAE "
                 f"{rec['best_val_mae']:.4f}, test MAE of its pick "
                 f"{rec['picked_test_mae']:.4f}, {wall:.0f} s")
        return rec


def run_search(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """One search in its own session; interrupted (Ctrl-C, SIGTERM to the study), it is
    told to stop as a user would (SIGINT: it saves what it has and exits) and waited for,
    so that it never outlives the study nor trains on a Ray head being stopped."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=3600)
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except BaseException:
            kill_session(proc.pid)
            proc.wait()
        raise
    return proc.returncode, out, err


def read_search(folder: Path) -> dict[str, Any]:
    """What the study keeps of one search: its best-so-far curve (epochs in the order they
    ended), every trial (configuration, first-epoch and best value) and its pick."""
    ep = pd.read_parquet(folder / "epochs.parquet").sort_values("ended_at")
    tr = pd.read_parquet(folder / "trials.parquet")
    best = np.minimum.accumulate(ep["MAE"].to_numpy(dtype=float))
    start = float(ep["ended_at"].iloc[0] - ep["seconds"].iloc[0])
    space = json.loads((folder / "search.json").read_text())["space"]
    varied = [k for k, v in space.items() if isinstance(v, dict)]
    first = ep[ep.epoch == 1].drop_duplicates("trial_id").set_index("trial_id")["MAE"]
    trials = [{"trial_id": r["trial_id"], "status": r["status"],
               "epochs": int((ep.trial_id == r["trial_id"]).sum()),
               "mae_1": _num(first.get(r["trial_id"])), "mae_best": _num(r["MAE"]),
               **{k: _plain(r[k]) for k in varied if k in r}} for _, r in tr.iterrows()]
    return {"trials": int(len(tr)), "epochs": int(len(ep)),
            "statuses": {str(k): int(v) for k, v in tr["status"].value_counts().items()},
            "each_trial_once": bool(tr["trial_id"].is_unique),
            "each_epoch_once": bool(not ep.duplicated(["trial_id", "epoch"]).any()),
            "curve_mae": [round(float(x), 6) for x in best],
            "curve_s": [round(float(x - start), 2) for x in ep["ended_at"]],
            "best_val_mae": float(best[-1]),
            "best_config": json.loads((folder / "best_config.json").read_text()),
            "trial_table": trials}


def _num(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else round(float(v), 6)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def picked_test_mae(best_config: dict[str, Any]) -> float:
    """The picked configuration trained again from scratch for its full epochs: its test
    MAE (does a harder selection on validation overfit it?)."""
    from ucrn.config import TrainConfig
    from ucrn.data import load_dataset
    from ucrn.train import fit

    # one thread: two spin-wait against each other on a busy 2-core machine (20x slower)
    cfg = TrainConfig.from_dict({**best_config, "threads": 1, "device": "cpu"})
    return round(float(fit(cfg, load_dataset(**cfg.data_args())).test["MAE"]), 6)


def environment() -> dict[str, Any]:
    import optuna
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "optuna": optuna.__version__, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}


# ---- the report ---------------------------------------------------------------------------

def load_records(out: Path) -> list[dict[str, Any]]:
    """The folder's records; a damaged one is a warning line and left out of the report."""
    from ucrn.errors import say
    from ucrn.safeload import SafeLoadError

    recs = []
    for path in sorted(out.glob(RECORD.format(task="*", method="*", seed="*"))):
        try:
            recs.append(read_record(path))
        except (UsageError, SafeLoadError) as e:
            say("warning", f"{e} (left out of the report)")
    kinds = {tuple(r[k] for k in SETTINGS) for r in recs}
    if len(kinds) > 1:
        raise UsageError(f"--out {out}: records of {len(kinds)} different settings "
                         f"({', '.join(SETTINGS)}: {sorted(kinds)}); one folder holds one study")
    return recs


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: each method's best validation MAE, epochs and wall time to reach the
    baseline's final best, the test MAE of its pick, and the paired test against the
    default; what each hyperparameter explains; how well the first epoch ranks trials."""
    df = pd.DataFrame(recs)
    out: dict[str, Any] = {}
    for task, g in df.groupby("task", sort=False):
        base = {r.seed: r.best_val_mae for r in g[g.method == BASELINE].itertuples()}
        default = {r.seed: r.best_val_mae for r in g[g.method == DEFAULT].itertuples()}
        rows = []
        for method in [m for m in METHODS if m in set(g.method)]:
            m = g[g.method == method].sort_values("seed")
            reach = [_epochs_to(r.curve_mae, base[r.seed]) if r.seed in base else None
                     for r in m.itertuples()]
            reach_s = [_seconds_to(r.curve_mae, r.curve_s, base[r.seed]) if r.seed in base
                       else None for r in m.itertuples()]
            paired = [(r.best_val_mae - default[r.seed]) for r in m.itertuples()
                      if r.seed in default]
            test = wilcoxon_signed_rank(paired) if method != DEFAULT and paired else None
            rows.append({
                "method": label(method, bool(m.small.iloc[0])), "seeds": len(m),
                "best val MAE, median (IQR)": f"{np.median(m.best_val_mae):.4f} "
                                              f"({_iqr(m.best_val_mae)})",
                "epochs to the baseline's final best, median": _median_or_none(reach),
                "seconds to it, median": _median_or_none(reach_s),
                "test MAE of the pick, mean ± std": _mean_std(m.picked_test_mae),
                "trials, median": float(np.median(m.trials)),
                "epochs, min-max": f"{m.epochs.min()}-{m.epochs.max()}",
                "wall s, median": float(np.median(m.wall_s)),
                "against the default: better/worse/tied, Wilcoxon p": (
                    f"{test['wins']}/{test['losses']}/{test['ties']}, p={test['p']:.3f}"
                    if test else "-")})
        out[task] = {"methods": rows, "settings": _settings(g), "first_epoch": _first_epoch(g)}
    return out


def _settings(g: pd.DataFrame) -> dict[str, Any]:
    """How much of the variance of the final validation MAE each setting explains, over
    the random full-budget trials of all seeds (random configurations, all to the end)."""
    trials = [t for r in g[g.method == BASELINE].trial_table for t in r
              if t["status"] == "completed" and t["mae_best"] is not None]
    if len(trials) < 10:
        return {}
    df = pd.DataFrame(trials)
    skip = {"trial_id", "status", "epochs", "mae_1", "mae_best"}
    share = {}
    for k in [c for c in df.columns if c not in skip]:
        x = df[k]
        groups = binned(x.astype(float)) if pd.api.types.is_float_dtype(x) else list(x)
        share[k] = round(explained(df.mae_best, groups), 3)
    return {"n": len(df), "explained": dict(sorted(share.items(), key=lambda kv: -kv[1]))}


def _first_epoch(g: pd.DataFrame) -> dict[str, Any]:
    """Does the first epoch rank configurations as the full run does? Spearman's rho
    within each seed's random full-budget search, and how often the search's best trial
    is among the first epoch's best `keep` (the 1-epoch baseline's setting in the records)."""
    keep = int(g["keep"].iloc[0])
    rhos, hits = [], []
    for r in g[g.method == BASELINE].itertuples():
        t = [x for x in r.trial_table if x["mae_1"] is not None and x["mae_best"] is not None
             and x["status"] == "completed"]
        if len(t) < keep + 2:
            continue
        rhos.append(spearman([x["mae_1"] for x in t], [x["mae_best"] for x in t]))
        top = sorted(t, key=lambda x: x["mae_1"])[:keep]
        hits.append(min(t, key=lambda x: x["mae_best"]) in top)
    if not rhos:
        return {}
    return {"searches": len(rhos), "spearman_median": round(float(np.nanmedian(rhos)), 3),
            "keep": keep, "best_in_first_epoch_top": f"{sum(hits)}/{len(hits)}"}


def _epochs_to(curve: list[float], target: float) -> int | None:
    hit = [i + 1 for i, v in enumerate(curve) if v <= target + 1e-6]  # curves keep 6 digits
    return hit[0] if hit else None


def _seconds_to(curve: list[float], seconds: list[float], target: float) -> float | None:
    i = _epochs_to(curve, target)
    return None if i is None else seconds[i - 1]


def _median_or_none(values: list[float | None]) -> float | str:
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    med = round(float(np.median(got)), 1)
    return med if len(got) == len(values) else f"{med:g} ({len(got)}/{len(values)} seeds)"


def _iqr(s: pd.Series) -> str:
    q1, q3 = np.percentile(s, [25, 75])
    return f"{q1:.4f}-{q3:.4f}"


def _mean_std(s: pd.Series) -> str:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}" if len(v) else "-"


def plot(recs: list[dict[str, Any]], task: str, path: Path) -> None:
    """Best validation MAE so far against epochs spent and against wall time: median and
    interquartile band over seeds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.analysis.figure import save

    mine = [r for r in recs if r["task"] == task]
    budget = max(r["budget"] for r in mine)
    wall = max(r["curve_s"][-1] for r in mine)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    grids = (np.arange(1, budget + 1), np.linspace(0, wall, 200))
    for i, method in enumerate(m for m in METHODS if any(r["method"] == m for r in mine)):
        runs = [r for r in mine if r["method"] == method]
        for ax, grid, by_time in zip(axes, grids, (False, True), strict=True):
            m = np.vstack([_on_grid(r, grid, by_time) for r in runs])
            with warnings.catch_warnings():  # before any search's first epoch: no value
                warnings.simplefilter("ignore", RuntimeWarning)
                mid, lo, hi = (np.nanpercentile(m, q, axis=0) for q in (50, 25, 75))
            ax.plot(grid, mid, color=f"C{i}", lw=2,
                    label=f"{label(method, runs[0]['small'])} ({len(runs)} seeds)")
            ax.fill_between(grid, lo, hi, color=f"C{i}", alpha=0.12)
    axes[0].set_xlabel("epochs spent (all trials)")
    axes[1].set_xlabel("wall time of the search (s)")
    axes[0].set_ylabel("best validation MAE so far")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"task {task}: {TASKS[task].about if task in TASKS else ''}", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def _on_grid(rec: dict[str, Any], grid: np.ndarray, by_time: bool) -> np.ndarray:
    c = np.asarray(rec["curve_mae"], dtype=float)
    if not by_time:  # after its last epoch a search keeps its best
        idx = np.minimum(grid.astype(int), len(c)) - 1
        return c[idx]
    s = np.asarray(rec["curve_s"], dtype=float)
    idx = np.searchsorted(s, grid, side="right") - 1
    return np.where(idx >= 0, c[np.clip(idx, 0, None)], np.nan)


def report(out: Path) -> int:
    recs = load_records(out)
    if not recs:
        pattern = RECORD.format(task="*", method="*", seed="*")
        raise UsageError(f"--out {out}: no study records ({pattern}) there")
    summary = summarise(recs)
    md = []
    for task, s in summary.items():
        about = TASKS[task].about if task in TASKS else ""
        md += [f"### task {task}", "", about, "", markdown_table(pd.DataFrame(s["methods"])), ""]
        if s["settings"]:
            md += [f"What each setting explains of the final validation MAE "
                   f"({s['settings']['n']} random full-budget trials): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in s["settings"]["explained"].items()),
                   ""]
        if s["first_epoch"]:
            fe = s["first_epoch"]
            md += [f"First epoch against the full run, within each random search: Spearman "
                   f"rho median {fe['spearman_median']} over {fe['searches']} searches; the "
                   f"search's best trial among the first epoch's best {fe['keep']}: "
                   f"{fe['best_in_first_epoch_top']}", ""]
        plot(recs, task, out / f"{task}.png")
    text = "\n".join(md) + "\n"
    atomic_write(out / "study.md", text.encode())
    print(text + f"results: {out}")
    return 0


# ---- the command --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _pick(text: str | None, known: list[str], flag: str) -> list[str]:
    if text is None:
        return known
    got = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in got if x not in known]
    if bad or not got:
        raise UsageError(f"{flag} {text}: expected a comma-separated subset of "
                         f"{', '.join(known)}")
    return got


def _seeds(text: str) -> list[int]:
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first or len(out) + last - first >= MAX_SEEDS:
                raise ValueError
            out.update(range(first, last + 1))
    except ValueError:
        raise UsageError(f"--seeds {text}: expected seeds like 1-10 or 1,2,5 (from 0, at most "
                         f"{MAX_SEEDS})") from None
    return sorted(out)


MAX_SEEDS = 1000


def check_args(a: Any) -> None:
    """Every value before any search: one line, nothing started."""
    from search.flags import check_address, one_epoch_plan

    for name, value, low, high in (("--budget", a.budget, 1, 100_000),
                                   ("--max-epochs", a.max_epochs, 1, 1000),
                                   ("--concurrency", a.concurrency, 1, 64)):
        if not low <= value <= high:
            raise UsageError(f"{name} {value}: expected an integer from {low} to {high}")
    if not a.out.strip():
        raise UsageError("--out '': expected a folder")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {a.out}: is a file, expected a folder")
    try:
        one_epoch_plan(a.max_epochs, variant(a.small)["keep"], a.budget, 100_000)
    except ValueError as e:
        raise UsageError(f"method 1-epoch: {e}") from None
    check_address(a.address)


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """One study at a time per folder: two would run the same searches on the same cores
    (each one's timings distorted by the other) and overwrite each other's records."""
    try:
        fd = take_flock(out / ".study.lock", str(os.getpid()).encode())
    except Held as held:
        raise UsageError(f"--out {out}: another study is running on it (pid "
                         f"{held.args[0].strip() or '?'}); wait for it, or use another "
                         f"--out") from None
    except OSError as e:
        raise UsageError(f"--out {out}: could not take the lock .study.lock ({e.strerror})") \
            from None
    try:
        yield
    finally:
        os.close(fd)


def _main(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m benchmarks.search_efficiency",
                      description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the records, tables and plots")
    p.add_argument("--tasks", help=f"subset of {','.join(TASKS)} (default: all)")
    p.add_argument("--methods", help=f"subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--seeds", default="1-10", help="paired search seeds (default 1-10)")
    p.add_argument("--budget", type=int, default=120, help="epochs per search (120)")
    p.add_argument("--max-epochs", type=int, default=6, help="epochs of a full trial (6)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (2)")
    p.add_argument("--small", action="store_true", help="CI: one task, seed 1, every method, "
                   "an 8-epoch budget of 2-epoch trials")
    p.add_argument("--address", help="a running Ray head (host:port) to search on; default: "
                   "one started here (2 CPUs) and stopped at the end")
    p.add_argument("--report", action="store_true", help="only rebuild the tables and plots "
                   "from the records in --out")
    a = p.parse_args(argv)
    if a.small:
        a.budget, a.max_epochs = 8, 2
    check_args(a)
    out = Path(a.out)
    if a.report:
        return report(out)
    tasks = _pick(a.tasks, list(TASKS), "--tasks")
    methods = _pick(a.methods, list(METHODS), "--methods")
    seeds = [1] if a.small else _seeds(a.seeds)
    tasks = tasks[-1:] if a.small else tasks
    out.mkdir(parents=True, exist_ok=True)
    with study_lock(out):
        study = Study(out, a.small, a.budget, a.max_epochs, a.concurrency, a.address)
        todo = pending(out, tasks, methods, seeds, study.settings())
        if todo:
            study.run(todo)
        else:
            print("every (task, method, seed) asked for is recorded already")
        return report(out)


if __name__ == "__main__":
    sys.exit(main())
