"""A real two-node Ray cluster on loopback: trials pinned to the second node, results
in the driver's Parquet. Both nodes are stopped by process id, also on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.raynodes import RayNode, free_port, wait_for_free_cpus, wait_for_nodes

ROOT = Path(__file__).resolve().parents[1]


def node_ids(address: str) -> dict[str, str]:
    """{"head": id, "second": id} by the custom resource the second node declares."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        ids = {}
        for n in ray.nodes():
            if n["Alive"]:
                ids["second" if "second_node" in n["Resources"] else "head"] = n["NodeID"]
        return ids
    finally:
        ray.shutdown()


class TwoNodes:
    """A head (1 CPU) and a second node (1 CPU, custom resource `second_node`) on loopback,
    each its own `ray start` session; `stop_second()` ends the second node's processes (`lost=True`: all at once, by SIGKILL)."""

    def __init__(self, env: dict[str, str], logs: Path, second_node: int):
        port = free_port()
        self.address, self.env = f"127.0.0.1:{port}", env
        self.head = RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={free_port()}"], env, logs / "head.log")
        self.second: RayNode | None = None
        try:
            wait_for_nodes(self.address, 1, env)
            self.second = RayNode([f"--address={self.address}", "--node-ip-address=127.0.0.1",
                                   "--num-cpus=1", f'--resources={{"second_node": {second_node}}}'],
                                  env, logs / "second.log")
            wait_for_nodes(self.address, 2, env)
            self.ids = node_ids(self.address)
        except BaseException:
            self.stop()
            raise

    def stop_second(self, lost: bool = False) -> None:
        if self.second is not None:
            self.second.lose() if lost else self.second.stop()
            self.second = None

    def stop(self) -> None:
        self.stop_second()
        self.head.stop(self.address)


@pytest.fixture
def two_nodes(request, ray_env, tmp_path):
    nodes = TwoNodes(ray_env, tmp_path, second_node=request.param)
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.mark.slow
@pytest.mark.parametrize("two_nodes", [2], indirect=True)
def test_two_node_search_then_lost_node_trial_retried_on_head(two_nodes, ray_env, tmp_path):
    """A Ray Train trial pinned to the second node; then, on the same cluster (each one
    costs a minute of start-up), the second node lost (its processes SIGKILLed) while a
    trial trains there: the trial resumes from its checkpoint on the head and the search
    completes."""
    import time

    address, ids = two_nodes.address, two_nodes.ids
    assert set(ids) == {"head", "second"}
    storage = tmp_path / "shared"  # a path both nodes see (NFS or object storage on a real cluster)
    res = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--address", address, "--storage",
         str(storage), "--name", "two", "--num-samples", "1", "--max-epochs", "2",
         "--executor", "train", "--cpus-per-trial", "0.5",
         "--trial-resources", '{"second_node": 1}'],
        env=ray_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = pd.read_parquet(storage / "two" / "trials.parquet")
    epochs = pd.read_parquet(storage / "two" / "epochs.parquet")
    assert len(trials) == 1 and set(trials.status) <= {"completed", "stopped"}
    assert (trials.node_id == ids["second"]).all(), trials[["trial_id", "node_id"]]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(epochs) == int(trials.epochs_run.sum())

    # the lost node: 1 CPU per node, 2 one-CPU trials (the tune executor): one per node;
    # once the second node is gone both run on the head in turn. Both CPUs free first:
    # else the second trial waited for the first one's process on the head (Tune reuses
    # it) and nothing ran on the second node (once, on a loaded machine)
    wait_for_free_cpus(address, 2)
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "--address", address, "--storage",
         str(storage), "--name", "lost", "--num-samples", "2", "--max-epochs", "5",
         "--grace-period", "5", "--max-failures", "3"],
        env=ray_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        epochs_path = storage / "lost" / "epochs.parquet"
        deadline = time.time() + 300
        while time.time() < deadline:  # until an epoch was trained on the second node
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            try:
                if (pd.read_parquet(epochs_path).node_id == ids["second"]).any():
                    break
            except (FileNotFoundError, OSError, ValueError, AttributeError):
                pass
            time.sleep(0.5)
        else:
            raise TimeoutError("no epoch ran on the second node")
        two_nodes.stop_second(lost=True)
        assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    trials = pd.read_parquet(storage / "lost" / "trials.parquet")
    epochs = pd.read_parquet(epochs_path)
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.groupby("trial_id").epoch.max() == 5).all()
    moved = trials[trials.resumes >= 1]
    assert len(moved) >= 1, trials[["trial_id", "resumes", "node_id"]]
    assert (moved.node_id == ids["head"]).all()  # finished on the head
