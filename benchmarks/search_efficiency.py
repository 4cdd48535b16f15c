"""Does the search earn its keep? TPE + ASHA against the alternatives, at equal epochs.

    python -m benchmarks.search_efficiency --out docs/search       # the full study (~40 min)
    python -m benchmarks.search_efficiency --out DIR --small        # the methods, 1 seed (CI)

Every search runs through the real run_search.py (`--executor tune`, several trials at
once) against one local Ray head started here in its own session (stopped by its pids),
on the project's synthetic data, with a space where the hyperparameters matter, and with
an epoch budget (`--epoch-budget`): every method gets the same compute.

Parts:
- methods: random search (every trial to full budget / with ASHA), TPE (full / ASHA),
  TPE + ASHA with Optuna's constant liar; each on the same search seeds. Per search: the
  best validation MAE against epochs spent and wall time (epochs ordered by when they
  were reported), and the test MAE of the configuration it finally picks, re-trained for
  the full epochs (does aggressive selection on validation overfit it?).
- asha: TPE with other ASHA settings (grace period, reduction factor), for the defaults.
- parallel: TPE + ASHA with 1, 2 and 4 trials at once (same 2 cores, so each trial gets
  fewer threads), for how the result changes with parallel workers.
- warm: a second search (another seed) cold, and warm-started from the first (same
  data: the first search's trials are evaluated points for TPE).

Output in DIR: search_efficiency.json (every search: flags, curve, trials, wall, test MAE
of its pick; the summary; the environment), search_efficiency.md (the tables),
search_efficiency.png (best-so-far validation MAE against epochs spent: median and
interquartile band over seeds, one line per method), warm_start.png.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/search_efficiency.py` from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.processes import RayHead  # noqa: E402
from search.analysis.formatting import markdown_table  # noqa: E402
from ucrn.errors import OneLineParser, run_main  # noqa: E402
from ucrn.fileio import atomic_write  # noqa: E402

# A space where the settings matter: learning rates over three decades, sizes and widths
# that underfit or train slowly, MJS on or off, dropout that can drown the head.
SPACE = """\
lr: {loguniform: [1.0e-5, 3.0e-2]}
layers: {int: [1, 3]}
d_model: {choice: [8, 16, 32]}
heads: {choice: [1, 2]}
jsd_weight: {choice: [0.0, 0.1, 1.0]}
out_dropout: {uniform: [0.0, 0.6]}
batch_size: {choice: [32, 64, 128]}
"""
SMALL_SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
layers: {choice: [1, 2]}
d_model: 8
heads: 2
"""
METHODS: dict[str, list[str]] = {
    "random, full budget": ["--search-alg", "random", "--scheduler", "fifo"],
    "random + ASHA": ["--search-alg", "random"],
    "TPE, full budget": ["--scheduler", "fifo"],
    "TPE + ASHA": [],
    "TPE + ASHA + constant liar": ["--constant-liar"],
}
ASHA_VARIANTS: dict[str, list[str]] = {  # TPE + ASHA with (grace period, reduction factor)
    "grace 1, rf 2": ["--grace-period", "1", "--reduction-factor", "2"],
    "grace 2, rf 2": ["--grace-period", "2", "--reduction-factor", "2"],
    "grace 1, rf 3": ["--grace-period", "1", "--reduction-factor", "3"],
    "grace 2, rf 3": ["--grace-period", "2", "--reduction-factor", "3"],
}
BASELINE = "random, full budget"  # what researchers do today (MMSA's tune mode)


