"""Matplotlib helpers every plot shares: headless backend, colours, limits, saving."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from ucrn.fileio import atomic_write

STATUS_COLORS = {"completed": "tab:blue", "stopped": "tab:orange", "running": "tab:green"}


def pyplot():
    """pyplot on the Agg backend (no display needed), imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def no_data(ax, text: str) -> None:
    """Say in the panel why it is empty (wrapped: reasons can be a sentence long)."""
    ax.text(0.5, 0.5, textwrap.fill(text, 60), ha="center", va="center",
            transform=ax.transAxes)


def robust_ylim(ax, values: list[float]) -> None:
    """Keep one exploding trial from flattening every other curve."""
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size < 2:
        return
    lo, hi = np.percentile(v, 0), np.percentile(v, 98)
    if hi > lo:
        pad = 0.06 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)


def save(fig, path: Path, dpi: int = 110) -> None:
    """Whole or not at all (a full disk leaves no empty PNG)."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
