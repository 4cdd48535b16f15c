"""Evaluation metrics for MOSI/MOSEI regression, CH-SIMS regression and IEMOCAP 4x2 emotions.

Definitions in docs/metrics.md, so that numbers are comparable with papers and MMSA.
Everything is computed in float64 numpy, with no sklearn/scipy dependency, so the metrics
behave the same on every worker of the search.

Note on argument order: the Non0 (and Has0) weighted F1 uses the labels as the truth and the
predictions as the estimate (docs/metrics.md). MulT's ``eval_mosei_senti`` passes
them the other way round (predictions as truth), which changes the class weights and so
shifts the weighted F1 slightly; keep this in mind when comparing with MulT-era tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REGRESSION_METRICS: tuple[str, ...] = (
    "MAE",
    "Corr",
    "Mult_acc_7",
    "Mult_acc_5",
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
)
# CH-SIMS (labels in [-1, 1]): MMSA's own definitions, class edges below.
SIMS_METRICS: tuple[str, ...] = ("MAE", "Corr", "Mult_acc_2", "Mult_acc_3", "Mult_acc_5",
                                 "F1_score")
SIMS_EDGES: dict[str, tuple[float, ...]] = {  # classes (lo, hi], the first one [-1, hi]
    "Mult_acc_2": (0.0,),
    "Mult_acc_3": (-0.1, 0.1),
    "Mult_acc_5": (-0.7, -0.1, 0.1, 0.7),
}
IEMOCAP_EMOTIONS: tuple[str, ...] = ("Neutral", "Happy", "Sad", "Angry")

IEMOCAP_METRICS: tuple[str, ...] = tuple(
    f"{emo}_{kind}" for emo in IEMOCAP_EMOTIONS for kind in ("acc", "F1")
) + ("Mean_acc", "Mean_F1")

# Natural optimisation direction per metric, so schedulers/search never guess it from a name.
METRIC_MODES: dict[str, str] = {
    "loss": "min",
    **{name: ("min" if name == "MAE" else "max") for name in (*REGRESSION_METRICS,
                                                              *SIMS_METRICS)},
    **{name: "max" for name in IEMOCAP_METRICS},
}

# Validation metrics computed only on request (TrainConfig.robust_metrics), regression only:
# robust_MAE = mean validation MAE with each of the model's modalities zeroed in turn
# (ucrn/robustness.py), so a search can select for robustness to a missing modality.
ROBUST_METRICS: tuple[str, ...] = ("robust_MAE",)
METRIC_MODES["robust_MAE"] = "min"


def metric_mode(name: str) -> str:
    """Return ``"min"`` or ``"max"`` for a metric name; fail loudly on typos."""
    try:
        return METRIC_MODES[name]
    except KeyError:
        known = ", ".join(sorted(METRIC_MODES))
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}") from None


def _to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor (any dtype/device) or sequence to a float64 array."""
    if hasattr(x, "detach"):  # torch tensor; avoids importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    """Pearson r; NaN (without runtime warnings) when undefined."""
    if p.size < 2:
        return float("nan")
    dp = p - p.mean()
    dt = t - t.mean()
    sp = float(np.sqrt(np.dot(dp, dp)))
    st = float(np.sqrt(np.dot(dt, dt)))
    if sp == 0.0 or st == 0.0 or not np.isfinite(sp * st):
        return float("nan")
    r = float(np.dot(dp, dt)) / (sp * st)
    return float(np.clip(r, -1.0, 1.0))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1 averaged with weights = class support in ``y_true`` (sklearn 'weighted').

    Classes are the union of labels in both arrays; a class absent from ``y_true`` gets weight
    0, and a zero-division F1 (no true and no predicted members) counts as 0.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} elements but y_pred has {y_pred.size}")
    n = y_true.size
    if n == 0:
        return 0.0
    total = 0.0
    for cls in np.union1d(y_true, y_pred):
        is_true = y_true == cls
        is_pred = y_pred == cls
        support = int(is_true.sum())
        if support == 0:
            continue
        tp = int(np.logical_and(is_true, is_pred).sum())
        denom = support + int(is_pred.sum())  # 2TP / (2TP + FP + FN)
        f1 = 2.0 * tp / denom if denom else 0.0
        total += support * f1
    return total / n


