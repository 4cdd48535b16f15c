"""The third attack on the results and the commands around them (tests/test_attack.py has
the first ones): hand-edited results folders, metrics a validation split cannot define,
duplicate keys, SIGTERM at a command's very end, and --name's refusals.

No Ray and no training here: the results are the fake search of tests/results_fixture.py
(copied, then edited by hand) or a few rows through the real writer (TrialBook)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analyze
import run_search
from search import schema
from search.driver import SearchPlan, summarise
from search.flags import Flags
from search.results import ResultsStore, TrialBook
from search.retraining import _done_seeds
from search.space import SpaceError, load_space
from search.warm import warm_start
from tests.results_fixture import SPACE, write_fake_retrain, write_fake_search
from ucrn.config import TrainConfig
from ucrn.fileio import NAME_MAX_CHARS, check_name, name_problem
from ucrn.metrics import (
    IEMOCAP_METRICS,
    REGRESSION_METRICS,
    SIMS_METRICS,
    task_metrics,
    undefined_metric,
)
from ucrn.safeload import load_json

ROOT = Path(__file__).resolve().parents[1]
OLD = time.time() - 3600  # an epoch file written long ago (not a trial just started)


def _one_line(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


# ---- 1. a hand-edited results folder never changes the answer silently -----------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, str]:
    """A fake 8-trial search and its best trial (completed, 4 epochs)."""
    folder = write_fake_search(tmp_path_factory.mktemp("src"), "s", n_trials=8, seed=0)
    trials = pd.read_parquet(folder / "trials.parquet")
    ok = trials[trials.status.isin(["completed", "stopped"])]
    return folder, str(ok.sort_values("MAE").trial_id.iloc[0])


def _edit(f: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(f)), f)


def _renamed(old: str, new: str):
    return lambda t: t.rename_columns([new if c == old else c for c in t.column_names])


def _set(column: str, value) -> object:
    def fn(t: pa.Table) -> pa.Table:
        i = t.column_names.index(column)
        return t.set_column(i, column, pa.array([value] * t.num_rows))
    return fn


def _delete(f: Path) -> None:
    f.unlink()
    epochs = f.parents[1] / "epochs.parquet" / f.name
    os.utime(epochs, (OLD, OLD))


DAMAGE = {  # case -> (edit of the best trial's trials file, what the warning says)
    "metric renamed": (lambda f: _edit(f, _renamed("MAE", "mae")), "MAE"),
    "other metric renamed": (lambda f: _edit(f, _renamed("Corr", "corr")), "Corr"),
    "config renamed": (lambda f: _edit(f, _renamed("lr", "LR")), "'LR'"),
    "unknown status": (lambda f: _edit(f, _set("status", "winner")), "'winner'"),
    "status as a number": (lambda f: _edit(f, _set("status", 1)), "'status' of type int64"),
    "metric as text": (lambda f: _edit(f, _set("MAE", "0.01")), "'MAE' of type string"),
    "null status": (lambda f: _edit(f, _set("status", None)), "no value of 'status'"),
    "null epochs_run": (lambda f: _edit(f, _set("epochs_run", None)), "'epochs_run'"),
    "a list column": (lambda f: _edit(f, lambda t: t.append_column("x", pa.array([[1]]))),
                      "'x'"),
    "value edited": (lambda f: _edit(f, _set("MAE", 0.01)), "MAE 0.01"),
    "best_epoch edited": (lambda f: _edit(f, _set("best_epoch", 1)), "best_epoch 1"),
    "file deleted": (_delete, "is missing"),
    "two rows": (lambda f: _edit(f, lambda t: pa.concat_tables([t, t])), "2 rows"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_trial_file_is_named_and_rebuilt_by_every_reader(case, source, tmp_path,
                                                                   capsys):
    """analyze.py and the writer's book (--resume, --retrain --trial, --warm-start) go
    through one check: the same file is named in one warning line, and the trial is rebuilt
    from its epoch rows, so the best trial stays the best (the metric renamed once dropped
    it, an unknown status ranked first, a deleted file showed as "just started")."""
    src, best = source
    folder = tmp_path / "s"
    shutil.copytree(src, folder)
    f = folder / "trials.parquet" / f"{best}.parquet"
    edit, needle = DAMAGE[case]
    edit(f)
    rc = analyze.main([str(folder), "--no-report", "--format", "csv", "--top", "20"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"warning: {f} ") and needle in lines[0], lines[0]
    assert f"trial {best} rebuilt from its 4 epoch row(s) as completed" in lines[0]
    board = pd.read_csv(io.StringIO(out))
    assert board.trial_id.iloc[0] == best and set(board.status) <= {"completed", "stopped"}
    book = TrialBook(ResultsStore(folder), "s", "MAE", "min", "", read_only=True)
    notes = book.load()
    assert len(notes) == 1 and notes[0].startswith(str(f)), notes
    assert book.best_trial()["trial_id"] == best and book.trials[best]["rebuilt"]


def test_an_edited_epochs_file_and_its_trials_row_are_both_named_as_disagreeing(
        source, tmp_path, capsys):
    """One trial's epoch rows edited (MAE 0.01 everywhere), its trials row intact: the
    warning blamed the intact trials file alone. Which was edited cannot be known: both
    are named. (The trial is ranked by its epoch rows, as a damaged trials row is.)"""
    src, best = source
    folder = tmp_path / "s"
    shutil.copytree(src, folder)
    other = next(t for t in pd.read_parquet(folder / "trials.parquet").trial_id if t != best)
    e = folder / "epochs.parquet" / f"{other}.parquet"
    _edit(e, _set("MAE", 0.01))
    rc = analyze.main([str(folder), "--no-report", "--format", "csv", "--top", "20"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    t = folder / "trials.parquet" / f"{other}.parquet"
    assert rc == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"warning: {t} and {e} disagree (the trials row has "), lines
    assert "one of them was changed after the search wrote it" in lines[0]


@pytest.mark.parametrize("case", ["epoch file renamed metric", "copied file", "retrain row"])
def test_other_damaged_files_are_named_and_left_out(case, source, tmp_path, capsys):
    src, best = source
    folder = tmp_path / "s"
    shutil.copytree(src, folder)
    write_fake_retrain(tmp_path, "s")
    if case == "epoch file renamed metric":
        f = folder / "epochs.parquet" / f"{best}.parquet"
        _edit(f, _renamed("MAE", "mae"))
        needles = [f"warning: {f} lacks the metric column(s) MAE",
                   f"{best} ran 4 epoch(s) but has no epoch rows"]
    elif case == "copied file":  # one trial twice: a file that is not its trial's
        f = folder / "trials.parquet" / "copy.parquet"
        shutil.copy(folder / "trials.parquet" / f"{best}.parquet", f)
        needles = [f"warning: {f} holds trial(s) '{best}', not copy"]
    else:
        f = sorted((folder / "retrain.parquet").glob("*.parquet"))[0]
        _edit(f, _renamed("test_MAE", "test_mae"))
        needles = [f"warning: {f} lacks the metric column(s) test_MAE"]
    rc = analyze.main([str(folder), "--no-report", "--format", "csv"])
    out, err = capsys.readouterr()
    assert rc == 0 and len(err.strip().splitlines()) == len(needles), err
    for needle in needles:
        assert needle in err, err
    board = pd.read_csv(io.StringIO(out))
    assert board.trial_id.iloc[0] == best and board.trial_id.is_unique
    if case == "retrain row":  # --retrain counts that seed as not done, and says so
        done = _done_seeds(ResultsStore(folder), "fake_00000")
        assert len(done) == 4 and "counts as not re-trained" in capsys.readouterr().err


def test_a_lone_first_epoch_is_just_started_only_while_it_is_new(source, tmp_path, capsys):
    """A trials row is written right after its epoch row: a first epoch without one is a
    trial just started only for FRESH_S; older, its trials file was lost (an ASHA-stopped
    trial after one epoch once showed as "just started" forever)."""
    src, _ = source
    folder = tmp_path / "s"
    shutil.copytree(src, folder)
    trials = pd.read_parquet(folder / "trials.parquet")
    one = str(trials[trials.epochs_run == 1].trial_id.iloc[0])
    (folder / "trials.parquet" / f"{one}.parquet").unlink()
    rc = analyze.main([str(folder), "--no-report"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "" and "have epochs but no trials row yet" in out
    os.utime(folder / "epochs.parquet" / f"{one}.parquet", (OLD, OLD))
    rc = analyze.main([str(folder), "--no-report"])
    out, err = capsys.readouterr()
    assert rc == 0 and f"{one}.parquet is missing: trial {one} rebuilt" in err
    assert "no trials row yet" not in out


def test_a_warm_start_reads_a_damaged_source_through_the_same_check(source, tmp_path):
    src, best = source
    folder = tmp_path / "s"
    shutil.copytree(src, folder)
    _edit(folder / "trials.parquet" / f"{best}.parquet", _set("status", "winner"))
    base = {**TrainConfig(num_epochs=4).to_dict(), "select_metric": "auto"}
    warm = warm_start(str(folder), SPACE, base, "MAE", "min", None)
    assert any(n.startswith(f"{folder}/trials.parquet/{best}.parquet has status 'winner'")
               for n in warm.notes), warm.notes
    lr = float(pd.read_parquet(src / "trials.parquet").set_index("trial_id").loc[best, "lr"])
    assert warm.points[0]["lr"] == pytest.approx(lr)  # the rebuilt best is re-run first


# ---- best_config.json is never rewritten from less than it was chosen from ---------------

def _search(tmp_path: Path, trials: dict[str, tuple[float, ...]], errored: str = "") -> Path:
    """Trials through the real writer: name -> MAE per epoch (2 epochs: completed)."""
    store = ResultsStore(tmp_path / "s")
    book = TrialBook(store, "s", "MAE", "min", "tune")
    for i, (tid, maes) in enumerate(trials.items()):
        cfg = TrainConfig(num_epochs=2, lr=1e-3 * (i + 1)).to_dict()
        for e, mae in enumerate(maes, 1):
            book.add_result(tid, cfg, {"epoch": e, "MAE": mae, "loss": mae,
                                       "checkpoint": f"/c/{tid}/{e}"})
        book.finish(tid, cfg, *(("errored", "RuntimeError: x") if tid == errored else ()))
    return tmp_path / "s"


def _summarise(folder: Path, capsys) -> tuple[int, dict, str, str]:
    """What --resume (or a search) does at its end: the book read back, best_config.json;
    (exit code, best_config.json, stderr, stdout)."""
    plan = SearchPlan(flags=Flags(name="s", metric="MAE", num_samples=1, executor="tune"),
                      storage=str(folder.parent), store=ResultsStore(folder),
                      space={"lr": {"loguniform": [1e-4, 1e-2]}}, mode="min",
                      settings=SimpleNamespace(base={}), restore=False)
    rc = summarise(plan)
    out, err = capsys.readouterr()
    return rc, json.loads((folder / "best_config.json").read_text()), err, out


def _break_beyond_rebuilding(folder: Path, tid: str) -> None:
    _edit(folder / "trials.parquet" / f"{tid}.parquet", _renamed("MAE", "mae"))
    (folder / "epochs.parquet" / f"{tid}.parquet").unlink()


@pytest.mark.parametrize("case", ["renamed and no epochs", "deleted and no epochs",
                                  "errored rebuilt as stopped", "best_config edited",
                                  "no record and its trial gone"])
def test_best_config_is_never_rewritten_from_less(case, tmp_path, capsys):
    """--resume once rewrote best_config.json to a worse trial when the best one's file was
    damaged. best_trial.json records every trial (status, value) it was chosen from; a
    choice from fewer, or from a trial rebuilt as another status, keeps the file."""
    folder = _search(tmp_path, {"best": (0.9, 0.5), "mid": (0.9, 0.7), "err": (0.2, 0.9)},
                     errored="err")
    rc, first, _, _ = _summarise(folder, capsys)
    assert rc == 0 and first["lr"] == pytest.approx(1e-3)
    record = json.loads((folder / schema.BEST_TRIAL).read_text())
    assert record["trial_id"] == "best" and set(record["trials"]) == {"best", "mid", "err"}
    before = (folder / "best_config.json").read_bytes()
    if case == "renamed and no epochs":
        _break_beyond_rebuilding(folder, "best")
    elif case == "deleted and no epochs":
        (folder / "trials.parquet" / "best.parquet").unlink()
        (folder / "epochs.parquet" / "best.parquet").unlink()
    elif case == "errored rebuilt as stopped":  # its epoch 1 (MAE 0.2) would now be best
        (folder / "trials.parquet" / "err.parquet").unlink()
    elif case == "best_config edited":
        (folder / "best_config.json").write_text(json.dumps({**first, "lr": 0.005}))
        before = (folder / "best_config.json").read_bytes()
    else:
        (folder / schema.BEST_TRIAL).unlink()
        _break_beyond_rebuilding(folder, "best")
    rc, now, err, out = _summarise(folder, capsys)
    assert rc == 0 and (folder / "best_config.json").read_bytes() == before
    kept = [x for x in err.splitlines() if "best_config.json kept as it was" in x]
    assert len(kept) == 1 and kept[0].startswith("warning: "), err
    # the summary's best trial is the files' as they are now, said as not the file's (it
    # read as best_config.json's trial, which it is not)
    assert "best trial now (best_config.json kept) " in out, out


def test_best_config_follows_more_or_rebuilt_information(tmp_path, capsys):
    """Not a lock: a rebuilt file with the same values, a new better trial (a resumed search
    that went on), a write cut between the two files, and an older search without
    best_trial.json all rewrite it."""
    folder = _search(tmp_path, {"a": (0.9, 0.6), "b": (0.9, 0.7)})
    assert _summarise(folder, capsys)[1]["lr"] == pytest.approx(1e-3)
    _edit(folder / "trials.parquet" / "a.parquet", _set("status", "winner"))  # rebuilt
    rc, best, err, _ = _summarise(folder, capsys)
    assert rc == 0 and best["lr"] == pytest.approx(1e-3) and "kept" not in err
    assert "a.parquet has status 'winner'" in err
    book = TrialBook(ResultsStore(folder), "s", "MAE", "min", "tune")
    book.load()
    cfg = TrainConfig(num_epochs=2, lr=0.004).to_dict()
    for e, mae in enumerate((0.8, 0.4), 1):
        book.add_result("c", cfg, {"epoch": e, "MAE": mae, "loss": mae})
    book.finish("c", cfg)
    # a write cut between best_config.json and its record: the file is c's, the record a's
    (folder / "best_config.json").write_text(json.dumps(cfg))
    rc, best, err, _ = _summarise(folder, capsys)
    assert rc == 0 and best["lr"] == pytest.approx(0.004) and "kept" not in err
    assert json.loads((folder / schema.BEST_TRIAL).read_text())["trial_id"] == "c"
    (folder / schema.BEST_TRIAL).unlink()  # as written before the record existed
    rc, best, err, _ = _summarise(folder, capsys)
    assert rc == 0 and best["lr"] == pytest.approx(0.004) and "kept" not in err


# ---- 2. a metric the validation split cannot define ---------------------------------------

@pytest.mark.parametrize(("task", "labels", "metric", "needle"), [
    ("regression", np.full(16, 0.5), "Corr", "Corr is undefined: the validation labels are "
                                             "constant (every one is 0.5)"),
    ("regression", np.array([1.5]), "Corr", "has 1 label"),
    ("regression", np.zeros(8), "Non0_acc_2", "every validation label is 0"),
    ("regression", np.linspace(0.1, 2, 8), "Has0_F1_score", "one class (label >= 0)"),
    ("regression", np.linspace(0.1, 2, 8), "Non0_acc_2", "one class (label > 0"),
    ("regression", np.full(8, 0.2), "Mult_acc_7", "one class (rounded, clipped to +-3)"),
    ("sims", np.full(8, 0.05), "Mult_acc_3", "one class"),
    ("sims", np.full(8, 0.5), "F1_score", "one class"),
    ("sims", np.full(8, 2.0), "Corr", "constant (every one is 1)"),  # clipped to [-1, 1]
    ("iemocap", np.zeros((8, 4)), "Mean_F1", "label of every emotion is one class"),
    ("iemocap", np.tile([1, 0, 1, 0], (8, 1)), "Happy_acc", "Happy label is one class"),
])
def test_a_metric_the_labels_cannot_define_says_why(task, labels, metric, needle):
    """Whatever a model predicts, such a metric is NaN (Corr of constant labels) or won by
    a constant prediction (one class): a search on it once showed numpy's "All-NaN slice"."""
    why = undefined_metric(metric, labels, task)
    assert why is not None and why.startswith(metric) and needle in why, why
    assert "\n" not in why
    if metric == "Corr" and labels.size > 1:  # the metric itself agrees: NaN for any model
        preds = np.linspace(-1, 1, labels.shape[0])
        assert np.isnan(task_metrics(task, preds, labels)["Corr"])


