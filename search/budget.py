"""--epoch-budget: a search that stops once it has trained a given number of epochs in all.

Why a budget in epochs: methods that stop trials early (ASHA) run more trials for the same
compute, so comparing search methods, or planning a search, is fair only at equal epochs.
Epochs re-sent from a checkpoint after a restart (`replayed_epoch`) are not counted again.
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper


class EpochBudget(Stopper):
    """Tune stopper: no trial is stopped on its own; all stop at `budget` epochs in total.
    Trials in flight when the budget is reached end with the epoch they are training, so
    a search may overshoot by at most one epoch per concurrent trial."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.seen: set[tuple[str, int]] = set()  # Tune repeats a trial's last result at its end

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if "epoch" in result:
            self.seen.add((trial_id, int(result["epoch"])))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget
