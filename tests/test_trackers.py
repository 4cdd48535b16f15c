"""--tracker: one small search logs to TensorBoard, MLflow and W&B (offline), each read
back with its own tool's reader; a tracker that fails warns once and the search goes on;
bad names and missing packages are one line before Ray."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import run_search
from search import trackers
from search.flags import parse_flags

NAME = "tracked"
SEARCHED = ("lr", "layers", "heads", "batch_size")  # searched floats and ints
# the default space's kinds of values over small models: its epochs cost several times these
SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-2]}
layers: {int: [1, 2]}
heads: {choice: [1, 2]}
batch_size: {choice: [32, 64]}
d_model: 8
"""
# distinctive secrets in the driver's environment: nothing the search writes may hold them
SECRETS = {"WANDB_API_KEY": "ucrn-test-wandb-key-6f1c0e2a9b", "MLFLOW_TRACKING_TOKEN":
           "ucrn-test-mlflow-token-3d7a58c4e1"}


@pytest.fixture(scope="module")
def tracked(ray_head, tmp_path_factory):
    """One finished 2-trial, 2-epoch search with every tracker, W&B offline."""
    storage = tmp_path_factory.mktemp("trackers")
    (storage / "space.yaml").write_text(SPACE)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        for key, value in {**SECRETS, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                           "WANDB_DISABLE_GIT": "true", "WANDB_ERROR_REPORTING": "false"}.items():
            mp.setenv(key, value)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
            mp.delenv(key, raising=False)
        rc = run_search.main(["--address", ray_head, "--storage", str(storage), "--name", NAME,
                              "--space", str(storage / "space.yaml"),
                              "--num-samples", "2", "--max-epochs", "2", "--scheduler", "fifo",
                              "--tracker", "tensorboard,mlflow,wandb"])
    assert rc == 0, out.getvalue()[-3000:]
    root = storage / NAME
    trials = pd.read_parquet(root / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(trials) == 2 and (trials.epochs_run == 2).all(), trials
    return SimpleNamespace(storage=storage, root=root, trials=trials, epochs=epochs,
                           out=out.getvalue())


def mae_by_epoch(epochs: pd.DataFrame, trial_id: str) -> dict[int, float]:
    rows = epochs[epochs.trial_id == trial_id]
    return dict(zip(rows.epoch.astype(int), rows.MAE.astype(float)))


@pytest.mark.slow
def test_tensorboard_has_every_epoch_of_every_trial(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert f"tensorboard {tracked.root / 'tensorboard'}" in tracked.out
    for tid in tracked.trials.index:
        events = EventAccumulator(str(tracked.root / "tensorboard" / tid))
        events.Reload()
        mae = {e.step: e.value for e in events.Scalars("ray/tune/MAE")}
        assert mae == pytest.approx(mae_by_epoch(tracked.epochs, tid)), tid  # step = epoch
        assert "ray/tune/pid" not in events.Tags()["scalars"]  # Tune's bookkeeping left out


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_with_config_and_history(tracked):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tracked.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[NAME])
    assert len(runs) == len(tracked.trials) and set(runs.status) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for _, run in runs.iterrows():
        tid = run["tags.trial_name"].rsplit("_", 1)[-1]  # Tune's trial name: tune_trial_<id>
        trial = tracked.trials.loc[tid]
        for key in SEARCHED:
            assert float(run[f"params.{key}"]) == pytest.approx(float(trial[key])), key
        history = {m.step: m.value for m in client.get_metric_history(run.run_id, "MAE")}
        assert history == pytest.approx(mae_by_epoch(tracked.epochs, tid))
        assert run["tags.ucrn.search"] == NAME
        assert not any(c.startswith("metrics.time_") or c == "metrics.pid" for c in runs)


def wandb_records(path: Path):
    """The records of W&B's run file (LevelDB's log format: 32 KiB blocks of checksum,
    length, type, data), each parsed by W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, part = 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, size, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        part += raw[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_per_trial_with_config_and_history(tracked):
    runs = {p.name.rsplit("-", 1)[-1]: p for p in (tracked.root / "wandb").glob("offline-run-*")}
    assert set(runs) == set(tracked.trials.index), runs
    for tid, folder in runs.items():
        config, history = {}, {}
        for record in wandb_records(folder / f"run-{tid}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert (record.run.run_id, record.run.project) == (tid, NAME)
                config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                history[row["_step"]] = row
        trial = tracked.trials.loc[tid]
        for key in SEARCHED:
            assert config[key] == pytest.approx(trial[key]), key
        assert {s: r["MAE"] for s, r in history.items()} == pytest.approx(
            mae_by_epoch(tracked.epochs, tid))
        assert all(r["epoch"] == s for s, r in history.items())
        assert "hostname" not in config and "pid" not in history.get(1, {})


@pytest.mark.slow
def test_no_secret_in_anything_the_search_wrote(tracked):
    from ucrn.fileio import secret_values

    secrets = {*SECRETS.values(), *(v for v in secret_values() if len(v) >= 8)}
    for path in tracked.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            leaked = [s for s in secrets if s.encode() in data]
            assert not leaked, (path, [s[:6] for s in leaked])


@pytest.mark.slow
def test_resume_may_change_trackers(tracked, ray_head):
    """The finished search resumed with fewer trackers: restored (W&B's log links do not
    make the folder look shared), nothing left to run, and the saved flags unchanged."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_search.main(["--address", ray_head, "--storage", str(tracked.storage),
                              "--name", NAME, "--resume", "--tracker", "tensorboard"])
    assert rc == 0, out.getvalue()[-3000:]
    assert "trackers: tensorboard" in out.getvalue() and "mlflow" not in out.getvalue()
    saved = json.loads((tracked.root / "search.json").read_text())["flags"]
    assert saved["tracker"] == "tensorboard,mlflow,wandb"


