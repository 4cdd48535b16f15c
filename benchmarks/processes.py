"""Stopping exactly the processes one started: by process session, found through /proc.

A Ray node or a search started with `start_new_session=True` keeps everything it spawns
(GCS, raylet, dashboard, workers) in that session, so ending the session's processes stops
exactly those: never by name, never `ray stop` (which ends every Ray process on the
machine). Used by the tests' Ray nodes and by the benchmarks' Ray heads and searches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (read as bytes: a process may
    name itself in any bytes), or None if it is gone. [0] state, [1] parent, [3] session,
    [19] start time in clock ticks."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int | str, fields: list[bytes]) -> bool:
    """Not a zombie, or a zombie main thread whose other threads still run (a process
    whose main thread has exited shows as Z but goes on)."""
    if fields[0] not in (b"Z", b"X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((f := _stat(f"{pid}/task/{t}")) is not None and f[0] not in (b"Z", b"X")
               for t in tasks)


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None and len(fields) > 19:
            yield int(entry), fields


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid`."""
    return [pid for pid, f in _processes() if int(f[3]) == sid and _alive(pid, f)]


def tree_pids(root: int) -> list[int]:
    """`root` and every live process descended from it (a search's driver: the Ray it
    started, and Ray's workers)."""
    children: dict[int, list[int]] = {}
    for pid, f in _processes():
        if _alive(pid, f):
            children.setdefault(int(f[1]), []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (with its pid, an identity no
    later process can have), or None if it is gone."""
    f = _stat(pid)
    return int(f[19]) if f is not None and len(f) > 19 else None


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it is gone."""
    ticks = start_ticks(pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if ticks is None:
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


def kill_session(sid: int, grace: float = 8.0, started: int | None = None) -> list[int]:
    """Stop the session's processes: SIGTERM to its leader first, up to `grace` seconds for
    it to stop its own children; then SIGTERM to what is left (2 s at most), then SIGKILL
    (5 s at most). Returns the pids still alive after all that (none, unless some could not
    be signalled).

    Leader first because `ray start --block` shuts its node down in order on SIGTERM (about
    3 s), while a SIGTERM to all of a node's processes at once leaves its GCS and
    autoscaler waiting on each other until the SIGKILL: 8 s lost on every stop.
    `started` (`start_ticks` of the leader, read when it was started): a live process
    `sid` that started at another time is someone else's on a reused pid, and the session
    we started is over (a pid still used as a session id is never reused): nothing to do.
    Each round signals the session's processes anew and its process group at once, so a
    process that forks meanwhile does not escape; it ends after two empty scans."""
    if sid <= 0 or sid == os.getsid(0):
        raise ValueError(f"kill_session({sid}): not a session this process started")
    now = start_ticks(sid)
    if started is not None and now is not None and now != started:
        return []
    grace = max(grace, 0.0) if grace == grace else 0.0  # NaN: none
    clock = time.monotonic
    if sid in session_pids(sid):
        _signal([sid], signal.SIGTERM)
        _signal([sid], signal.SIGCONT)  # a stopped leader runs its handler
        deadline = clock() + grace
        while clock() < deadline and sid in session_pids(sid):
            time.sleep(0.1)
    for sig, wait in ((signal.SIGTERM, min(grace, 2.0)), (signal.SIGKILL, 5.0)):
        deadline, empty = clock() + wait, 0
        while clock() < deadline or empty == 1:
            left = session_pids(sid)
            empty = 0 if left else empty + 1
            if empty == 2:
                return []
            with contextlib.suppress(OSError):
                os.killpg(sid, sig)
            _signal(left, sig)
            if sig == signal.SIGTERM:
                _signal(left, signal.SIGCONT)
            time.sleep(0.05)
    return session_pids(sid)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


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
        self.started = start_ticks(self.proc.pid)
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
        kill_session(self.proc.pid, grace=RAY_NODE_GRACE, started=self.started)
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
        self.started = start_ticks(self.proc.pid)
        try:
            wait_port(port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        kill_session(self.proc.pid, started=self.started)
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
