"""Search methods: random or TPE proposals, ASHA or FIFO, the constant liar, an epoch
budget, and warm starts from earlier searches."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import run_search
from search.results import ResultsStore, TrialBook
from search.warm import RERUN_BEST, WarmStart, warm_start
from ucrn.config import TrainConfig

SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "layers": {"choice": [1, 2]}, "d_model": 8,
         "heads": 2}


def _fake_search(folder: Path, trials: list[tuple[float, dict]], data: dict | None) -> Path:
    """A finished search: trials (MAE, config overrides) and search.json with `data`."""
    store = ResultsStore(folder)
    book = TrialBook(store, folder.name, "MAE", "min", "tune")
    for i, (mae, over) in enumerate(trials):
        cfg = TrainConfig(num_epochs=1, d_model=8, heads=2, **over).to_dict()
        book.add_result(f"t{i}", cfg, {"epoch": 1, "MAE": mae, "loss": mae})
        book.finish(f"t{i}", cfg)
    store.write_json("search.json", {"flags": {}, "space": SPACE, "data": data})
    return folder


def test_warm_start_same_data_gives_evaluated_points_and_skips_what_does_not_fit(tmp_path):
    data = {"labels_sha256": "x"}
    src = _fake_search(tmp_path / "a", [
        (0.7, {"lr": 1e-3, "layers": 1}),
        (0.5, {"lr": 2e-3, "layers": 2}),
        (0.6, {"lr": 5e-2, "layers": 1}),  # lr outside the new range
        (0.9, {"lr": 1e-3, "layers": 3}),  # layers not a choice here
        (0.8, {"lr": 1e-3, "layers": 1, "modalities": "la"}),  # another model
    ], data)
    base = {"modalities": "lav", "num_epochs": 1}
    warm = warm_start(str(src), SPACE, base, "MAE", "min", data)
    assert warm.rewards == (0.5, 0.7)  # best first, one entry per configuration
    assert warm.points == ({"lr": 2e-3, "layers": 2}, {"lr": 1e-3, "layers": 1})
    notes = "\n".join(warm.notes)
    assert "t2 does not fit this space (lr=0.05 is outside loguniform" in notes
    assert "t3 does not fit this space (layers=3 is not one of [1, 2])" in notes
    assert "t4 does not fit this space (modalities='la', 'lav' here)" in notes
    assert warm.record()["mode"] == "evaluated"


def test_warm_start_other_data_reruns_the_best_few(tmp_path):
    src = _fake_search(tmp_path / "a", [(0.1 * (i + 1), {"lr": 1e-3 * (i + 1), "layers": 1})
                                        for i in range(5)], {"labels_sha256": "mosi"})
    warm = warm_start(str(src), SPACE, {"num_epochs": 1}, "MAE", "min",
                      {"labels_sha256": "mosei"})
    assert warm.rewards is None and len(warm.points) == RERUN_BEST
    assert [p["lr"] for p in warm.points] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert any("other data" in n for n in warm.notes)


def test_warm_start_compares_every_fixed_setting_and_never_writes_to_its_source(tmp_path):
    data = {"labels_sha256": "x"}
    src = _fake_search(tmp_path / "a", [(0.7, {"lr": 1e-3, "layers": 1}),
                                        (0.6, {"lr": 2e-3, "layers": 1, "jsd_weight": 0.5})],
                       data)
    # another number of epochs: none of its values are this search's
    warm = warm_start(str(src), SPACE, {"num_epochs": 3}, "MAE", "min", data)
    assert warm.points == () and warm.rewards == ()
    notes = "\n".join(warm.notes)
    assert "num_epochs=1, 3 here" in notes and "no finished trial fits this search" in notes
    assert warm.record()["mode"] == "evaluated"
    warm = warm_start(str(src), SPACE, {"num_epochs": 1}, "MAE", "min", data)
    assert "jsd_weight=0.5, 1.0 here" in "\n".join(warm.notes) and len(warm.points) == 1
    # a damaged trial file of the source is rebuilt in memory only
    damaged = next((src / "trials.parquet").glob("*.parquet"))
    damaged.write_bytes(b"garbage")
    warm_start(str(src), SPACE, {"num_epochs": 1}, "MAE", "min", data)
    assert damaged.read_bytes() == b"garbage"
    # its own random start-up proposals are not drawn again
    assert warm.sampler_seed(1234) != 1234 and WarmStart().sampler_seed(1234) == 1234
    with pytest.raises(ValueError, match="--warm-start ',': expected earlier searches"):
        warm_start(",", SPACE, {}, "MAE", "min", data)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "search.json").write_text("{}")
    (tmp_path / "f" / "trials.parquet").write_text("a file")
    with pytest.raises(ValueError, match="--warm-start .*f: not a search folder"):
        warm_start(str(tmp_path / "f"), SPACE, {}, "MAE", "min", data)


def test_flags_that_would_do_nothing_are_one_line(tmp_path, capsys):
    from ucrn.data import load_dataset

    same = load_dataset("synthetic", None).identity()
    src = _fake_search(tmp_path / "a", [(0.7, {"lr": 1e-3, "layers": 1})], same)
    for args, needle in (
            (["--scheduler", "fifo", "--grace-period", "2"], "--grace-period: an ASHA setting"),
            (["--retrain", str(src), "--warm-start", str(src)], "--warm-start: a search flag"),
            (["--retrain", str(src), "--epoch-budget", "5"], "--epoch-budget: a search flag"),
            (["--search-alg", "random", "--warm-start", str(src), "--max-epochs", "1"],
             "--warm-start with --search-alg random on the same data")):
        rc = run_search.main(["--storage", str(tmp_path / "st"), "--name", "n", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (args, err)


def test_warm_start_from_something_else_is_one_line(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    rc = run_search.main(["--storage", str(tmp_path / "st"), "--warm-start",
                          str(tmp_path / "nothing"), "--name", "w"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a search folder" in err[0], err


@pytest.mark.parametrize(("args", "needle"), [
    (["--search-alg", "grid"], "--search-alg grid: expected tpe or random or gp"),
    (["--scheduler", "hyperband"], "--scheduler hyperband: expected asha or fifo or one-epoch"),
    (["--epoch-budget", "-1"], "--epoch-budget -1"),
    (["--constant-liar", "--search-alg", "random"], "--constant-liar with --search-alg random"),
    (["--multivariate", "--search-alg", "gp"], "--multivariate with --search-alg gp"),
    (["--brackets", "0"], "--brackets 0: expected an integer from 1 to 8"),
    (["--scheduler", "fifo", "--brackets", "3"], "--brackets: an ASHA setting"),
    (["--keep", "2"], "--keep: a --scheduler one-epoch setting, with --scheduler asha"),
    (["--scheduler", "one-epoch", "--keep", "0"], "--keep 0: expected an integer >= 1"),
    (["--scheduler", "one-epoch", "--keep", "3", "--epoch-budget", "20", "--max-epochs", "6"],
     "--keep 3: --epoch-budget 20, less the 3 kept trials' 18 epochs, leaves 2 first-epoch"),
    (["--scheduler", "one-epoch", "--num-samples", "4"],
     "--keep 3: --num-samples 4 leaves 1 first-epoch trials"),
    (["--scheduler", "one-epoch", "--max-epochs", "1", "--num-samples", "10"],
     "--scheduler one-epoch with --max-epochs 1: the kept configurations would only repeat"),
    (["--brackets", "3", "--max-epochs", "2"], "--brackets 3: with --max-epochs 2, --grace-period"
     " 1 and --reduction-factor 2 ASHA has 1 rung(s), room for at most 2 bracket(s)"),
    (["--resume", "--keep", "2", "--name", "none"], "--resume: no search named 'none'"),
])
def test_bad_method_flags_are_one_line(args, needle, tmp_path, capsys):
    rc = run_search.main(["--storage", str(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_budget_random_fifo_and_a_warm_start_through_real_searches(ray_head, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: {choice: [1, 2]}\n"
                     "d_model: 8\nheads: 2\n")
    common = ["--address", ray_head, "--storage", str(tmp_path), "--executor", "tune",
              "--space", str(space), "--max-concurrent", "1"]
    # an epoch budget, random proposals, every trial to the end
    assert run_search.main([*common, "--name", "a", "--search-alg", "random", "--scheduler",
                            "fifo", "--num-samples", "50", "--max-epochs", "2",
                            "--epoch-budget", "5"]) == 0
    trials = pd.read_parquet(tmp_path / "a" / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "a" / "epochs.parquet")
    assert len(epochs) == 5 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert trials.trial_id.is_unique and epochs.ended_at.notna().all()
    assert set(trials.status) <= {"completed", "stopped"} and len(trials) == 3
    # warm start on other data: the best of "a" are re-run first, in order
    capsys.readouterr()
    assert run_search.main([*common, "--name", "b", "--preset", "tiny_aligned",
                            "--constant-liar", "--num-samples", "4", "--max-epochs", "1",
                            "--warm-start", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "other data" in out
    best_a = trials.sort_values("MAE").head(RERUN_BEST)
    first_b = (pd.read_parquet(tmp_path / "b" / "epochs.parquet").sort_values("ended_at")
               .drop_duplicates("trial_id").head(RERUN_BEST))
    assert list(first_b.lr) == pytest.approx(list(best_a.lr))
    assert list(first_b.layers) == list(best_a.layers)
    saved = json.loads((tmp_path / "b" / "search.json").read_text())
    assert saved["warm_start"]["mode"] == "rerun" and saved["warm_start"]["points"] == 3
    assert saved["flags"]["constant_liar"] is True


class _Proposals:
    """A stand-in searcher: numbered configurations, and what it was told."""

    metric, mode = "MAE", "min"

    def __init__(self) -> None:
        self.n, self.completed = 0, []

    def suggest(self, trial_id):
        self.n += 1
        return {"lr": float(self.n)}

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_one_epoch_search_waits_for_every_first_epoch_then_continues_the_best(mode):
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from search.schedulers import OneEpochScheduler, OneEpochSearch

    inner = _Proposals()
    search = OneEpochSearch(inner, first=5, keep=2, metric="MAE", mode=mode)
    sched = OneEpochScheduler(search)
    first = {f"t{i}": search.suggest(f"t{i}") for i in range(5)}
    assert [c["lr"] for c in first.values()] == [1, 2, 3, 4, 5]
    mae = {"t0": 0.9, "t1": 0.3, "t2": float("nan"), "t3": 0.5, "t4": 0.1}
    for tid in first:
        trial = type("T", (), {"trial_id": tid})()
        assert sched.on_trial_result(None, trial, {"epoch": 1, "MAE": mae[tid]}) == \
            TrialScheduler.STOP  # every first-phase trial ends after its first epoch
        search.on_trial_result(tid, {"epoch": 1, "MAE": mae[tid]})
        if tid != "t4":
            search.on_trial_complete(tid, {"epoch": 1, "MAE": mae[tid]})
            assert search.suggest("early") is None  # not before every first epoch is in
    search.on_trial_complete("t4", None, error=True)  # an error after its first epoch
    assert search.kept == []
    search.suggest("c0")
    # the best two by their first epoch (NaN never), in order; errored ones still count
    assert search.kept == (["t4", "t1"] if mode == "min" else ["t0", "t3"])
    search.suggest("c1")
    assert search.continued == {"c0", "c1"} and search.suggest("c2") == Searcher.FINISHED
    for tid in ("c0", "c1"):
        trial = type("T", (), {"trial_id": tid})()
        for epoch in (1, 2, 3):
            assert sched.on_trial_result(None, trial, {"epoch": epoch, "MAE": 0.2}) == \
                TrialScheduler.CONTINUE
    # its state is what Tune saves and restores (without the wrapped searcher)
    state = search.get_state()
    assert "searcher" not in state
    again = OneEpochSearch(_Proposals(), first=1, keep=1, metric="MAE", mode="min")
    again.set_state(state)
    assert again.kept == search.kept and again.continued == search.continued


def test_one_epoch_search_proposes_the_kept_configurations_again_through_optuna():
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search.schedulers import OneEpochSearch

    inner = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=3))
    search = OneEpochSearch(inner, first=6, keep=2, metric=None, mode=None)
    assert search.set_search_properties("MAE", "min", {
        "lr": tune.loguniform(1e-4, 1e-1), "layers": tune.choice([1, 2, 3])})
    configs = {f"t{i}": search.suggest(f"t{i}") for i in range(6)}
    for i, (tid, cfg) in enumerate(configs.items()):
        value = abs(cfg["lr"] - 0.01) + i * 1e-6
        result = {"epoch": 1, "MAE": value, "training_iteration": 1}
        search.on_trial_result(tid, result)
        search.on_trial_complete(tid, result)
    again = [search.suggest("c0"), search.suggest("c1")]
    assert again == [configs[t] for t in search.kept]
    assert sorted(search.kept, key=lambda t: abs(configs[t]["lr"] - 0.01)) == search.kept


def test_flags_edited_in_search_json_are_refused_on_resume(tmp_path):
    """Tune restores its own searcher and scheduler: flags edited in search.json would be a
    false record of what ran, so they are refused (an older search.json has no digest)."""
    from search.driver import _flags_unedited, flags_digest
    from ucrn.errors import UsageError

    store = ResultsStore(tmp_path)
    flags = {"scheduler": "one-epoch", "keep": 2, "search_alg": "tpe"}
    _flags_unedited({"flags": flags, "flags_sha256": flags_digest(flags)}, store)
    _flags_unedited({"flags": {**flags, "keep": 3}}, store)  # made before the digest
    with pytest.raises(UsageError, match="its flags were edited after the search started"):
        _flags_unedited({"flags": {**flags, "keep": 3}, "flags_sha256": flags_digest(flags)},
                        store)
