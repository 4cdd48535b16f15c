"""Cases from the fifth attack round (2026-12-07): each was damage or an unclear answer."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


RESUME = """
import sys
from search.trial import run_body
from ucrn.config import TrainConfig
from ucrn.data import load_dataset

cfg = TrainConfig(d_model=8, heads=2, layers=1, num_epochs=1, threads=1).to_dict()
try:
    run_body(cfg, load_dataset("synthetic", None, preset="tiny"), lambda m, d: None, sys.argv[1])
except ValueError as e:
    print(e)
"""


@pytest.mark.parametrize("kind", ["fifo", "pickle", "torch-zip", "directory"])
def test_a_trials_resume_state_is_read_by_the_safe_loader(kind, tmp_path):
    """A trial's state.pt, put there by hand: a FIFO hung the trial for good; a malicious
    pickle was refused by torch but the trial's error was torch's boilerplate sentence.
    Now: one line naming the file, at once, and nothing run."""
    ck, marker = tmp_path / "ck", tmp_path / "ran"
    ck.mkdir()
    state = ck / "state.pt"
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "pickle":
        state.write_bytes(pickle.dumps(_Evil(marker)))
    elif kind == "torch-zip":
        with zipfile.ZipFile(state, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
            z.writestr("archive/version", "3\n")
    else:
        state.mkdir()
    r = subprocess.run([sys.executable, "-c", RESUME, str(ck)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 1, (r.stdout, r.stderr[-2000:])
    assert lines[0].startswith(f"resume state {state}:"), lines
    assert not marker.exists()


SECRET = "SEKRIT123"


def _commands(tmp_path: Path, uri: str) -> dict[str, list[str]]:
    return {
        "search": ["run_search", "--storage", uri, "--num-samples", "1"],
        "warm-start": ["run_search", "--storage", str(tmp_path / "r"), "--warm-start",
                       f"{uri}/s", "--num-samples", "1"],
        "retrain": ["run_search", "--retrain", f"{uri}/s"],
        "analyze": ["analyze", f"{uri}/s"],
        "predict": ["ucrn", "predict", "--checkpoint", f"{uri}/c.pt", "--out",
                    str(tmp_path / "p.parquet")],
    }


@pytest.mark.parametrize("command", ["search", "warm-start", "retrain", "analyze", "predict"])
@pytest.mark.parametrize("uri", [f"file://alice:{SECRET}@/tmp/x", f"FILE://alice%3A{SECRET}@/x",
                                 "file://otherhost/tmp/x", f"file:///tmp/x?token={SECRET}",
                                 f"file:///tmp/x#{SECRET}", "file:///tmp/x%00y",
                                 "file:///tmp/x%FF%FE"])
def test_a_file_uri_with_a_host_or_a_secret_is_refused_in_one_line(command, uri, tmp_path,
                                                                   monkeypatch, capsys):
    """`--storage file://USER:SECRET@/PATH` ran a search into ./USER:SECRET@/PATH, the
    secret in folder names, search.json and Ray's logs; `?token=SECRET` became part of a
    folder's name; %00 gave "embedded null byte"; %FF%FE made a folder of U+FFFD. Every
    command that takes a folder or file refuses such a file URI in one line without the
    secret, and writes nothing."""
    import analyze
    import run_search
    from ucrn import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()  # the warm-started search's own storage
    argv = _commands(tmp_path, uri)[command]
    main = {"run_search": run_search.main, "analyze": analyze.main,
            "ucrn": cli.main}[argv[0]]
    before = set(tmp_path.rglob("*"))
    rc = main(argv[1:])
    out = capsys.readouterr()
    err = [ln for ln in out.err.strip().splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, out)
    assert "file URI" in err[0] and SECRET not in out.out + out.err
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("spelling", ["file://{p}", "FILE://{p}", "File://localhost{p}",
                                      "file:{p}", "{p}"])
def test_every_spelling_of_a_local_folder_is_that_folder(spelling, tmp_path, monkeypatch):
    """`FILE:///x`, `file:/x` and `file://localhost/x` made folders under the working folder
    (`./FILE:/x`...): each names /x, for a search's storage and its readers alike."""
    from search.analysis.files import filesystem
    from search.flags import check_storage
    from search.results import ResultsStore

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "a b"
    text = spelling.format(p=str(target).replace(" ", "%20") if "file" in spelling.lower()
                           else str(target))
    assert check_storage(text) == str(target)  # the run makes it (a refused one: none)
    assert ResultsStore(text).root == str(target)
    target.mkdir()
    assert filesystem(text)[1] == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b"]


def _env(extra: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(extra)])}


