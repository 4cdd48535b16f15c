"""Plots of the searched parameters: each against the metric, and parallel coordinates.

Why the kinds decide the axes: a parameter is drawn on the scale it was sampled on
(search.json's space, see kinds.py): `loguniform` on a log axis, `uniform` and `int`
linear, `choice` as categories.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from search.analysis.figure import STATUS_COLORS, no_data, pyplot, save
from search.analysis.formatting import fmt
from search.analysis.importance import Importance
from search.analysis.kinds import ParamKind, infer_kind, param_kind, py
from search.analysis.loading import Search
from search.analysis.tables import ranked

PARAMS_PER_ROW = 4


def plot_params(searches: list[Search], path: Path, *, top: int,
                imps: dict[str, Importance]) -> None:
    """Each searched parameter against the metric: scatter (numeric) or box+strip
    (categorical); at most PARAMS_PER_ROW panels a row, each search on its own rows."""
    plt = pyplot()
    layout = [(s, s.params[i:i + PARAMS_PER_ROW] or [None])
              for s in searches for i in range(0, max(1, len(s.params)), PARAMS_PER_ROW)]
    ncols = max(len(ps) for _, ps in layout)
    fig, axes = plt.subplots(len(layout), ncols, figsize=(4.2 * ncols, 3.5 * len(layout) + 0.4),
                             squeeze=False, layout="constrained")
    for row, (s, params) in zip(axes, layout):
        for ax in row[len(params):]:
            ax.axis("off")
        if params == [None]:
            no_data(row[0], f"{s.label}: no searched parameters")
            row[0].axis("off")
            continue
        r = ranked(s)
        top_ids = set(r.head(max(1, math.ceil(len(r) / 4)))["trial_id"])
        diverged = s.trials[s.trials["status"] == "diverged"]
        for j, (ax, p) in enumerate(zip(row, params)):
            kind = param_kind(s.trials[p], p, s.space)
            if kind.numeric:
                _scatter_numeric(ax, r, p, s.metric, top_ids, diverged, kind)
            else:
                _strip_categorical(ax, r, p, s.metric, kind.choices)
            imp = imps[s.label].values.get(p)
            ax.set_title(p + (f"  (importance {imp:.2f})" if imp is not None else ""),
                         fontsize=10)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"{s.label}: {s.metric} ({s.mode})", fontsize=9)
            if j == 0 and kind.numeric and p == s.params[0]:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle("searched parameters vs the metric (black edge: top quarter of trials; "
                 "x at the top: diverged)", fontsize=10)
    save(fig, path, dpi=100)


def _scatter_numeric(ax, r: pd.DataFrame, p: str, metric: str, top_ids: set,
                     diverged: pd.DataFrame, kind: ParamKind) -> None:
    for status, g in r.groupby("status"):
        top = g["trial_id"].isin(top_ids)
        ax.scatter(g[p], g[metric], s=np.where(top, 46, 22),
                   color=STATUS_COLORS.get(str(status), "tab:purple"),
                   edgecolors=np.where(top, "black", "none"), linewidths=1, label=str(status))
    if len(diverged) and p in diverged.columns:  # no metric: mark x at the top edge
        ax.plot(diverged[p], np.full(len(diverged), 1.0), "x", color="tab:red", ms=7, mew=2,
                transform=ax.get_xaxis_transform(), clip_on=False, label="diverged")
    if kind.log:  # plain numbers at 1 and 3 per decade: minor labels like 2x10^-4 collide
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif kind.integer:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _strip_categorical(ax, r: pd.DataFrame, p: str, metric: str, choices: tuple) -> None:
    groups = [r.loc[r[p].map(py) == c, metric].to_numpy(dtype=float) for c in choices]
    pos = np.arange(len(choices))
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=pos, widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)
    for i, c in enumerate(choices):
        g = r[r[p].map(py) == c]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(g)), g[metric], s=18, zorder=3,
                   color=[STATUS_COLORS.get(st, "tab:purple") for st in g["status"]])
    ax.set_xticks(pos, [fmt(c, p) for c in choices], rotation=20)


def plot_parallel(searches: list[Search], path: Path, *, top: int,
                  imps: dict[str, Importance]) -> None:
    """Top trials across the searched parameters (each axis spans the range of all ranked
    trials, so it shows where the best sit in the search space; the metric axis spans the
    shown trials), lines coloured by the metric (dark = better)."""
    plt = pyplot()
    from matplotlib import cm, colors

    width = max(7.0, 1.7 * (1 + max(len(s.params) for s in searches)))
    fig, axes = plt.subplots(len(searches), 1, figsize=(width, 4.4 * len(searches)),
                             squeeze=False)
    for ax, s in zip(axes[:, 0], searches):
        r = ranked(s)
        shown = r.head(max(top, 2))
        ax.set_title(f"{s.label}: top {len(shown)} of {len(r)} ranked trials", fontsize=10)
        if shown.empty:
            no_data(ax, "no ranked trials")
            continue
        kinds = [param_kind(s.trials[p], p, s.space) for p in s.params]
        kinds.append(infer_kind(shown[s.metric], s.metric))  # the metric: as it comes
        scaled, labels = zip(*(_axis_scale(r if k.name != s.metric else shown, shown, k)
                               for k in kinds))
        base = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, 256))  # no pale yellow
        cmap = colors.ListedColormap(base if s.mode == "min" else base[::-1])
        vals = shown[s.metric].to_numpy(dtype=float)
        norm = colors.Normalize(vals.min(), vals.max() if vals.max() > vals.min()
                                else vals.min() + 1e-9)
        xs = np.arange(len(kinds))
        for i in np.argsort(-vals if s.mode == "min" else vals):  # best drawn last
            ys = [col[i] for col in scaled]
            ax.plot(xs, ys, color=cmap(norm(vals[i])), lw=2.2 if i == 0 else 1.4, alpha=0.9)
        for x, ticks in zip(xs, labels):
            ax.axvline(x, color="0.3", lw=0.8)
            if len(ticks) == 2:  # numbers (or two choices): below and above the axis
                ax.text(x, -0.06, ticks[0][1], ha="center", va="top", fontsize=7)
                ax.text(x, 1.06, ticks[1][1], ha="center", va="bottom", fontsize=7)
            else:  # every choice beside the axis at its position
                for y, text in ticks:
                    ax.text(x + 0.04, y, text, ha="left", va="center", fontsize=7,
                            bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5))
        ax.set_xticks(xs, [k.name + (" (log)" if k.log else "") for k in kinds], fontsize=9)
        ax.tick_params(axis="x", pad=16)
        ax.set_yticks([])
        ax.set_ylim(-0.15, 1.15)
        ax.set_xlim(-0.3, len(kinds) - 0.7)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02,
                     label=f"{s.metric} ({s.mode})")
    fig.tight_layout()
    save(fig, path)


def _axis_scale(r: pd.DataFrame, shown: pd.DataFrame, kind: ParamKind
                ) -> tuple[list[float], list[tuple[float, str]]]:
    """Values of `shown` scaled to [0, 1] over the range of `r` on the parameter's own
    scale, and the axis labels as (position, text): min and max for numbers, every
    choice for categories."""
    name = kind.name
    if not kind.numeric:
        k = max(1, len(kind.choices) - 1)
        pos = {c: (i / k if len(kind.choices) > 1 else 0.5) for i, c in enumerate(kind.choices)}
        return ([pos.get(py(v), 0.5) for v in shown[name]],
                [(pos[c], fmt(c, name)) for c in kind.choices])
    x_all = pd.to_numeric(r[name], errors="coerce").astype(float)
    x = pd.to_numeric(shown[name], errors="coerce").astype(float)
    if kind.log:
        x_all, x = np.log10(x_all), np.log10(x)
    lo, hi = float(np.nanmin(x_all)), float(np.nanmax(x_all))
    scaled = ((x - lo) / (hi - lo) if hi > lo else x * 0 + 0.5).fillna(0.5).tolist()
    raw = pd.to_numeric(r[name], errors="coerce")
    return scaled, [(0.0, fmt(raw.min(), name)), (1.0, fmt(raw.max(), name))]