@pytest.mark.parametrize(("task", "metrics", "labels"), [
    ("regression", ("loss", *REGRESSION_METRICS), np.linspace(-2.5, 2.5, 12)),
    ("sims", SIMS_METRICS, np.linspace(-1, 1, 12)),
    ("iemocap", IEMOCAP_METRICS, np.eye(4)[np.arange(8) % 4] + np.eye(4)[(np.arange(8) + 1) % 4]),
])
def test_metrics_of_ordinary_labels_are_defined(task, metrics, labels):
    assert [m for m in metrics if undefined_metric(m, labels, task)] == []


def test_a_search_whose_metric_no_trial_has_says_why(tmp_path, capsys):
    """The end of a search on Corr with constant validation labels: the line says why no
    trial has a Corr, instead of only "nothing to recommend"."""
    from ucrn.cli import main as ucrn_main

    data = tmp_path / "data"
    assert ucrn_main(["synth", "--preset", "tiny", "--out", str(data), "--format", "npz"]) == 0
    valid = dict(np.load(data / "valid.npz"))
    valid["labels"] = np.full_like(valid["labels"], 0.5)
    np.savez(data / "valid.npz", **valid)
    store = ResultsStore(tmp_path / "s")
    book = TrialBook(store, "s", "Corr", "max", "tune")
    cfg = TrainConfig(num_epochs=1).to_dict()
    book.add_result("t", cfg, {"epoch": 1, "MAE": 0.4, "loss": 0.4, "Corr": float("nan")})
    book.finish("t", cfg)
    plan = SearchPlan(flags=Flags(name="s", metric="Corr", num_samples=1), storage=str(tmp_path),
                      store=store, space={"lr": {"loguniform": [1e-4, 1e-2]}}, mode="max",
                      settings=SimpleNamespace(base={"data_path": str(data)}), restore=False)
    capsys.readouterr()
    assert summarise(plan) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("no trial finished with a finite Corr") and (
        "Corr is undefined: the validation labels are constant (every one is 0.5)" in err[-1])
    assert not (tmp_path / "s" / "best_config.json").exists()


