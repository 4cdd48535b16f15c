"""Metrics checked against hand-computed numbers (docs/metrics.md definitions)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ucrn.metrics import (
    IEMOCAP_EMOTIONS,
    METRIC_MODES,
    REGRESSION_METRICS,
    iemocap_metrics,
    metric_mode,
    regression_metrics,
    weighted_f1,
)

# idx:      0     1     2     3     4     5    6     7     8    9
T = [0.0, 2.5, -1.5, 3.4, -3.6, 0.5, 1.2, -0.4, 0.8, 1.6]
P = [0.3, 2.6, -2.4, 2.9, -2.5, 0.5, 0.0, -0.1, -0.6, 1.4]

# MAE: |p - t| = .3 .1 .9 .5 1.1 0 1.2 .3 1.4 .2 -> sum 6.0 -> 6.0 / 10
MAE = 0.6

# Corr: sum p = 2.1, sum t = 4.5 (means .21, .45)
#   sum p*t = 0 + 6.5 + 3.6 + 9.86 + 9.0 + .25 + 0 + .04 - .48 + 2.24 = 31.01
#   sum p^2 = .09 + 6.76 + 5.76 + 8.41 + 6.25 + .25 + 0 + .01 + .36 + 1.96 = 29.85
#   sum t^2 = 0 + 6.25 + 2.25 + 11.56 + 12.96 + .25 + 1.44 + .16 + .64 + 2.56 = 38.07
#   Sxy = 31.01 - 10*.21*.45 = 30.065; Sxx = 29.85 - 10*.21^2 = 29.409;
#   Syy = 38.07 - 10*.45^2 = 36.045; r = 30.065 / sqrt(29.409 * 36.045)
CORR = 30.065 / math.sqrt(29.409 * 36.045)  # = 0.92341848619...

# Mult_acc_7 (clip [-3, 3], round half to even):
#   t -> 0  2(2.5)  -2(-1.5)  3(3.4->3)  -3(-3.6->-3)  0(.5)  1  -0  1  2
#   p -> 0  3(2.6)  -2(-2.4)  3(2.9)     -2(-2.5)      0(.5)  0  -0 -1  1
#   equal at idx 0, 2, 3, 5, 7 -> 5 / 10
#   (half away from zero would give 7/10: idx 1 -> 3 == 3, idx 4 -> -3 == -3)
MULT_ACC_7 = 0.5
# Mult_acc_5 (clip [-2, 2]):
#   t -> 0  2  -2(-1.5)  2  -2  0(.5)  1  0  1  2
#   p -> 0  2  -2        2  -2  0(.5)  0  0 -1  1
#   differ at idx 6, 8, 9 -> 7 / 10
MULT_ACC_5 = 0.7

# Has0 (>= 0): t: T T F T F T T F T T ; p: T T F T F T T(0.0) F F T
#   one error (idx 8, T->F) -> acc 9/10
#   class T: support 7, predicted 6, TP 6 -> F1 = 2*6/(7+6) = 12/13
#   class F: support 3, predicted 4, TP 3 -> F1 = 2*3/(3+4) = 6/7
#   weighted by true support: (7*12/13 + 3*6/7) / 10 = 822/910 = 411/455
#   (swapped argument order would weight by 6 and 4: 816/910)
HAS0_ACC = 0.9
HAS0_F1 = 411 / 455

# Non0 (> 0, idx 0 dropped since t == 0), 9 samples idx 1..9:
#   t: T F T F T T F T T ; p: T F T F T F(0.0) F F T
#   errors at idx 6 and 8 (T->F) -> acc 7/9
#   class T: support 6, predicted 4, TP 4 -> F1 = 8/10 = .8
#   class F: support 3, predicted 5, TP 3 -> F1 = 6/8 = .75
#   weighted: (6*.8 + 3*.75) / 9 = 7.05 / 9   (swapped order: (4*.8 + 5*.75)/9 = 6.95/9)
NON0_ACC = 7 / 9
NON0_F1 = 7.05 / 9


def test_regression_metrics_hand_example() -> None:
    got = regression_metrics(np.array(P), np.array(T))
    assert tuple(got) == REGRESSION_METRICS
    expected = {
        "MAE": MAE,
        "Corr": CORR,
        "Mult_acc_7": MULT_ACC_7,
        "Mult_acc_5": MULT_ACC_5,
        "Has0_acc_2": HAS0_ACC,
        "Has0_F1_score": HAS0_F1,
        "Non0_acc_2": NON0_ACC,
        "Non0_F1_score": NON0_F1,
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert all(isinstance(v, float) for v in got.values())


def test_regression_metrics_accepts_tensors_of_any_shape() -> None:
    ref = regression_metrics(np.array(P), np.array(T))
    got = regression_metrics(
        torch.tensor(P, dtype=torch.float32).reshape(10, 1),
        torch.tensor(T, dtype=torch.float64).reshape(2, 5),
    )
    for name in REGRESSION_METRICS:
        assert got[name] == pytest.approx(ref[name], abs=1e-6), name
    bf16 = regression_metrics(torch.tensor(P).bfloat16(), torch.tensor(T))
    assert set(bf16) == set(REGRESSION_METRICS)


def test_corr_nan_on_constant_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = regression_metrics(np.full(5, 0.7), np.array([1.0, -1.0, 2.0, 0.0, 0.5]))
        assert math.isnan(got["Corr"])
        assert math.isnan(regression_metrics(np.array([1.0, 2.0]), np.array([3.0, 3.0]))["Corr"])
        single = regression_metrics(np.array([1.0]), np.array([2.0]))
        assert math.isnan(single["Corr"])
        assert single["MAE"] == pytest.approx(1.0)


def test_non0_excludes_zero_labels() -> None:
    # Only the t == 0 samples are wrong under "> 0"; Non0 ignores them entirely.
    t = np.array([0.0, 0.0, 1.0, -1.0])
    p = np.array([1.0, 2.0, 1.0, -1.0])
    got = regression_metrics(p, t)
    assert got["Non0_acc_2"] == 1.0
    assert got["Non0_F1_score"] == 1.0
    assert got["Has0_acc_2"] == 1.0  # p >= 0 matches t >= 0 for the zeros too
    p2 = np.array([-1.0, -2.0, 1.0, -1.0])  # now Has0 is wrong on the zeros, Non0 is not
    got2 = regression_metrics(p2, t)
    assert got2["Has0_acc_2"] == 0.5
    assert got2["Non0_acc_2"] == 1.0


def test_non0_nan_when_all_labels_zero() -> None:
    got = regression_metrics(np.array([0.5, -0.5]), np.zeros(2))
    assert math.isnan(got["Non0_acc_2"]) and math.isnan(got["Non0_F1_score"])
    assert got["Has0_acc_2"] == 0.5


def test_regression_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        regression_metrics(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        regression_metrics(np.zeros(3), np.zeros(4))


def test_weighted_f1_hand_example() -> None:
    # truth: 0 0 0 1 1 ; pred: 0 1 1 1 0
    # class 0: support 3, predicted 2, TP 1 -> F1 = 2/5
    # class 1: support 2, predicted 3, TP 1 -> F1 = 2/5
    # class 2: only predicted (support 0) -> weight 0
    y_true = np.array([0, 0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    assert weighted_f1(y_true, y_pred) == pytest.approx((3 * 0.4 + 2 * 0.4) / 5)
    # truth: 0 0 0 1 ; pred: 0 0 2 1
    # class 0: support 3, predicted 2, TP 2 -> F1 = 4/5; class 1: F1 = 1; class 2: weight 0
    # weighted: (3 * .8 + 1 * 1) / 4 = 3.4 / 4
    assert weighted_f1(np.array([0, 0, 0, 1]), np.array([0, 0, 2, 1])) == pytest.approx(0.85)
    # class never predicted: F1 0 by zero-division convention
    assert weighted_f1(np.array([0, 1]), np.array([0, 0])) == pytest.approx((1 * 2 / 3) / 2)


# IEMOCAP, N = 4 (labels as class indices, predictions = argmax of the two logits)
#   Neutral: t 1 0 0 1, p 1 0 1 1 -> acc 3/4; cls1 sup 2 pred 3 TP 2 -> .8,
#            cls0 sup 2 pred 1 TP 1 -> 2/3; F1 = (2*.8 + 2*2/3)/4 = 11/15
#   Happy:   t 0 0 0 0, p 0 0 0 0 -> acc 1, F1 1 (class 1 absent everywhere, no weight)
#   Sad:     t 1 1 0 0, p 0 0 1 1 -> acc 0, F1 0
#   Angry:   t 0 1 0 0, p 0 0 0 1 -> acc 1/2; cls0 sup 3 pred 3 TP 2 -> 2/3,
#            cls1 sup 1 pred 1 TP 0 -> 0; F1 = 3*(2/3)/4 = 1/2
#   Mean_acc = (.75 + 1 + 0 + .5)/4 = .5625; Mean_F1 = (11/15 + 1 + 0 + .5)/4 = 67/120
IEMO_LABELS = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
IEMO_PREDS = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]])
IEMO_EXPECTED = {
    "Neutral_acc": 0.75,
    "Neutral_F1": 11 / 15,
    "Happy_acc": 1.0,
    "Happy_F1": 1.0,
    "Sad_acc": 0.0,
    "Sad_F1": 0.0,
    "Angry_acc": 0.5,
    "Angry_F1": 0.5,
    "Mean_acc": 0.5625,
    "Mean_F1": 67 / 120,
}


def _iemo_logits() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 4))  # logit of the losing class
    logits = np.stack([base, base], axis=-1)
    rows, cols = np.indices(IEMO_PREDS.shape)
    logits[rows, cols, IEMO_PREDS] += 1.0 + rng.uniform(size=(4, 4))
    return logits


def test_iemocap_metrics_hand_example() -> None:
    logits = _iemo_logits()
    for lg in (logits, logits.reshape(4, 8), torch.tensor(logits.reshape(4, 8))):
        got = iemocap_metrics(lg, IEMO_LABELS)
        assert set(got) == set(IEMO_EXPECTED)
        for name, value in IEMO_EXPECTED.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name
    one_hot = np.eye(2)[IEMO_LABELS]  # (N, 4, 2)
    got = iemocap_metrics(torch.tensor(logits), torch.tensor(one_hot))
    assert got == pytest.approx(IEMO_EXPECTED)


def test_iemocap_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        iemocap_metrics(np.zeros((4, 6)), IEMO_LABELS)
    with pytest.raises(ValueError):
        iemocap_metrics(_iemo_logits(), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        iemocap_metrics(_iemo_logits(), IEMO_LABELS[:3])


def test_metric_modes() -> None:
    assert metric_mode("MAE") == "min"
    assert metric_mode("loss") == "min"
    for name in REGRESSION_METRICS:
        assert metric_mode(name) == ("min" if name == "MAE" else "max")
    for emo in IEMOCAP_EMOTIONS:
        assert METRIC_MODES[f"{emo}_acc"] == "max" and METRIC_MODES[f"{emo}_F1"] == "max"
    assert metric_mode("Mean_F1") == "max" and metric_mode("Mean_acc") == "max"
    with pytest.raises(ValueError, match="loss"):
        metric_mode("Acc_2")
