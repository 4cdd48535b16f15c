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

from benchmarks.processes import (  # noqa: F401 - kill_session, session_pids re-exported
    RAY_NODE_GRACE,
    die_with_parent,
    kill_session,
    session_pids,
    start_ticks,
)

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        # die_with_parent: a test worker cut off mid-teardown still takes its node down
        # (`ray start --block` shares its fate with the Ray processes it started)
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.started = start_ticks(self.proc.pid)

    @property
    def sid(self) -> int:
        return self.proc.pid

    def lose(self) -> None:
        """The node lost as a machine is lost: every process of its session SIGKILLed at
        once (no orderly shutdown that lets its running tasks finish first)."""
        for pid in session_pids(self.sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop()

    def stop(self, address: str | None = None) -> None:
        kill_session(self.sid, grace=RAY_NODE_GRACE, started=self.started)
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
