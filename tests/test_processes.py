"""Servers the tests and benchmarks start die with the process that started them, however
it ends: a pytest worker cut off mid-teardown (SIGTERM to an xdist run) left moto running."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.processes import kill_session, session_pids, start_ticks

ROOT = Path(__file__).resolve().parents[1]

PARENT = """
import socket, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from benchmarks.processes import Server
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = Server([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
             Path({log!r}), port)
print(srv.proc.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_server_dies_with_its_parent_even_on_sigkill(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(
        root=str(ROOT), log=str(tmp_path / "server.log"))], stdout=subprocess.PIPE, text=True)
    try:
        server = int(parent.stdout.readline())
        assert _alive(server)
        os.kill(parent.pid, signal.SIGKILL)  # no teardown at all
        parent.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(server) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(server), "the server outlived the process that started it"
    finally:
        parent.kill()


# ---- kill_session: what the tests and benchmarks stop their Ray nodes, servers and
# drivers with. Each process below is a small Python sleeper in a session of its own;
# a decoy in another session must come through every stop untouched.

LEADER = """
import os, signal, sys, time
mode = sys.argv[1]
def kid(ignore):
    if os.fork() == 0:
        if ignore:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(120)
        os._exit(0)
if mode == "kids-ignore-term":  # the leader exits on SIGTERM, its children ignore it
    kid(True); kid(True)
elif mode == "handler":  # an orderly stop on SIGTERM
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
elif mode == "odd-name":  # a name that is not UTF-8 (Linux: 15 bytes of anything)
    import ctypes
    ctypes.CDLL(None).prctl(15, b"w\\xff\\xfe", 0, 0, 0)
elif mode == "main-thread-exits":  # /proc shows the process as a zombie; it runs on
    import ctypes, threading
    threading.Thread(target=time.sleep, args=(120,)).start()
    print("ready", flush=True)
    ctypes.CDLL(None).syscall(60, 0)  # exit(2) of the main thread alone
print("ready", flush=True)
time.sleep(120)
"""


def _session(mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LEADER, mode], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # its children are up
    return proc


@pytest.fixture
def decoy():
    proc = _session("plain")
    yield proc
    kill_session(proc.pid, grace=0)
    proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["plain", "kids-ignore-term", "handler", "odd-name",
                                  "main-thread-exits"])
def test_the_session_ends_and_nothing_else(mode, decoy):
    proc = _session(mode)
    members = session_pids(proc.pid)
    assert proc.pid in members and len(members) == (3 if mode == "kids-ignore-term" else 1)
    t0 = time.monotonic()
    try:
        assert kill_session(proc.pid, grace=1) == []
    finally:
        proc.wait(timeout=10)
    assert time.monotonic() - t0 < 1 + 2 + 5
    assert session_pids(proc.pid) == [] and decoy.poll() is None


def test_a_stopped_leader_still_gets_its_orderly_stop(decoy):
    proc = _session("handler")
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    kill_session(proc.pid, grace=5)
    assert proc.wait(timeout=10) == 0  # its handler ran: exit 0, not a SIGKILL
    assert time.monotonic() - t0 < 2 and decoy.poll() is None


def test_a_reused_pid_is_someone_elses_session(decoy):
    """A leader that started at another time than the one we started is not ours: nothing
    is signalled."""
    ticks = start_ticks(decoy.pid)
    assert kill_session(decoy.pid, grace=0, started=ticks + 1) == []
    time.sleep(0.2)
    assert decoy.poll() is None


@pytest.mark.parametrize("sid", [0, -1, "own"])
def test_no_session_but_one_we_started(sid):
    sid = os.getsid(0) if sid == "own" else sid
    with pytest.raises(ValueError, match="not a session this process started"):
        kill_session(sid)


def test_wait_for_nodes_fails_within_its_timeout_where_no_head_is():
    """The GCS client's constructor waited about 40 s for a GCS that is not there: a head
    that did not come up was reported only then, whatever the timeout."""
    from tests.raynodes import free_port, wait_for_nodes

    for address in (f"127.0.0.1:{free_port()}", "nosuchhost.invalid:6379"):
        t = time.monotonic()
        with pytest.raises(RuntimeError, match=f"at {address} did not come up .*nothing listens"):
            wait_for_nodes(address, 1, {}, timeout=2)
        assert time.monotonic() - t < 10
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        wait_for_nodes("127.0.0.1", 1, {}, timeout=2)
