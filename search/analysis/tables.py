"""The numbers of a search as tables: ranking, groups, statuses, ASHA, re-training, MJS.

Why ranking excludes diverged and errored trials (schema.FAILED): their recorded metric
is not a result (a diverged trial often looks best right before its loss blew up).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

import search.schema as schema
from search.analysis.formatting import fmt
from search.analysis.loading import Search

GROUP_KEYS = ("dataset", "aligned", "modalities")  # config fields that make results comparable
# completed and stopped first (the results), then the schema's order
STATUS_ORDER = ("completed", "stopped", *(s for s in schema.STATUSES
                                          if s not in ("completed", "stopped")))
MAX_CURVES = 8  # top trials drawn per-epoch; more is unreadable


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in schema.METRICS if c in df.columns and df[c].notna().any()]


def ranked(s: Search) -> pd.DataFrame:
    """Rankable trials (not diverged/errored, finite metric), best first, with `rank`."""
    t = s.trials
    value = pd.to_numeric(t[s.metric], errors="coerce")
    ok = ~t["status"].isin(schema.FAILED) & np.isfinite(value.to_numpy(dtype=float))
    out = t[ok].assign(**{s.metric: value[ok]})
    out = out.sort_values([s.metric, "trial_id"], ascending=[s.mode == "min", True],
                          kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def leaderboard(s: Search, top: int) -> pd.DataFrame:
    """Top trials: varying config, best epoch, status and all validation metrics."""
    r = ranked(s).head(top)
    front = ["rank", "trial_id", "status", "epochs_run", "best_epoch", s.metric]
    cols = [c for c in front if c in r.columns] + s.params
    cols += [m for m in metric_columns(r) if m not in cols]
    out = r[cols].copy()
    for c in ("epochs_run", "best_epoch"):  # int64 with nulls arrives as float
        if c in out.columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").round().astype("Int64")
    out.insert(0, "search", s.label)
    return out


def status_counts(s: Search) -> str:
    counts = s.trials["status"].value_counts()
    order = [st for st in STATUS_ORDER if st in counts] + \
        sorted(st for st in counts.index if st not in STATUS_ORDER)
    parts = ", ".join(f"{int(counts[st])} {st}" for st in order)
    return f"{len(s.trials)} trials: {parts}"


def best_per_group(searches: list[Search]) -> pd.DataFrame:
    """The best rankable trial per (dataset, aligned, modalities) across searches.

    Searches of one group that optimise different metrics cannot be compared, so the
    metric is part of the group.
    """
    rows = []
    for s in searches:
        r = ranked(s)
        if r.empty:
            continue
        best = r.iloc[0]
        key = {k: best.get(k, np.nan) for k in GROUP_KEYS}
        rows.append({**key, "metric": s.metric, "mode": s.mode, "value": best[s.metric],
                     "search": s.label, "trial_id": best["trial_id"],
                     "status": best["status"], "config": config_text(best, s.params)})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = [*GROUP_KEYS, "metric"]
    df["_sort"] = np.where(df["mode"] == "min", df["value"], -df["value"])
    df = df.sort_values("_sort", kind="stable").groupby(keys, dropna=False, sort=True).head(1)
    return df.sort_values(keys).drop(columns=["_sort", "mode"]).reset_index(drop=True)


def config_text(row: pd.Series, params: list[str]) -> str:
    return ", ".join(f"{p}={fmt(row.get(p), p)}" for p in params) or "(nothing varied)"


def asha_savings(s: Search) -> dict[str, Any]:
    """Epochs run versus every trial running all its epochs, and stops per rung."""
    t = s.trials
    run = pd.to_numeric(t.get("epochs_run"), errors="coerce").fillna(0)
    has_budget = "num_epochs" in t.columns and t["num_epochs"].notna().all()
    if "num_epochs" in t.columns:
        budget = pd.to_numeric(t["num_epochs"], errors="coerce").fillna(run.max())
    else:  # an old search without config columns: the most epochs any trial ran
        budget = pd.Series(run.max(), index=t.index)
    stopped = t["status"] == "stopped"
    rungs = run[stopped].astype(int).value_counts().sort_index()
    return {
        "trials": len(t), "epochs_run": int(run.sum()), "budget": int(budget.sum()),
        "used_pct": 100.0 * run.sum() / budget.sum() if budget.sum() else float("nan"),
        "saved_by_asha": int((budget - run)[stopped].sum()),
        "saved_other": int((budget - run)[t["status"].isin(schema.FAILED)].sum()),
        "running": int((t["status"] == "running").sum()),
        "stopped_per_rung": {int(k): int(v) for k, v in rungs.items()},
        "budget_known": has_budget,
    }


def asha_text(a: dict[str, Any]) -> list[str]:
    lines = [f"epochs run: {a['epochs_run']} of {a['budget']} (trials x max epochs) = "
             f"{a['used_pct']:.1f}%; saved {100 - a['used_pct']:.1f}%",
             f"epochs saved by stopped trials (ASHA, or the 1-epoch baseline's discards): "
             f"{a['saved_by_asha']}; by diverged/errored trials: {a['saved_other']}"]
    if a["stopped_per_rung"]:
        lines.append("stopped at rung (epochs run): " + ", ".join(
            f"{k}: {v} trial(s)" for k, v in a["stopped_per_rung"].items()))
    else:
        lines.append("no trial was stopped early")
    if not a["budget_known"]:
        lines.append("note: no num_epochs for some trials: their max epochs is taken as the "
                     "most epochs any trial ran")
    if a["running"]:
        lines.append(f"{a['running']} trial(s) still running: their epochs are not final")
    return lines


def retrain_tables(s: Search) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """(one row per seed, mean ± std per validation/test metric, seeds)."""
    r = s.retrain
    assert r is not None
    r = r.sort_values("seed") if "seed" in r.columns else r
    val = metric_columns(r)
    test = [c for c in schema.TEST_METRICS if c in r.columns]
    cols = [c for c in ("seed", "trial_id", "best_epoch") if c in r.columns] + val + test
    seeds = [int(x) for x in r["seed"].dropna()] if "seed" in r.columns else []
    rows = []
    for m in dict.fromkeys([*val, *(t.removeprefix(schema.TEST_PREFIX) for t in test)]):
        row = {"metric": m}
        for split, col in (("validation", m), ("test", schema.TEST_PREFIX + m)):
            v = pd.to_numeric(r[col], errors="coerce") if col in r.columns else pd.Series([])
            std = v.std(ddof=1) if v.count() > 1 else 0.0
            row[split] = f"{v.mean():.4f} ± {std:.4f}" if v.count() else "-"
        rows.append(row)
    return r[cols].reset_index(drop=True), pd.DataFrame(rows), seeds


def mjs_epochs(s: Search, top: int) -> tuple[pd.DataFrame, str]:
    """Per-epoch MJS rows of the best ranked trials that have MJS values (at most
    MAX_CURVES trials, with `rank`), and one line saying what they are or why there are
    none. A trial with jsd_weight 0 records MJS 0: MJS was off, so it has no values."""
    none = "no per-epoch MJS values"
    ep = s.epochs
    if ep is None or ep.empty or "epoch" not in ep.columns:
        return pd.DataFrame(), f"{none}: no {schema.EPOCHS}/ rows"
    if "mjs" not in ep.columns:
        return pd.DataFrame(), f"{none}: {schema.EPOCHS} has no mjs column"
    has = ep[np.isfinite(pd.to_numeric(ep["mjs"], errors="coerce").to_numpy(dtype=float))]
    if has.empty:
        return pd.DataFrame(), (f"{none}: {schema.EPOCHS}'s mjs column holds no numbers "
                                f"(a search written before the config field mjs was renamed "
                                f"mjs_variant)")
    if "jsd_weight" in has.columns:
        has = has[pd.to_numeric(has["jsd_weight"], errors="coerce").fillna(1) > 0]
        if has.empty:
            return pd.DataFrame(), f"{none}: every trial ran with jsd_weight 0 (MJS off)"
    order = ranked(s)[["rank", "trial_id"]]
    order = order[order["trial_id"].isin(set(has["trial_id"]))].head(min(top, MAX_CURVES))
    if order.empty:
        return pd.DataFrame(), f"{none} for any ranked trial"
    rows = has.merge(order, on="trial_id").sort_values(["rank", "epoch"])
    n = has["trial_id"].nunique()
    return rows, (f"per-epoch MJS (mean training value) recorded for {n} trial(s) with MJS on; "
                  f"mjs.png shows the top {len(order)} ranked of them")
