"""Training losses: the task loss (L1, or cross-entropy for IEMOCAP) plus the multimodal
Jensen-Shannon (MJS) regulariser.

MJS pulls the M refined unimodal representations towards a common latent space
(docs/model.md). The default ``"jsd"`` variant is the generalised Jensen-Shannon
divergence with equal weights; ``"authors"`` reproduces what the original code computes
and exists only to reproduce their numbers.
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


def _authors_pair(p: Tensor, q: Tensor) -> Tensor:
    """One pair term of the authors' code on their (k, B, d) stack; ours is (B, k, d).

    Their ``kl_div(m, p, 'batchmean', log_target=True)`` gets the raw mean m = (p + q) / 2 as
    log-probabilities, so 0.5 * (KL(p||m) + KL(q||m)) = 1/4 * sum (e^p - e^q)(p - q), and
    'batchmean' divides that sum by the first axis of their stack: k, not the batch.
    """
    k = p.shape[1] if p.dim() == 3 else 1
    return 0.25 * ((p.exp() - q.exp()) * (p - q)).sum() / k


def _authors_mjs(reps: list[Tensor]) -> Tensor:
    """The authors' MultiJSD: for three modalities the mean of the three raw pair terms; for
    two, one term on softmaxed inputs, where their ``F.softmax`` without ``dim`` runs over
    the first axis of (k, B, d), i.e. over the k steps (so the term is 0 when k = 1);
    either way divided by the batch size once more."""
    batch = reps[0].shape[0] if reps[0].dim() > 1 else 1
    reps = [r.float() for r in reps]
    if len(reps) == 2:
        p, q = (F.softmax(r, dim=1 if r.dim() == 3 else 0) for r in reps)
        return _authors_pair(p, q) / batch
    terms = [_authors_pair(p, q) for p, q in combinations(reps, 2)]
    return torch.stack(terms).mean() / batch


def mjs_divergence(reps: Sequence[Tensor], variant: str = "jsd", tau: float = 1.0) -> Tensor:
    """Multimodal Jensen-Shannon regulariser over M tensors of shape (B, k, d); scalar, float32.

    ``"jsd"`` (default): per sample and step, P_m = softmax(x_m / tau) over the d features and
    JS = H(mean_m P_m) - mean_m H(P_m) (nats), averaged over batch and steps. It lies in
    [0, log M], is symmetric in the modalities and is 0 for a single modality.

    ``"authors"``: reproduction only, their arithmetic for every k (see `_authors_mjs`):
    M = 3: mean over the pairs of 1/4 * sum (e^p - e^q)(p - q) / (k * B) on the raw values;
    M = 2: the same single term on the values softmaxed over the k steps; M = 1: 0.
    """
    _check_variant(variant)
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    reps = _check_reps(reps)
    if len(reps) == 1:
        return _zero_like(reps[0])
    if variant == "jsd":
        return _generalised_jsd(reps, tau)
    return _authors_mjs(reps)


def task_loss(out: Tensor, labels: Tensor, task: str) -> Tensor:
    """L1 for sentiment regression; for IEMOCAP (B, 8) logits, cross-entropy of 4 two-way
    decisions. Computed in float32 whatever the autocast dtype."""
    if task == "iemocap":
        return F.cross_entropy(out.float().view(-1, 2), labels.view(-1))
    if out.numel() != labels.numel():
        raise ValueError(
            f"prediction has {out.numel()} elements but labels have {labels.numel()} "
            f"(shapes {tuple(out.shape)} and {tuple(labels.shape)})"
        )
    # flattened: a (B, 1) prediction against a (B,) label must not broadcast to (B, B)
    return F.l1_loss(out.float().reshape(-1), labels.float().reshape(-1))


def training_loss(out: Tensor, labels: Tensor, reps: Sequence[Tensor], task: str,
                  jsd_weight: float, variant: str = "jsd") -> tuple[Tensor, Tensor, Tensor]:
    """(task loss + jsd_weight * MJS, task loss, MJS); MJS is skipped when the weight is 0.
    No host sync, so a training step built on it can be captured as a CUDA graph."""
    if jsd_weight < 0:
        raise ValueError(f"jsd_weight must be >= 0, got {jsd_weight}")
    loss = task_loss(out, labels, task)
    if jsd_weight == 0:
        _check_variant(variant)
        return loss, loss, _zero_like(loss)
    mjs = mjs_divergence(reps, variant=variant)
    return loss + jsd_weight * mjs, loss, mjs