def regression_metrics(preds: Any, labels: Any) -> dict[str, float]:
    """All sentiment-regression metrics of docs/metrics.md, keys exactly ``REGRESSION_METRICS``.

    Inputs may be numpy arrays or torch tensors of any shape; both are flattened and must hold
    the same number of elements. ``Corr`` is NaN for constant inputs or N < 2, the ``Non0_*``
    metrics are NaN when every label is 0.
    """
    p = _to_numpy(preds).ravel()
    t = _to_numpy(labels).ravel()
    if p.size == 0 or t.size == 0:
        raise ValueError("regression_metrics needs at least one prediction and label")
    if p.size != t.size:
        raise ValueError(f"preds has {p.size} elements but labels has {t.size}")

    out: dict[str, float] = {
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": _pearson(p, t),
        # np.round rounds half to even, as docs/metrics.md requires.
        "Mult_acc_7": float(np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3)))),
        "Mult_acc_5": float(np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(t, -2, 2)))),
    }

    has0_t, has0_p = t >= 0, p >= 0
    out["Has0_acc_2"] = float(np.mean(has0_t == has0_p))
    out["Has0_F1_score"] = weighted_f1(has0_t, has0_p)

    nonzero = t != 0
    if nonzero.any():
        non0_t, non0_p = t[nonzero] > 0, p[nonzero] > 0
        out["Non0_acc_2"] = float(np.mean(non0_t == non0_p))
        out["Non0_F1_score"] = weighted_f1(non0_t, non0_p)
    else:
        out["Non0_acc_2"] = float("nan")
        out["Non0_F1_score"] = float("nan")
    return {name: out[name] for name in REGRESSION_METRICS}


def sims_metrics(preds: Any, labels: Any) -> dict[str, float]:
    """CH-SIMS's metrics as MMSA computes them, keys exactly ``SIMS_METRICS``: predictions
    and labels clipped to [-1, 1] first (MAE and Corr too), then 2/3/5 classes by
    ``SIMS_EDGES``, F1_score the weighted F1 of the two classes."""
    p = np.clip(_to_numpy(preds).ravel(), -1.0, 1.0)
    t = np.clip(_to_numpy(labels).ravel(), -1.0, 1.0)
    if p.size == 0 or p.size != t.size:
        raise ValueError(f"sims_metrics needs as many predictions as labels, at least one "
                         f"(got {p.size} and {t.size})")
    out = {"MAE": float(np.mean(np.abs(p - t))), "Corr": _pearson(p, t)}
    for name, edges in SIMS_EDGES.items():
        # searchsorted 'left': a value equal to an edge falls in the class below, (lo, hi]
        pc, tc = np.searchsorted(edges, p, "left"), np.searchsorted(edges, t, "left")
        out[name] = float(np.mean(pc == tc))
        if name == "Mult_acc_2":
            out["F1_score"] = weighted_f1(tc, pc)
    return {name: out[name] for name in SIMS_METRICS}


