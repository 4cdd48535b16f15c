"""Training losses: L1 regression loss plus the multimodal Jensen-Shannon (MJS) regulariser.

MJS pulls the M refined unimodal representations towards a common latent space
(see ``spec/ucrn-model.md``). The default ``"jsd"`` variant is the generalised
Jensen-Shannon divergence with equal weights; ``"authors"`` reproduces what the original
code computes and exists only to reproduce their numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor

MJS_VARIANTS: tuple[str, ...] = ("jsd", "authors")


def _check_reps(reps: Sequence[Tensor]) -> list[Tensor]:
    """Validate the modality list early so shape bugs are not hidden by broadcasting."""
    reps = list(reps)
    if not reps:
        raise ValueError("mjs_divergence needs at least one representation")
    shape = reps[0].shape
    for i, r in enumerate(reps):
        if r.shape != shape:
            raise ValueError(
                f"all representations must share one shape; rep 0 is {tuple(shape)}, "
                f"rep {i} is {tuple(r.shape)}"
            )
        if r.dim() < 1 or r.shape[-1] == 0:
            raise ValueError(f"representations need a non-empty feature axis, got {tuple(shape)}")
    return reps


def _check_variant(variant: str) -> None:
    """Reject typos even when MJS is switched off, so a bad config never passes silently."""
    if variant not in MJS_VARIANTS:
        raise ValueError(f"unknown MJS variant {variant!r}; choices: {', '.join(MJS_VARIANTS)}")


def _zero_like(x: Tensor) -> Tensor:
    """A float32 scalar zero on ``x``'s device, for the cases where MJS is 0 by definition."""
    return torch.zeros((), dtype=torch.float32, device=x.device)


def _generalised_jsd(reps: list[Tensor], tau: float) -> Tensor:
    """H(mean_m P_m) - mean_m H(P_m) in nats, averaged over all leading axes (batch, steps)."""
    m = len(reps)
    # float32 even for bf16/fp16 inputs: the entropy difference cancels badly in low precision.
    logp = torch.stack([F.log_softmax(r.float() / tau, dim=-1) for r in reps], dim=0)
    prob = logp.exp()
    # log of the mixture, computed stably in log space (never log(0)).
    log_mix = torch.logsumexp(logp, dim=0) - math.log(m)
    h_mix = -(log_mix.exp() * log_mix).sum(dim=-1)
    h_each = -(prob * logp).sum(dim=-1).mean(dim=0)
    # Rounding can leave tiny negatives where the distributions agree; JS is >= 0 by definition.
    js = (h_mix - h_each).clamp_min(0.0)
    return js.mean()


def _authors_pairwise(reps: list[Tensor]) -> Tensor:
    """Pairwise term of the authors' code: 1/4 * sum (e^p - e^q)(p - q) / batch, pair-averaged.

    Their ``kl_div`` receives the raw mean (p + q) / 2 as log-probabilities with
    ``log_target=True``; 0.5 * (KL(p||m) + KL(q||m)) then collapses to this expression.
    """
    batch = reps[0].shape[0] if reps[0].dim() > 1 else 1
    terms = []
    for p, q in combinations([r.float() for r in reps], 2):
        terms.append(0.25 * ((p.exp() - q.exp()) * (p - q)).sum() / batch)
    return torch.stack(terms).mean()


def mjs_divergence(reps: Sequence[Tensor], variant: str = "jsd", tau: float = 1.0) -> Tensor:
    """Multimodal Jensen-Shannon regulariser over M tensors of shape (B, k, d); scalar, float32.

    ``"jsd"`` (default): per sample and step, P_m = softmax(x_m / tau) over the d features and
    JS = H(mean_m P_m) - mean_m H(P_m) (nats), averaged over batch and steps. It lies in
    [0, log M], is symmetric in the modalities and is 0 for a single modality.

    ``"authors"``: reproduction only. For every pair (p, q) of the raw representations,
    1/4 * sum over features and steps of (e^p - e^q)(p - q), divided by the batch size, then
    averaged over the pairs. Quirk: with exactly two modalities the authors' code softmaxes
    over a length-1 (time) axis, so every value becomes 1 and the term is identically 0; this
    variant therefore returns 0 for M == 2 (and for M == 1), as their code does.
    """
    _check_variant(variant)
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    reps = _check_reps(reps)
    if variant == "jsd":
        if len(reps) == 1:
            return _zero_like(reps[0])
        return _generalised_jsd(reps, tau)
    if len(reps) <= 2:
        return _zero_like(reps[0])
    return _authors_pairwise(reps)


def total_loss(
    pred: Tensor,
    label: Tensor,
    reps: Sequence[Tensor],
    jsd_weight: float,
    variant: str = "jsd",
) -> tuple[Tensor, Tensor]:
    """Return (L1(pred, label) + jsd_weight * MJS, MJS); MJS is skipped when the weight is 0.

    ``pred`` and ``label`` are flattened (same element count required) so that a (B, 1)
    prediction against a (B,) label cannot silently broadcast to (B, B).
    """
    if jsd_weight < 0:
        raise ValueError(f"jsd_weight must be >= 0, got {jsd_weight}")
    if pred.numel() != label.numel():
        raise ValueError(
            f"pred has {pred.numel()} elements but label has {label.numel()} "
            f"(shapes {tuple(pred.shape)} and {tuple(label.shape)})"
        )
    l1 = F.l1_loss(pred.float().reshape(-1), label.float().reshape(-1))
    if jsd_weight == 0:
        _check_variant(variant)
        return l1, _zero_like(l1)
    mjs = mjs_divergence(reps, variant=variant)
    return l1 + jsd_weight * mjs, mjs
