"""Per-epoch plots: the validation metric and the MJS value of the best trials.

Why both: the metric curves show what ASHA cut and when; the MJS curves show whether the
regulariser converges or fights the task loss in the trials that won.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from search.analysis.figure import no_data, pyplot, robust_ylim, save
from search.analysis.formatting import fmt
from search.analysis.importance import Importance
from search.analysis.loading import Search
from search.analysis.tables import MAX_CURVES, mjs_epochs, ranked


def _series(ep: pd.DataFrame, tid: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    e = ep[ep["trial_id"] == tid].sort_values("epoch")
    y = pd.to_numeric(e[col], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(y)
    return e["epoch"].to_numpy()[ok], y[ok]


def _panels(searches: list[Search]):
    """One figure, one panel per search, side by side: (figure, [(axes, search), ...])."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(searches), figsize=(7 * len(searches), 4.6), squeeze=False)
    return fig, list(zip(axes[0], searches))


def _epoch_axis(ax, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_curves(searches: list[Search], path: Path, *, top: int,
                imps: dict[str, Importance]) -> None:
    """Validation metric per epoch: top trials in colour, ASHA-stopped ones in grey."""
    fig, panels = _panels(searches)
    for ax, s in panels:
        ax.set_title(f"{s.label}: validation {s.metric} per epoch", fontsize=10)
        ep = s.epochs
        if ep is None or ep.empty or s.metric not in ep.columns or "epoch" not in ep.columns:
            no_data(ax, "no per-epoch data")
            continue
        best = ranked(s).head(min(top, MAX_CURVES))
        stopped = s.trials.loc[s.trials["status"] == "stopped", "trial_id"]
        values: list[float] = []
        for i, tid in enumerate(stopped):
            x, y = _series(ep, tid, s.metric)
            if tid not in set(best["trial_id"]):
                ax.plot(x, y, color="0.65", lw=1, marker="o", ms=3, zorder=1,
                        label="stopped by ASHA" if i == 0 else None)
                values += list(y)
        for i, (_, row) in enumerate(best.iterrows()):
            x, y = _series(ep, row["trial_id"], s.metric)
            ax.plot(x, y, lw=2, marker="o", ms=4, color=f"C{i % 10}", zorder=3,
                    label=f"#{row['rank']} {row['trial_id']} ({row['status']}, "
                          f"{row[s.metric]:.3f})")
            values += list(y)
        for r in sorted(set(pd.to_numeric(s.trials.loc[s.trials["status"] == "stopped",
                                                        "epochs_run"], errors="coerce")
                            .dropna().astype(int))):
            ax.axvline(r, color="0.8", ls=":", lw=1, zorder=0)
        robust_ylim(ax, values)
        ax.set_xlabel("epoch (dotted: ASHA rungs where trials stopped)")
        _epoch_axis(ax, f"{s.metric} ({'lower' if s.mode == 'min' else 'higher'} is better)")
    fig.tight_layout()
    save(fig, path)


def plot_mjs(searches: list[Search], path: Path, *, top: int,
             imps: dict[str, Importance]) -> None:
    """Mean training MJS per epoch of the best ranked trials that ran with MJS on."""
    fig, panels = _panels(searches)
    for ax, s in panels:
        ax.set_title(f"{s.label}: training MJS per epoch (top trials)", fontsize=10)
        rows, line = mjs_epochs(s, top)
        if rows.empty:
            no_data(ax, line)
            continue
        for i, (rank, g) in enumerate(rows.groupby("rank", sort=True)):
            tid = g["trial_id"].iloc[0]
            x, y = _series(g, tid, "mjs")
            weight = (f" (jsd_weight {fmt(g['jsd_weight'].iloc[0], 'jsd_weight')})"
                      if "jsd_weight" in g.columns else "")
            ax.plot(x, y, lw=2, marker="o", ms=4, color=f"C{i % 10}",
                    label=f"#{rank} {tid}{weight}")
        ax.set_xlabel("epoch")
        _epoch_axis(ax, "MJS (mean over training batches)")
    fig.tight_layout()
    save(fig, path)
