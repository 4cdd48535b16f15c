"""The report's plots: one registry line per image, one function per plot.

Why a registry: the report writes and links every entry, so a new plot is a function
plus a line here. Each function draws `searches` into `path`, given the leaderboard size
`top` and the importances `imps`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from search.analysis.curves import plot_curves, plot_mjs
from search.analysis.param_plots import plot_parallel, plot_params
from search.analysis.robustness import plot_missing, plot_noise, plot_trade_off


class Draw(Protocol):
    def __call__(self, searches, path, *, top, imps) -> None: ...


class Plot(NamedTuple):
    title: str
    draw: Draw


PLOTS: dict[str, Plot] = {
    "curves.png": Plot("Learning curves: top trials and ASHA-stopped trials", plot_curves),
    "mjs.png": Plot("Per-epoch MJS of the top trials", plot_mjs),
    "params.png": Plot("Searched parameters against the metric", plot_params),
    "parallel.png": Plot("Parallel coordinates of the top trials", plot_parallel),
    "robustness_noise.png": Plot("Re-trained models: test metric against input noise",
                                 plot_noise),
    "robustness_missing.png": Plot("Re-trained models: drop with modalities missing",
                                   plot_missing),
    "tradeoff.png": Plot("MAE against robust_MAE, Pareto front marked", plot_trade_off),
}
