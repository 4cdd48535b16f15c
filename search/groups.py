"""Placement groups a run leaves reserved, and their release.

Ray Train's controller (one per Tune trial of the `train` executor) makes a placement group
for its worker group. Tune ends a trial by ending its actor, which takes the controller
with it before the controller removes that group. Ray keeps a group until both its creator
and its job have ended, so without the dashboard (Ray Train's own cleaner asks the
dashboard whether the controller lives) every ended trial kept its workers' CPUs reserved
until the search ended: a search with more trials than the cluster holds at once waited
forever. Two releases here:
- during a run, `GroupSweeper` removes the job's groups whose creator actor has died;
- at a run's end, `release_at_end` removes all of the job's groups (Tune has returned, so
  nothing of the job uses one)."""

from __future__ import annotations

import threading
import time
from typing import Any

RELEASE_S = 10.0  # the longest the end of a run waits for its placement groups' release
QUIET_S = 1.0  # after a release, how long none of the job's groups may reappear
SWEEP_S = 1.0  # during a run, how often the groups of ended trials are looked for


def release_at_end() -> None:
    """Release this job's placement groups; never raises, and a cluster that no longer
    answers holds it RELEASE_S at most (a thread does the calls).

    Ray Train's controller, torn down with its trial, can start a new worker group (a new
    placement group) after its last one was removed: once a group was released, the job's
    groups are looked at again until none has appeared for QUIET_S."""

    def release() -> None:
        try:
            if not release_leftover_groups():
                return  # nothing left (a run of the tune executor): no wait
            quiet_since = time.monotonic()
            end = quiet_since + RELEASE_S
            while time.monotonic() - quiet_since < QUIET_S and time.monotonic() < end:
                time.sleep(0.2)
                if release_leftover_groups():
                    quiet_since = time.monotonic()
        except Exception:  # noqa: BLE001 - a cleanup must not hide how the run ended
            pass

    worker = threading.Thread(target=release, name="release-placement-groups", daemon=True)
    worker.start()
    worker.join(RELEASE_S)


def release_leftover_groups() -> list[str]:
    """Remove this job's placement groups that are still there once Tune has returned
    (Ray Train's last worker group's, and after a worker group restart Ray once kept one
    reserved after the job had ended, Ray 2.60). A placement group's id ends in the id of
    the job that made it (Ray's ID layout); other jobs' groups are left alone. Returns the
    ids removed."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return _remove([pg_id for pg_id, info in ray.util.placement_group_table().items()
                    if job and pg_id.endswith(job) and info.get("state") != "REMOVED"])


def release_orphaned_groups() -> list[str]:
    """Remove this job's placement groups whose creator, an actor, has died (an ended
    trial's Ray Train controller): nothing can use them any more, and Ray would hold them
    until the job ends. Groups the driver made (Tune's, one per trial) have no creator
    actor and are left alone, as are detached ones and other jobs'. Returns the ids
    removed; [] where this Ray does not give a group's creator (its GCS table is read
    directly: the public one leaves the creator out)."""
    import ray

    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        table = state._connect_and_get_accessor().get_placement_group_table()
        removed_state = gcs_pb2.PlacementGroupTableData.REMOVED
        job = ray.get_runtime_context().get_job_id()
    except (ImportError, AttributeError):  # another Ray's internals: the end still releases
        return []
    orphans = []
    for blob in table:
        g = gcs_pb2.PlacementGroupTableData.FromString(blob)
        if (g.creator_job_id.hex() == job and g.state != removed_state and not g.is_detached
                and g.creator_actor_dead and not ray.ActorID(g.creator_actor_id).is_nil()):
            orphans.append(g.placement_group_id.hex())
    return _remove(orphans)


def _remove(pg_ids: list[str]) -> list[str]:
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    for pg_id in pg_ids:
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        except Exception:  # noqa: BLE001 - removed meanwhile, or the GCS went away
            continue
        removed.append(pg_id)
    return removed


def group_sweepers(executor: str) -> list[Any]:
    """The Tune callbacks of a run that release the groups of its ended trials' Ray Train
    runs, every SWEEP_S between the steps of Tune's loop: one for the `train` executor,
    none for `tune` (its trials make no group of their own). A class made here: Ray is
    imported only once a run really starts."""
    if executor != "train":
        return []
    from ray import tune

    class GroupSweeper(tune.Callback):
        def __init__(self) -> None:
            self.last = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last < SWEEP_S:
                return
            self.last = time.monotonic()
            try:
                release_orphaned_groups()
            except Exception:  # noqa: BLE001 - a sweep never ends a run; its end releases
                pass

    return [GroupSweeper()]
