"""GPU memory of one trial: what its tensors took, what torch's allocator held, and what the
process used as the driver sees it, each reset when the trial starts."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Why three numbers: how many trials fit on one GPU is decided by the process's whole use
# (CUDA context, the allocator's cache, CUDA-graph pools), not by the tensors alone. Peaks
# are reset when a trial starts, so a process that runs several trials in turn (Tune's
# reused actors) reports each trial's own.

MiB = 2**20
# column names of trials.parquet (declared in search/schema.py, which imports no torch)
KEYS: tuple[str, ...] = ("peak_gpu_mem_mb", "peak_gpu_reserved_mb", "gpu_process_mb")


def process_device_bytes(device: torch.device, cuda: Any = None) -> float:
    """This process's memory on `device` as the driver reports it (NVML), or NaN where it
    cannot say (no nvidia-ml-py, no driver, or a PID namespace that hides the process)."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(cuda._get_nvml_device_index(device))
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        used = [getattr(p, "usedGpuMemory", None) for p in procs
                if getattr(p, "pid", None) == os.getpid()]
    except Exception:  # noqa: BLE001 - optional: any NVML failure means "unknown"
        return math.nan
    # byte counts (one per context of this process on the device: summed), or unknown:
    # None, or NVML's "not available" (2**64 - 1) where a binding passes it through; never
    # a negative or absurd number in trials.parquet
    if not used or not all(isinstance(u, int) and not isinstance(u, bool) and 0 <= u < 2**63
                           for u in used):
        return math.nan
    return float(sum(used))


class GpuMemory:
    """Resets the device's peak counters (and frees the cache an earlier trial left) at
    construction; `read()` gives the peaks since then as KEYS -> MiB (NaN on a CPU), and
    never less than what `carry` was given (the trial's peaks before a resume)."""

    def __init__(self, device: torch.device, cuda: Any = None):
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.device, self.cuda = device, cuda
        self._process_peak = math.nan
        self._carried: dict[str, float] = {}
        if device.type == "cuda":
            self.cuda.empty_cache()
            self.cuda.reset_peak_memory_stats(device)

    def carry(self, peaks: Any, where: str = "checkpoint key 'gpu_memory'") -> None:
        """Peaks an earlier run of the same trial reached (a checkpoint's `gpu_memory`):
        `read` reports at least these. None (a checkpoint from before) carries nothing."""
        if peaks is None:
            return
        if not isinstance(peaks, dict) or not all(
                k in KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in peaks.items()):
            raise ValueError(f"{where}: {type(peaks).__name__} {str(peaks)[:80]!r}; expected "
                             f"a dict of {', '.join(KEYS)} -> MiB")
        self._carried = {k: float(v) for k, v in peaks.items() if math.isfinite(v) and v >= 0}

    def read(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return dict.fromkeys(KEYS, math.nan)
        now = process_device_bytes(self.device, self.cuda) / MiB
        if math.isfinite(now):  # the driver gives the current use: keep the largest seen
            self._process_peak = now if math.isnan(self._process_peak) else max(
                self._process_peak, now)
        own = {"peak_gpu_mem_mb": self.cuda.max_memory_allocated(self.device) / MiB,
               "peak_gpu_reserved_mb": self.cuda.max_memory_reserved(self.device) / MiB,
               "gpu_process_mb": self._process_peak}
        for k, before in self._carried.items():
            own[k] = before if math.isnan(own[k]) else max(own[k], before)
        return own
