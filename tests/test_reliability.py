"""Bad input gets one clear line and writes nothing; faults lose nothing (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run_search
from search.results import ResultsStore, TrialBook
from ucrn.cli import main as ucrn_main
from ucrn.data import load_dataset, make_synthetic, write_mult_pickle
from ucrn.errors import signals_held, sigterm_as_interrupt

ROOT = Path(__file__).resolve().parents[1]
NAME = "mosi_data_noalign.pkl"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _raw(n: int = 8) -> dict:
    return make_synthetic("tiny", seed=1, n_train=n, n_valid=n, n_test=n)


def _write(folder: Path, obj) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / NAME, "wb") as f:
        pickle.dump(obj, f)


def _bad_data(kind: str, root: Path) -> tuple[str, str]:
    """Build one broken input; returns (data_path, text the message must contain)."""
    d = root / kind
    raw = _raw()
    if kind == "missing_path":
        return str(root / "nope"), str(root / "nope")
    if kind == "not_a_folder":
        d.mkdir()
        (d / "notes.txt").write_text("hello")
        return str(d / "notes.txt"), "notes.txt"
    if kind == "file_absent":
        d.mkdir()
        return str(d), NAME
    if kind == "truncated":
        write_mult_pickle(raw, d / NAME)
        data = (d / NAME).read_bytes()
        (d / NAME).write_bytes(data[: len(data) // 3])
        return str(d), NAME
    if kind == "not_a_dict":
        _write(d, [raw["train"], raw["valid"]])
        return str(d), "dict"
    if kind == "split_missing":
        del raw["test"]
        _write(d, raw)
        return str(d), "test"
    if kind == "modality_missing":
        del raw["valid"]["vision"]
        _write(d, raw)
        return str(d), "vision"
    if kind == "wrong_rank":
        raw["train"]["audio"] = raw["train"]["audio"][:, :, 0]
        _write(d, raw)
        return str(d), "audio"
    if kind == "n_mismatch":
        raw["train"]["labels"] = raw["train"]["labels"][:-1]
        _write(d, raw)
        return str(d), "labels"
    if kind == "empty_split":
        raw["valid"] = {k: v[:0] for k, v in raw["valid"].items()}
        _write(d, raw)
        return str(d), "valid"
    if kind == "malicious":
        _write(d, {"train": _Evil(root / "PWNED")})
        return str(d), "system"
    raise AssertionError(kind)


BAD_DATA = ["missing_path", "not_a_folder", "file_absent", "truncated", "not_a_dict",
            "split_missing", "modality_missing", "wrong_rank", "n_mismatch", "empty_split",
            "malicious"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_one_line_nothing_written(kind, tmp_path, capsys):
    data_path, needle = _bad_data(kind, tmp_path)
    storage = tmp_path / "results"
    rc = run_search.main(["--dataset", "mosi", "--data-path", data_path, "--storage", str(storage)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert needle in err[0], err[0]
    assert _files(storage) == []
    rc = ucrn_main(["train", "--dataset=mosi", f"--data_path={data_path}", "--out",
                    str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "PWNED").exists()  # the malicious pickle ran nothing


def test_iemocap_labels_of_the_wrong_shape(tmp_path, capsys):
    raw = _raw()  # sentiment labels (N, 1, 1) where IEMOCAP needs (N, 4, 2)
    d = tmp_path / "iemo"
    d.mkdir()
    write_mult_pickle(raw, d / "iemocap_data_noalign.pkl")
    assert run_search.main(["--dataset", "iemocap", "--data-path", str(d), "--storage",
                            str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'labels'" in err and "(N,4,2) one-hot or (N,4) of 0/1 expected for iemocap" in err, err
    assert len(err.splitlines()) == 1


def test_all_nan_modality_warns_and_trains(tmp_path):
    raw = _raw(32)
    for split in ("train", "valid", "test"):
        raw[split]["vision"][:] = np.nan
    write_mult_pickle(raw, tmp_path / NAME)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset("mosi", tmp_path)
    assert any("vision" in str(w.message) for w in caught)
    assert not data.splits["train"].vision.any()
    assert data.nonfinite["train"]["vision"] == raw["train"]["vision"].size


@pytest.mark.slow
def test_results_store_cost_is_flat(tmp_path):
    """Writing trial k's rows costs the same whether k is 1 or 200 (no growing rewrite)."""
    book = TrialBook(ResultsStore(tmp_path / "s"), "s", "MAE", "min", "tune")
    config = {"lr": 1e-3, "num_epochs": 3, "heads": 2}
    times, mems = [], []
    tracemalloc.start()
    for i in range(200):
        tid = f"t{i:04d}"
        t0 = time.perf_counter()
        before = tracemalloc.get_traced_memory()[0]
        for epoch in (1, 2, 3):
            book.add_result(tid, config, {"epoch": epoch, "MAE": 1.0 / (i + epoch),
                                          "loss": 1.0, "train_loss": 1.0, "seconds": 0.1})
        book.finish(tid, config)
        times.append(time.perf_counter() - t0)
        mems.append(tracemalloc.get_traced_memory()[0] - before)
    tracemalloc.stop()
    first, last = np.median(times[:20]), np.median(times[-20:])
    assert last < 2.0 * first, (first, last)
    assert np.median(mems[-20:]) < 2.0 * np.median(mems[:20]) + 4096
    trials = pd.read_parquet(tmp_path / "s" / "trials.parquet")
    assert len(trials) == 200 and trials.trial_id.is_unique
    assert len(pd.read_parquet(tmp_path / "s" / "epochs.parquet")) == 600


