"""Start and stop Ray nodes for tests, by process id only.

Each node is `ray start --block` in a new session; everything it spawns (GCS, raylet,
dashboard, workers) stays in that session, so stopping the node ends exactly the
processes of that session, found through /proc: never by name, never `ray stop`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3] = session id, [0] = state
            pids.append(int(entry))
    return pids


def kill_session(sid: int, grace: float = 8.0) -> None:
    """SIGTERM the session's processes, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.2)
        if not session_pids(sid):
            return


class RayNode:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    @property
    def sid(self) -> int:
        return self.proc.pid

    def stop(self, address: str | None = None) -> None:
        kill_session(self.sid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # a killed head leaves Ray's pointer to it; a later plain ray.init() would hang on it
        pointer = Path("/tmp/ray/ray_current_cluster")
        try:
            if address and pointer.read_text().strip() == address:
                pointer.unlink()
        except OSError:
            pass


def wait_for_nodes(address: str, n: int, env: dict[str, str], timeout: float = 90) -> None:
    """Until `ray status` counts n alive nodes (or fail with the logs' tail)."""
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        res = subprocess.run([RAY, "status", "--address", address], capture_output=True,
                             text=True, env=env, timeout=60)
        out = res.stdout + res.stderr
        if res.returncode == 0:
            active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if active.count("node_") >= n:
                return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {address} did not come up with {n} nodes:\n{out[-2000:]}")
