"""The search end to end against the session's Ray head: Parquet, ASHA, executors,
driver and worker failures, best_config reproduction, and flags checked before Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run_search
from tests.raynodes import wait_for_free_cpus
from ucrn.cli import main as ucrn_main
from ucrn.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-epochs", "4", "--grace-period", "1", "--reduction-factor", "2"]


def search(address: str, storage: Path, name: str, *extra: str) -> int:
    return run_search.main(["--address", address, "--storage", str(storage), "--name", name,
                            *extra])


def read(storage: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = storage / name
    return pd.read_parquet(root / "trials.parquet"), pd.read_parquet(root / "epochs.parquet")


def constant_mae() -> float:
    data = load_dataset("synthetic", None, preset="tiny")
    labels = data.splits["valid"].labels
    return float(np.abs(labels - data.splits["train"].labels.mean()).mean())


def small_space(folder: Path) -> str:
    """A one-layer, 8-wide model: where a test checks the machinery rather than what a
    search finds, its epochs cost a fraction of the default space's."""
    space = folder / "small.yaml"
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: 1\nd_model: 8\nheads: 2\n")
    return str(space)


def assert_each_once(trials: pd.DataFrame, epochs: pd.DataFrame, n: int) -> None:
    assert len(trials) == n and trials.trial_id.is_unique
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for tid, rows in epochs.groupby("trial_id"):
        run = int(trials.set_index("trial_id").loc[tid, "epochs_run"])
        assert sorted(rows.epoch) == list(range(1, run + 1)), (tid, sorted(rows.epoch))


@pytest.fixture(scope="module")
def small_search(ray_head, tmp_path_factory):
    """One finished 6-trial search (the default executor: each one-worker trial in its Tune
    process), shared by the tests below."""
    storage = tmp_path_factory.mktemp("search")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = search(ray_head, storage, "s", "--num-samples", "6", *FAST)
    assert rc == 0, out.getvalue()[-3000:]
    return storage, "s", out.getvalue()


@pytest.mark.slow
def test_default_search(small_search):
    storage, name, out = small_search
    trials, epochs = read(storage, name)
    assert_each_once(trials, epochs, 6)
    assert set(trials.status) <= {"completed", "stopped"}
    assert (trials.status == "stopped").sum() >= 1, trials[["trial_id", "status", "epochs_run"]]
    assert (trials.executor == "tune").all()  # --executor auto, one worker per trial
    best = json.loads((storage / name / "best_config.json").read_text())
    assert best["num_epochs"] == 4 and "lr" in best and "threads" in best
    assert trials.MAE.min() < 0.9 * constant_mae()
    assert "best trial" in out and "results:" in out
    # Tune's own per-trial loggers are off (the driver wrote them at every report)
    trial_dirs = list((storage / name).glob("tune_trial_*"))
    assert len(trial_dirs) == 6
    assert not [f for d in trial_dirs for f in d.iterdir() if f.name.startswith(
        ("result.json", "progress.csv", "params.", "events.out"))]


@pytest.mark.slow
def test_best_config_reproduces_the_trial(small_search, tmp_path):
    """The best config, trained without Ray, gives its trial's validation MAE per epoch."""
    storage, name, _ = small_search
    trials, epochs = read(storage, name)
    best_id = trials.loc[trials.MAE.idxmin(), "trial_id"]
    assert ucrn_main(["train", "--config", str(storage / name / "best_config.json"),
                      "--out", str(tmp_path / "runs"), "--name", "again"]) == 0
    lines = (tmp_path / "runs/again/epochs.jsonl").read_text().splitlines()
    rerun = [json.loads(x) for x in lines]
    ref = epochs[epochs.trial_id == best_id].sort_values("epoch")
    assert len(ref) >= 1
    for rec, (_, row) in zip(rerun, ref.iterrows()):
        assert abs(rec["MAE"] - row.MAE) < 1e-4, (rec["epoch"], rec["MAE"], row.MAE)