# ---- without a search ---------------------------------------------------------------------

@pytest.mark.parametrize(("value", "needle"), [
    ("tensorboard,neptune", "--tracker neptune: unknown tracker; expected any of tensorboard, "
                            "mlflow, wandb"),
    ("tensorboard", None),  # with --retrain below
])
def test_bad_tracker_one_line_before_ray(tmp_path, capsys, value, needle):
    args = ["--storage", str(tmp_path / "st"), "--tracker", value]
    if needle is None:
        args += ["--retrain", str(tmp_path / "st" / "s")]
        needle = "--tracker: a search flag"
    assert run_search.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "st" / "ucrn-search").exists()


@pytest.mark.parametrize("missing", ["mlflow", "wandb", "tensorboardX"])
def test_missing_package_one_line_before_ray(tmp_path, capsys, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import` of it now fails
    name = {"tensorboardX": "tensorboard"}.get(missing, missing)
    rc = run_search.main(["--storage", str(tmp_path / "st"), "--tracker", f"{name}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --tracker {name}: the {missing} package is not "
                               "installed (pip install -e '.[trackers]')"], err
    assert not (tmp_path / "st" / "ucrn-search" / "search.json").exists()


def test_resume_keeps_trackers_unless_given(tmp_path):
    saved = {"tracker": "mlflow"}
    fl, given = parse_flags(["--resume"])
    assert fl.resumed_from(saved, "search.json", given - {"resume"}).tracker == "mlflow"
    fl, given = parse_flags(["--resume", "--tracker", "wandb"])
    assert fl.resumed_from(saved, "search.json", given - {"resume"}).tracker == "wandb"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens there once closed


def test_a_failing_tracker_warns_once_and_the_search_goes_on(tmp_path, capsys, monkeypatch):
    """An MLflow server that does not answer, and a tracker that raises mid-search: one
    warning line each, and nothing more is sent to them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = SimpleNamespace(is_local=True, root=str(tmp_path), uri=str(tmp_path))
    (mlflow_cb,) = trackers.make_trackers("mlflow", store, "s")

    class Boom:
        calls = 0

        def on_trial_result(self, *args, **kw):
            Boom.calls += 1
            raise OSError("disk full")

        def __getattr__(self, hook):
            return lambda *a, **kw: None

    boom = trackers._guarded("boom", Boom(), {})
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.1})
    for cb in (mlflow_cb, boom):
        cb.setup()
        cb.on_trial_start(0, [], trial)
        for epoch in (1, 2, 2, 3):
            cb.on_trial_result(0, [], trial, {"epoch": epoch, "MAE": 1.0 / epoch})
        cb.on_trial_complete(0, [], trial)
        cb.on_experiment_end([])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(err) == 2 and err[0].startswith("warning: --tracker mlflow failed"), err
    assert "warning: --tracker boom failed (OSError: disk full)" in err[1]
    assert Boom.calls == 1 and mlflow_cb.inner is None and boom.inner is None


def test_object_storage_trackers_write_locally(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SimpleNamespace(is_local=False, root="bucket/s", uri="s3://bucket/s")
    (cb,) = trackers.make_trackers("tensorboard", store, "s")
    out = capsys.readouterr().out
    assert f"the trackers write on this machine, under {tmp_path / 'trackers' / 's'}" in out
    assert cb.inner.logdir == tmp_path / "trackers" / "s" / "tensorboard"


def test_wandb_offline_unless_logged_in(tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert trackers.wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    (tmp_path / "netrc").chmod(0o600)
    assert trackers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == "disabled"


def test_resume_judges_a_link_by_its_target(tmp_path):
    """W&B links each run's core log to ~/.cache: a link's own mode is always 777, so
    --resume's check of the folder reads its target's (still refused if others can write)."""
    from search.driver import check_trusted
    from search.results import ResultsStore
    from ucrn.errors import UsageError

    folder, target = tmp_path / "s", tmp_path / "core-debug.log"
    folder.mkdir()
    target.write_text("log")
    target.chmod(0o644)
    (folder / "debug-core.log").symlink_to(target)
    (folder / "gone.log").symlink_to(tmp_path / "nothing")
    check_trusted(ResultsStore(str(folder)))
    target.chmod(0o666)
    with pytest.raises(UsageError, match="debug-core.log is writable by other users"):
        check_trusted(ResultsStore(str(folder)))


# ---- attack round on issue 26 -------------------------------------------------------------

def test_an_mlflow_uri_of_no_known_kind_is_one_line_before_ray(tmp_path, capsys, monkeypatch):
    """MLFLOW_TRACKING_URI=garbage once ran the whole search without MLflow (a warning at
    its start); the URI is known before Ray. Its password is never shown."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "notascheme://alice:hunter2pw@host/x")
    rc = run_search.main(["--storage", str(tmp_path / "st"), "--tracker", "mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(
        "error: --tracker mlflow: MLFLOW_TRACKING_URI=notascheme://***@host/x: no MLflow "
        "tracking store of that kind"), err
    assert not (tmp_path / "st" / "ucrn-search" / "search.json").exists()


@pytest.mark.parametrize(("tracker", "entry", "make"), [
    ("tensorboard", "tensorboard", lambda p: p.write_text("a file")),
    ("wandb", "wandb", lambda p: p.write_text("a file")),
    ("mlflow", "mlflow.db", lambda p: p.write_bytes(b"\x00garbage" * 100)),
    ("mlflow", "mlflow.db", lambda p: p.mkdir()),
])
def test_a_resumed_searchs_tracker_file_of_another_kind_is_one_line(tmp_path, tracker, entry,
                                                                    make, monkeypatch):
    """A tensorboard/ that is a file or an mlflow.db that is not SQLite failed the tracker
    at its first write, and the search went on without it; known before Ray."""
    from ucrn.errors import UsageError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make(tmp_path / entry)
    store = SimpleNamespace(is_local=True, root=str(tmp_path), uri=str(tmp_path))
    with pytest.raises(UsageError, match=f"^--tracker {tracker}: {tmp_path / entry} is not "):
        trackers.check_trackers(tracker, store, "s")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "mlflow.db").write_bytes(b"")  # SQLite's own empty database
    trackers.check_trackers("tensorboard,mlflow,wandb", SimpleNamespace(
        is_local=True, root=str(tmp_path / "ok"), uri=""), "s")


def test_a_failing_wandb_logging_actor_is_one_warning(tmp_path, capsys, monkeypatch):
    """W&B runs wandb.init in a Ray actor; when it failed (a bad or missing API key, no
    network) Ray's callback dropped the failure: the search ran with nothing logged and no
    word. Now the actor's exception is one warning line, once."""
    import ray

    monkeypatch.setenv("WANDB_MODE", "offline")
    callback, _, _ = trackers._wandb(tmp_path, "s")

    class Failed(Exception):
        pass

    def get(future):
        raise Failed("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(ray, "wait", lambda futures, num_returns, timeout: (futures, []))
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "kill", lambda actor: None)
    trial = type("Trial", (), {"trial_id": "t1", "config": {}})()  # hashable, as Tune's
    callback._trial_logging_futures = {trial: "future"}
    callback._logging_future_to_trial = {"future": trial}
    callback._trial_queues = {trial: SimpleNamespace(put=lambda item: None)}
    callback._trial_logging_actors = {trial: "actor"}
    guarded = trackers._guarded("wandb", callback, {})
    guarded.started.add("t1")
    guarded.on_trial_complete(0, [], trial)
    guarded.on_experiment_end([])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert err == ["warning: --tracker wandb failed (Failed: No API key configured. Use `wandb "
                   "login` to log in.); it records nothing more of this search, which goes on"]
    assert guarded.inner is None and not callback._trial_logging_futures
