"""The search's Optuna study in STORAGE/NAME/optuna.journal (search/journal.py): written as
trials report, readable by Optuna's own tools while the search runs, continued by --resume,
and what optuna-dashboard shows."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from ray import tune

import search.journal as journal
from search.journal import JournalOptuna, load_study, make_journal_callback
from tests.raynodes import free_port

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"lr": tune.loguniform(1e-4, 1e-2)}
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _no_journal_of_another_run():
    journal._this_run = None
    yield
    journal._this_run = None


def _searcher(path: Path, **kw) -> JournalOptuna:
    """As the driver makes it (the space comes from Tune's set_search_properties)."""
    s = JournalOptuna(journal=str(path), study_name="s", num_epochs=3, metric="MAE", mode="min",
                      sampler=optuna.samplers.RandomSampler(seed=0), **kw)
    s.set_search_properties("MAE", "min", SPACE)
    return s


def _by_tid(path: Path) -> dict[str, optuna.trial.FrozenTrial]:
    """The study as another process reads it, by Tune trial id."""
    return {t.user_attrs["trial_id"]: t for t in load_study(path, "s").trials
            if "trial_id" in t.user_attrs}


def test_trials_are_written_as_they_report_and_closed_by_how_they_ended(tmp_path):
    path = tmp_path / "optuna.journal"
    s = _searcher(path)
    for tid in "abcd":
        s.suggest(tid)
    s.on_trial_result("a", {"MAE": 0.9, "epoch": 1})
    seen = _by_tid(path)
    assert seen["a"].state == TrialState.RUNNING and seen["a"].intermediate_values == {1: 0.9}
    s.on_trial_result("a", {"MAE": 0.7, "epoch": 2})
    s.on_trial_result("a", {"MAE": 0.9, "replayed_epoch": 1, "replay": 1.0})  # no repeat
    s.on_trial_complete("a", {"MAE": 0.8, "epoch": 3})  # Tune's stopping result: here only
    s.on_trial_result("b", {"MAE": 1.1, "epoch": 1})
    s.on_trial_complete("b", {"MAE": 1.0, "epoch": 2})  # stopped by ASHA at epoch 2
    s.on_trial_complete("c", None, error=True)
    s.on_trial_result("d", {"MAE": 1.2, "epoch": 1})
    s.on_trial_complete("d", {"MAE": 1.2, "epoch": 1, "diverged": 1.0})
    s.on_trial_complete("d", {"MAE": 1.2, "epoch": 1})  # told once
    seen = _by_tid(path)
    assert seen["a"].state == TrialState.COMPLETE and seen["a"].value == 0.7  # its best epoch
    assert seen["a"].intermediate_values == {1: 0.9, 2: 0.7, 3: 0.8}
    assert seen["b"].state == TrialState.PRUNED and seen["b"].value == 1.0  # its last epoch
    assert seen["c"].state == TrialState.FAIL and seen["c"].user_attrs["status"] == "not run"
    assert seen["d"].state == TrialState.FAIL and seen["d"].user_attrs["status"] == "diverged"
    assert [seen[t].user_attrs["status"] for t in "ab"] == ["completed", "stopped"]
    assert len(load_study(path).trials) == 4


def test_a_restored_searcher_continues_the_journal_of_this_run(tmp_path):
    """Tune unpickles the searcher made by the first run (its journal path with it: on
    object storage a temporary folder long gone), calls set_search_properties, then restores
    the pickled state, which may be older than the journal. The study goes on in this run's
    journal, each trial once, and the warm start's points are not added again."""
    first = tmp_path / "first" / "optuna.journal"
    first.parent.mkdir()
    kw = {"points_to_evaluate": [{"lr": 1e-3}], "evaluated_rewards": [0.5]}
    made = pickle.dumps(JournalOptuna(journal=str(first), study_name="s", num_epochs=3,
                                      metric="MAE", mode="min",
                                      sampler=optuna.samplers.RandomSampler(seed=0), **kw))
    s = _searcher(first, **kw)  # the first run's (tuner.pkl holds `made`)
    s.suggest("a")
    s.on_trial_result("a", {"MAE": 0.9, "epoch": 1})
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's saved state: a running, b not yet
    assert not {"_storage", "_ot_study"} & set(pickle.loads((tmp_path / "searcher.pkl")
                                                            .read_bytes()))  # in the journal
    s.suggest("b")
    s.on_trial_result("b", {"MAE": 0.95, "epoch": 1})
    s.on_trial_result("a", {"MAE": 0.8, "epoch": 2})
    now = tmp_path / "now" / "optuna.journal"
    now.parent.mkdir()
    shutil.copy(first, now)  # the downloaded copy
    shutil.rmtree(first.parent)
    journal._this_run = str(now)

    restored = pickle.loads(made)
    restored.set_search_properties("MAE", "min", SPACE)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", {"MAE": 0.9, "replayed_epoch": 1, "replay": 1.0})
    restored.on_trial_result("a", {"MAE": 0.8, "replayed_epoch": 2, "replay": 1.0})
    restored.on_trial_complete("a", {"MAE": 0.75, "epoch": 3})
    restored.on_trial_complete("b", {"MAE": 0.95, "epoch": 1, "config": {"lr": 2e-3}})
    restored.suggest("c")
    restored.on_trial_complete("c", None, error=True)
    study = load_study(now, "s")
    assert [t.user_attrs.get("trial_id") for t in study.trials] == [None, "a", "b", "c"]
    assert study.trials[0].value == 0.5  # the warm start's point, once
    a, b = study.trials[1], study.trials[2]
    assert a.intermediate_values == {1: 0.9, 2: 0.8, 3: 0.75} and a.value == 0.75
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 0.95}


