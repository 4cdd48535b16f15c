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
        # no log monitor: it forwards workers' output to drivers, and every driver of the
        # tests (ours: log_to_driver=False) reads the log files instead; with Ray's metrics
        # collection off too, an idle head costs a third less CPU (0.9 of 2.6-3 CPU-s/min)
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats",
                                      "--include-log-monitor=false", *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     env={**env, "RAY_enable_metrics_collection": "0"},
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
    """Until the GCS at `address` counts n alive nodes (or fail saying how many it had).

    Asked in this process through Ray's GCS client (0.7 CPU-s in all, its import
    included) rather than by `ray status` polls, a new process of about 2 CPU-s each.
    (`env` is the nodes' environment: the token of this process's, which is the same.)"""
    from ray._raylet import GcsClient

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT of a Ray head")
    deadline = time.time() + timeout
    seen = "no answer"
    while time.time() < deadline:
        try:
            # the client's constructor waits about 40 s for a GCS that is not there,
            # whatever the timeout: it is made once something listens on the port
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError as e:
            seen = f"nothing listens there ({e.strerror or e})"
            time.sleep(0.5)
            continue
        try:
            nodes = GcsClient(address=address).get_all_node_info(timeout=5)
            alive = sum(info.state == 0 for info in nodes.values())  # 0: ALIVE
            if alive >= n:
                return
            seen = f"{alive} alive of {len(nodes)}"
        except Exception as e:  # not up yet: the GCS refuses or times out
            seen = f"{type(e).__name__}: {str(e)[:200]}"
        time.sleep(0.5)
    raise RuntimeError(f"Ray cluster at {address} did not come up with {n} nodes ({seen})")


def wait_for_free_cpus(address: str, cpus: float | None = None, timeout: float = 120) -> None:
    """Until the cluster has `cpus` CPUs free (None: all of them). A finished job's actors
    and placement groups are released some seconds after its driver exits on a loaded
    machine; fails naming the placement groups that still hold some."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        want = ray.cluster_resources()["CPU"] if cpus is None else cpus
        end = time.time() + timeout
        while ray.available_resources().get("CPU", 0) < want:
            if time.time() > end:
                held = {k: v["bundles"] for k, v in ray.util.placement_group_table().items()
                        if v["state"] != "REMOVED"}
                raise AssertionError(f"CPUs free: {ray.available_resources().get('CPU', 0)} "
                                     f"of {want} wanted; placement groups holding: {held}")
            time.sleep(0.3)
    finally:
        ray.shutdown()
