"""Servers the tests and benchmarks start die with the process that started them, however
it ends: a pytest worker cut off mid-teardown (SIGTERM to an xdist run) left moto running."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