# ---- 3. duplicate keys in YAML and JSON ---------------------------------------------------

@pytest.mark.parametrize(("text", "key", "line", "first"), [
    ("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: {int: [1, 3]}\nlr: {choice: [0.1]}\n",
     "'lr'", 3, 1),
    ("lr:\n  choice: [0.001]\n  choice: [0.01]\n", "'choice'", 3, 2),
    ("layers: {int: [1, 3], int: [2, 4]}\n", "'int'", 1, 1),
    ("1: a\n1.0: b\n", "1.0", 2, 1),  # equal keys, spelt apart
])
def test_a_duplicate_yaml_key_is_refused_naming_file_key_and_line(text, key, line, first,
                                                                  tmp_path, capsys):
    """The last one silently won: a space searched lr over [0.1] only."""
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(SpaceError) as e:
        load_space(space)
    msg = str(e.value)
    assert f"{space}: refused at line {line}: duplicate key {key} (first at line {first})" \
        in msg and "\n" not in msg, msg
    rc = run_search.main(["--space", str(space), "--storage", str(tmp_path / "r")])
    assert f"duplicate key {key}" in _one_line(capsys, rc)
    assert not [p for p in (tmp_path / "r").rglob("*") if p.is_file()]


@pytest.mark.parametrize(("text", "key", "line", "first"), [
    ('{"lr": 0.001,\n "layers": 2,\n "lr": 0.1}', "'lr'", 3, 1),
    ('{"a": {"k": 1,\n  "k": 2}}', "'k'", 2, 1),
    ('{"s": "\\"lr\\": [{", "b": [{"lr": 1}, {"lr": 2}],\n"b": 3}', "'b'", 2, 1),
])
def test_a_duplicate_json_key_is_refused_naming_file_key_and_line(text, key, line, first,
                                                                  tmp_path, capsys):
    from ucrn.cli import main as ucrn_main

    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(ValueError) as e:
        load_json(config, "--config")
    assert f"refused at line {line}: duplicate key {key} (first at line {first})" in str(e.value)
    rc = ucrn_main(["train", "--config", str(config), "--out", str(tmp_path / "runs")])
    line_ = _one_line(capsys, rc)
    assert str(config) in line_ and f"duplicate key {key}" in line_
    assert not (tmp_path / "runs").exists()


