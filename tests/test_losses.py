"""MJS regulariser and training loss: properties of the generalised JSD and the authors' variant."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ucrn.losses import mjs_divergence, task_loss, training_loss


def _reps(m: int, b: int = 4, k: int = 3, d: int = 8, scale: float = 2.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(b, k, d, generator=g) for _ in range(m)]


def _jsd_reference(reps, tau: float = 1.0) -> float:
    """Direct float64 formula: H(mean P) - mean H(P) per (sample, step), then averaged."""
    x = np.stack([r.detach().double().numpy() for r in reps]) / tau  # (M, B, k, d)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)

    def entropy(q: np.ndarray) -> np.ndarray:
        return -(q * np.log(q)).sum(axis=-1)

    return float((entropy(probs.mean(axis=0)) - entropy(probs).mean(axis=0)).mean())


def _authors_reference(reps) -> float:
    """Three modalities: pairwise 1/4 * sum (e^p - e^q)(p - q) / (k * batch), averaged over
    the pairs (float64); reps are (B, k, d)."""
    xs = [r.detach().double().numpy() for r in reps]
    terms = [
        0.25 * ((np.exp(p) - np.exp(q)) * (p - q)).sum() / (p.shape[1] * p.shape[0])
        for p, q in itertools.combinations(xs, 2)
    ]
    return float(np.mean(terms))


def test_zero_for_identical_inputs() -> None:
    x = _reps(1)[0]
    for m in (2, 3, 4):
        assert mjs_divergence([x.clone() for _ in range(m)]).item() == pytest.approx(0, abs=1e-6)


def test_single_modality_is_zero() -> None:
    (x,) = _reps(1)
    out = mjs_divergence([x])
    assert out.item() == 0.0 and out.dtype == torch.float32 and out.dim() == 0
    assert mjs_divergence([x], variant="authors").item() == 0.0


@pytest.mark.parametrize("m", [2, 3])
def test_symmetric_under_permutation(m: int) -> None:
    reps = _reps(m, seed=1)
    ref = mjs_divergence(reps).item()
    for perm in itertools.permutations(range(m)):
        assert mjs_divergence([reps[i] for i in perm]).item() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("m", [2, 3])
def test_within_zero_and_log_m(m: int) -> None:
    for seed in range(5):
        for scale in (0.1, 1.0, 10.0):
            value = mjs_divergence(_reps(m, seed=seed, scale=scale)).item()
            assert 0.0 <= value <= math.log(m) + 1e-6


def test_log2_limit_for_disjoint_one_hot() -> None:
    d = 6
    a = torch.zeros(2, 3, d)
    b = torch.zeros(2, 3, d)
    a[..., 0] = 60.0
    b[..., 1] = 60.0
    assert mjs_divergence([a, b]).item() == pytest.approx(math.log(2), abs=1e-3)
    c = torch.zeros(2, 3, d)
    c[..., 2] = 60.0
    assert mjs_divergence([a, b, c]).item() == pytest.approx(math.log(3), abs=1e-3)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_matches_float64_formula(m: int, tau: float) -> None:
    reps = _reps(m, b=5, k=4, d=16, seed=m)
    got = mjs_divergence(reps, tau=tau).item()
    assert got == pytest.approx(_jsd_reference(reps, tau), rel=1e-5, abs=1e-6)


def test_gradients_flow() -> None:
    reps = [r.requires_grad_() for r in _reps(3, seed=2)]
    mjs_divergence(reps).backward()
    for r in reps:
        assert r.grad is not None
        assert torch.isfinite(r.grad).all()
        assert r.grad.abs().sum() > 0


def test_bf16_inputs_computed_in_float32() -> None:
    reps = _reps(3, seed=3)
    out = mjs_divergence([r.bfloat16() for r in reps])
    assert out.dtype == torch.float32
    ref = _jsd_reference([r.bfloat16().float() for r in reps])
    assert out.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_stable_for_extreme_logits() -> None:
    reps = [r.requires_grad_() for r in _reps(3, scale=1e4, seed=4)]
    out = mjs_divergence(reps)
    out.backward()
    assert math.isfinite(out.item()) and 0.0 <= out.item() <= math.log(3) + 1e-6
    assert all(torch.isfinite(r.grad).all() for r in reps)


def test_authors_variant_matches_pairwise_formula() -> None:
    reps = _reps(3, b=4, k=5, d=7, scale=0.5, seed=5)
    got = mjs_divergence(reps, variant="authors").item()
    assert got == pytest.approx(_authors_reference(reps), rel=1e-5)
    # Their call on their (k, B, d) stack, then / batch as their forward does.
    p, q = (r.transpose(0, 1) for r in reps[:2])
    mid = (p + q) / 2
    kl = 0.5 * (
        F.kl_div(mid, p, reduction="batchmean", log_target=True)
        + F.kl_div(mid, q, reduction="batchmean", log_target=True)
    ) / p.shape[1]
    single = 0.25 * ((p.exp() - q.exp()) * (p - q)).sum() / (p.shape[0] * p.shape[1])
    assert kl.item() == pytest.approx(single.item(), rel=1e-5)


def test_authors_variant_hand_computed() -> None:
    """Hand-worked values of the authors' arithmetic, k = 2 (theirs divides by k, not only B)."""
    e = math.exp
    # two modalities, B = 1, k = 2, d = 1: softmax over the k steps first
    p = torch.tensor([[[0.0], [math.log(3.0)]]])  # softmax over k -> (1/4, 3/4)
    q = torch.zeros(1, 2, 1)  # -> (1/2, 1/2)
    want = 0.25 * ((e(0.25) - e(0.5)) * (0.25 - 0.5) + (e(0.75) - e(0.5)) * (0.75 - 0.5)) / 2
    assert mjs_divergence([p, q], variant="authors").item() == pytest.approx(want, rel=1e-6)
    # the same with k = 1: every softmax is 1, the term is 0 (their quirk)
    assert mjs_divergence([p[:, :1], q[:, :1]], variant="authors").item() == 0.0
    # three modalities, B = 2, k = 2, d = 1: raw values, / (k * B), mean of three pairs
    a = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]])
    b = torch.zeros(2, 2, 1)
    c = torch.tensor([[[0.0], [0.0]], [[0.0], [-1.0]]])
    ab = 0.25 * (e(1) - 1) * 1 / 4
    bc = 0.25 * (1 - e(-1)) * 1 / 4
    ca = 0.25 * ((1 - e(1)) * -1 + (e(-1) - 1) * -1) / 4
    want3 = (ab + bc + ca) / 3
    assert mjs_divergence([a, b, c], variant="authors").item() == pytest.approx(want3, rel=1e-6)


