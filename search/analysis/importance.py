"""Hyperparameter importance (Optuna PED-ANOVA or fANOVA) and each parameter's best region.

Why an in-memory Optuna study: the importance evaluators need trials with distributions;
the distributions come from the search's own space (search.json), so a `uniform`
parameter is judged on a linear scale and a `choice` as categories, as it was sampled.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from search.analysis.files import one_line
from search.analysis.formatting import fmt
from search.analysis.kinds import ParamKind, kind_text, param_kind, py
from search.analysis.loading import Search
from search.analysis.tables import ranked

EVALUATORS = ("ped-anova", "fanova")


@dataclass
class Importance:
    evaluator: str
    values: dict[str, float]
    n_trials: int
    message: str = ""


def distribution(kind: ParamKind, values: pd.Series):
    """Optuna distribution of a parameter: the space's range, widened to every value seen."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not kind.numeric:
        return CategoricalDistribution(kind.choices)
    lo, hi = float(values.min()), float(values.max())
    if kind.bounds is not None:
        lo, hi = min(lo, kind.bounds[0]), max(hi, kind.bounds[1])
    if kind.integer:
        return IntDistribution(math.floor(lo), math.ceil(hi), log=kind.log)
    return FloatDistribution(lo, hi, log=kind.log)


def importance(s: Search, evaluator: str = "ped-anova") -> Importance:
    """Optuna's importance of each searched parameter, from an in-memory study.

    The study gets one COMPLETE trial per rankable trial (ASHA-stopped trials included,
    with the best value they reached: they are most of a search and they are stopped for
    being bad). Rows missing a parameter are left out.
    """
    r = ranked(s)
    usable = r.dropna(subset=s.params) if s.params else r
    if not s.params:
        return Importance("-", {}, len(usable), "no config column varies: nothing to assess")
    if len(usable) < 2:
        return Importance("-", {}, len(usable), f"needs at least 2 trials with a {s.metric} "
                          f"value and all searched parameters; have {len(usable)}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = {p: param_kind(s.trials[p], p, s.space) for p in s.params}
    dists = {p: distribution(kinds[p], usable[p]) for p in s.params}
    study = optuna.create_study(direction="minimize" if s.mode == "min" else "maximize")
    for _, row in usable.iterrows():
        params = {p: (int(row[p]) if kinds[p].integer else float(row[p])) if kinds[p].numeric
                  else py(row[p]) for p in s.params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(row[s.metric])))
    ev, name, note = _evaluator(evaluator, len(usable))
    if len(s.params) == 1:
        note = (note + "; " if note else "") + "one searched parameter: importance 1 by definition"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = optuna.importance.get_param_importances(study, evaluator=ev,
                                                             params=list(s.params))
        except Exception as e:  # noqa: BLE001 - degenerate inputs must not end the report
            return Importance(name, {}, len(usable), f"failed: {one_line(e)}")
    return Importance(name, dict(values), len(usable), note)


def _evaluator(which: str, n: int):
    """PED-ANOVA (Optuna's default, no extra dependency) or fANOVA (needs scikit-learn).

    PED-ANOVA asks which parameters matter for reaching the top quantile of trials. Its
    default (top 10%) holds one or two trials in a search of tens, so the quantile is the
    top quarter (as in the best-region table), raised to hold 5 trials, at most half.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    note = ""
    if which == "fanova":
        try:
            import sklearn  # noqa: F401
            return FanovaImportanceEvaluator(seed=0), "FanovaImportanceEvaluator(seed=0)", note
        except ImportError:
            note = "fanova needs scikit-learn (not installed): used PED-ANOVA instead"
    q = max(0.25, min(0.5, 5 / n))
    return (PedAnovaImportanceEvaluator(target_quantile=q),
            f"PedAnovaImportanceEvaluator(target_quantile={q:.2f}: what it takes to be in "
            f"the top {q:.0%} of {n} trials)", note)


def best_regions(s: Search, imp: Importance) -> pd.DataFrame:
    """Per searched parameter: where the top quartile of trials lies versus all trials
    (numeric), or the mean metric per choice (categorical)."""
    r = ranked(s)
    k = max(1, math.ceil(len(r) / 4))
    top = r.head(k)
    rows = []
    for p in s.params:
        kind = param_kind(s.trials[p], p, s.space)
        row = {"param": p, "importance": imp.values.get(p, np.nan), "kind": kind_text(kind)}
        if kind.numeric and len(r):
            row[f"top {k} of {len(r)}"] = _range_text(top[p], p)
            row["all trials"] = _range_text(s.trials[p], p)
            row["per choice: mean metric (n)"] = ""
        elif len(r):
            means = r.groupby(r[p].map(py), dropna=False)[s.metric].agg(["mean", "count"])
            means = means.sort_values("mean", ascending=s.mode == "min")
            row[f"top {k} of {len(r)}"] = ", ".join(
                f"{fmt(v, p)} x{n}" for v, n in top[p].map(py).value_counts().items())
            row["all trials"] = ", ".join(fmt(c, p) for c in kind.choices)
            row["per choice: mean metric (n)"] = ", ".join(
                f"{fmt(c, p)}: {m:.4f} ({int(n)})" for c, (m, n) in means.iterrows())
        rows.append(row)
    df = pd.DataFrame(rows)
    per_choice = "per choice: mean metric (n)"
    if per_choice in df.columns and not df[per_choice].astype(bool).any():
        df = df.drop(columns=per_choice)
    return df


def _range_text(values: pd.Series, name: str) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "-"
    lo, hi, med = v.min(), v.max(), v.median()
    if lo == hi:
        return f"{fmt(lo, name)} (all {len(v)})"
    return f"{fmt(lo, name)} .. {fmt(hi, name)} (median {fmt(med, name)})"