def test_a_trial_the_restored_state_never_suggested_is_added(tmp_path):
    s = _searcher(tmp_path / "optuna.journal")
    s.on_trial_result("x", {"MAE": 0.6, "epoch": 1, "config": {"lr": 3e-3, "seed": 1}})
    s.on_trial_complete("x", {"MAE": 0.6, "epoch": 1, "config/lr": 3e-3})
    s.on_trial_complete("y", None, error=True)  # nothing known of it: nothing added
    (x,) = load_study(tmp_path / "optuna.journal", "s").trials
    assert x.params == {"lr": 3e-3} and x.user_attrs["trial_id"] == "x"
    assert x.state == TrialState.PRUNED and x.intermediate_values == {1: 0.6}


def test_the_callback_closes_what_tune_ended_without_the_searcher(tmp_path):
    """--epoch-budget stops trials without telling the searcher; a trial the dead driver
    started is not in the resumed run's state. Neither stays RUNNING once the search ends;
    an interrupted search leaves them running for --resume."""
    path = tmp_path / "optuna.journal"
    s = _searcher(path)
    for tid in "abcde":
        s.suggest(tid)
    for tid, epochs in {"a": 3, "b": 2, "c": 1}.items():
        for e in range(1, epochs + 1):
            s.on_trial_result(tid, {"MAE": 1.0 / e, "epoch": e})
    trials = [SimpleNamespace(trial_id=t, status=st, config={"lr": 1e-3})
              for t, st in (("a", "TERMINATED"), ("b", "TERMINATED"), ("d", "ERROR"),
                            ("e", "TERMINATED"))]  # c: lost
    cb = make_journal_callback(str(tmp_path), str(path), "s", 3)
    cb.setup()
    (tmp_path / ".interrupted").write_text("")
    cb.on_experiment_end(trials=trials)
    assert {t.state for t in load_study(path, "s").trials} == {TrialState.RUNNING}
    (tmp_path / ".interrupted").unlink()
    cb.on_experiment_end(trials=trials)
    seen = _by_tid(path)
    assert {t: seen[t].state.name for t in "abcde"} == {
        "a": "COMPLETE", "b": "PRUNED", "c": "PRUNED", "d": "FAIL", "e": "FAIL"}
    assert seen["a"].value == 1 / 3 and seen["c"].user_attrs["status"] == "stopped"