class Study:
    def __init__(self, out: Path, small: bool, seeds: list[int], budget: int, max_epochs: int,
                 concurrency: int):
        self.out, self.small, self.seeds = out, small, seeds
        self.budget, self.max_epochs, self.concurrency = budget, max_epochs, concurrency
        self.work = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
        self.space = self.work / "space.yaml"
        self.space.write_text(SMALL_SPACE if small else SPACE)
        token = self.work / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
        self.runs: list[dict[str, Any]] = []
        self.t0 = time.time()

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.0f} s] {msg}", flush=True)

    # ---- one search -----------------------------------------------------------------

    def search(self, head: RayHead, part: str, method: str, seed: int, flags: list[str],
               concurrency: int | None = None, warm_from: str | None = None) -> dict[str, Any]:
        c = concurrency or self.concurrency
        name = f"{part}-{len(self.runs):03d}"
        argv = [sys.executable, str(ROOT / "run_search.py"), "--address", head.address,
                "--storage", str(self.work / "results"), "--name", name, "--executor", "tune",
                "--space", str(self.space), "--seed", str(seed), "--max-epochs",
                str(self.max_epochs), "--num-samples", "100000", "--epoch-budget",
                str(self.budget), "--max-concurrent", str(c), "--cpus-per-trial",
                f"{2 / c:g}", *flags]
        if warm_from:
            argv += ["--warm-start", warm_from]
        t = time.time()
        res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=1800)
        wall = time.time() - t
        folder = self.work / "results" / name
        if res.returncode != 0:
            raise RuntimeError(f"{part} {method} seed {seed}: run_search.py exited "
                               f"{res.returncode}: {(res.stderr or res.stdout)[-800:]}")
        run = {"part": part, "method": method, "seed": seed, "concurrency": c,
               "flags": flags, "folder": str(folder), "wall_s": round(wall, 1),
               "warm_from": warm_from, **self.read(folder)}
        self.runs.append(run)
        self.log(f"{part}: {method}, seed {seed}: {run['trials']} trials, {run['epochs']} "
                 f"epochs, best val MAE {run['best_val_mae']:.4f}, {wall:.0f} s")
        return run

    def read(self, folder: Path) -> dict[str, Any]:
        ep = pd.read_parquet(folder / "epochs.parquet").sort_values("ended_at")
        tr = pd.read_parquet(folder / "trials.parquet")
        best = np.minimum.accumulate(ep["MAE"].to_numpy(dtype=float))
        start = float(ep["ended_at"].iloc[0] - ep["seconds"].iloc[0])
        return {"trials": int(len(tr)), "epochs": int(len(ep)),
                "statuses": tr["status"].value_counts().to_dict(),
                "each_trial_once": bool(tr["trial_id"].is_unique),
                "each_epoch_once": bool(not ep.duplicated(["trial_id", "epoch"]).any()),
                "curve_mae": [round(float(x), 6) for x in best],
                "curve_s": [round(float(x - start), 2) for x in ep["ended_at"]],
                "best_val_mae": float(best[-1]),
                "best_config": json.loads((folder / "best_config.json").read_text())}

    def picked_test_mae(self, run: dict[str, Any]) -> float:
        """The picked configuration re-trained for its full epochs: its test MAE."""
        from ucrn.config import TrainConfig
        from ucrn.data import load_dataset
        from ucrn.train import fit

        cfg = TrainConfig.from_dict({**run["best_config"], "threads": 2, "device": "cpu"})
        data = load_dataset(**cfg.data_args())
        return float(fit(cfg, data).test["MAE"])

    # ---- the parts --------------------------------------------------------------------

    def run_all(self) -> dict[str, Any]:
        head = RayHead(self.env, gpus=0, cpus=2, work=self.work)
        try:
            self.log(f"Ray head at {head.address}; work in {self.work}")
            for seed in self.seeds:
                for method, flags in METHODS.items():
                    self.search(head, "methods", method, seed, flags)
            if not self.small:
                for seed in self.seeds:
                    for variant, flags in ASHA_VARIANTS.items():
                        if variant != "grace 1, rf 2":  # the default: "TPE + ASHA" above
                            self.search(head, "asha", variant, seed, flags)
                for seed in self.seeds[:3]:
                    for c in (1, 2, 4):
                        self.search(head, "parallel", f"{c} at once", seed, [], concurrency=c)
                for seed in self.seeds:
                    first = next(r for r in self.runs if r["part"] == "methods"
                                 and r["method"] == "TPE + ASHA" and r["seed"] == seed)
                    self.search(head, "warm", "cold", seed + 100, [])
                    self.search(head, "warm", "warm-started", seed + 100, [],
                                warm_from=first["folder"])
        finally:
            head.stop()
        for run in self.runs:
            if run["part"] in ("methods", "asha"):
                run["picked_test_mae"] = self.picked_test_mae(run)
        return self.summarise()

    # ---- summary ----------------------------------------------------------------------

    def summarise(self) -> dict[str, Any]:
        df = pd.DataFrame(self.runs)
        return summarise(self.runs, _spread(df[(df.part == "methods")
                                               & (df.method == BASELINE)]))


def summarise(runs: list[dict[str, Any]], spread: dict[str, float]) -> dict[str, Any]:
    """The tables of the study, from its runs (also from a saved JSON: --from)."""
    df = pd.DataFrame(runs)
    tables: dict[str, list[dict[str, Any]]] = {}
    meth = df[df.part == "methods"]
    base = meth[meth.method == BASELINE]
    target = float(np.median(base["best_val_mae"])) if len(base) else float("nan")
    rows = []
    base_best = {r.seed: r.best_val_mae for r in base.itertuples()}
    for method, g in meth.groupby("method", sort=False):
        reach = [_epochs_to(r["curve_mae"], target) for _, r in g.iterrows()]
        # paired: the same seed's random full-budget search, whose first proposals are
        # the same (TPE starts with 10 random ones from the same seed)
        paired = [_epochs_to(r["curve_mae"], round(base_best[r["seed"]], 6) + 1e-9)
                  if r["seed"] in base_best else None for _, r in g.iterrows()]
        rows.append({
            "method": method, "seeds": len(g),
            "best val MAE (median)": float(np.median(g.best_val_mae)),
            "best val MAE (IQR)": _iqr(g.best_val_mae),
            "test MAE of the pick (mean ± std)": _mean_std(g.picked_test_mae),
            "trials (median)": float(np.median(g.trials)),
            "epochs spent (median)": float(np.median(g.epochs)),
            f"epochs to reach {BASELINE}'s median best (median)":
                _median_or_none(reach),
            f"epochs to reach the same seed's {BASELINE} final best (median)":
                _median_or_none(paired),
            "wall s (median)": float(np.median(g.wall_s))})
    tables["methods"] = rows
    for part, key in (("asha", "method"), ("parallel", "method"), ("warm", "method")):
        g_part = df[df.part == part]
        if part == "asha":
            g_part = pd.concat([meth[meth.method == "TPE + ASHA"].assign(
                method="grace 1, rf 2"), g_part])
        rows = []
        for name, g in g_part.groupby(key, sort=False):
            rows.append({"setting": name, "seeds": len(g),
                         "best val MAE (median)": float(np.median(g.best_val_mae)),
                         "best val MAE (IQR)": _iqr(g.best_val_mae),
                         "trials (median)": float(np.median(g.trials)),
                         "epochs to reach 1.02 x its final best (median)": _median_or_none(
                             [_epochs_to(c, 1.02 * c[-1]) for c in g.curve_mae]),
                         "wall s (median)": float(np.median(g.wall_s)),
                         **({"test MAE of the pick (mean ± std)":
                             _mean_std(g.picked_test_mae)} if "picked_test_mae" in g
                            else {})})
        if rows:
            tables[part] = rows
    return {"target_val_mae": target, "tables": tables, "spread": spread}


def _epochs_to(curve: list[float], target: float) -> int | None:
    hit = [i + 1 for i, v in enumerate(curve) if v <= target]
    return hit[0] if hit else None


def _median_or_none(values: list[int | None]) -> float | str:
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    med = float(np.median(got))
    return med if len(got) == len(values) else f"{med:g} ({len(got)}/{len(values)} seeds)"


def _iqr(s: pd.Series) -> str:
    q1, q3 = np.percentile(s, [25, 75])
    return f"{q1:.4f}-{q3:.4f}"


def _mean_std(s: pd.Series) -> str:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}" if len(v) else "-"


