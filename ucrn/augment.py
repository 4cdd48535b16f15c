"""Training-time input augmentation: modality dropout and input noise (the Trainer's
`modality_dropout` and `input_noise`), drawn on the device so a captured step can hold it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ucrn.batches import Inputs
from ucrn.conditions import feature_std, noise_scales, own_keys
from ucrn.data import Split
from ucrn.model import MODALITY_KEYS


def modality_keep_mask(batch: int, m: int, p: float, device: torch.device | str,
                       generator: torch.Generator | None = None) -> Tensor:
    """(batch, m) bool, False where a sample's modality is dropped: per sample, with
    probability p, one of the m modalities chosen uniformly; so never all when m > 1.
    Device tensors only, no host sync (a training step may be a CUDA graph)."""
    drop = torch.rand(batch, device=device, generator=generator) < p  # (B,)
    which = torch.randint(0, m, (batch,), device=device, generator=generator)  # (B,)
    chosen = which[:, None] == torch.arange(m, device=device)  # (B, m)
    return ~(chosen & drop[:, None])


class TrainingAugment:
    """modality_dropout and input_noise applied to a training batch (text, audio, vision):
    noise first, then the drop, so a dropped modality is exactly zero as in `missing`.
    Torch's default RNG on the device, so a captured step draws fresh numbers each replay."""

    def __init__(self, modalities: str, dropout: float, noise: float, train: Split,
                 device: torch.device):
        self.keys = own_keys(modalities)
        self.dropout = dropout if len(self.keys) > 1 else 0.0  # one modality: never drop it
        self.scales = (noise_scales(feature_std(train, self.keys), self.keys, noise, device)
                       if noise > 0 else {})

    @property
    def active(self) -> bool:
        return self.dropout > 0 or bool(self.scales)

    def __call__(self, inputs: Sequence[Tensor | None]) -> Inputs:
        out = list(inputs)
        for k, scale in self.scales.items():
            i = MODALITY_KEYS.index(k)
            out[i] = out[i] + torch.randn_like(out[i]) * scale
        if self.dropout > 0:
            x0 = out[MODALITY_KEYS.index(self.keys[0])]
            keep = modality_keep_mask(x0.shape[0], len(self.keys), self.dropout, x0.device)
            for j, k in enumerate(self.keys):
                i = MODALITY_KEYS.index(k)
                out[i] = torch.where(keep[:, j, None, None], out[i], out[i].new_zeros(()))
        return tuple(out)


def training_augment(modalities: str, dropout: float, noise: float, train: Split,
                     device: torch.device) -> Callable[[Sequence[Tensor | None]], Inputs] | None:
    """The Trainer's input augmentation, or None when it would change nothing."""
    if not (0 <= dropout < 1 and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"modality_dropout={dropout}, input_noise={noise}: expected a "
                         f"probability in [0, 1) and a finite number >= 0")
    aug = TrainingAugment(modalities, dropout, noise, train, device)
    return aug if aug.active else None
