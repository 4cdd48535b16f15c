"""Placement groups a run leaves reserved (search.groups): during a run, the groups whose
creator (an ended trial's Ray Train controller) has died are released; at a run's end, all
of the run's own; never another job's, nor one whose creator lives."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.raynodes import RayNode, free_port, session_pids, wait_for_free_cpus, wait_for_nodes

ROOT = Path(__file__).resolve().parents[1]


def test_groups_whose_creator_died_are_released_and_no_others(ray_head, monkeypatch):
    """An actor's group once the actor is gone: released; a live actor's, the driver's own
    (Tune makes its trials' groups there) and, under another job's id, none."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from search.cluster import stop_ray
    from search.groups import release_orphaned_groups

    @ray.remote(num_cpus=0)
    class Maker:
        def make(self) -> str:
            pg = placement_group([{"CPU": 0.01}])
            ray.get(pg.ready(), timeout=60)
            return pg.id.hex()

    ray.init(address=ray_head, logging_level="ERROR", log_to_driver=False)
    try:
        gone, alive = Maker.remote(), Maker.remote()
        gone_pg, alive_pg = ray.get([gone.make.remote(), alive.make.remote()], timeout=120)
        own = placement_group([{"CPU": 0.01}])
        assert own.wait(60)
        assert release_orphaned_groups() == []  # every creator lives
        ray.kill(gone)
        context = ray.get_runtime_context()
        job = context.get_job_id()
        released: list[str] = []
        deadline = time.monotonic() + 30
        while not released and time.monotonic() < deadline:  # the GCS learns of it soon
            with monkeypatch.context() as m:  # as another job's driver: not ours to release
                m.setattr(type(context), "get_job_id", lambda self: "7fffffff")
                assert release_orphaned_groups() == []
            time.sleep(0.2)
            released = release_orphaned_groups()
        assert context.get_job_id() == job and released == [gone_pg]
        state = {k: v["state"] for k, v in placement_group_table().items()}
        assert state[gone_pg] == "REMOVED"
        assert state[alive_pg] == state[own.id.hex()] == "CREATED"
        assert release_orphaned_groups() == []  # removed ones are not counted again
    finally:
        stop_ray()


def test_the_sweep_runs_for_the_train_executor_at_most_every_sweep_s_and_never_raises(
        monkeypatch):
    import search.groups as gr

    calls: list[float] = []

    def failing() -> list[str]:
        calls.append(time.monotonic())
        raise RuntimeError("the GCS went away")

    monkeypatch.setattr(gr, "release_orphaned_groups", failing)
    assert gr.group_sweepers("tune") == []
    (sweeper,) = gr.group_sweepers("train")
    monkeypatch.setattr(gr, "SWEEP_S", 60.0)
    for _ in range(20):  # Tune's loop steps often: one sweep, and its failure kept inside
        sweeper.on_step_end(iteration=0, trials=[])
    assert len(calls) == 1
    monkeypatch.setattr(gr, "SWEEP_S", 0.0)
    sweeper.on_step_end(iteration=0, trials=[])
    assert len(calls) == 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings
def test_the_trainer_has_no_group_cleaner_of_its_own():
    """Ray Train's cleaner (a detached actor per run, which asks the dashboard whether the
    run lives) is left out; every other callback of Ray Train's is kept."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from search.trial import _without_group_cleaner

    def names(cls: type) -> list[str]:
        trainer = cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    ours, rays = names(_without_group_cleaner(TorchTrainer)), names(TorchTrainer)
    assert "PlacementGroupCleanerCallback" in rays
    assert ours == [n for n in rays if n != "PlacementGroupCleanerCallback"]
@pytest.mark.slow
def test_a_train_search_without_a_dashboard_frees_each_ended_trials_cpus(ray_env, tmp_path):
    """A head without the dashboard, one Ray Train worker group at a time: each ended
    trial's worker group was kept reserved until the search's end (Ray Train's own
    cleaner asks the dashboard), so the second trial waited forever. Now every trial runs,
    and no process of Ray Train's is left behind on the cluster."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--num-gpus=0", "--include-dashboard=false"], ray_env, tmp_path / "head.log")
    try:
        wait_for_nodes(address, 1, ray_env)
        space = tmp_path / "small.yaml"
        space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: 1\nd_model: 8\nheads: 2\n")
        log = tmp_path / "search.log"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_search.py"), "--address", address, "--storage",
             str(tmp_path), "--name", "s", "--executor", "train", "--space", str(space),
             "--num-samples", "3", "--max-epochs", "2", "--max-concurrent", "1"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ray_env)
        try:
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rc == 0, log.read_text()[-3000:]
        # a run cut off with no word of its own (its cluster lost) was said how to resume
        assert (f"if cut off, resume with: python run_search.py --resume --name s --storage "
                f"{tmp_path}") in log.read_text()
        trials = pd.read_parquet(tmp_path / "s" / "trials.parquet")
        assert len(trials) == 3 and set(trials.status) <= {"completed", "stopped"}
        wait_for_free_cpus(address, timeout=30)
        left = [p for p in session_pids(head.sid) if b"PlacementGroupCleaner" in _cmdline(p)]
        assert not left, left
    finally:
        head.stop(address)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_runs_leftover_placement_groups_are_released_and_no_others(ray_head, monkeypatch):
    """What a run leaves reserved (Ray Train once left a worker group's placement group) is
    removed at its end; another job's groups (their ids end in that job's id) are not."""
    import importlib

    import ray

    from search.cluster import stop_ray
    from search.groups import release_leftover_groups

    pgmod = importlib.import_module("ray.util.placement_group")  # ray.util's name is a function

    real_table, real_remove, removed = ray.util.placement_group_table, pgmod.remove_placement_group, []
    foreign = "ab" * 14 + "ffffff7f"  # a placement group of job 7fffffff
    monkeypatch.setattr(ray.util, "placement_group_table", lambda *a: real_table(*a) if a else {
        **real_table(), foreign: {"state": "CREATED", "bundles": {0: {"CPU": 0.5}}}})
    monkeypatch.setattr(pgmod, "remove_placement_group",
                        lambda pg: (removed.append(pg.id.hex()), real_remove(pg)))
    ray.init(address=ray_head, logging_level="ERROR", log_to_driver=False)
    try:
        pg = pgmod.placement_group([{"CPU": 0.1}])
        assert pg.wait(60)
        assert release_leftover_groups() == [pg.id.hex()] == removed
        assert real_table(pg)["state"] == "REMOVED"
        assert release_leftover_groups() == []  # removed ones are not counted again
        pgmod.placement_group([{"CPU": 0.1}]).wait(60)
    finally:
        stop_ray()  # what the runs call: releases, then shuts down
    assert not ray.is_initialized() and len(removed) == 2 and foreign not in removed


