"""The search study: its statistics, its tasks' data, and its small mode end to end (what
must hold, never which method wins)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.study_stats import binned, explained, ranks, spearman, wilcoxon_signed_rank
from ucrn.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_wilcoxon_is_exact_and_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = rng.normal(0.2, 1.0, size=10)
        mine = wilcoxon_signed_rank(d)
        ref = stats.wilcoxon(d, method="exact")
        assert mine["p"] == pytest.approx(ref.pvalue) and mine["W"] == pytest.approx(ref.statistic)
    every = wilcoxon_signed_rank(np.arange(1, 11) * 0.01)  # all ten one way: 2 / 2^10
    assert every["p"] == pytest.approx(2 / 1024) and every["losses"] == 10
    assert every["sign_p"] == pytest.approx(2 / 1024)
    tied = wilcoxon_signed_rank([0.0, 0.0, -0.1, 0.1])  # zeros dropped, counted as ties
    assert (tied["n"], tied["ties"], tied["wins"], tied["losses"]) == (2, 2, 1, 1)
    assert tied["p"] == 1.0 and wilcoxon_signed_rank([0.0] * 10)["p"] == 1.0


def test_ranks_spearman_and_explained_variance():
    assert list(ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) != spearman([1, 2, 3], [5, 5, 5])  # NaN
    y = [1.0, 1.1, 5.0, 5.2, 1.05, 5.1]
    assert explained(y, ["a", "a", "b", "b", "a", "b"]) > 0.99
    assert explained([1.0, 5.0, 1.0, 5.0], ["a", "a", "b", "b"]) == 0.0
    assert sorted(set(binned(np.linspace(0, 1, 50)))) == [0, 1, 2, 3, 4]
    assert binned([1.0, 2.0, 1.0]) == [1.0, 2.0, 1.0]


def test_the_tasks_label_models_need_more_than_a_linear_read_out():
    from ucrn.data import LABEL_MODELS, make_synthetic
    from ucrn.data.dataset import DataError

    def linear_gain(labels: str) -> float:
        raw = make_synthetic("tiny", 0, labels=labels, nonfinite_rate=0)
        x = {s: np.c_[np.concatenate([raw[s][m].mean(1) for m in ("text", "audio", "vision")],
                                     1), np.ones(len(raw[s]["labels"]))] for s in raw}
        y = {s: raw[s]["labels"].ravel() for s in raw}
        w = np.linalg.lstsq(x["train"], y["train"], rcond=None)[0]
        const = np.abs(y["test"] - np.median(y["train"])).mean()
        return 1 - np.abs(x["test"] @ w - y["test"]).mean() / const

    gains = {k: linear_gain(k) for k in LABEL_MODELS}
    assert gains["fusion"] > 0.4 and gains["interaction"] < 0.1
    same = make_synthetic("tiny", 0, labels="interaction")
    assert np.array_equal(same["valid"]["audio"], make_synthetic("tiny", 0)["valid"]["audio"],
                          equal_nan=True)  # the features do not depend on the label model
    with pytest.raises(DataError, match="labels 'squares': expected one of fusion"):
        make_synthetic("tiny", 0, labels="squares")
    with pytest.raises(DataError, match="emotion labels"):
        make_synthetic("iemocap_tiny", 0, labels="interaction")


def test_study_flags_are_one_line(tmp_path, capsys):
    from benchmarks.search_efficiency import main

    (tmp_path / "file").write_text("x")
    for args, needle in ((["--tasks", "lr,nope"], "--tasks lr,nope: expected a comma"),
                         (["--methods", ","], "--methods ,: expected a comma"),
                         (["--seeds", "3-x"], "--seeds 3-x"), (["--seeds", "5-1"], "--seeds 5-1"),
                         (["--seeds", "1-99999999999"], "at most 1000"),
                         (["--budget", "0"], "--budget 0: expected an integer from 1"),
                         (["--concurrency", "0"], "--concurrency 0: expected an integer"),
                         (["--budget", "10"], "method 1-epoch: --keep 3: --epoch-budget 10"),
                         (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nobody answers"),
                         (["--report"], "no study records")):
        rc = main(["--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (args, err)
    for out, needle in (("", "--out '': expected a folder"), (str(tmp_path / "file"), "is a file")):
        assert main(["--out", out, "--report"]) == 2
        assert needle in capsys.readouterr().err


def _record(**over):
    from benchmarks.search_efficiency import SETTINGS

    rec = {"task": "lr", "method": "random", "seed": 1, "budget": 120, "max_epochs": 6,
           "concurrency": 2, "keep": 3, "small": False, "epochs": 2, "trials": 1,
           "best_val_mae": 0.5, "picked_test_mae": 0.6, "wall_s": 3.0, "curve_mae": [0.7, 0.5],
           "curve_s": [1.0, 2.0], "trial_table": [], **over}
    assert set(SETTINGS) <= set(rec)
    return rec


def _write(folder: Path, rec: dict) -> Path:
    from benchmarks.search_efficiency import record_path

    path = record_path(folder, rec["task"], rec["method"], rec["seed"])
    path.write_text(json.dumps(rec))
    return path


def test_a_rerun_runs_only_what_is_not_recorded_and_never_mixes_settings(tmp_path):
    from benchmarks.search_efficiency import SETTINGS, pending

    settings = {k: _record()[k] for k in SETTINGS}
    _write(tmp_path, _record(seed=2))
    todo = pending(tmp_path, ["lr", "arch"], ["random", "gp-asha"], [1, 2], settings)
    assert todo == [("lr", "random", 1), ("lr", "gp-asha", 1), ("lr", "gp-asha", 2),
                    ("arch", "random", 1), ("arch", "gp-asha", 1), ("arch", "random", 2),
                    ("arch", "gp-asha", 2)]
    _write(tmp_path, _record(seed=3, budget=8, small=True))  # a --small record
    with pytest.raises(UsageError, match="made with {'budget': 8, 'small': True}, this run"):
        pending(tmp_path, ["lr"], ["random"], [3], settings)


@pytest.mark.parametrize(("over", "needle"), [
    ({"curve_mae": None}, "curve_mae=None: expected a list of finite numbers"),
    ({"curve_mae": [0.5]}, "curve_mae=[0.5]: expected"),
    ({"trial_table": None}, "trial_table=None"),
    ({"trials": "many"}, "trials='many'"),
    ({"best_val_mae": float("nan")}, "best_val_mae=nan"),
    ({"seed": "1"}, "seed='1'"),
    ({"method": "bar"}, "method='bar'"),
    ({"task": "../../escaped"}, "task='../../escaped'"),
])
def test_a_damaged_record_is_one_line_and_left_out_of_the_report(over, needle, tmp_path, capsys):
    from benchmarks.search_efficiency import load_records, pending, read_record

    good = _write(tmp_path, _record())
    bad = tmp_path / "run-lr-random-s7.json"
    bad.write_text(json.dumps(_record(**{"seed": 7, **over})))
    with pytest.raises(UsageError) as e:
        read_record(bad)
    assert f"record {bad}: {needle}" in str(e.value) and "fix or delete" in str(e.value)
    with pytest.raises(UsageError, match="fix or delete the file"):  # never run over it
        pending(tmp_path, ["lr"], ["random"], [7], {})
    recs = load_records(tmp_path)
    assert [r["seed"] for r in recs] == [1] and good.exists() and bad.exists()
    assert "left out of the report" in capsys.readouterr().err


def test_two_studies_on_one_folder_are_refused(tmp_path):
    from benchmarks.search_efficiency import study_lock

    with study_lock(tmp_path):
        with pytest.raises(UsageError, match=rf"another study is running on it \(pid {os.getpid()}"):
            with study_lock(tmp_path):
                pass
    with study_lock(tmp_path):  # free again once the first has ended
        pass


@pytest.mark.slow
def test_small_study_every_method_finishes_within_the_budget(tmp_path, ray_head, ray_env,
                                                            monkeypatch):
    from benchmarks.search_efficiency import METHODS, load_records, main

    cmd = [sys.executable, "-m", "benchmarks.search_efficiency", "--out", str(tmp_path),
           "--small", "--address", ray_head]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=ray_env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    recs = load_records(tmp_path)
    assert sorted(r["method"] for r in recs) == sorted(METHODS)
    for r in recs:
        assert r["each_trial_once"] and r["each_epoch_once"], r["method"]
        # equal compute: the budget, overshot by at most one epoch per concurrent trial
        assert r["budget"] <= r["epochs"] <= r["budget"] + r["concurrency"] - 1, r
        assert len(r["curve_mae"]) == r["epochs"] == sum(t["epochs"] for t in r["trial_table"])
        assert r["picked_test_mae"] > 0 and {"task", "method", "seed"} <= set(r)
    # the 1-epoch baseline: every trial one epoch, then the best by it run to the end again
    one = next(r for r in recs if r["method"] == "1-epoch")
    full = [t for t in one["trial_table"] if t["epochs"] == one["max_epochs"]]
    short = [t for t in one["trial_table"] if t["epochs"] == 1]
    assert len(full) == 2 and len(short) + len(full) == one["trials"]
    best = sorted(short, key=lambda t: t["mae_1"])[:2]
    assert sorted(t["lr"] for t in full) == pytest.approx(sorted(t["lr"] for t in best))
    assert (tmp_path / "crossmodal.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "study.md").read_text()
    assert "### task crossmodal" in report and "Wilcoxon" in report
    # a rerun has nothing left to run (no Ray, no search); the report is rebuilt the same
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("run-*.json")}
    (tmp_path / "study.md").unlink()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    assert main(["--out", str(tmp_path), "--small"]) == 0
    assert not list(scratch.iterdir())  # nothing to run: no work folder made
    assert {p.name: p.read_bytes() for p in tmp_path.glob("run-*.json")} == kept
    assert (tmp_path / "study.md").read_text() == report
    assert json.loads(next(iter(kept.values())))["seed"] == 1


STOPPED_STUDY = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.search_efficiency import run_search
from ucrn.errors import sigterm_as_interrupt
child = ("import signal, sys, time; signal.signal(signal.SIGINT, lambda *a: (open("
         "{flag!r} + '.stopped', 'w').close(), sys.exit(130))); open({flag!r}, 'w').close(); "
         "time.sleep(120)")
with sigterm_as_interrupt():
    try:
        run_search([sys.executable, "-c", child], {{}})
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_a_stopped_study_stops_its_search_first(tmp_path):
    """SIGTERM to the study: its running search (in its own session, so a terminal's Ctrl-C
    does not reach it twice) is told to stop and waited for, never left running."""
    import signal
    import time

    flag = tmp_path / "child-started"
    study = subprocess.Popen([sys.executable, "-c", STOPPED_STUDY.format(
        root=str(ROOT), flag=str(flag))], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.1)
    children = [int(p) for p in Path(f"/proc/{study.pid}/task/{study.pid}/children")
                .read_text().split()]
    study.send_signal(signal.SIGTERM)
    out, _ = study.communicate(timeout=60)
    assert "interrupted" in out and len(children) == 1
    assert Path(f"{flag}.stopped").exists()  # told to stop as a user would, not killed
    assert not Path(f"/proc/{children[0]}").exists() or \
        Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
