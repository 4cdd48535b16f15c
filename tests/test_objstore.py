"""Results on object storage, against a real S3 API on loopback (moto's server, started
by the test session and stopped by its pid; tests/s3server.py): whole-object writes, the
one-driver lease as a compare-and-swap, one-line errors, no credential ever recorded, and
whole searches (both executors, kill -9 and --resume, the store going down mid-search)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import analyze
import run_search
from benchmarks.processes import moto
from search import objstore
from search.lock import LEASE_FILE, ResultsLock
from search.results import ResultsStore
from tests.raynodes import free_port
from tests.s3server import proxy
from ucrn import cli, fileio
from ucrn.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
S3_SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]  # set by conftest.py, distinctive
SPACE = "lr: {loguniform: [1.0e-4, 1.0e-2]}\nd_model: 8\nheads: 2\nlayers: 1\n"


def _keys(bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3")
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


def _objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    s3 = boto3.client("s3")
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in _keys(bucket, prefix)}


def _table(uri: str):
    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _one_line(capsys, rc: int, code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


# ---- writes and the lease (no Ray) -----------------------------------------------------

def test_writes_are_whole_objects_at_their_final_key(bucket):
    store = ResultsStore(f"s3://{bucket}/w")
    store.write_json("a.json", {"x": 1})

    def half(f):
        f.write(b'{"x": 2, "half')
        raise RuntimeError("the writer failed midway")

    with pytest.raises(RuntimeError):
        store._write("a.json", half)
    with pytest.raises(RuntimeError):
        store._write("b.json", half)
    assert store.read_json("a.json") == {"x": 1}  # the old object, whole
    assert not store.exists("b.json")
    assert set(_objects(bucket)) == {"w/a.json"}  # no temporary or folder-marker objects


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lease_is_a_compare_and_swap(bucket, capsys):
    uri = f"s3://{bucket}/l"
    store = ResultsStore(uri)
    with ResultsLock(store, "search"):
        with pytest.raises(UsageError, match=f"in use by another driver: pid {os.getpid()}"):
            ResultsLock(ResultsStore(uri), "search").acquire()
    assert not store.exists(LEASE_FILE)
    # a lease left by a killed driver of this host is taken over at once
    store.write_json(LEASE_FILE, {"host": socket.gethostname(), "pid": _dead_pid(),
                                  "heartbeat": time.time(), "token": "x"})
    with ResultsLock(store, "search"):
        pass
    # four drivers at the same moment: exactly one wins
    barrier, won, lost = threading.Barrier(4), [], []

    def take() -> None:
        lock = ResultsLock(ResultsStore(uri), "search")
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except UsageError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3, lost
    won[0].release()
    assert not store.exists(LEASE_FILE)
    assert "falls back" not in capsys.readouterr().out  # moto does conditional writes


# ---- one-line errors -------------------------------------------------------------------

@pytest.mark.slow
def test_storage_problems_are_one_line_in_bounded_time(bucket, tmp_path, capsys, monkeypatch):
    def search(storage: str) -> str:
        t = time.time()
        rc = run_search.main(["--storage", storage, "--executor", "tune", "--num-samples", "1"])
        line = _one_line(capsys, rc)
        assert time.time() - t < 30, line
        return line

    assert "the bucket does not exist" in search("s3://no-such-bucket-here/x")
    # a port held bound and never listening: it refuses connections, and no other process
    # can take it meanwhile (a free port picked and let go was once taken by another server)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    closed = held.getsockname()[1]
    try:
        assert f"(127.0.0.1:{closed}) is not answering" in search(
            f"s3://{bucket}/x?endpoint_override=127.0.0.1:{closed}&scheme=http")
    finally:
        held.close()
    # credentials refused by the store
    port = free_port()
    strict = moto(port, tmp_path / "strict.log", strict=True)
    try:
        assert "access denied" in search(
            f"s3://{bucket}/x?endpoint_override=127.0.0.1:{port}&scheme=http")
    finally:
        strict.stop()
    # credentials in the URI: refused, and never printed
    line = search(f"s3://AKIAXX:{S3_SECRET}@{bucket}/x")
    assert "credentials in the URI are refused" in line and S3_SECRET not in line
    # an endpoint that answers every request with junk (was "'NoneType' object has no
    # attribute 'get'")
    junk = socket.socket()
    junk.bind(("127.0.0.1", 0))
    junk.listen(16)

    def answer_junk() -> None:
        while True:
            try:
                conn, _ = junk.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close"
                             b"\r\n\r\nhello")

    threading.Thread(target=answer_junk, daemon=True).start()
    try:
        line = search(f"s3://{bucket}/x?endpoint_override=127.0.0.1:{junk.getsockname()[1]}"
                      f"&scheme=http")
        assert "cannot write there" in line and "NoneType" not in line, line
    finally:
        junk.close()
    # last: pyarrow calls to this store stay stuck (in daemon threads) for about 100 s,
    # and the next S3 client of this process waits for them
    # a server that accepts the connection and never answers
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    monkeypatch.setattr(objstore, "PROBE_S", 2.0)
    monkeypatch.setattr(fileio, "ANSWER_S", 2.0)
    silent = f"s3://{bucket}/x?endpoint_override=127.0.0.1:{hole.getsockname()[1]}&scheme=http"
    try:
        assert "did not answer within 2 s" in search(silent)
        # reading from it: analysis, a checkpoint, a warm start's source (pyarrow alone
        # would wait about 100 s)
        for command in (lambda: analyze.main([silent, "--no-report"]),
                        lambda: cli.main(["predict", "--checkpoint", silent.replace(
                            "/x?", "/x/checkpoint.pt?"), "--out", str(tmp_path / "p.parquet")]),
                        lambda: run_search.main(["--warm-start", silent, "--storage",
                                                 str(tmp_path / "w"), "--num-samples", "1"])):
            t = time.time()
            line = _one_line(capsys, command())
            assert "did not answer within 2 s" in line and time.time() - t < 15, line
    finally:
        hole.close()  # the calls still waiting on it fail now, and let other clients be made
        t = time.time()
        for thread in threading.enumerate():
            if thread.name == "storage-call":
                thread.join(120)
        print(f"stuck calls ended {time.time() - t:.1f} s after the store closed")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["analyze", "predict", "warm-start"])
def test_a_command_exits_soon_after_a_store_that_never_answers(command, bucket, tmp_path):
    """Its line came after 20 s, but the process then waited minutes in pyarrow's exit hook
    for the call it had given up on; it now exits at once (ucrn.errors.program)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    silent = f"s3://{bucket}/x?endpoint_override=127.0.0.1:{hole.getsockname()[1]}&scheme=http"
    argv, target = {
        "analyze": (["analyze.py", silent, "--no-report"], "search.analysis.command:main"),
        "predict": (["ucrn", "predict", "--checkpoint", silent.replace("/x?", "/x/c.pt?"),
                     "--out", str(tmp_path / "p.parquet")], "ucrn.cli:main"),
        "warm-start": (["run_search.py", "--warm-start", silent, "--storage",
                        str(tmp_path / "w"), "--num-samples", "1"], "search.driver:main"),
    }[command]
    code = (f"import sys, ucrn.fileio\nucrn.fileio.ANSWER_S = 2.0\n"
            f"sys.argv = {argv!r}\nfrom ucrn.errors import program\n"
            f"program({target!r})\n")
    t = time.time()
    try:
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=90)
    finally:
        hole.close()
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "did not answer within 2 s" in err[0], err
    assert time.time() - t < 25, time.time() - t