def test_on_object_storage_the_journal_is_local_and_uploaded(bucket, tmp_path):
    """A local copy (downloaded when the store has one: --resume) that the callback uploads
    as STORAGE/NAME/optuna.journal."""
    from search.results import ResultsStore

    store = ResultsStore(f"s3://{bucket}/n")
    s = _searcher(tmp_path / "earlier.journal")  # what an earlier run left in the store
    s.suggest("a")
    s.on_trial_result("a", {"MAE": 0.9, "epoch": 1})
    store.write_bytes("optuna.journal", (tmp_path / "earlier.journal").read_bytes())
    local = journal.open_journal(store)
    assert not local.startswith(str(tmp_path)) and Path(local).read_bytes() == \
        (tmp_path / "earlier.journal").read_bytes()
    s = _searcher(Path(local))
    s.suggest("b")
    s.on_trial_complete("b", {"MAE": 0.8, "epoch": 1})
    cb = make_journal_callback(store.uri, local, "s", 3)
    cb.setup()
    cb.on_trial_complete(0, [], None)
    down = tmp_path / "down.journal"
    with store.fs.open_input_stream(store.path("optuna.journal")) as f:
        down.write_bytes(f.read())
    assert set(_by_tid(down)) == {"a", "b"} and _by_tid(down)["b"].state == TrialState.PRUNED


# ---- end to end: one search on the session's Ray head, interrupted and resumed ----------

