"""Tune's searcher and concurrency limit, made safe to resume from a state uploaded in parts.

On object storage Tune uploads its run state, the search generator's state (which holds
the concurrency limiter's) and Optuna's state as separate objects. A store that fails in
the middle of an upload can leave them from different moments, and Tune's own classes then
stall or fail on `--resume`: the limiter still counts a running trial that the restored
run no longer has, so no new trial is ever suggested (the search waits forever), and
Optuna is told the result of a trial it never suggested (a KeyError inside Tune). These
subclasses trust only what the resumed run itself reports.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import flatten_dict


def optuna_params(config: dict) -> dict:
    """A Tune configuration under Optuna's flat parameter names ("a/b" for nested keys)."""
    return flatten_dict(config, delimiter="/")


class ResumableLimiter(ConcurrencyLimiter):
    """At most `max_concurrent` running trials; after a restore, the running ones are
    counted from their reports, not from the saved (possibly older or newer) list."""

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.live_trials = set()
        self.num_unfinished_live_trials = 0
        self.cached_results = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._limit_concurrency and trial_id not in self.live_trials:
            self.live_trials.add(trial_id)  # restored and running again: it counts
            self.num_unfinished_live_trials += 1
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self.live_trials or not self._limit_concurrency:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:  # restored and ended before reporting: the searcher still hears of it
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


class ResumableOptuna(OptunaSearch):
    """Optuna's search; a trial that its restored state never suggested is learnt from its
    result and configuration instead of failing the run."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._completed_trials.add(trial_id)
        value = (result or {}).get(self.metric)
        config = optuna_params((result or {}).get("config") or {})
        if value is None or not isinstance(self._space, dict) \
                or not set(self._space) <= set(config):
            return  # nothing Optuna could learn from
        self.add_evaluated_point({k: config[k] for k in self._space}, value)