def test_a_prefix_that_holds_no_search_is_one_line(bucket, tmp_path, capsys):
    boto3.client("s3").put_object(Bucket=bucket, Key="other/readme.txt", Body=b"hello")
    uri = f"s3://{bucket}/other"
    assert "expected a search folder" in _one_line(capsys, analyze.main([uri, "--no-report"]))
    assert "not a search folder" in _one_line(capsys, run_search.main(["--retrain", uri]))
    assert "no search named 'other'" in _one_line(capsys, run_search.main(
        ["--storage", f"s3://{bucket}", "--name", "other", "--resume"]))
    assert _objects(bucket) == {"other/readme.txt": b"hello"}  # nothing written, nothing lost


# ---- whole searches (Ray) --------------------------------------------------------------

def _bytes_or_none(path: Path, since: float) -> bytes | None:
    """A file's bytes if it was written since `since`; None where it is not a file, is
    older, or is gone by the time it is read."""
    try:
        if not path.is_file() or path.stat().st_mtime < since:
            return None
        return path.read_bytes()
    except OSError:
        return None


@pytest.mark.slow
def test_searches_retrain_analyze_and_predict_on_s3(bucket, ray_head, tmp_path, capsys):
    started = time.time()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"s3://{bucket}/ucrn"
    # one trial at a time, and half a CPU a trial: the head has 1 CPU, and when a Ray Train
    # worker died, its controller's next worker group waited for a second 0.9-CPU placement
    # group while Ray kept the first one reserved (the search hung, twice in about ten
    # runs); two groups of 0.4 fit
    for name, executor in (("tune", "tune"), ("train", "train")):
        rc = run_search.main(["--address", ray_head, "--storage", storage, "--name", name,
                              "--executor", executor, "--space", str(space), "--num-samples",
                              "2", "--max-epochs", "2", "--max-concurrent", "1",
                              "--cpus-per-trial", "0.5"])
        out = capsys.readouterr()
        assert rc == 0, out.out[-3000:] + out.err[-2000:]
        assert S3_SECRET not in out.out + out.err
        trials = _table(f"{storage}/{name}/trials.parquet")
        epochs = _table(f"{storage}/{name}/epochs.parquet")
        assert len(trials) == 2 and trials.trial_id.is_unique
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert any(k.startswith("ucrn/train/train_runs/") for k in _objects(bucket, "ucrn/train/"))
    # analysis, re-training and a prediction from the checkpoint stored there
    assert analyze.main([f"{storage}/tune", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    rc = run_search.main(["--retrain", f"{storage}/tune", "--seeds", "5", "--address",
                          ray_head, "--robustness-repeats", "0"])
    out = capsys.readouterr()
    assert rc == 0, out.out[-3000:]
    rows = _table(f"{storage}/tune/retrain.parquet")
    ckpt = rows.checkpoint.iloc[0]
    assert ckpt.startswith(f"s3://{bucket}/ucrn/tune/")
    assert cli.main(["predict", "--checkpoint", ckpt, "--out", str(tmp_path / "p.parquet")]) == 0
    assert len(pq.read_table(tmp_path / "p.parquet")) == 128
    # no credential in anything the searches wrote, nor in Ray's logs of these runs (Tune
    # would copy it into every trial's runtime environment, which Ray logs)
    leaked = [k for k, v in _objects(bucket).items() if S3_SECRET.encode() in v]
    assert not leaked, leaked
    # (other tests' Ray instances remove their own logs meanwhile: a file gone is no leak)
    logs = {}
    for p in Path("/tmp/ray").glob("session_*/logs/**/*"):
        body = _bytes_or_none(p, since=started)
        if body is not None:
            logs[p] = body
    assert logs and not [p for p, body in logs.items() if S3_SECRET.encode() in body]


def _driver(ray_head: str, storage: str, name: str, env: dict, log: Path, *extra: str):
    return subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "--address",
                             ray_head, "--storage", storage, "--name", name, *extra],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait_objects(bucket: str, prefix: str, n: int, proc, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "the driver ended early"
        if len(_objects(bucket, prefix)) >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(prefix)


def _resume_finishes_each_trial_once(ray_head, storage, name, n: int,
                                     lost_uploads: bool = False) -> None:
    out = io.StringIO()  # the resume in this process: no driver start-up of its own
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = run_search.main(["--address", ray_head, "--storage", storage, "--name", name,
                              "--resume"])
    assert rc == 0, out.getvalue()[-5000:]
    base = storage.split("?")[0]
    trials = _table(f"{base}/{name}/trials.parquet")
    epochs = _table(f"{base}/{name}/epochs.parquet")
    assert trials.trial_id.is_unique and not epochs.duplicated(["trial_id", "epoch"]).any()
    # a trial whose checkpoint upload the failing store cut off cannot be restored from
    # it: Tune ends it as errored (once), saying so, and runs the others to the end
    errored = trials[trials.status == "errored"]
    assert set(trials.status) <= {"completed", "stopped", "errored"}
    assert lost_uploads or errored.empty, errored.error.tolist()
    assert errored.error.str.contains("does not exist on storage").all(), errored.error.tolist()
    # Tune's own state reaches the store every few seconds: a trial that started or ended
    # after its last upload keeps what it recorded (a started one as "lost with its
    # driver", never "running"), and the resumed Tune runs a new trial in its place
    assert n <= len(trials) <= n + 2, trials[["trial_id", "status", "error"]]


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume_on_s3(bucket, ray_head, ray_env, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"s3://{bucket}/k"
    proc = _driver(ray_head, storage, "k", ray_env, tmp_path / "k.log", "--executor", "tune",
                   "--space", str(space), "--num-samples", "4", "--max-epochs", "3",
                   "--max-concurrent", "1")
    try:
        _wait_objects(bucket, "k/k/epochs.parquet/", 2, proc)
        end = time.time() + 120  # until Tune's uploaded state names a running trial's checkpoint
        while not _named_checkpoints(bucket, "k/k/") and time.time() < end:
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _objects(bucket, "k/k/.lease")  # the killed driver's lease is still there
    # Tune deletes a trial's older checkpoint as soon as a newer one is registered but
    # uploads its own state only every few seconds: a driver killed in between leaves a
    # state that names a deleted checkpoint. Made certain here: each named one is moved to
    # the next number, as if the trial had gone on; the resume restores from that one.
    assert _supersede(bucket, _named_checkpoints(bucket, "k/k/"))
    _resume_finishes_each_trial_once(ray_head, storage, "k", 4)


def _named_checkpoints(bucket: str, prefix: str) -> list[str]:
    """Key prefixes of the checkpoints that Tune's uploaded state names for its unfinished
    trials."""
    s3 = boto3.client("s3")
    keys = _keys(bucket, prefix)
    states = sorted(k for k in keys if k.rsplit("/", 1)[-1].startswith("experiment_state-"))
    try:
        state = json.loads(s3.get_object(Bucket=bucket, Key=states[-1])["Body"].read())
    except (IndexError, s3.exceptions.NoSuchKey):  # not uploaded yet
        return []
    named = []
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        name = (meta.get("last_result") or {}).get("checkpoint_dir_name")
        if trial["status"] in ("TERMINATED", "ERROR") or not name:
            continue
        for key in keys:  # the trial's folder: the part of a key that names the trial
            parts = key.split("/")
            hit = [i for i, p in enumerate(parts) if f"_{trial['trial_id']}_" in p]
            if hit:
                named.append("/".join(parts[:hit[0] + 1] + [name, ""]))
                break
    return named


def _supersede(bucket: str, prefixes: list[str]) -> list[str]:
    s3 = boto3.client("s3")
    moved = []
    for old in prefixes:
        later = f"{old[:-7]}{int(old[-7:-1]) + 1:06d}/"
        went_on = f"{later}state.pt" in _keys(bucket, later)  # it had gone on already
        for key in _keys(bucket, old):
            if not went_on:
                s3.copy_object(Bucket=bucket, Key=later + key[len(old):],
                               CopySource={"Bucket": bucket, "Key": key})
            s3.delete_object(Bucket=bucket, Key=key)
        moved.append(later)
    return moved


@pytest.mark.slow
def test_the_store_going_down_mid_search_then_resume(bucket, ray_head, ray_env, tmp_path, s3):
    """A TCP proxy in front of moto is killed while trials write (the store down: uploads
    fail midway), then started again on the same port."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    port = free_port()
    front = proxy(port, s3, tmp_path / "proxy.log")
    storage = f"s3://{bucket}/d?endpoint_override=127.0.0.1:{port}&scheme=http"
    proc = _driver(ray_head, storage, "d", ray_env, tmp_path / "d.log", "--executor", "tune",
                   "--space", str(space), "--num-samples", "4", "--max-epochs", "3",
                   "--max-concurrent", "1")
    try:
        _wait_objects(bucket, "d/d/epochs.parquet/", 2, proc)
        front.stop()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        front.stop()
    log = (tmp_path / "d.log").read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "results storage" in errors[0], log[-3000:]
    assert "--resume" in errors[0]
    before = _table(f"s3://{bucket}/d/d/epochs.parquet")  # what is there is readable
    assert len(before) >= 2 and not before.duplicated(["trial_id", "epoch"]).any()
    front = proxy(port, s3, tmp_path / "proxy.log")
    try:
        _resume_finishes_each_trial_once(ray_head, storage, "d", 4, lost_uploads=True)
    finally:
        front.stop()


# ---- the attack round on object storage (docs/reliability.md) --------------------------

@pytest.mark.parametrize("name", ["%2e%2e", "a%2Fb", "z#frag", "a?b", "n.\u00e9"])
def test_names_that_a_uri_would_read_otherwise_are_refused(name, bucket, capsys):
    rc = run_search.main(["--storage", f"s3://{bucket}/nm", "--name", name])
    assert "--name" in _one_line(capsys, rc) and _objects(bucket) == {}


@pytest.mark.parametrize("uri", ["s3://", "s3://{b}/a//b", "s3://{b}/p%2Fq", "s3://{b}/p#x"])
def test_uris_that_name_another_place_are_refused(uri, bucket, capsys):
    line = _one_line(capsys, run_search.main(["--storage", uri.format(b=bucket)]))
    assert "no bucket" in line or "expected a plain path" in line
    assert _objects(bucket) == {}


def test_foreign_files_in_the_folder_and_odd_leases(bucket, capsys):
    s3c = boto3.client("s3")
    s3c.put_object(Bucket=bucket, Key="col/c1/trials.parquet", Body=b"garbage")
    rc = run_search.main(["--storage", f"s3://{bucket}/col", "--name", "c1"])
    assert "already holds other things (trials.parquet)" in _one_line(capsys, rc)
    # leases nobody can hold any more are taken over: a heartbeat in the future or not a
    # number, a pid that cannot exist
    uri = f"s3://{bucket}/l"
    store = ResultsStore(uri)
    host = socket.gethostname()
    for lease in ({"host": "elsewhere", "pid": 1, "heartbeat": 1e12},
                  {"host": "elsewhere", "pid": 1, "heartbeat": "NaN"},
                  {"host": host, "pid": 2**70, "heartbeat": time.time()}):
        store.write_json(LEASE_FILE, lease)
        with ResultsLock(store, "search"):
            pass
    # one folder, however its URI is spelt, has one lease
    with ResultsLock(ResultsStore(f"s3://{bucket}/l"), "search"):
        with pytest.raises(UsageError, match="in use by another driver"):
            ResultsLock(ResultsStore(f"s3://{bucket}/l/"), "search").acquire()


def test_a_driver_whose_lease_is_taken_stops(bucket, ray_env, tmp_path):
    uri = f"s3://{bucket}/t"
    code = ("import os, signal, time, search.lock as L\n"
            "from search.results import ResultsStore\n"
            "L.HEARTBEAT_S = 0.2\n"
            f"lock = L.ResultsLock(ResultsStore({uri!r}), 'search')\n"
            "lock.acquire()\n"
            "def stop(*_):\n"  # what the driver's clean stop does
            "    lock.mark_interrupted()\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('holding', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ray_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        boto3.client("s3").put_object(Bucket=bucket, Key="t/.lease",
                                      Body=b'{"host": "rival", "pid": 7}')
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, out
    assert "lease was taken over or deleted by someone else; stopping" in out
    # its stop wrote nothing into the folder that is the rival's now (an interrupted mark
    # there would make the rival's run record nothing as finished)
    assert set(_objects(bucket, "t/")) == {"t/.lease"}
    assert b"rival" in _objects(bucket, "t/.lease")["t/.lease"]


def test_checkpoints_are_checked_before_they_are_downloaded(bucket, tmp_path, capsys):
    from ucrn.fileio import local_copy

    boto3.client("s3").put_object(Bucket=bucket, Key="ck/big.pt", Body=b"x" * 1000)
    with pytest.raises(ValueError, match="1000 bytes, more than the 100"):
        with local_copy(f"s3://{bucket}/ck/big.pt", max_bytes=100):
            pass
    rc = cli.main(["predict", "--checkpoint", f"s3://{bucket}/ck", "--out",
                   str(tmp_path / "p.parquet")])
    assert "a folder; expected a file" in _one_line(capsys, rc)
