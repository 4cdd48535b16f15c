"""Small statistics for the search study, without scipy: paired tests for 10 seeds, how
much each hyperparameter explains, rank correlation. Exact, not asymptotic: n is small."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def wilcoxon_signed_rank(diff: Sequence[float], tol: float = 1e-9) -> dict[str, float | int]:
    """Two-sided exact Wilcoxon signed-rank test of paired differences (zeros dropped, as
    Wilcoxon did; ties get average ranks and the exact null is enumerated over the 2^n
    sign patterns of those ranks). Also the sign test's counts and its exact p."""
    d = [float(v) for v in diff if abs(float(v)) > tol]
    n = len(d)
    out: dict[str, float | int] = {"n": n, "wins": sum(v < 0 for v in d),
                                   "losses": sum(v > 0 for v in d),
                                   "ties": len(diff) - n}
    if n == 0:
        return {**out, "W": 0.0, "p": 1.0, "sign_p": 1.0}
    r = ranks([abs(v) for v in d])
    w_plus = float(sum(ri for ri, v in zip(r, d, strict=True) if v > 0))
    total = float(r.sum())
    stat = min(w_plus, total - w_plus)
    if n <= 16:
        hits = sum(1 for signs in itertools.product((0, 1), repeat=n)
                   if min(s := float(np.dot(signs, r)), total - s) <= stat + 1e-12)
        p = hits / 2**n
    else:  # normal approximation (never reached by the study's 10 seeds)
        mu, sd = total / 2, math.sqrt(float((r**2).sum()) / 4)
        p = math.erfc(abs(w_plus - mu) / sd / math.sqrt(2))
    k = min(out["wins"], out["losses"])
    sign_p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {**out, "W": stat, "p": min(1.0, p), "sign_p": sign_p}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties averaged); NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def explained(values: Sequence[float], groups: Sequence) -> float:
    """Share of the variance of `values` between `groups` (eta squared): how much knowing
    the group alone tells. Numeric settings are grouped by quintile first (`binned`)."""
    y = np.asarray(values, dtype=float)
    if len(y) < 2 or y.var() == 0:
        return float("nan")
    g = np.asarray([str(v) for v in groups])
    between = sum((g == k).sum() * (y[g == k].mean() - y.mean()) ** 2 for k in set(g))
    return float(between / (len(y) * y.var()))


def binned(x: Sequence[float], bins: int = 5) -> list[int]:
    """Quantile bins of a numeric setting (for `explained`); few distinct values stay as
    they are."""
    x = np.asarray(x, dtype=float)
    if len(set(x.tolist())) <= bins:
        return x.tolist()
    edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, x, side="right").tolist()
