"""The searcher and concurrency limit resume from states uploaded in parts (a store that
failed mid-upload leaves Tune's run state, the limiter's and Optuna's from different
moments): no stall, no failure, and Optuna still learns every result."""

from __future__ import annotations

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from search.searchers import ResumableLimiter, ResumableOptuna

SPACE = {"lr": tune.loguniform(1e-4, 1e-2)}


def _optuna() -> ResumableOptuna:
    return ResumableOptuna(space=SPACE, metric="MAE", mode="min",
                           sampler=optuna.samplers.RandomSampler(seed=0))


def test_a_trial_the_restored_run_lost_does_not_hold_the_limit():
    before = ResumableLimiter(_optuna(), max_concurrent=1)
    assert before.suggest("lost") is not None  # its upload reached the store...
    saved = before.get_state()  # ...the run state with this trial did not
    stock = ConcurrencyLimiter(_optuna(), max_concurrent=1)
    stock.set_state(dict(saved))
    assert stock.suggest("next") is None  # Tune's own limiter would wait forever
    after = ResumableLimiter(_optuna(), max_concurrent=1)
    after.set_state(saved)
    assert after.suggest("next") is not None


def test_restored_running_trials_count_once_they_report():
    limiter = ResumableLimiter(_optuna(), max_concurrent=1)
    limiter.set_state(limiter.get_state())  # a resume
    limiter.searcher.suggest("restored")  # what the restored Optuna state knew
    limiter.on_trial_result("restored", {"MAE": 0.9, "training_iteration": 1})
    assert limiter.suggest("new") is None  # the limit of one is taken by it
    limiter.on_trial_complete("restored", {"MAE": 0.8})
    assert limiter.suggest("new") is not None
    done = [t for t in limiter.searcher._ot_study.trials if t.state.is_finished()]
    assert [t.value for t in done] == [0.8]


def test_optuna_learns_a_trial_it_never_suggested():
    search = _optuna()
    search.on_trial_result("unknown", {"MAE": 0.7, "training_iteration": 1})  # no KeyError
    search.on_trial_complete("unknown", {"MAE": 0.6, "config": {"lr": 0.003, "seed": 1}})
    search.on_trial_complete("unknown", {"MAE": 0.6, "config": {"lr": 0.003}})  # once only
    search.on_trial_complete("no-result", None, error=True)  # nothing to learn, no failure
    trials = search._ot_study.trials
    assert len(trials) == 1 and trials[0].value == 0.6 and trials[0].params == {"lr": 0.003}
