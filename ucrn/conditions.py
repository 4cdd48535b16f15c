"""Evaluation conditions (missing modalities, noise, dropped time steps) and scoring a model
under them; below training, whose robust_MAE uses them on the validation split."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ucrn.batches import HostSplit, Inputs
from ucrn.data import MODALITIES, Split
from ucrn.metrics import task_metrics
from ucrn.model import MODALITY_KEYS, UCRN

# ucrn/robustness.py builds its tables, files and command line on the same functions.

CONDITIONS: tuple[str, ...] = ("clean", "missing", "noise", "time_drop")
RANDOM_CONDITIONS: tuple[str, ...] = ("noise", "time_drop")
NOISE_SIGMAS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # x the training per-feature std
DROP_RATES: tuple[float, ...] = (0.1, 0.3, 0.5)  # probability that a time step is zeroed
CHUNK = 256  # samples per block of random draws: numbers independent of the batch size
STD_CHUNK_ELEMS = 1 << 20  # float64 elements per block of feature_std (8 MB)
_NAME = dict(zip(MODALITY_KEYS, MODALITIES))  # l -> text, a -> audio, v -> vision


def own_keys(modalities: str) -> str:
    """A model's modalities in the canonical l, a, v order (rows and draws use this order)."""
    bad = [m for m in modalities if m not in MODALITY_KEYS]
    if bad or not modalities:
        raise ValueError(f"modalities={modalities!r}: expected a non-empty subset of "
                         f"{MODALITY_KEYS!r}")
    return "".join(m for m in MODALITY_KEYS if m in modalities)


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: `modality` is "" (clean), modality keys ("l", "av") or
    "all"; `level` is 0, the noise sigma or the time-drop rate."""

    condition: str
    modality: str = ""
    level: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", float(self.level))  # 1 and 1.0: one seed, one row
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition {self.condition!r}: expected one of "
                             f"{', '.join(CONDITIONS)}")
        if not (math.isfinite(self.level) and self.level >= 0):
            raise ValueError(f"{self.condition}: level={self.level}: expected a finite "
                             f"number >= 0")
        if self.condition == "time_drop" and self.level > 1:
            raise ValueError(f"time_drop: level={self.level}: expected a rate in [0, 1]")

    @property
    def random(self) -> bool:
        """Random conditions are repeated; deterministic ones run once (repeat 0)."""
        return self.condition in RANDOM_CONDITIONS

    def keys(self, modalities: str) -> str:
        """The modality keys this condition changes, for a model with `modalities`."""
        own = own_keys(modalities)
        if self.condition == "clean":
            return ""
        keys = own if self.modality == "all" else self.modality
        if not keys or any(k not in own for k in keys):
            raise ValueError(f"{self.condition} on {self.modality!r}: not among the model's "
                             f"modalities {own!r}")
        return own_keys(keys)


def conditions(modalities: str, sigmas: Sequence[float] = NOISE_SIGMAS,
               rates: Sequence[float] = DROP_RATES) -> list[Condition]:
    """Every condition for a model with `modalities`: clean; each modality and each pair
    missing (never all: a model without input has nothing to say); noise and time_drop on
    each modality and on "all" ("all" only when there are several: else it repeats one)."""
    own = own_keys(modalities)
    subsets = [m for m in own] + [a + b for i, a in enumerate(own) for b in own[i + 1:]]
    out = [Condition("clean")]
    out += [Condition("missing", s) for s in subsets if len(s) < len(own)]
    targets = [*own, *(["all"] if len(own) > 1 else [])]
    out += [Condition("noise", t, float(s)) for t in targets for s in sigmas]
    out += [Condition("time_drop", t, float(r)) for t in targets for r in rates]
    return out


def condition_seed(seed: int, cond: Condition, repeat: int) -> int:
    """A generator seed from (seed, condition, repeat): stable across runs and machines."""
    text = f"{seed}|{cond.condition}|{cond.modality}|{cond.level!r}|{repeat}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ---- statistics ----------------------------------------------------------------------


def feature_std(split: Split, modalities: str = MODALITY_KEYS,
                chunk_elems: int = STD_CHUNK_ELEMS) -> dict[str, np.ndarray]:
    """Per modality key, the (D,) float64 std of each feature over samples and time steps
    (ddof 0). Blocks of samples merged with Chan's update: MOSEI-sized float32 arrays need
    no float64 copy, only blocks of about `chunk_elems` elements."""
    out: dict[str, np.ndarray] = {}
    for key in own_keys(modalities):
        x = split.modality(_NAME[key])  # (N, T, D)
        n_samples, steps, dim = x.shape
        rows = max(1, chunk_elems // max(1, steps * dim))
        count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
        for start in range(0, n_samples, rows):
            block = x[start:start + rows].reshape(-1, dim).astype(np.float64)
            k = block.shape[0]
            if k == 0:
                continue
            b_mean = block.mean(axis=0)
            block -= b_mean
            b_m2 = np.einsum("ij,ij->j", block, block)
            delta, total = b_mean - mean, count + k
            mean += delta * (k / total)
            m2 += b_m2 + delta * delta * (count * k / total)
            count = total
        out[key] = np.sqrt(m2 / count) if count else np.zeros(dim)
        flat = int((out[key] == 0).sum())
        if flat:
            warnings.warn(f"{_NAME[key]}: {flat} of {dim} features are constant in the "
                          f"training split (std 0): noise scaled by the std adds nothing "
                          f"to them", RuntimeWarning, stacklevel=2)
    return out


def noise_scales(stds: dict[str, np.ndarray], keys: str, sigma: float,
            device: torch.device) -> dict[str, Tensor]:
    """sigma x std per feature, multiplied in float64, as float32 (D,) tensors."""
    return {k: torch.as_tensor((sigma * stds[k]).astype(np.float32), device=device)
            for k in keys}


# ---- conditions on tensors -----------------------------------------------------------


def apply_condition(inputs: Sequence[Tensor | None], cond: Condition, modalities: str,
                    scales: dict[str, Tensor] | None = None,
                    generator: torch.Generator | None = None) -> Inputs:
    """`inputs` (text, audio, vision) of samples [s, s + B) with s a multiple of CHUNK, under
    `cond`. Changed modalities are new tensors (the inputs are never written: on the CPU
    they share memory with the data); the others are returned as they are. Random draws go
    block by block of CHUNK samples, each changed modality in l, a, v order."""
    out = list(inputs)
    keys = cond.keys(modalities)
    if not keys:
        return tuple(out)
    pos = {k: MODALITY_KEYS.index(k) for k in keys}
    if cond.condition == "missing":
        for i in pos.values():
            out[i] = torch.zeros_like(inputs[i])
        return tuple(out)
    if generator is None:
        raise ValueError(f"{cond.condition} needs a generator")
    if cond.condition == "noise" and (scales is None or any(k not in scales for k in keys)):
        raise ValueError(f"noise on {keys!r} needs the per-feature scales of {keys!r}")
    n = int(inputs[pos[keys[0]]].shape[0])
    pieces: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start in range(0, n, CHUNK):
        for k, i in pos.items():
            x = inputs[i][start:start + CHUNK]
            if cond.condition == "noise":
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                pieces[k].append(x + noise * scales[k])
            else:  # time_drop: whole steps, independently per sample and modality
                keep = torch.rand(x.shape[:2], generator=generator, device=x.device) >= cond.level
                pieces[k].append(torch.where(keep[..., None], x, torch.zeros((), dtype=x.dtype,
                                                                              device=x.device)))
    for k, i in pos.items():
        out[i] = torch.cat(pieces[k])
    return tuple(out)


@torch.inference_mode()
def predict_condition(model: UCRN, split: HostSplit, cond: Condition,
                      scales: dict[str, Tensor] | None = None, seed: int = 0, repeat: int = 0,
                      batch_size: int = 256, autocast: torch.dtype | None = None) -> Tensor:
    """Model outputs (N, output_dim), float32 on the host, for the split under `cond`.
    Samples are moved to the device and perturbed in groups of whole CHUNKs and then
    predicted `batch_size` at a time; the model's train/eval mode is restored afterwards."""
    device = split.device
    generator = None
    if cond.random:
        generator = torch.Generator(device=device)
        generator.manual_seed(condition_seed(seed, cond, repeat))
    group = max(1, batch_size // CHUNK) * CHUNK
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, split.n, group):
            part, labels = split.rows(start, start + group)
            xs = apply_condition(part, cond, model.cfg.modalities, scales, generator)
            rows = int(labels.shape[0])
            for b in range(0, rows, batch_size):
                batch = [x[b:b + batch_size] if x is not None else None for x in xs]
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    out, _ = model(*batch)
                outs.append(out.float())
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu()


def missing_one_mae(model: UCRN, split: HostSplit, batch_size: int = 256,
                    autocast: torch.dtype | None = None, task: str = "regression") -> float:
    """robust_MAE: the mean MAE over the conditions "each of the model's modalities zeroed
    in turn" (one modality: the MAE with it zeroed). One pass per modality."""
    labels = split.labels.numpy().reshape(-1)
    maes = [task_metrics(task, predict_condition(model, split, Condition("missing", k),
                                                 batch_size=batch_size, autocast=autocast
                                                 ).numpy().reshape(-1), labels)["MAE"]
            for k in own_keys(model.cfg.modalities)]
    return float(np.mean(maes))
