"""A data split kept in host memory and moved to the training device one batch at a time,
so trials packed on one GPU never hold copies of the same data there."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ucrn.data import Split

# Why: a split copied whole onto a GPU costs its full size per trial (MOSEI-unaligned is
# 6.35 GB of float32). Here the host tensors share memory with the loaded arrays (on a Ray
# node: the object store's one copy), and only the rows of the current batch travel:
# gathered on the host into page-locked (pinned) memory, then copied without blocking the
# host, so the copy overlaps the previous step's kernels. On the CPU the same code runs;
# the move is then a no-op.

Inputs = tuple[Tensor | None, Tensor | None, Tensor | None]  # (text, audio, vision), batch-first


def host_tensor(a: np.ndarray) -> Tensor:
    """The array as a CPU tensor sharing its memory. Arrays from Ray's object store are
    read-only; nothing here ever writes to them, so torch's warning about that is noise.
    An array with a negative stride (a reversed view), which torch cannot share, is copied."""
    if any(st < 0 for st in a.strides):
        a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(a)


def _index(idx: Tensor) -> Tensor:
    """`idx` as host row indices (a 1-D int64/int32 tensor); anything else is one line."""
    if not isinstance(idx, Tensor):
        raise TypeError(f"batch rows: a {type(idx).__name__}; expected a 1-D int64 or int32 "
                        f"tensor of row indices")
    if idx.dtype not in (torch.int64, torch.int32) or idx.dim() > 1:
        raise TypeError(f"batch rows: a {idx.dim()}-D {str(idx.dtype).replace('torch.', '')} "
                        f"tensor; expected a 1-D int64 or int32 tensor of row indices")
    return idx.cpu().reshape(-1)


def _out_of_range(idx: Tensor, n: int) -> IndexError:
    lo, hi = int(idx.min()), int(idx.max())  # only on the error path: no cost per step
    expected = f"indices in 0..{n - 1}" if n else "none: the split has no rows"
    return IndexError(f"batch rows {lo}..{hi}: out of range for a split of {n} rows "
                      f"(expected {expected})")


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

        n = len(split)
        for key, name in (("l", "text"), ("a", "audio"), ("v", "vision")):
            a = split.modality(name)
            if key in modalities and (a.ndim != 3 or a.shape[0] != n or a.dtype != np.float32):
                raise ValueError(f"{name}: {a.dtype} of shape {a.shape}; expected float32 "
                                 f"(N, T, D) with N = {n}, the split's label rows")
        if task != "iemocap" and split.labels.size != n:
            raise ValueError(f"labels: shape {split.labels.shape}; expected one value per "
                             f"sample ({n},) for task {task}")
        labels = host_tensor(split.labels)  # a small copy below: (N,) or (N, 4) values
        labels = labels.long() if task == "iemocap" else labels.float().view(-1, 1)
        return cls((put(split.text, "l"), put(split.audio, "a"), put(split.vision, "v")),
                   labels, n, torch.device(device))

    @property
    def pinned(self) -> bool:
        """Batches are staged in page-locked memory when they go to a CUDA device."""
        return self.device.type == "cuda"

    def _gather(self, x: Tensor, idx: Tensor) -> Tensor:
        out = torch.empty((idx.numel(), *x.shape[1:]), dtype=x.dtype, pin_memory=self.pinned)
        try:
            return torch.index_select(x, 0, idx, out=out)
        except (IndexError, RuntimeError):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
                raise _out_of_range(idx, self.n) from None
            raise

    def _move(self, x: Tensor) -> Tensor:
        # from pinned memory the copy is asynchronous, and torch's pinned-memory cache keeps
        # the staging block until the copy has run, so it is never overwritten early
        return x if self.device.type == "cpu" else x.to(self.device, non_blocking=True)

    def batch(self, idx: Tensor) -> tuple[Inputs, Tensor]:
        """The rows `idx` (a host index tensor) on the device: (inputs, labels)."""
        idx = _index(idx)
        return (tuple(self._move(self._gather(x, idx)) if x is not None else None
                      for x in self.inputs),
                self._move(self._gather(self.labels, idx)))

    def batch_into(self, idx: Tensor, static: tuple[Sequence[Tensor | None], Tensor]) -> None:
        """The rows `idx` written into existing device tensors (a CUDA graph's input buffers),
        in stream order: a replay queued after this copy reads the new batch. The buffers
        must be exactly the batch's (one per modality, None where the split has none, same
        shape and dtype): a buffer left out or broadcast into would replay stale rows."""
        idx = _index(idx)
        inputs, labels = static
        if len(inputs) != len(self.inputs):
            raise ValueError(f"batch_into: {len(inputs)} input buffers; expected "
                             f"{len(self.inputs)} (text, audio, vision; None where unused)")
        for name, x, dst in zip(("text", "audio", "vision", "labels"),
                                (*self.inputs, self.labels), (*inputs, labels)):
            if x is None and dst is None:
                continue
            want = (idx.numel(), *x.shape[1:]) if x is not None else None
            if x is None or dst is None or tuple(dst.shape) != want or dst.dtype != x.dtype:
                got = "None" if dst is None else f"{str(dst.dtype).replace('torch.', '')} " \
                    f"{tuple(dst.shape)}"
                exp = "None" if x is None else f"{str(x.dtype).replace('torch.', '')} {want}"
                raise ValueError(f"batch_into: the {name} buffer is {got}; expected {exp}")
        for x, dst in zip((*self.inputs, self.labels), (*inputs, labels)):
            if x is not None:
                dst.copy_(self._gather(x, idx), non_blocking=True)

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