def _run_until(tmp_path: Path, module: str, marker: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "from ucrn.errors import program; "
                             f"program('{module}:main')"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line and marker not in line:
        line = proc.stdout.readline()
    assert line, proc.stderr.read()[-2000:]
    return proc


STUCK = """
import ctypes
import threading
import time
from pathlib import Path
from search.cluster import GracefulStop

def say_stuck():
    time.sleep(1.0)  # the main thread is inside the C call by then
    print("stuck", flush=True)

def main():
    mark = Path("marked")
    with GracefulStop("python run_search.py --resume --name s", "/results/s",
                      lambda: mark.write_text("")) as stop:
        stop.tune_started()
        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)
        libc.pthread_mutex_init(mutex, None)
        libc.pthread_mutex_lock(mutex)
        threading.Thread(target=say_stuck, daemon=True).start()
        libc.pthread_mutex_lock(mutex)  # never returns, and no signal ends it
"""


def test_a_stop_signal_while_the_main_thread_waits_in_c_code_still_stops(tmp_path):
    """With the Ray head gone, the driver's main thread waited inside Ray's C++ client: the
    Python handler never ran, and a SIGTERM did nothing (exit 1 a minute later, Ray's line).
    Here the main thread waits in a C call no signal ends: the run leaves STUCK_S after the
    signal, exit 130, marked interrupted, with the resume command."""
    from search.cluster import STUCK_S

    (tmp_path / "stuck.py").write_text(STUCK)
    proc = _run_until(tmp_path, "stuck", "stuck")
    t = time.monotonic()
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STUCK_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert STUCK_S - 1 < time.monotonic() - t < STUCK_S + 20
    assert "did not answer the signal" in err and "resume with: python run_search.py" in err
    assert (tmp_path / "marked").exists()


SLOW = """
import time

def main():
    print("running", flush=True)
    time.sleep(60)
    print("ran on", flush=True)
    return 0
"""


def test_sighup_is_the_usual_stop(tmp_path):
    """A closed terminal's SIGHUP killed a search with no word (exit 129), at its very end
    before best_config.json was written: now the clean stop, exit 130."""
    (tmp_path / "slow.py").write_text(SLOW)
    proc = _run_until(tmp_path, "slow", "running")
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "ran on" not in out, (proc.returncode, err)
    assert err.strip() == "interrupted", err


DELS = """
class Odd:
    def __del__(self):
        raise SystemExit({code})

def main():
    o = Odd()
    del o
    print("ran on", flush=True)
    return 0
"""


@pytest.mark.parametrize("code", [2, 15, 1])
def test_a_systemexit_from_a_del_is_no_stop_unless_a_signal_handler_raised_it(code, tmp_path):
    """SystemExit(2) (argparse's and the usage code, also SIGINT's number) raised in a
    user's __del__ was taken for a swallowed SIGINT: "interrupted", exit 130, though no
    signal came. Only a stop signal's handler (Ray's sys.exit(signum) during ray.init) is
    redelivered (tests/test_attack_round4.py); this is Python's report, and the run goes on."""
    (tmp_path / "dels.py").write_text(DELS.format(code=code))
    r = subprocess.run([sys.executable, "-c", "from ucrn.errors import program; "
                        "program('dels:main')"], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ran on" in r.stdout, (r.returncode, r.stderr)
    assert "Exception ignored" in r.stderr and "interrupted" not in r.stderr


def test_a_lock_file_deleted_by_hand_does_not_let_a_second_driver_in(tmp_path):
    """`rm STORAGE/NAME/.lock` while a search ran (a "stale lock" cleaned up): a second
    driver took a new lock file and wrote into the running search (3 trials in a 2-trial
    search, the best trial changed). The folder itself is locked too."""
    from search.lock import ResultsLock
    from search.results import ResultsStore
    from ucrn.errors import UsageError

    store = ResultsStore(tmp_path / "s")
    first = ResultsLock(store, "search")
    first.acquire()
    try:
        (tmp_path / "s" / ".lock").unlink()
        with pytest.raises(UsageError, match=r"in use by another driver: its lock file \.lock "
                                             r"was deleted by hand"):
            ResultsLock(store, "search").acquire()
        (tmp_path / "s" / ".lock").write_text("{}")  # a lock file put back by hand
        with pytest.raises(UsageError, match="in use by another driver"):
            ResultsLock(store, "--resume").acquire()
    finally:
        first.release()
    with ResultsLock(store, "search"):  # free again once the first is done
        pass


def test_a_refused_resume_leaves_no_storage_folder_behind(tmp_path, capsys):
    """`--resume` of a search that is not there made STORAGE (and STORAGE/NAME) on its way
    to refusing: a refused run now leaves no folder it made."""
    import run_search

    storage = tmp_path / "new" / "storage"
    rc = run_search.main(["--storage", f"file://{storage}", "--name", "s", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_analyze_of_a_file_uri_writes_its_report_beside_the_search(tmp_path, monkeypatch):
    """`analyze.py file:///X` took the folder for remote storage and wrote ./NAME-report in
    the working folder; /X writes X/report."""
    import analyze
    from tests.results_fixture import write_fake_search

    folder = write_fake_search(tmp_path, "s", n_trials=3, seed=0)
    monkeypatch.chdir(tmp_path)
    assert analyze.main([f"file://{folder}"]) == 0
    assert (folder / "report" / "report.md").is_file()
    assert not list(tmp_path.glob("*-report"))


def test_the_ray_log_file_gone_mid_run_is_no_traceback(tmp_path):
    """The results folder moved away while a search ran: opening its log file (at the
    first record) raised out of Tune's error handling, five tracebacks and exit 1 with no
    word of how to resume. The log gives up silently; the run's own line says the rest."""
    import logging

    from search.cluster import _QuietFileHandler

    folder = tmp_path / "logs"
    folder.mkdir()
    handler = _QuietFileHandler(folder / "driver.log", delay=True)
    folder.rmdir()
    record = logging.LogRecord("ray.tune", logging.ERROR, __file__, 1, "trial failed", None, None)
    handler.emit(record)  # no exception
    handler.close()
