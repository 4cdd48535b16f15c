"""The data in Ray's object store, held once (search/dataload.py share/fetch) and an
object store sized to hold it (search/cluster.py object_store_bytes)."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

from search import dataload
from search.cluster import SPILL_AT, object_store_bytes
from ucrn.data import load_dataset

ray = pytest.importorskip("ray")


@pytest.fixture
def connected(ray_head):
    ray.init(address=ray_head, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged-through-disk"])
def test_share_then_fetch_gives_the_same_data_and_the_driver_keeps_no_copy(
        connected, monkeypatch, tmp_path, staged):
    monkeypatch.setattr(dataload, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(dataload, "STAGE_MIN_BYTES", 0 if staged else 1 << 62)
    monkeypatch.setattr(dataload, "_fs_type", lambda path: "ext4")  # tmp_path may be tmpfs
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    data = load_dataset("synthetic", None, seed=3)
    want = {(s, n): np.array(getattr(split, n), copy=True)
            for s, split in data.splits.items() for n in dataload._ARRAYS}
    alive = [weakref.ref(getattr(split, n)) for split in data.splits.values()
             for n in ("text", "audio", "vision", "labels")]
    holder = [data]
    del data
    named = []  # what the temporary folder holds while arrays go into the store
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda v: named.extend(tmp_path.iterdir()) or real_put(v))
    ref = dataload.share(holder)
    gc.collect()
    assert holder == [] and not [r for r in alive if r() is not None]  # no copy left here
    # staged files never have a name: a driver killed while staging leaves nothing behind
    assert named == [] and list(tmp_path.iterdir()) == []
    got = dataload.fetch(ref)
    for (s, n), a in want.items():
        b = getattr(got.splits[s], n)
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, (s, n)
        assert np.array_equal(a, b), (s, n)
        if n != "ids":
            assert not b.flags.writeable  # a view on the store's copy, not a private one
    assert got.task == "regression" and got.identity() == load_dataset("synthetic", None, seed=3).identity()


def test_staging_is_skipped_where_it_cannot_help(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert dataload._stage_dir(1 << 20) is None  # small data: never
    monkeypatch.setattr(dataload, "_fs_type", lambda path: "tmpfs")
    assert dataload._stage_dir(1 << 31) is None  # the temporary folder is memory too
    monkeypatch.setattr(dataload, "_fs_type", lambda path: "ext4")
    st = os.statvfs(tmp_path)
    assert dataload._stage_dir(st.f_bavail * st.f_frsize) is None  # no room on disk
    assert dataload._stage_dir(1 << 30) == str(tmp_path)


def test_object_store_is_sized_for_the_data():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert object_store_bytes(0) is None and object_store_bytes(1 << 20) is None
    size = object_store_bytes(int(0.3 * total))  # would fill Ray's default past spilling
    assert size is not None and size >= int(0.3 * total)
    assert size >= min(int(0.3 * total / SPILL_AT), int(0.7 * total)) - (1 << 20)
    assert object_store_bytes(10 * total) <= int(0.7 * total)  # never most of the memory
