"""How a search spends its epochs: ASHA (one bracket, or Hyperband's several), every trial
to the end (fifo), or the 1-epoch baseline.

The 1-epoch baseline (Egele et al. 2023, "Is one epoch all you need for multi-fidelity
HPO?"): every sampled configuration is trained for one epoch; once all of them have been,
the `--keep` best by their first-epoch value are trained again to `--max-epochs`, and the
search's pick is the best of those. Its two phases are one Tune run: the searcher below
proposes the first-phase configurations, waits for their first epochs, then proposes the
kept ones again (through Optuna's queue, so the journal holds them as trials too); the
scheduler stops every first-phase trial after its first epoch. A kept configuration is
re-trained from its start (same seed, so its first epoch repeats): that costs `--keep`
epochs, and spares pausing trials, which would hold their places under the concurrency limit.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.flags import ONE_EPOCH, one_epoch_plan
from search.searchers import optuna_params


class OneEpochSearch(Searcher):
    """Phase 1: `first` configurations from the wrapped searcher. Phase 2, once all of them
    have ended: the `keep` best by their first-epoch value, proposed again. Then finished."""

    def __init__(self, searcher: Searcher, first: int, keep: int, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.searcher = searcher
        self.first, self.keep = first, keep
        self.phase1: dict[str, dict] = {}  # trial id -> its configuration
        self.scores: dict[str, float] = {}  # trial id -> its first epoch's value
        self.ended: set[str] = set()
        self.kept: list[str] = []  # the phase-1 trial ids chosen, best first
        self.continued: set[str] = set()  # phase-2 trial ids: the scheduler lets them run

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.phase1) < self.first:
            config = self.searcher.suggest(trial_id)
            if isinstance(config, dict):
                self.phase1[trial_id] = config
            return config
        if len(self.ended & set(self.phase1)) < len(self.phase1):
            return None  # not yet: wait for every first epoch
        if not self.kept:
            self.kept = self._choose()
            study = getattr(self.searcher, "_ot_study", None)
            for tid in self.kept:  # Optuna asks these next, in this order
                if study is not None:
                    study.enqueue_trial(optuna_params(self.phase1[tid]), skip_if_exists=False)
        if len(self.continued) >= len(self.kept):
            return Searcher.FINISHED
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.continued.add(trial_id)
        return config

    def _choose(self) -> list[str]:
        scored = [t for t in self.phase1 if t in self.scores]
        sign = 1.0 if self.mode == "min" else -1.0
        return sorted(scored, key=lambda t: sign * self.scores[t])[: self.keep]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._score(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result and not error:
            self._score(trial_id, result)
        self.ended.add(trial_id)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def _score(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if (trial_id in self.phase1 and result.get("epoch") == 1 and value is not None
                and value == value and not result.get("diverged")):  # value == value: not NaN
            self.scores[trial_id] = float(value)

    def add_evaluated_point(self, *args: Any, **kw: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kw)

    def get_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class OneEpochScheduler(FIFOScheduler):
    """Stops every trial after its first epoch, except those the searcher continues."""

    def __init__(self, search: OneEpochSearch):
        super().__init__()
        self.search = search

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("epoch", 0) >= 1 and trial.trial_id not in self.search.continued:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def make_scheduler(fl: Any, mode: str, searcher: Searcher) -> tuple[TrialScheduler, Searcher]:
    """The scheduler the flags name, and the searcher it needs (the 1-epoch baseline wraps
    it). Hyperband is ASHA with `--brackets` > 1 (asynchronous Hyperband, Li et al. 2020)."""
    if fl.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=fl.max_epochs, grace_period=fl.grace_period,
                             reduction_factor=fl.reduction_factor, brackets=fl.brackets), searcher
    if fl.scheduler == ONE_EPOCH:
        first = one_epoch_plan(fl.max_epochs, fl.keep, fl.epoch_budget, fl.num_samples)
        search = OneEpochSearch(searcher, first, fl.keep, fl.metric, mode)
        return OneEpochScheduler(search), search
    return FIFOScheduler(), searcher
