"""Robustness of the re-trained models (robustness.parquet) and the MAE / robust_MAE
trade-off of a search's trials: tables and plots.

Why seeds first: each seed's repeats of a random condition are averaged, then the mean
and sample std are taken over seeds, as the re-training table does for the clean scores;
a drop is the condition's score minus the same seed's clean score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from search.analysis.figure import no_data, pyplot, save
from search.analysis.importance import Importance
from search.analysis.loading import Search

ROBUST = "robust_MAE"
NOISE, MISSING, CLEAN = "noise", "missing", "clean"
KEY = ["condition", "modality", "level"]


def main_metric(r: pd.DataFrame) -> str:
    """MAE for sentiment, Mean_acc for IEMOCAP (as `ucrn robustness` prints), else loss."""
    for name in ("MAE", "Mean_acc", "loss"):
        if name in r.columns and r[name].notna().any():
            return name
    return "loss"


def per_seed(s: Search, trial: str | None = None) -> tuple[pd.DataFrame, str]:
    """Test-split rows averaged over repeats, one per (trial, seed, condition, modality,
    level), with `drop` from the same trial and seed's clean score; and the metric used.
    Different re-trained trials (`--retrain --trial`) are different models: never mixed."""
    r = s.robustness
    if r is None or r.empty:
        return pd.DataFrame(), ""
    if "split" in r.columns:
        r = r[r["split"] == "test"] if (r["split"] == "test").any() else r
    metric = main_metric(r)
    r = r.assign(modality=r["modality"].fillna(""), seed=r.get("seed", 0),
                 trial_id=r.get("trial_id", "best"))
    if trial is not None:
        r = r[r["trial_id"] == trial]
    g = r.groupby(["trial_id", "seed", *KEY], dropna=False, as_index=False)[metric].mean()
    clean = g[g["condition"] == CLEAN].set_index(["trial_id", "seed"])[metric]
    g["drop"] = g[metric] - pd.Series(list(zip(g["trial_id"], g["seed"]))).map(clean).values
    return g, metric


def main_trial(s: Search) -> str | None:
    """The re-trained trial the plots show: `best` if it was re-trained, else the one with
    the most rows."""
    r = s.robustness
    if r is None or r.empty or "trial_id" not in r.columns:
        return None
    ids = r["trial_id"].value_counts()
    return "best" if "best" in ids.index else str(ids.index[0])


def _mean_sd(x: pd.Series, sign: str = "") -> str:
    """mean ± sample std over seeds; with one seed there is no std to show."""
    v = x.dropna()
    if v.empty:
        return "-"
    if len(v) == 1:
        return f"{v.iloc[0]:{sign}.4f} (1 seed)"
    return f"{v.mean():{sign}.4f} ± {v.std(ddof=1):.4f}"


def robustness_table(s: Search) -> tuple[pd.DataFrame, str]:
    """Mean ± std over seeds per re-trained trial and condition: the score and its drop."""
    g, metric = per_seed(s)
    if g.empty:
        return g, "no robustness.parquet rows (run_search.py --retrain writes them)"
    trials = list(dict.fromkeys(g["trial_id"]))
    rows = []
    for key, part in g.groupby(["trial_id", *KEY], dropna=False, sort=False):
        v, d = part[metric], part["drop"]
        rows.append({"trial": key[0], "condition": key[1], "modality": key[2] or "-",
                     "level": key[3], metric: _mean_sd(v), "drop": _mean_sd(d, "+"),
                     "seeds": int(v.notna().sum())})
    order = {CLEAN: 0, MISSING: 1, NOISE: 2}
    table = pd.DataFrame(rows)
    table = table.sort_values(by=["trial", "condition", "modality", "level"],
                              key=lambda c: c.map(order).fillna(3) if c.name == "condition"
                              else c, kind="stable").reset_index(drop=True)
    if len(trials) == 1:
        table = table.drop(columns="trial")
    seeds = ", ".join(f"{t}: {sorted(int(x) for x in g[g.trial_id == t]['seed'].unique())}"
                      for t in trials)
    line = (f"test {metric} under each condition, mean ± std (ddof=1) over seeds ({seeds}); "
            f"drop = condition minus the same seed's clean score (positive: worse for MAE "
            f"and loss)")
    return table, line


def pareto_front(points: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Rows not beaten on both columns at once (both minimised), sorted by `a`."""
    p = points.sort_values([a, b], kind="stable")
    keep, best_b = [], np.inf
    for _, row in p.iterrows():
        if row[b] < best_b:
            keep.append(row)
            best_b = row[b]
    return pd.DataFrame(keep)


