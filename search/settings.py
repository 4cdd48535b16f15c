"""What every trial of a run needs besides its sampled config, built once by the driver
from the flags and passed to the trials as an argument (never through globals or the
environment, which Ray's worker processes would not share)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialSettings:
    base: dict[str, Any]  # the fixed part of every trial's config (flags + the space's fixed values)
    workers: int  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float
    gpus_per_worker: float
    extra_resources: dict[str, float]  # custom Ray resources per trial, split over its workers
    max_failures: int  # retries of a failed trial (from its checkpoint)
    train_storage: str  # where Ray Train keeps each trial's run and checkpoints
    results_uri: str  # STORAGE/NAME
    save_models: bool  # re-training keeps each seed's selected weights
    retrain_of: str = ""  # re-training: the trial re-trained ("best" or its trial id)
    robustness_repeats: int = 0  # re-training: repeats of robustness conditions (0 = none)
    # tests only: a trial whose config has KEY == VALUE (compared as text) raises at start
    fail_if: dict[str, str] = field(default_factory=dict)

    def config(self, sampled: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, **sampled}

    def injected_fault(self, config: dict[str, Any]) -> str:
        hits = [f"{k}={v}" for k, v in self.fail_if.items() if str(config.get(k)) == str(v)]
        return ", ".join(hits)
