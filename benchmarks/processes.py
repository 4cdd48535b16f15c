"""Stopping exactly the processes one started: by process session, found through /proc.

A Ray node or a search started with `start_new_session=True` keeps everything it spawns
(GCS, raylet, dashboard, workers) in that session, so ending the session's processes stops
exactly those: never by name, never `ray stop` (which ends every Ray process on the
machine). Used by the tests' Ray nodes and by the benchmarks' Ray heads and searches.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
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


def tree_pids(root: int) -> list[int]:
    """`root` and every live process descended from it (a search's driver: the Ray it
    started, and Ray's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))  # [1] = parent
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it is gone."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of the processes together (shared pages split between the
    processes that map them, so a sum over processes counts each page once)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return total


# a Ray node's orderly stop takes about 2.5 s; one that has lost its cluster's other nodes
# can wait far longer for them: nothing of a benchmark's or test's node is worth the wait
RAY_NODE_GRACE = 3.0


def kill_session(sid: int, grace: float = 8.0) -> None:
    """Stop the session's processes: SIGTERM to its leader first, up to `grace` seconds for
    it to stop its own children; then SIGTERM to what is left (2 s), then SIGKILL.

    Leader first because `ray start --block` shuts its node down in order on SIGTERM (about
    3 s), while a SIGTERM to all of a node's processes at once leaves its GCS and
    autoscaler waiting on each other until the SIGKILL: 8 s lost on every stop."""
    if sid in session_pids(sid):
        _signal([sid], signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and sid in session_pids(sid):
            time.sleep(0.1)
    for sig, wait in ((signal.SIGTERM, min(grace, 2.0)), (signal.SIGKILL, 5.0)):
        _signal(session_pids(sid), sig)
        deadline = time.time() + wait
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.1)
        if not session_pids(sid):
            return


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A local Ray head for the searches of one step, started in its own session and
    stopped by that session's pids (never `ray stop`, which would stop other people's
    Ray too). Every search of the step joins it with --address, as on a cluster: Ray
    starts once per step, not once per configuration."""

    def __init__(self, env: dict[str, str], gpus: int, cpus: int, work: Path):
        self.env = env
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = work / f"ray-head-{self.port}.log"
        ray_cli = Path(sys.executable).with_name("ray")
        cli = [str(ray_cli)] if ray_cli.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
        self.proc = subprocess.Popen(
            [*cli, "start", "--head", "--block", "--disable-usage-stats",
             f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
             f"--num-gpus={gpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={_free_port()}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=die_with_parent)
        try:  # a head that does not start, or whose start is interrupted (SIGTERM), is stopped
            deadline = time.time() + 90
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                if "Ray runtime started" in self.log.read_text(errors="replace"):
                    return
                time.sleep(0.5)
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the Ray head did not start: {tail.strip().splitlines()[-1:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        kill_session(self.proc.pid, grace=RAY_NODE_GRACE)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        pointer = Path("/tmp/ray/ray_current_cluster")  # a dead head's pointer misleads ray.init
        try:
            if pointer.read_text().strip() == self.address:
                pointer.unlink()
        except OSError:
            pass


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies, however
    it dies (SIGKILL, a test worker cut off mid-teardown), so no server outlives it."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: stop() by pid is the only guard
        pass


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Server:
    """A server process in its own session, listening on `port`; stop() ends exactly that
    session."""

    def __init__(self, argv: list[str], log: Path, port: int, env: dict | None = None):
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env,
                                     preexec_fn=die_with_parent)
        try:
            wait_port(port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def moto(port: int, log: Path, strict: bool = False) -> Server:
    """moto's standalone S3 server on 127.0.0.1:`port` (a real S3 REST API, in memory);
    `strict` checks credentials and knows none, so every request is refused."""
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if strict else None
    return Server([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                   "-p", str(port)], log, port, env=env)