SMALL_SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
heads: {choice: [1, 2]}
layers: 1
d_model: 8
"""
NAME = "journal-e2e"


def _trials_with_epochs(path: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return [t for t in load_study(path, NAME).trials if t.intermediate_values]
    except (KeyError, ValueError, OSError):  # not written yet
        return []


@pytest.fixture(scope="module")
def journal_search(ray_head, ray_env, tmp_path_factory):
    """A 4-trial search: its journal read by this process while the driver runs, the driver
    interrupted (SIGINT) and the search resumed to its end. Yields the storage folder, the
    trials read mid-search and the study as the interrupted driver left it."""
    storage = tmp_path_factory.mktemp("journal")
    (storage / "space.yaml").write_text(SMALL_SPACE)
    args = [sys.executable, str(ROOT / "run_search.py"), "--address", ray_head, "--storage",
            str(storage), "--name", NAME]
    log = storage / "driver.log"
    proc = subprocess.Popen([*args, "--executor", "tune", "--space", str(storage / "space.yaml"),
                             "--num-samples", "4", "--max-epochs", "3", "--grace-period", "1",
                             "--reduction-factor", "2", "--max-concurrent", "2"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ray_env,
                            start_new_session=True)
    path = storage / NAME / "optuna.journal"
    try:
        deadline, seen = time.time() + 240, []
        while not seen:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            seen = _trials_with_epochs(path)
            time.sleep(0.3)
        running_after_read = proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert running_after_read and rc == 130, log.read_text()[-3000:]
    interrupted = load_study(path, NAME).trials
    import run_search  # the resume in this process: no driver start-up of its own

    assert run_search.main([*args[2:], "--resume"]) == 0
    return SimpleNamespace(storage=storage, path=path, seen=seen, interrupted=interrupted)


@pytest.mark.slow
def test_the_journal_is_read_while_the_search_runs(journal_search):
    first = journal_search.seen[0]
    assert first.user_attrs["trial_id"] and set(first.params) == {"lr", "heads"}
    assert min(first.intermediate_values) == 1  # step = epoch


@pytest.mark.slow
def test_every_trial_of_the_search_is_in_its_study(journal_search):
    root = journal_search.storage / NAME
    trials = pd.read_parquet(root / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(root / "epochs.parquet")
    (summary,) = optuna.get_all_study_summaries(journal.journal_storage(journal_search.path))
    assert summary.study_name == NAME
    study = load_study(journal_search.path, NAME)
    by_tid = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert len(study.trials) == len(by_tid) == len(trials) == 4  # each trial once
    assert set(by_tid) == set(trials.index)
    state = {"completed": "COMPLETE", "stopped": "PRUNED", "errored": "FAIL",
             "diverged": "FAIL"}
    for tid, t in by_tid.items():
        row = trials.loc[tid]
        assert t.params == {"lr": pytest.approx(row.lr), "heads": row.heads}
        assert (t.state.name, t.user_attrs["status"]) == (state[row.status], row.status)
        mine = epochs[epochs.trial_id == tid].set_index("epoch").MAE.to_dict()
        assert t.intermediate_values == pytest.approx(mine)
        if t.state == TrialState.COMPLETE:
            assert math.isclose(t.value, row.MAE)


@pytest.mark.slow
def test_resume_continues_the_study(journal_search):
    before = {t.number: t for t in journal_search.interrupted}
    assert any(t.state == TrialState.RUNNING for t in before.values())  # left for --resume
    after = {t.number: t for t in load_study(journal_search.path, NAME).trials}
    for number, t in before.items():  # the same trials, carried on
        assert after[number].user_attrs["trial_id"] == t.user_attrs["trial_id"]
        assert after[number].params == t.params
        assert t.intermediate_values.items() <= after[number].intermediate_values.items()
    assert all(t.state.is_finished() for t in after.values())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optunas_own_analysis_reads_the_study(journal_search, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    study = load_study(journal_search.path)  # the only study in the file
    importances = optuna.importance.get_param_importances(study)
    assert set(importances) <= {"lr", "heads"}
    ax = plot_optimization_history(study)
    ax.figure.savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0


def _trial_id(trial: dict) -> str:
    return next(a["value"] for a in trial["user_attrs"] if a["key"] == "trial_id")


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.slow
def test_optuna_dashboard_shows_the_search(journal_search, tmp_path):
    """optuna-dashboard on the journal: its JSON API, and the page in a headless browser
    when one is installed (a screenshot is left in tmp_path)."""
    import json

    pytest.importorskip("optuna_dashboard")
    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(exe), str(journal_search.path), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=open(tmp_path / "dash.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, \
                    (tmp_path / "dash.log").read_text()[-2000:]
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == [NAME]
        with urllib.request.urlopen(f"{url}/api/studies/{studies[0]['study_id']}") as r:
            detail = json.load(r)
        trial_ids = {a["value"] for t in detail["trials"] for a in t["user_attrs"]
                     if a["key"] == "trial_id"}
        tids = set(pd.read_parquet(journal_search.storage / NAME / "trials.parquet").trial_id)
        assert trial_ids == tids
        browser = _chromium()
        if browser is None:
            pytest.skip("no headless browser here (apt-get install chromium); "
                        "the JSON API was checked")
        page = f"{url}/dashboard/studies/{studies[0]['study_id']}"
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu",
                 "--virtual-time-budget=15000", "--window-size=1280,900"]
        dom = subprocess.run([*flags, "--dump-dom", f"{page}/trials"], capture_output=True,
                             text=True, timeout=120).stdout
        first = min(detail["trials"], key=lambda t: t["number"])  # shown selected
        assert f"{NAME} (id=" in dom and _trial_id(first) in dom
        assert all(f"Trial {t['number']}" in dom for t in detail["trials"])
        subprocess.run([*flags, f"--screenshot={tmp_path / 'dashboard.png'}", page],
                       capture_output=True, timeout=120)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()


# ---- attack round on issue 26: a journal --resume cannot continue -------------------------

def _journal(tmp_path: Path) -> Path:
    path = tmp_path / "optuna.journal"
    s = _searcher(path)
    s.suggest("a")
    s.on_trial_result("a", {"MAE": 0.9, "epoch": 1})
    return path


def test_a_last_record_cut_short_is_dropped_before_the_next_append(tmp_path):
    """A journal whose last line was cut (a full disk, a killed driver): Optuna's reader
    skips it, but its next append joined the half line, and from then on every reader of
    the study failed ('Expecting : delimiter'). check_journal cuts it first, and says so."""
    path = _journal(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":7,"worker_id":"w","trial_id":0,"st')
    note = journal.check_journal(path, "S/optuna.journal")
    assert note.startswith("S/optuna.journal: its last record was cut short (") and "\n" not in note
    assert path.read_bytes() == whole
    s = _searcher(path)  # the resumed run appends: the study stays readable
    s.suggest("b")
    s.on_trial_complete("b", {"MAE": 0.8, "epoch": 1})
    assert set(_by_tid(path)) == {"a", "b"}
    assert journal.check_journal(path, "S/optuna.journal") is None  # nothing more to do


@pytest.mark.parametrize("damage", ["garbage line", "binary", "not a record", "unknown op",
                                    "symlink", "folder"])
def test_a_journal_resume_cannot_continue_is_one_line_and_left_alone(tmp_path, damage):
    path = _journal(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    if damage == "garbage line":
        path.write_bytes(path.read_bytes() + b"this is not json\n{\"op_code\": 1}\n")
    elif damage == "binary":
        path.write_bytes(path.read_bytes() + b"\x00\xff\xfe\n")
    elif damage == "not a record":
        path.write_bytes(path.read_bytes() + b"[1, 2]\n")
    elif damage == "unknown op":
        path.write_bytes(path.read_bytes() + b'{"op_code": 99}\n')
    elif damage == "symlink":  # the appends landed in the link's target
        path.unlink()
        path.symlink_to(victim)
    else:
        path.unlink()
        path.mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(journal.UsageError) as e:
        journal.check_journal(path, "S/optuna.journal")
    assert str(e.value).startswith("--resume: S/optuna.journal ") and "\n" not in str(e.value)
    if damage == "garbage line":
        lines = len(path.read_bytes().splitlines())
        assert f"line {lines - 1} is not an Optuna journal record" in str(e.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert victim.read_text() == "precious\n"


def test_resume_with_a_damaged_journal_is_refused_before_ray(tmp_path, capsys):
    """The resumed search once started its trials and then stopped with `error: Expecting
    value: line 1 column 1 (char 0)` (exit 2), naming no file."""
    import run_search
    from search.flags import parse_flags

    folder = tmp_path / "st" / "s"
    folder.mkdir(parents=True)
    flags = parse_flags(["--name", "s", "--storage", str(tmp_path / "st")])[0].saved()
    (folder / "search.json").write_text(json.dumps({"flags": flags, "space": {
        "lr": {"loguniform": [1e-4, 1e-2]}}}))
    (folder / "optuna.journal").write_text("garbage\n")
    assert run_search.main(["--storage", str(tmp_path / "st"), "--name", "s", "--resume",
                            "--address", "127.0.0.1:1"]) == 2  # (refused before Ray)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --resume: {folder}/optuna.journal line 1 is not an Optuna journal "
                   "record (JSONDecodeError: edited by hand or damaged?), and no reader of the "
                   "study gets past it; repair the line, or move the file away to resume with "
                   "a new journal of the trials from here on"], err


@pytest.mark.parametrize("how", ["renamed", "moved"])
def test_resume_of_a_renamed_or_moved_search_is_refused(tmp_path, capsys, how):
    """A search folder renamed (or its storage moved, or copied) and resumed there: Tune's
    saved state still named the old place, and the resumed trials wrote into the old folder
    (made anew when it was gone), the copy's original changed under it."""
    import run_search
    from search.flags import parse_flags

    made = tmp_path / "st" / "a"
    flags = parse_flags(["--name", "a", "--storage", str(tmp_path / "st")])[0].saved()
    now = tmp_path / "st" / "b" if how == "renamed" else tmp_path / "elsewhere" / "a"
    now.mkdir(parents=True)
    (now / "search.json").write_text(json.dumps({"flags": flags, "location": str(made),
                                                 "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    assert run_search.main(["--storage", str(now.parent), "--name", now.name, "--resume",
                            "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    why = ("the search 'a' (flags.name), in a folder named 'b'" if how == "renamed"
           else f"the search made at {made}")
    assert err == [f"error: --resume: {now}/search.json is {why}: renamed, moved or copied? "
                   "Tune's saved state would write to where it was made; put the folder back "
                   "there to resume it, or start a new search"], err
    assert not made.exists() and sorted(p.name for p in now.iterdir()) == ["search.json"]


def test_on_object_storage_the_downloaded_journal_is_checked(bucket, tmp_path, capsys):
    """The same check on the copy --resume downloads: a cut last record dropped (and so
    uploaded whole later), a line that is not a record one line, the object unchanged."""
    from search.results import ResultsStore

    store = ResultsStore(f"s3://{bucket}/n")
    whole = _journal(tmp_path).read_bytes()
    store.write_bytes("optuna.journal", whole + b'{"op_code":7,"wor')
    local = journal.open_journal(store)
    assert Path(local).read_bytes() == whole
    assert "its last record was cut short" in capsys.readouterr().err
    store.write_bytes("optuna.journal", b"garbage\n" + whole)
    with pytest.raises(journal.UsageError, match=r"optuna.journal line 1 is not an Optuna "):
        journal.open_journal(store)
    with store.fs.open_input_stream(store.path("optuna.journal")) as f:
        assert f.read() == b"garbage\n" + whole