def test_json_without_duplicates_still_reads(tmp_path):
    f = tmp_path / "ok.json"
    f.write_text('{"a": [{"k": 1}, {"k": 2}], "b": {"k": "\\"k\\": 1"}, "k": NaN}')
    got = load_json(f, "x")
    assert got["a"] == [{"k": 1}, {"k": 2}] and np.isnan(got["k"])


# ---- 4. a signal at the very end of a command ---------------------------------------------

# A real command (analyze.py) through its entry point, with a slow exit hook and a slow
# object teardown standing in for Ray's, pyarrow's and torch's (seconds): each prints a
# marker, and the test sends SIGTERM on it.
_END = """
import atexit, os, sys, time
class _Teardown:
    def __del__(self, write=os.write, sleep=time.sleep):  # module globals are gone by then
        write(1, b"finalising\\n")
        sleep(3)
_keep = _Teardown()
if {hook!r}:
    atexit.register(lambda: (print("exit hook", flush=True), time.sleep(3)))
sys.argv = ["analyze.py", {folder!r}, "--no-report", "--top", "1"]
from ucrn.errors import program
program("search.analysis.command:main")
"""


@pytest.mark.parametrize("moment", ["exit hook", "finalising"])
def test_sigterm_right_after_a_command_printed_its_results_is_130(moment, tmp_path):
    """SIGTERM after `--retrain` printed its results killed it (exit 143, no message): the
    interpreter's finalisation resets every handler to the default, and tearing down torch
    and Ray took seconds. Now the exit hooks run under the command's handler (130 and one
    line) and the finalisation never runs (os._exit)."""
    folder = write_fake_search(tmp_path, "s", seed=2)
    code = _END.format(hook=moment == "exit hook", folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.strip() == moment:
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(x.startswith("Top 1 trials of s") for x in seen), seen  # it had finished
    if moment == "exit hook":
        assert proc.returncode == 130, (proc.returncode, err)
        assert err.strip().splitlines() == [
            "interrupted: after the command had finished (exit code 0); what it wrote is "
            "complete"], err
    else:  # the finalisation, where a signal killed it, is never reached
        assert proc.returncode == 0 and "finalising" not in seen and err == "", (
            proc.returncode, seen, err)


# ---- 5. --name ----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "needle"), [
    ("a" * (NAME_MAX_CHARS + 1), f"it is {NAME_MAX_CHARS + 1} characters long, over the "
                                 f"limit of {NAME_MAX_CHARS}"),
    ("x" * 5000, "it is 5000 characters long, over the limit of 200"),
    ("a/b", "holds '/' (character 2)"),
    ("séance", "holds 'é' (character 2), not a printable ASCII character"),
    (" s", "starts or ends with whitespace"),
    ("..", "names the folder itself or its parent"),
    ("", "--name '': expected a plain folder name (ASCII letters, digits, '-', '_', '.'; 1 "
         "to 200 characters); it is empty"),
])
def test_a_refused_name_says_which_rule(name, needle, tmp_path, capsys):
    rc = run_search.main(["--name", name, "--storage", str(tmp_path / "r")])
    line = _one_line(capsys, rc)
    assert line.startswith("error: --name ") and needle in line and len(line) < 400, line
    assert not [p for p in (tmp_path / "r").rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", ["a" * 300, "a%b", "séance"])
def test_every_command_words_the_name_rule_it_breaks(name, tmp_path, capsys):
    """`ucrn train --name` says which rule as `run_search.py --name` does (it said "expected
    a plain folder name" of a 300-character name); the names that pass are untouched."""
    from ucrn.cli import main as ucrn_main

    rc = ucrn_main(["train", "--name", name, "--out", str(tmp_path / "r")])
    line = _one_line(capsys, rc)
    assert line.startswith("error: --name ") and line.endswith(f"it {name_problem(name)}"), line
    assert not (tmp_path / "r").exists()
    for ok in ("ok", "a" * NAME_MAX_CHARS, "a.b-c_d", "-"):
        assert check_name(ok, "--name") == ok and name_problem(ok) is None


def test_a_metric_the_validation_labels_cannot_define_is_refused_before_anything_runs(
        tmp_path, capsys):
    """`run_search.py --metric Corr` and `ucrn train --select_metric Corr` on constant
    validation labels: one line before Ray starts or a run folder exists."""

    from ucrn.cli import main as ucrn_main

    data = tmp_path / "data"
    assert ucrn_main(["synth", "--preset", "tiny", "--out", str(data), "--format", "npz"]) == 0
    valid = dict(np.load(data / "valid.npz"))
    valid["labels"] = np.full_like(valid["labels"], 0.5)
    np.savez(data / "valid.npz", **valid)
    capsys.readouterr()
    rc = run_search.main(["--data-path", str(data), "--metric", "Corr", "--storage",
                          str(tmp_path / "s"), "--name", "c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: --metric Corr: Corr is undefined: the validation labels "
                             "are constant"), err
    assert not (tmp_path / "s" / "c").exists()
    rc = ucrn_main(["train", "--data_path", str(data), "--select_metric", "Corr",
                    "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--select_metric Corr: Corr is undefined" in err[0], err
    assert not (tmp_path / "r").exists()
