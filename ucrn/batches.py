"""A data split kept in host memory, moved to the training device one batch at a time.

Why: a split copied whole onto a GPU costs its full size per trial (MOSEI-unaligned is 6.35 GB
of float32), so trials packed on one GPU would each hold a copy of the same data. Here the
host tensors share memory with the loaded arrays (on a Ray node: the object store's one copy),
and only the rows of the current batch travel: gathered on the host into page-locked
(pinned) memory, then copied without blocking the host, so the copy overlaps the previous
step's kernels. On the CPU the same code runs; the move is then a no-op.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ucrn.data import Split

Inputs = tuple[Tensor | None, Tensor | None, Tensor | None]  # (text, audio, vision), batch-first


def host_tensor(a: np.ndarray) -> Tensor:
    """The array as a CPU tensor sharing its memory. Arrays from Ray's object store are
    read-only; nothing here ever writes to them, so torch's warning about that is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(a)


@dataclass
class HostSplit:
    """One split as host tensors (inputs of the modalities the model uses, labels shaped for
    the task) and the device its batches go to."""

    inputs: Inputs
    labels: Tensor  # (N, 1) float, or (N,) long for IEMOCAP
    n: int
    device: torch.device

    @classmethod
    def from_split(cls, split: Split, modalities: str, task: str,
                   device: torch.device) -> HostSplit:
        def put(a: np.ndarray, key: str) -> Tensor | None:
            return host_tensor(a) if key in modalities else None

        labels = host_tensor(split.labels)  # a small copy below: (N,) or (N, 4) values
        labels = labels.long() if task == "iemocap" else labels.float().view(-1, 1)
        return cls((put(split.text, "l"), put(split.audio, "a"), put(split.vision, "v")),
                   labels, len(split), torch.device(device))

    @property
    def pinned(self) -> bool:
        """Batches are staged in page-locked memory when they go to a CUDA device."""
        return self.device.type == "cuda"

    def _gather(self, x: Tensor, idx: Tensor) -> Tensor:
        out = torch.empty((idx.numel(), *x.shape[1:]), dtype=x.dtype, pin_memory=self.pinned)
        return torch.index_select(x, 0, idx, out=out)

    def _move(self, x: Tensor) -> Tensor:
        # from pinned memory the copy is asynchronous, and torch's pinned-memory cache keeps
        # the staging block until the copy has run, so it is never overwritten early
        return x if self.device.type == "cpu" else x.to(self.device, non_blocking=True)

    def batch(self, idx: Tensor) -> tuple[Inputs, Tensor]:
        """The rows `idx` (a host index tensor) on the device: (inputs, labels)."""
        idx = idx.cpu()
        return (tuple(self._move(self._gather(x, idx)) if x is not None else None
                      for x in self.inputs),
                self._move(self._gather(self.labels, idx)))

    def batch_into(self, idx: Tensor, static: tuple[Sequence[Tensor | None], Tensor]) -> None:
        """The rows `idx` written into existing device tensors (a CUDA graph's input buffers),
        in stream order: a replay queued after this copy reads the new batch."""
        idx = idx.cpu()
        inputs, labels = static
        for x, dst in zip(self.inputs, inputs):
            if x is not None:
                dst.copy_(self._gather(x, idx), non_blocking=True)
        labels.copy_(self._gather(self.labels, idx), non_blocking=True)

    def _slice(self, x: Tensor, start: int, stop: int) -> Tensor:
        if not self.pinned:
            return x[start:stop]  # a view: no copy on the CPU
        out = torch.empty((len(x[start:stop]), *x.shape[1:]), dtype=x.dtype, pin_memory=True)
        return out.copy_(x[start:stop])

    def rows(self, start: int, stop: int) -> tuple[Inputs, Tensor]:
        """Rows [start, stop) on the device, in order (evaluation, scoring)."""
        return (tuple(self._move(self._slice(x, start, stop)) if x is not None else None
                      for x in self.inputs),
                self._move(self._slice(self.labels, start, stop)))