def test_authors_variant_two_modalities() -> None:
    """k = 1 (the default temp_proj): identically 0; k > 1: softmax over the steps, not 0."""
    assert mjs_divergence(_reps(2, k=1, seed=6), variant="authors").item() == 0.0
    assert mjs_divergence(_reps(2, k=3, seed=6), variant="authors").item() > 0.0


def test_unknown_variant_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"'kl'.*jsd.*authors"):
        mjs_divergence(_reps(2), variant="kl")
    with pytest.raises(ValueError):
        mjs_divergence([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)])
    with pytest.raises(ValueError):
        mjs_divergence([])
    with pytest.raises(ValueError):
        mjs_divergence(_reps(2), tau=0.0)


def test_training_loss() -> None:
    reps = _reps(3, seed=7)
    pred = torch.tensor([[0.5], [-1.0], [2.0], [0.0]], requires_grad=True)
    label = torch.tensor([1.0, -1.0, 1.0, 0.5])  # (B,) vs (B, 1): must not broadcast
    l1 = (0.5 + 0.0 + 1.0 + 0.5) / 4

    total, loss, mjs = training_loss(pred, label, reps, "regression", jsd_weight=0.0)
    assert total.item() == loss.item() == pytest.approx(l1) and mjs.item() == 0.0

    total, loss, mjs = training_loss(pred, label, reps, "regression", jsd_weight=0.3)
    assert mjs.item() == pytest.approx(mjs_divergence(reps).item())
    assert total.item() == pytest.approx(l1 + 0.3 * mjs.item())
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()

    _, _, mjs_auth = training_loss(pred, label, reps, "regression", 1.0, variant="authors")
    assert mjs_auth.item() == pytest.approx(_authors_reference(reps), rel=1e-5)

    with pytest.raises(ValueError):
        training_loss(pred, label[:3], reps, "regression", jsd_weight=1.0)
    with pytest.raises(ValueError):
        training_loss(pred, label, reps, "regression", jsd_weight=1.0, variant="nope")


def test_iemocap_task_loss_is_cross_entropy_per_emotion() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 3.0]])
    labels = torch.tensor([[0, 1, 0, 1]])
    e2 = math.exp(2)  # pairs (2, 0)->0, (0, 1)->1, (0, 0)->0, (3, 3)->1
    want = -np.mean([math.log(e2 / (e2 + 1)), math.log(math.e / (1 + math.e)),
                     math.log(0.5), math.log(0.5)])
    assert task_loss(logits, labels, "iemocap").item() == pytest.approx(want, rel=1e-6)