@pytest.mark.slow
def test_retrain_three_seeds(small_search, ray_head, capsys):
    storage, name, _ = small_search
    rc = run_search.main(["--retrain", str(storage / name), "--seeds", "7,8,9",
                          "--address", ray_head, "--robustness-repeats", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    rows = pd.read_parquet(storage / name / "retrain.parquet")
    assert sorted(rows.seed) == [7, 8, 9]
    assert {"MAE", "test_MAE", "test_Corr", "test_Has0_acc_2", "checkpoint"} <= set(rows.columns)
    assert rows.test_MAE.notna().all()
    assert all(Path(p).is_file() for p in rows.checkpoint)
    assert f"test: loss {rows.test_loss.mean():.4f}" in out and "[7, 8, 9]" in out
    # each seed's selected model, scored under missing and noisy inputs on the test split
    from ucrn.conditions import conditions

    robust = pd.read_parquet(storage / name / "robustness.parquet")
    conds = conditions("lav")
    per_seed = sum(2 if c.random else 1 for c in conds)
    assert sorted(robust.seed.unique()) == [7, 8, 9] and len(robust) == 3 * per_seed
    assert (robust.split == "test").all() and robust.MAE.notna().all()
    assert robust.groupby("seed").size().eq(per_seed).all()
    clean = robust[robust.condition == "clean"].set_index("seed").MAE
    assert np.allclose(clean.sort_index(), rows.set_index("seed").test_MAE.sort_index(),
                       atol=1e-5)  # clean = the run's own test score
    # the search's own records are untouched by the re-training runs
    trials, _ = read(storage, name)
    assert len(trials) == 6


@pytest.mark.slow
def test_tune_executor_and_ddp(ray_head, tmp_path):
    space = small_space(tmp_path)
    assert search(ray_head, tmp_path, "t", "--executor", "tune", "--space", space,
                  "--num-samples", "3", *FAST) == 0
    trials, epochs = read(tmp_path, "t")
    assert_each_once(trials, epochs, 3)
    assert (trials.executor == "tune").all()

    assert search(ray_head, tmp_path, "ddp", "--workers-per-trial", "2", "--space", space,
                  "--cpus-per-trial", "0.5", "--num-samples", "1", "--max-epochs", "2") == 0
    trials, epochs = read(tmp_path, "ddp")
    assert trials.status.tolist() == ["completed"] and sorted(epochs.epoch) == [1, 2]


def _start_driver(address: str, storage: Path, name: str, env: dict, *extra: str):
    log = open(storage / f"{name}.log", "a")
    return subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "--address", address,
                             "--storage", str(storage), "--name", name, *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_epochs(storage: Path, name: str, at_least: int, proc, timeout: float = 240,
                 running: bool = False) -> None:
    """Until the search has `at_least` epochs (and, if `running`, a trial still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, (storage / f"{name}.log").read_text()[-3000:]
        try:
            if len(pd.read_parquet(storage / name / "epochs.parquet")) >= at_least and (
                    not running or (read(storage, name)[0].status == "running").any()):
                return
        except (FileNotFoundError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError((storage / f"{name}.log").read_text()[-3000:])


@pytest.mark.slow
def test_killed_driver_resumes_each_trial_once(ray_head, ray_env, tmp_path):
    from tests.raynodes import kill_session

    # the kill follows a read that shows a trial running (the 1-CPU head runs one trial at
    # a time: once, the first one finished between the third epoch seen and the kill)
    proc = _start_driver(ray_head, tmp_path, "k", ray_env, "--num-samples", "5",
                         "--space", small_space(tmp_path), *FAST[2:], "--max-epochs", "6")
    try:
        _wait_epochs(tmp_path, "k", 3, proc, running=True)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_session(proc.pid)  # anything the dead driver left in its own session
    trials_before, _ = read(tmp_path, "k")
    assert (trials_before.status == "running").any()
    assert search(ray_head, tmp_path, "k", "--resume") == 0  # in this process: no start-up
    trials, epochs = read(tmp_path, "k")
    assert_each_once(trials, epochs, 5)
    assert set(trials.status) <= {"completed", "stopped"}


def test_a_missing_checkpoint_is_replaced_by_a_later_one_only(tmp_path):
    import pyarrow.fs as pafs

    from search.trial import STATE_FILE, newer_checkpoint

    for n in (1, 3, 4, 6):
        (tmp_path / f"checkpoint_{n:06d}").mkdir()
        if n != 4:  # 4: a folder whose file is not there (yet, or any more)
            (tmp_path / f"checkpoint_{n:06d}" / STATE_FILE).write_bytes(b"x")
    fs = pafs.LocalFileSystem()
    assert newer_checkpoint(fs, str(tmp_path / "checkpoint_000002")) == \
        str(tmp_path / "checkpoint_000006")
    assert newer_checkpoint(fs, str(tmp_path / "checkpoint_000003")) is None  # it is whole
    assert newer_checkpoint(fs, str(tmp_path / "checkpoint_000004")) == \
        str(tmp_path / "checkpoint_000006")
    (tmp_path / "checkpoint_000006" / STATE_FILE).unlink()
    assert newer_checkpoint(fs, str(tmp_path / "checkpoint_000005")) is None  # none whole
    assert newer_checkpoint(fs, str(tmp_path / "gone" / "checkpoint_000001")) is None


def _actor_pids(dashboard: str, class_name: str, proc, timeout: float = 120
                ) -> list[int]:
    """The pids of the alive actors of `class_name`, once there is one (a loaded machine
    starts Ray Train's worker late) while the driver `proc` runs."""
    from ray.util.state import list_actors

    end, seen = time.time() + timeout, set()
    while time.time() < end and proc.poll() is None:
        # in this process (Ray's state API over HTTP): `ray list actors` was a new process
        # of about 2 CPU-s a poll, and a loaded machine polls many times
        actors = list_actors(address=f"http://{dashboard}", filters=[("state", "=", "ALIVE")],
                             limit=1000, timeout=60, raise_on_missing_output=False)
        pids = [int(a.pid) for a in actors if a.class_name == class_name]
        if pids:
            return pids
        seen |= {a.class_name for a in actors}
        time.sleep(0.3)
    raise AssertionError(f"no {class_name} actor among {sorted(seen)}")


def _dashboard(address: str, env: dict) -> str:
    import ray

    ctx = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return ctx.dashboard_url
    finally:
        ray.shutdown()


EPOCHS_KILLED = 20  # of the small space's model: 0.2-0.5 s each (the default's: 2-4 s)


@pytest.mark.slow
@pytest.mark.parametrize("executor, process", [("auto", "with_resources.<locals>.ResourceTrainable"),
                                               ("train", "RayTrainWorker")])
def test_killed_worker_resumes_from_checkpoint(ray_head, ray_env, tmp_path, executor, process):
    """The process that trains (the default executor: the Tune trial's own; Ray Train's
    worker) killed mid-trial: the trial restarts from its checkpoint and ends complete.
    (Tune names the trial actor after its resource wrapper, ResourceTrainable.)"""
    dashboard = _dashboard(ray_head, ray_env)  # before: its seconds let the trial finish
    # epochs of the tiny model take a fraction of a second: enough of them that the trial
    # still runs when the actor is found and killed, on a loaded machine too
    proc = _start_driver(ray_head, tmp_path, "w", ray_env, "--num-samples", "1",
                         "--space", small_space(tmp_path), "--max-epochs", str(EPOCHS_KILLED),
                         "--executor", executor)
    try:
        _wait_epochs(tmp_path, "w", 1, proc)  # a checkpoint to resume from
        pids = _actor_pids(dashboard, process, proc)
        os.kill(pids[0], signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, (tmp_path / "w.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    trials, epochs = read(tmp_path, "w")
    assert_each_once(trials, epochs, 1)
    row = trials.iloc[0]
    assert row.status == "completed" and row.epochs_run == EPOCHS_KILLED
    assert row.resumes >= 1  # restarted from its checkpoint, not from scratch
    # nothing left reserved: Ray Train's restart once left a placement group of 0.9 CPU
    # behind on the session head, and the next search there waited for it forever
    wait_for_free_cpus(ray_head, timeout=60)
    # the time between two epochs' results beyond the epoch's own: Ray Train's controller
    # collected a report every 2 s by default (search.trial.TRAIN_POLL_S)
    e = epochs.sort_values("epoch")
    wait = (e.ended_at.diff() - e.seconds).dropna()
    assert len(wait) >= EPOCHS_KILLED // 2 and wait.median() < 1.0, wait.tolist()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--num-samples", "0"], "--num-samples 0"),
        (["--cpus-per-trial", "-1"], "--cpus-per-trial -1"),
        (["--cpus-per-trial", "lots"], "--cpus-per-trial"),
        (["--gpus-per-trial", "1"], "no GPU"),
        (["--executor", "spark"], "--executor spark"),
        (["--executor", "tune", "--workers-per-trial", "2"], "--workers-per-trial"),
        (["--workers-per-trial", "2", "--gpus-per-trial", "0.5"], "a whole GPU each"),
        (["--metric", "R2"], "--metric R2"),
        (["--grace-period", "9", "--max-epochs", "4"], "--grace-period 9"),
        (["--dataset", "mosi", "--data-path", "/nonexistent"], "/nonexistent"),
        (["--address", "127.0.0.1:1"], "nobody answers"),
        (["--trial-resources", "{bad"], "--trial-resources"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_flags_one_line_before_ray(tmp_path, capsys, args, needle):
    rc = run_search.main(["--storage", str(tmp_path / "st"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert needle in err[0]
    assert not (tmp_path / "st" / "ucrn-search" / "search.json").exists()


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ("lr: {loguniform: [0.1, 0.01]}\n", "low=0.1 > high=0.01"),
        ("lr: {loguniform: [0, 0.01]}\n", "positive"),
        ("heads: {choice: [4]}\n", "heads=4 does not divide d_model=30"),
        ("heads: {choice: []}\n", "non-empty"),
        ("layer: {int: [1, 3]}\n", "unknown parameter 'layer'"),
        ("lr: {normal: [0, 1]}\n", "lr"),
        ("lr: [1, 2\n", "malformed YAML"),
        ("num_epochs: 3\n", "num_epochs"),
        ("optim: {choice: [Adam, Lion]}\n", "Lion"),
    ],
)
def test_bad_space_one_line(tmp_path, capsys, space, needle):
    f = tmp_path / "space.yaml"
    f.write_text(space)
    rc = run_search.main(["--space", str(f), "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert needle in err[0] and str(f) in err[0]


def test_storage_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert run_search.main(["--storage", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_storage_not_writable(capsys):
    assert run_search.main(["--storage", "/proc/ucrn-results"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage /proc/ucrn-results: not writable" in err[0]


def test_more_gpus_than_any_node(ray_head, tmp_path, capsys):
    """The session's head has no GPU: asking for one fails after connecting, before any
    trial, and writes no search."""
    rc = run_search.main(["--address", ray_head, "--gpus-per-trial", "0.5", "--storage",
                          str(tmp_path), "--name", "g"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no node of the cluster has a GPU" in err[0], err
    assert not (tmp_path / "g" / "search.json").exists()
    assert run_search.main(["--gpus-per-trial", "2", "--storage", str(tmp_path)]) == 2
    assert "--workers-per-trial 2" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    assert run_search.main(["--storage", str(tmp_path), "--name", "none", "--resume"]) == 2
    assert "--resume: no search named 'none'" in capsys.readouterr().err


@pytest.mark.slow
def test_analyze_and_predict_on_the_real_search(small_search, tmp_path, capsys):
    import analyze

    storage, name, _ = small_search
    assert analyze.main([str(storage / name), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "MAE" in out and "importance" in out.lower()
    assert (tmp_path / "report" / "report.md").is_file()
    if (storage / name / "robustness.parquet").exists():  # after test_retrain_three_seeds
        assert "Robustness of the re-trained models" in out
        assert "robustness_missing.png" in (tmp_path / "report" / "report.md").read_text()
    retrain = storage / name / "retrain.parquet"
    if retrain.exists():  # after test_retrain_three_seeds: predict with a selected checkpoint
        from ucrn.data import make_synthetic, write_mult_pickle

        data = write_mult_pickle(make_synthetic("tiny", seed=0), tmp_path / "tiny.pkl")
        ckpt = pd.read_parquet(retrain).checkpoint.iloc[0]
        preds = tmp_path / "preds.parquet"
        assert ucrn_main(["predict", "--checkpoint", ckpt, "--dataset", "synthetic",
                          "--data_path", str(data), "--split", "test", "--out", str(preds)]) == 0
        rows = pd.read_parquet(preds)
        assert len(rows) == 128 and rows.id.is_unique


@pytest.mark.slow
def test_no_secret_in_results(small_search):
    """The cluster's auth token never lands in results, configs or logs of a search."""
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip().encode()  # conftest's
    storage, name, out = small_search
    assert token not in out.encode()
    for f in (storage / name).rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert token not in f.read_bytes(), f


@pytest.mark.slow
def test_search_on_robust_mae(ray_head, tmp_path, capsys):
    """--metric robust_MAE: every trial records it, the best is chosen by it, and the
    analysis draws MAE against robust_MAE with the Pareto front."""
    import analyze

    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-3, 1.0e-2]}\nmodality_dropout: {uniform: "
                     "[0.0, 0.5]}\nlayers: 1\nd_model: 8\nheads: 2\n")
    assert search(ray_head, tmp_path, "rob", "--executor", "tune", "--space", str(space),
                  "--num-samples", "3", "--max-epochs", "2", "--metric", "robust_MAE") == 0
    trials, epochs = read(tmp_path, "rob")
    assert trials.robust_MAE.notna().all() and epochs.robust_MAE.notna().all()
    best = json.loads((tmp_path / "rob" / "best_config.json").read_text())
    done = trials[trials.status.isin(["completed", "stopped"])]
    assert best["lr"] == pytest.approx(done.loc[done.robust_MAE.idxmin(), "lr"])
    assert best["robust_metrics"] is True and best["select_metric"] == "robust_MAE"
    capsys.readouterr()
    assert analyze.main([str(tmp_path / "rob"), "--out", str(tmp_path / "rep")]) == 0
    assert "MAE vs robust_MAE, Pareto front (rob)" in capsys.readouterr().out
    assert (tmp_path / "rep" / "tradeoff.png").stat().st_size > 5000


def test_trial_env_sets_ray_trains_poll_unless_the_environment_does(monkeypatch):
    from search.trial import TRAIN_POLL_S, trial_env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert trial_env(1)["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == TRAIN_POLL_S
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    assert trial_env(1)["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    from ucrn.errors import UsageError

    for bad in ("", "abc", "0", "-1", "nan", "inf", "1e-9", "61", "1e6", "1e308"):
        monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", bad)
        with pytest.raises(UsageError, match=f"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S={bad!r}: "
                                             "expected seconds from 0.01 to 60"):
            trial_env(1)


def test_tune_loggers_variable_is_one_or_zero(monkeypatch):
    """Ray turns its per-trial loggers on for any value but "1": "true" meant on."""
    from search.cluster import TUNE_LOGGERS_OFF, start_ray
    from ucrn.errors import UsageError

    for bad in ("true", "", " 1", "yes"):
        monkeypatch.setenv(TUNE_LOGGERS_OFF, bad)
        with pytest.raises(UsageError, match=f"{TUNE_LOGGERS_OFF}={bad!r}: expected 1 "):
            start_ray(None, 1, None)
