"""A real two-node Ray cluster on loopback: trials pinned to the second node, results
in the driver's Parquet. Both nodes are stopped by process id, also on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.raynodes import RayNode, free_port, wait_for_nodes

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


@pytest.mark.slow
def test_two_node_loopback_search(ray_env, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"],
                   ray_env, tmp_path / "head.log")
    second = None
    try:
        wait_for_nodes(address, 1, ray_env)
        second = RayNode([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                          '--resources={"second_node": 2}'], ray_env, tmp_path / "second.log")
        wait_for_nodes(address, 2, ray_env)
        ids = node_ids(address)
        assert set(ids) == {"head", "second"}
        storage = tmp_path / "shared"  # a path both nodes see (NFS or object storage on a real cluster)
        res = subprocess.run(
            [sys.executable, str(ROOT / "run_search.py"), "--address", address, "--storage",
             str(storage), "--name", "two", "--num-samples", "2", "--max-epochs", "2",
             "--executor", "train", "--cpus-per-trial", "0.5",
             "--trial-resources", '{"second_node": 1}'],
            env=ray_env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        trials = pd.read_parquet(storage / "two" / "trials.parquet")
        epochs = pd.read_parquet(storage / "two" / "epochs.parquet")
        assert len(trials) == 2 and set(trials.status) <= {"completed", "stopped"}
        assert (trials.node_id == ids["second"]).all(), trials[["trial_id", "node_id"]]
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert len(epochs) == int(trials.epochs_run.sum())
    finally:
        if second is not None:
            second.stop()
        head.stop(address)


@pytest.mark.slow
def test_lost_node_trial_retried_on_head(ray_env, tmp_path):
    """Stop the second node (by its process ids) while a trial trains there: the trial
    resumes from its checkpoint on the head and the search completes."""
    import time

    port = free_port()
    address = f"127.0.0.1:{port}"
    # 1 CPU per node, 2 trials of 0.1 (trial driver) + 0.9 (worker): one worker per node
    head = RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"],
                   ray_env, tmp_path / "head.log")
    second = None
    proc = None
    try:
        wait_for_nodes(address, 1, ray_env)
        second = RayNode([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                          '--resources={"second_node": 1}'], ray_env, tmp_path / "second.log")
        wait_for_nodes(address, 2, ray_env)
        ids = node_ids(address)
        storage = tmp_path / "shared"
        log = open(tmp_path / "driver.log", "w")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_search.py"), "--address", address, "--storage",
             str(storage), "--name", "lost", "--num-samples", "2", "--max-epochs", "5",
             "--grace-period", "5", "--max-failures", "3"],
            env=ray_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
        second.stop()
        second = None
        assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        trials = pd.read_parquet(storage / "lost" / "trials.parquet")
        epochs = pd.read_parquet(epochs_path)
        assert len(trials) == 2 and set(trials.status) == {"completed"}
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert (epochs.groupby("trial_id").epoch.max() == 5).all()
        moved = trials[trials.resumes >= 1]
        assert len(moved) >= 1, trials[["trial_id", "resumes", "node_id"]]
        assert (moved.node_id == ids["head"]).all()  # finished on the head
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if second is not None:
            second.stop()
        head.stop(address)
