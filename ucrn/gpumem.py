"""GPU memory of one trial: what the tensors took, what the allocator held, what the process used.

Why three numbers: how many trials fit on one GPU is decided by the process's whole use
(CUDA context, the allocator's cache, CUDA-graph pools), not by the tensors alone. Peaks are
reset when a trial starts, so a process that runs several trials in turn (Tune's reused
actors) reports each trial's own.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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
    except Exception:  # noqa: BLE001 - optional: any NVML failure means "unknown"
        return math.nan
    used = [p.usedGpuMemory for p in procs if p.pid == os.getpid()]
    return float(used[0]) if used and used[0] is not None else math.nan


class GpuMemory:
    """Resets the device's peak counters (and frees the cache an earlier trial left) at
    construction; `read()` gives the peaks since then as KEYS -> MiB (NaN on a CPU)."""

    def __init__(self, device: torch.device, cuda: Any = None):
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.device, self.cuda = device, cuda
        self._process_peak = math.nan
        if device.type == "cuda":
            self.cuda.empty_cache()
            self.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return dict.fromkeys(KEYS, math.nan)
        now = process_device_bytes(self.device, self.cuda) / MiB
        if math.isfinite(now):  # the driver gives the current use: keep the largest seen
            self._process_peak = now if math.isnan(self._process_peak) else max(
                self._process_peak, now)
        return {"peak_gpu_mem_mb": self.cuda.max_memory_allocated(self.device) / MiB,
                "peak_gpu_reserved_mb": self.cuda.max_memory_reserved(self.device) / MiB,
                "gpu_process_mb": self._process_peak}