FAULT_SPACE = """\
lr: {choice: [0.001, 1.0e12]}
batch_size: {choice: [32, 64]}
optim: SGD
clip: 0.0
layers: 1
d_model: 8
heads: 2
"""


@pytest.mark.slow
def test_diverged_and_errored_trials_are_recorded(ray_head, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(FAULT_SPACE)
    rc = run_search.main(["--address", ray_head, "--storage", str(tmp_path), "--name", "f",
                          "--executor", "tune", "--space", str(space), "--num-samples", "8",
                          "--max-epochs", "2", "--max-failures", "1", "--seed", "3"],
                         fail_if={"batch_size": 64})
    out = capsys.readouterr().out
    trials = pd.read_parquet(tmp_path / "f" / "trials.parquet")
    assert len(trials) == 8
    errored = trials[trials.batch_size == 64]  # the fault fires when such a trial starts
    diverged = trials[(trials.batch_size == 32) & (trials.lr > 1)]
    healthy = trials[(trials.batch_size == 32) & (trials.lr < 1)]
    assert (errored.status == "errored").all()
    assert errored.error.str.contains("injected fault").all(), errored.error.tolist()
    assert (diverged.status == "diverged").all()
    assert set(healthy.status) <= {"completed", "stopped"}
    if len(healthy):
        assert rc == 0, out[-2000:]
        best = pd.read_json(tmp_path / "f" / "best_config.json", typ="series")
        assert best["lr"] < 1 and best["batch_size"] == 32
    assert len(errored) and len(diverged), trials[["lr", "batch_size", "status"]]
    # re-training a diverged trial: the seeds diverge again, and a --resume would repeat it
    rc = run_search.main(["--address", ray_head, "--retrain", str(tmp_path / "f"), "--trial",
                          diverged.trial_id.iloc[0], "--seeds", "1,2", "--executor", "tune",
                          "--robustness-repeats", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "seeds [1, 2] diverged" in err, err[-2000:]
    assert "run again with --resume" not in err, err[-2000:]


def _driver(address: str, storage: Path, name: str, env: dict, *extra: str,
            log_name: str | None = None):
    log = open(storage / f"{log_name or name}.log", "a")
    return subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "--address", address,
                             "--storage", str(storage), "--name", name, *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_rows(path: Path, n: int, proc, timeout: float = 240, running: bool = False) -> None:
    """Until `path` has n rows (of status "running" if `running`) while `proc` runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "driver ended early"
        try:
            rows = pd.read_parquet(path)
            if len(rows[rows.status == "running"] if running else rows) >= n:
                return
        except (FileNotFoundError, OSError, ValueError):
            pass
        time.sleep(0.3)
    raise TimeoutError(path)


@pytest.mark.slow
def test_signal_stops_flushes_and_resumes(ray_head, ray_env, tmp_path):
    """SIGTERM stops the driver (exit 130, the resume line, interrupted trials not
    "finished"); its resume, stopped in turn by SIGINT, does the same; the last resume ends
    the search with each trial and epoch once. One search for both signals: each a search
    of its own cost a minute more."""
    name = "sig"
    # epochs enough that trials still run after the second driver's check below (seconds on
    # a loaded machine) and through the first resume, and the signals wait for a running one
    proc = _driver(ray_head, tmp_path, name, ray_env, "--executor", "tune", "--num-samples", "4",
                   "--max-epochs", "8")
    rcs = []
    try:
        _wait_rows(tmp_path / name / "epochs.parquet", 1, proc)
        # a second driver on the same folder is refused while the first runs
        second = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--address",
                                 ray_head, "--storage", str(tmp_path), "--name", name,
                                 "--resume"], env=ray_env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by another driver: pid {proc.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        _wait_rows(tmp_path / name / "trials.parquet", 1, proc, running=True)
        os.kill(proc.pid, signal.SIGTERM)
        rcs.append(proc.wait(timeout=120))
        log = (tmp_path / f"{name}.log").read_text()
        assert rcs == [130], log[-2000:]
        assert f"--resume --name {name}" in log
        before = pd.read_parquet(tmp_path / name / "trials.parquet")
        assert (before.status == "running").any()  # interrupted trials are not "finished"
        # the resumed driver, stopped once it trained an epoch of its own
        done = len(pd.read_parquet(tmp_path / name / "epochs.parquet"))
        proc = _driver(ray_head, tmp_path, name, ray_env, "--resume",
                       log_name=f"{name}-resumed")
        _wait_rows(tmp_path / name / "epochs.parquet", done + 1, proc)
        os.kill(proc.pid, signal.SIGINT)
        rcs.append(proc.wait(timeout=120))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    log = (tmp_path / f"{name}-resumed.log").read_text()
    assert rcs == [130, 130], log[-2000:]
    assert f"--resume --name {name}" in log
    res = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--address", ray_head,
                          "--storage", str(tmp_path), "--name", name, "--resume"],
                         env=ray_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / name / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / name / "epochs.parquet")
    assert len(trials) == 4 and trials.trial_id.is_unique
    assert set(trials.status) <= {"completed", "stopped"}
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for tid, rows in epochs.groupby("trial_id"):
        assert sorted(rows.epoch) == list(range(1, len(rows) + 1)), tid


def _immutable(path: Path, on: bool) -> bool:
    res = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return res.returncode == 0


@pytest.mark.slow
def test_storage_failure_mid_search(ray_head, ray_env, tmp_path):
    """The results folders turn read-only (chattr +i stops even root) while trials run."""
    name = "ro"
    proc = _driver(ray_head, tmp_path, name, ray_env, "--executor", "tune", "--num-samples", "4",
                   "--max-epochs", "4")
    folders = [tmp_path / name / "epochs.parquet", tmp_path / name / "trials.parquet"]
    locked = []
    try:
        _wait_rows(folders[0], 1, proc)
        _wait_rows(folders[1], 1, proc)
        for f in folders:
            if not _immutable(f, True):
                pytest.skip("chattr +i is not supported on this filesystem")
            locked.append(f)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        for f in locked:
            _immutable(f, False)
    log = (tmp_path / f"{name}.log").read_text()
    assert rc == 1, log[-2000:]
    line = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "results storage" in line[0] and "--resume" in line[0]
    trials = pd.read_parquet(folders[1])  # readable, each trial once
    epochs = pd.read_parquet(folders[0])
    assert trials.trial_id.is_unique and not epochs.duplicated(["trial_id", "epoch"]).any()


LOAD_SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
heads: {choice: [1, 2]}
layers: 1
d_model: 8
batch_size: 128
"""


@pytest.mark.slow
def test_200_trial_search(ray_head, ray_env, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(LOAD_SPACE)
    t0 = time.time()
    res = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--address", ray_head,
                          "--storage", str(tmp_path), "--name", "load", "--executor", "tune",
                          "--space", str(space), "--num-samples", "200", "--max-epochs", "1",
                          "--cpus-per-trial", "0.5"],
                         env=ray_env, capture_output=True, text=True, timeout=1200)
    wall = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "load" / "trials.parquet")
    assert len(trials) == 200 and trials.trial_id.is_unique
    assert len(pd.read_parquet(tmp_path / "load" / "epochs.parquet")) == 200
    print(f"\n200-trial search: {wall:.0f} s wall, driver peak RSS {peak_mb:.0f} MB")


SMALL_SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
heads: {choice: [1, 2]}
layers: 1
d_model: 8
"""


def _sigint_as_a_terminal_gives_it() -> None:
    """A test session started in the background (`cmd &` from a script) ignores SIGINT, and
    so would the command it starts (POSIX: Ctrl-C is not for background jobs; Python then
    keeps it ignored): the child gets the default disposition a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_stop_inside_signals_held_waits_for_the_end_of_the_block():
    """The save-and-record block defers SIGTERM without blocking it in the main thread: a
    blocked signal went to another thread, whose CPython handler did not wake the main
    thread, and `ucrn train` kept running after SIGTERM (once in CI)."""
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        with signals_held():
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now, and only recorded it
            steps.append("block finished")
        steps.append("after the block")  # never reached: the stop comes first
    assert steps == ["block finished"]
    assert signal.getsignal(signal.SIGTERM) is before
    with signals_held():  # nothing arrived: nothing raised afterwards
        pass


def _wait_until_it_catches(pid: int, sig: int, timeout: float = 30) -> None:
    """Until the process has a handler for `sig` (SigCgt in /proc): a signal before then ends
    any Python program by default (a fixed sleep raced a loaded machine in CI)."""
    end = time.time() + timeout
    while time.time() < end:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} set no handler for signal {sig} in {timeout:g} s")