def trade_off(s: Search) -> pd.DataFrame:
    """Finished trials with both MAE and robust_MAE (validation), with `pareto`."""
    t = s.trials
    if ROBUST not in t.columns or "MAE" not in t.columns:
        return pd.DataFrame()
    ok = t[~t["status"].isin(("diverged", "errored"))].copy()
    ok[ROBUST] = pd.to_numeric(ok[ROBUST], errors="coerce")
    ok["MAE"] = pd.to_numeric(ok["MAE"], errors="coerce")
    ok = ok[np.isfinite(ok["MAE"]) & np.isfinite(ok[ROBUST])]
    if ok.empty:
        return ok
    front = set(pareto_front(ok, "MAE", ROBUST)["trial_id"])
    return ok.assign(pareto=ok["trial_id"].isin(front))


def _panels(searches: list[Search]):
    """One panel per search on a shared y axis, so that searches compare at a glance."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(searches), figsize=(7 * len(searches), 4.6), squeeze=False,
                             sharey=True)
    return fig, list(zip(axes[0], searches))


def plot_noise(searches: list[Search], path: Path, *, top: int,
               imps: dict[str, Importance]) -> None:
    """Test metric against the noise level (x the training split's feature std), one line
    per noised modality, error bars over seeds."""
    fig, panels = _panels(searches)
    for ax, s in panels:
        trial = main_trial(s)
        g, metric = per_seed(s, trial)
        ax.set_title(f"{s.label} ({trial}): test {metric or 'metric'} under Gaussian noise",
                     fontsize=10)
        if g.empty or not (g["condition"] == NOISE).any():
            no_data(ax, "no robustness rows with noise (run_search.py --retrain writes them)")
            continue
        clean = g[g["condition"] == CLEAN][metric]
        for i, (mod, part) in enumerate(g[g["condition"] == NOISE].groupby("modality")):
            stats = part.groupby("level")[metric].agg(["mean", "std"]).fillna(0.0)
            x = [0.0, *stats.index]
            y = [clean.mean(), *stats["mean"]]
            e = [clean.std(ddof=1) if clean.count() > 1 else 0.0, *stats["std"]]
            ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, color=f"C{i % 10}",
                        label=f"noise on {mod}")
        ax.set_xlabel("noise sigma (x per-feature std of the training split)")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def plot_missing(searches: list[Search], path: Path, *, top: int,
                 imps: dict[str, Importance]) -> None:
    """The drop in the test metric with each modality, and each pair, missing (bars, error
    bars over seeds)."""
    fig, panels = _panels(searches)
    for ax, s in panels:
        trial = main_trial(s)
        g, metric = per_seed(s, trial)
        ax.set_title(f"{s.label} ({trial}): drop in test {metric or 'metric'} with modalities "
                     f"missing", fontsize=10)
        miss = g[g["condition"] == MISSING] if not g.empty else g
        if miss.empty:
            no_data(ax, "no robustness rows with missing modalities")
            continue
        stats = miss.groupby("modality")["drop"].agg(["mean", "std", "count"])
        stats = stats.reindex(sorted(stats.index, key=lambda m: (len(m), m)))
        ax.bar(range(len(stats)), stats["mean"], yerr=stats["std"].fillna(0.0), capsize=3,
               color=["C0" if len(m) == 1 else "C1" for m in stats.index])
        ax.set_xticks(range(len(stats)), [f"{m} missing" for m in stats.index], fontsize=8)
        ax.axhline(0, color="0.5", lw=1)
        ax.set_ylabel(f"{metric} missing - {metric} clean")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save(fig, path)


def plot_trade_off(searches: list[Search], path: Path, *, top: int,
                   imps: dict[str, Importance]) -> None:
    """Validation MAE against robust_MAE for every finished trial, the Pareto front joined:
    where a user picks between accuracy and robustness."""
    fig, panels = _panels(searches)
    for ax, s in panels:
        ax.set_title(f"{s.label}: MAE vs robust_MAE (validation)", fontsize=10)
        t = trade_off(s)
        if t.empty:
            no_data(ax, "no trial recorded robust_MAE (search with --robust-metrics or "
                        "--metric robust_MAE)")
            continue
        ax.scatter(t["MAE"], t[ROBUST], s=18, color="0.6", label="trials")
        f = t[t["pareto"]].sort_values("MAE")
        ax.plot(f["MAE"], f[ROBUST], "o-", color="C3", label="Pareto front")
        for _, row in f.iterrows():
            ax.annotate(str(row["trial_id"]), (row["MAE"], row[ROBUST]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("MAE (all modalities)")
        ax.set_ylabel("robust_MAE (mean over one modality missing)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