def test_groups_that_reappear_after_a_release_are_released_too(monkeypatch):
    """Ray Train's controller, torn down with its trial, made a new placement group after
    its last one was removed (a 0.9-CPU group left after the job, in a suite run): after a
    release the job's groups are looked at again until none appears for QUIET_S; a run
    that had none left is not held at all."""
    import search.cluster as cl
    import search.groups as gr

    found = [["a"], [], ["b"], [], [], [], []]
    calls: list[float] = []

    def release() -> list[str]:
        calls.append(time.monotonic())
        return found.pop(0) if found else []

    monkeypatch.setattr(gr, "release_leftover_groups", release)
    monkeypatch.setattr(gr, "QUIET_S", 0.5)
    monkeypatch.setattr("ray.shutdown", lambda: None)
    cl.stop_ray()
    assert len(calls) >= 4 and calls[-1] - calls[2] >= 0.4  # quiet for QUIET_S after "b"
    found[:], calls[:] = [[]], []
    t = time.monotonic()
    cl.stop_ray()
    assert len(calls) == 1 and time.monotonic() - t < 0.2


def test_the_end_of_a_run_waits_for_a_release_that_hangs_a_bounded_time(monkeypatch):
    """A cluster that stopped answering holds the release of placement groups, not the
    run's exit: Ray is shut down after RELEASE_S."""
    import threading

    import search.cluster as cl
    import search.groups as gr

    stuck, shut = threading.Event(), []
    monkeypatch.setattr(gr, "release_leftover_groups", lambda: stuck.wait(60) and [])
    monkeypatch.setattr(gr, "RELEASE_S", 0.3)
    monkeypatch.setattr("ray.shutdown", lambda: shut.append(time.time()))
    t = time.time()
    cl.stop_ray()
    stuck.set()
    assert len(shut) == 1 and 0.25 < shut[0] - t < 5