def iemocap_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Per-emotion accuracy and weighted F1 of the 2-way argmax, plus their means.

    ``logits``: (N, 8) or (N, 4, 2), two logits per emotion in ``IEMOCAP_EMOTIONS`` order.
    ``labels``: (N, 4) class indices in {0, 1}, or (N, 4, 2) one-hot.
    """
    n_emo = len(IEMOCAP_EMOTIONS)
    lg = _to_numpy(logits)
    if lg.size == 0:
        raise ValueError("iemocap_metrics needs at least one sample")
    if lg.ndim == 2 and lg.shape[1] == 2 * n_emo:
        lg = lg.reshape(-1, n_emo, 2)
    if lg.ndim != 3 or lg.shape[1:] != (n_emo, 2):
        raise ValueError(f"logits must have shape (N, 8) or (N, 4, 2), got {tuple(lg.shape)}")

    lb = _to_numpy(labels)
    if lb.ndim == 3 and lb.shape[1:] == (n_emo, 2):
        lb = lb.argmax(axis=-1)
    elif lb.ndim == 2 and lb.shape[1] == n_emo:
        lb = np.rint(lb)
    else:
        raise ValueError(f"labels must have shape (N, 4) or (N, 4, 2), got {tuple(lb.shape)}")
    if lb.shape[0] != lg.shape[0]:
        raise ValueError(f"logits have {lg.shape[0]} samples but labels have {lb.shape[0]}")
    lb = lb.astype(np.int64)
    if not np.isin(lb, (0, 1)).all():
        raise ValueError("IEMOCAP labels must be class indices in {0, 1}")

    pred = lg.argmax(axis=-1)
    out: dict[str, float] = {}
    accs, f1s = [], []
    for i, emo in enumerate(IEMOCAP_EMOTIONS):
        acc = float(np.mean(pred[:, i] == lb[:, i]))
        f1 = weighted_f1(lb[:, i], pred[:, i])
        out[f"{emo}_acc"] = acc
        out[f"{emo}_F1"] = f1
        accs.append(acc)
        f1s.append(f1)
    out["Mean_acc"] = float(np.mean(accs))
    out["Mean_F1"] = float(np.mean(f1s))
    return out


TASK_METRICS: dict[str, tuple[str, ...]] = {
    "regression": REGRESSION_METRICS, "sims": SIMS_METRICS, "iemocap": IEMOCAP_METRICS}


def task_metrics(task: str, out: Any, labels: Any) -> dict[str, float]:
    """The task's metrics (``TASK_METRICS[task]``): the one place that picks them."""
    if task == "iemocap":
        return iemocap_metrics(out, labels)
    if task == "sims":
        return sims_metrics(out, labels)
    if task == "regression":
        return regression_metrics(out, labels)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_METRICS)}")


def undefined_metric(metric: str, labels: Any, task: str, split: str = "validation"
                     ) -> str | None:
    """Why `metric` cannot rank models on these labels, whatever they predict (None: it
    can), in one line naming the metric: Corr of constant labels is NaN for every model
    (a search on it saw numpy's "All-NaN slice" and no result), and a class metric whose
    labels are all one class is won by any constant prediction."""
    lb = _to_numpy(labels)
    if metric in ("loss", "MAE", *ROBUST_METRICS) or lb.size == 0:
        return None
    if task == "iemocap":
        lb = lb.argmax(axis=-1) if lb.ndim == 3 else np.rint(lb)
        emotions = [e for e in IEMOCAP_EMOTIONS if metric.startswith(f"{e}_")] or list(
            IEMOCAP_EMOTIONS)  # Mean_*: only if every emotion has one class
        if lb.ndim != 2 or lb.shape[1] != len(IEMOCAP_EMOTIONS):
            return None
        one = [e for e in emotions if np.unique(lb[:, IEMOCAP_EMOTIONS.index(e)]).size < 2]
        if len(one) < len(emotions):
            return None
        which = f"{one[0]} label" if len(one) == 1 else "label of every emotion"
        return (f"{metric} cannot rank models: the {split} {which} is one class throughout "
                f"({int(lb[0, IEMOCAP_EMOTIONS.index(one[0])])}), so any constant prediction "
                f"scores best")
    t = lb.ravel()
    if task == "sims":
        t = np.clip(t, -1.0, 1.0)
    if metric == "Corr":
        if t.size < 2:
            return f"Corr is undefined: the {split} split has {t.size} label (it needs 2)"
        if np.all(t == t[0]):
            return (f"Corr is undefined: the {split} labels are constant (every one is "
                    f"{float(t[0]):g}), so they correlate with no prediction")
        return None
    if task == "sims":
        edges = SIMS_EDGES["Mult_acc_2" if metric == "F1_score" else metric]
        classes, rule = np.searchsorted(edges, t, "left"), f"classes split at {list(edges)}"
    elif metric.startswith("Non0_"):
        if not (t != 0).any():
            return f"{metric} is undefined: every {split} label is 0 (it leaves out label 0)"
        classes, rule = t[t != 0] > 0, "label > 0, labels 0 left out"
    elif metric.startswith("Has0_"):
        classes, rule = t >= 0, "label >= 0"
    elif metric in ("Mult_acc_7", "Mult_acc_5"):
        bound = 3 if metric == "Mult_acc_7" else 2
        classes, rule = np.round(np.clip(t, -bound, bound)), f"rounded, clipped to +-{bound}"
    else:
        return None
    if np.unique(classes).size < 2:
        return (f"{metric} cannot rank models: every {split} label is in one class "
                f"({rule}), so any constant prediction of it scores best")
    return None


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value), as papers in this
    field report results over seeds."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0