def _spread(base: pd.DataFrame) -> dict[str, float]:
    """How much the settings matter: final validation MAE of the random full-budget
    trials (each trial a random configuration run to the end)."""
    maes = []
    for folder in base.get("folder", []):
        tr = pd.read_parquet(Path(folder) / "trials.parquet")
        maes += list(tr.loc[tr.status == "completed", "MAE"].astype(float))
    if not maes:
        return {}
    q = np.percentile(maes, [0, 25, 50, 75, 100])
    return {"n": len(maes), **{k: round(float(v), 4) for k, v in zip(
        ("min", "q25", "median", "q75", "max"), q, strict=True)}}


def plot(runs: list[dict[str, Any]], part: str, path: Path, budget: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.analysis.figure import save

    fig, ax = plt.subplots(figsize=(8, 5))
    grid = np.arange(1, budget + 1)
    for i, method in enumerate(dict.fromkeys(r["method"] for r in runs if r["part"] == part)):
        curves = []
        for r in runs:
            if r["part"] == part and r["method"] == method:
                c = np.asarray(r["curve_mae"])
                curves.append(np.concatenate([c, np.full(max(0, budget - len(c)), c[-1])])[
                    :budget])
        m = np.vstack(curves)
        ax.plot(grid, np.median(m, axis=0), color=f"C{i}", lw=2,
                label=f"{method} ({len(curves)} seeds)")
        ax.fill_between(grid, np.percentile(m, 25, axis=0), np.percentile(m, 75, axis=0),
                        color=f"C{i}", alpha=0.15)
    ax.set_xlabel("epochs spent (all trials)")
    ax.set_ylabel("best validation MAE so far")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m benchmarks.search_efficiency",
                      description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the JSON, tables and plots")
    p.add_argument("--small", action="store_true", help="1 seed, a few epochs (CI)")
    p.add_argument("--seeds", type=int, default=5, help="search seeds per method (5)")
    p.add_argument("--budget", type=int, default=120, help="epochs per search (120)")
    p.add_argument("--max-epochs", type=int, default=6, help="epochs of a full trial (6)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (2)")
    p.add_argument("--from", dest="saved", help="a saved search_efficiency.json: tables and "
                   "plots again from its runs, no searches")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.saved:
        from ucrn.safeload import load_json

        doc = load_json(Path(a.saved), "--from")
        doc["summary"] = summarise(doc["runs"], doc["summary"].get("spread", {}))
        return write_outputs(out, doc, small=not any(r["part"] == "warm" for r in doc["runs"]))
    seeds = [1] if a.small else list(range(1, a.seeds + 1))
    budget, max_epochs = (6, 2) if a.small else (a.budget, a.max_epochs)
    out.mkdir(parents=True, exist_ok=True)
    study = Study(out, a.small, seeds, budget, max_epochs, a.concurrency)
    summary = study.run_all()
    import ray
    import torch

    doc = {"environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "ray": ray.__version__, "cpus": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d"),
                           "seconds": round(time.time() - study.t0)},
           "space": study.space.read_text(), "budget": budget, "max_epochs": max_epochs,
           "concurrency": a.concurrency, "seeds": seeds, "summary": summary,
           "runs": study.runs}
    return write_outputs(out, doc, a.small)


def write_outputs(out: Path, doc: dict[str, Any], small: bool) -> int:
    """The JSON of every run, the tables (markdown) and the plots."""
    summary, runs, budget = doc["summary"], doc["runs"], doc["budget"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "search_efficiency.json", json.dumps(doc, indent=1, default=str).encode())
    md = []
    for part, rows in summary["tables"].items():
        md += [f"### {part}", "", markdown_table(pd.DataFrame(rows)), ""]
    md += [f"spread of random full-budget trials' validation MAE: {summary['spread']}"]
    atomic_write(out / "search_efficiency.md", ("\n".join(md) + "\n").encode())
    plot(runs, "methods", out / "search_efficiency.png", budget,
         f"best validation MAE vs epochs spent: median and IQR over {len(doc['seeds'])} seeds")
    if not small:
        plot(runs, "warm", out / "warm_start.png", budget,
             "a second search, cold or warm-started from the first")
    print("\n".join(md))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