def test_a_stop_while_a_command_imports_is_exit_130(tmp_path):
    """A signal in the first seconds (torch being imported) once gave a traceback, a
    RecursionError or death by SIGTERM; now the usual one line and exit 130."""
    proc = subprocess.Popen([sys.executable, "-m", "ucrn", "train", "--num_epochs=1", "--out",
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _wait_until_it_catches(proc.pid, signal.SIGTERM)  # torch is not imported yet
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, "burst"])
def test_train_interrupted_keeps_the_best_weights(tmp_path, sig):
    """`ucrn train` stopped mid-run: the best weights so far, and final.json `interrupted`;
    a burst of signals (one more arriving while the first is handled, or after) changes
    nothing: once final.json was missing though the message named it, and some runs died
    by signal instead of exiting 130."""
    proc = subprocess.Popen([sys.executable, "-m", "ucrn", "train", "--d_model=8", "--heads=2",
                             "--layers=1", "--threads=1", "--num_epochs=50000", "--out",
                             str(tmp_path), "--name", "i"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_sigint_as_a_terminal_gives_it)
    run = tmp_path / "i"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = (run / "epochs.jsonl").read_text().splitlines() \
                if (run / "epochs.jsonl").exists() else []
            if len(lines) >= 3:
                break
            time.sleep(0.1)
        for one in ([signal.SIGTERM, signal.SIGINT] * 10 if sig == "burst" else [sig]):
            os.kill(proc.pid, one)
            time.sleep(0.003)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "interrupted" and final["best_epoch"] >= 1
    assert final["checkpoint"] == "checkpoint.pt"
    bundle = torch.load(run / "checkpoint.pt", weights_only=True)
    assert bundle["epoch"] == final["best_epoch"]
    rc = ucrn_main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--out",
                    str(tmp_path / "p.parquet")])
    assert rc == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    return res.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_in_train_is_one_line_and_nothing_partial(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        res = subprocess.run([sys.executable, "-m", "ucrn", "train", "--layers=1", "--threads=1",
                              "--num_epochs=3", "--out", str(disk), "--name", "f"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        files = sorted(p.name for p in (disk / "f").iterdir())
        lines = (disk / "f" / "epochs.jsonl").read_text().splitlines()
    finally:
        _umount(disk)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(err) == 1, res.stderr
    assert "no space left on the device" in err[0] and "checkpoint.pt" in err[0]
    assert not [f for f in files if f.endswith(".tmp")], files
    assert all(json.loads(line)["epoch"] for line in lines)  # whole lines only


@pytest.mark.slow
def test_full_disk_in_a_search_is_one_line(ray_head, ray_env, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "150k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    space = tmp_path / "space.yaml"
    space.write_text(SMALL_SPACE)
    try:
        res = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--address", ray_head,
                              "--storage", str(disk), "--name", "full", "--executor", "tune",
                              "--space", str(space), "--num-samples", "6", "--max-epochs", "3",
                              "--max-failures", "0"], env=ray_env, capture_output=True,
                             text=True, timeout=600)
        leftovers = [p for p in disk.rglob("*.tmp")]
        trials = pd.read_parquet(disk / "full" / "trials.parquet") \
            if any((disk / "full" / "trials.parquet").glob("*.parquet")) else pd.DataFrame()
    finally:
        _umount(disk)
    err = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert err[-1].startswith("error: ") and "No space left" in err[-1] and "--resume" in err[-1]
    assert not [ln for ln in err if ln.startswith("error:")][:-1]  # exactly one error line
    assert leftovers == []
    assert trials.empty or trials.trial_id.is_unique


@pytest.mark.slow
def test_interrupt_before_the_first_trial_still_resumes(ray_head, tmp_path, monkeypatch,
                                                        capsys):
    """Ctrl-C after search.json is written but before Tune saved anything: --resume starts
    the search (the name is not stuck)."""
    import search.driver as driver

    space = tmp_path / "space.yaml"
    space.write_text(SMALL_SPACE)
    args = ["--address", ray_head, "--storage", str(tmp_path), "--name", "early",
            "--executor", "tune", "--space", str(space), "--num-samples", "2", "--max-epochs", "1"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "_new_tuner", interrupted)
    assert run_search.main(args) == 130
    err = capsys.readouterr().err
    assert "resume with: python run_search.py --resume --name early" in err
    assert (tmp_path / "early" / "search.json").is_file()
    monkeypatch.undo()
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: 2\n")  # edited meanwhile
    assert run_search.main(["--address", ray_head, "--storage", str(tmp_path), "--name",
                            "early", "--resume"]) == 0
    trials = pd.read_parquet(tmp_path / "early" / "trials.parquet")
    assert len(trials) == 2 and trials.trial_id.is_unique
    assert (trials.layers == 1).all() and (trials.d_model == 8).all()  # the space it began with


@pytest.mark.slow
def test_sigterm_during_retrain_keeps_finished_seeds(ray_head, ray_env, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SMALL_SPACE)
    # the search and the last resume run in this process (no driver start-up of their own);
    # the driver that gets the signal is a process of its own
    assert run_search.main(["--address", ray_head, "--storage", str(tmp_path), "--name", "s",
                            "--executor", "tune", "--space", str(space), "--num-samples", "2",
                            "--max-epochs", "2"]) == 0
    folder = tmp_path / "s"
    retrain = ["--address", ray_head, "--retrain", str(folder), "--seeds", "5,6,7",
               "--executor", "tune", "--max-concurrent", "1"]
    log = open(tmp_path / "retrain.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), *retrain],
                            env=ray_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_rows(folder / "retrain.parquet", 1, proc, timeout=300)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    out = (tmp_path / "retrain.log").read_text()
    assert rc == 130, out[-3000:]
    assert "--seeds 5,6,7 --max-concurrent 1 --resume" in out and "Traceback" not in out
    # said at the start too: a run cut off with no word of its own (a lost cluster)
    assert "if cut off, resume with: " in out.split("stopping")[0]
    first = pd.read_parquet(folder / "retrain.parquet")
    assert 1 <= len(first) < 3 and first.checkpoint.map(lambda p: Path(p).is_file()).all()
    assert run_search.main([*retrain, "--resume"]) == 0
    rows = pd.read_parquet(folder / "retrain.parquet")
    assert sorted(rows.seed) == [5, 6, 7]
    kept = rows.set_index("seed").loc[first.seed, "retrain_trial"]
    assert list(kept) == list(first.retrain_trial)  # finished seeds were not run again


def test_a_retraining_resume_line_repeats_the_flags_that_decide_its_runs():
    """A re-training keeps no file of its flags: its resume line named only --retrain and
    --seeds, and the rest ran with the default robustness repeats (attack round)."""
    import shlex

    from search.flags import parse_flags
    from search.retraining import RESUME_KEEPS, _kept_flags

    argv = ["--retrain", "res/s", "--robustness-repeats", "0", "--max-concurrent", "1",
            "--executor", "train", "--trial-resources", '{"gpu_node": 1}',
            "--cpus-per-trial", "0.5", "--max-failures", "0"]
    fl, _ = parse_flags(argv)
    again, _ = parse_flags(["--retrain", "res/s", *shlex.split(" ".join(_kept_flags(fl)))])
    assert all(getattr(again, k) == getattr(fl, k) for k in RESUME_KEEPS)
    assert _kept_flags(parse_flags(["--retrain", "res/s", "--executor", "tune"])[0]) == []
