"""The data a search (search/driver.py) or a re-training (search/retraining.py) runs on: what a
given --data-path means, and the dataset loaded once on the driver (a problem is one line)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from search.flags import Flags
from ucrn.config import data_args
from ucrn.data import MultData, Split, load_dataset, resolve_dataset
from ucrn.errors import UsageError


def with_data_path(fl: Flags) -> Flags:
    """A given --data-path is never ignored: without --dataset, the dataset is read off the
    file names there (and said)."""
    if fl.data_path is None:
        return fl
    try:
        r = resolve_dataset(fl.dataset, fl.data_path, fl.aligned, fl.data_format)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if r.note:
        print(r.note, flush=True)
    return replace(fl, dataset=r.dataset, aligned=r.aligned, data_path=str(r.path),
                   data_format=r.format)


def load_data(config: dict[str, Any]) -> MultData:
    """The dataset of a trial config, once, on the driver; a data problem is a usage
    error (one line)."""
    try:
        data = load_dataset(**data_args(config))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"data: {data.summary()}", flush=True)
    return data


# ---- the data in Ray's object store, held once --------------------------------------------
# Why: `ray.put(data)` of the whole dataset copies every array into the object store while
# the driver still holds the loaded arrays: twice the data for the whole search (a 5.92 GiB
# MOSEI-shaped file peaked at 12.7 GiB). Each array is put on its own and the driver's copy
# dropped as soon as it is stored. Even so, putting an array needs it twice for a moment
# (the driver's and the store's), on top of the rest of the data: 1.53x a MOSEI file at
# the peak. With large data every array but the largest is therefore first written to a
# file without a name (the driver's copy freed as each is written; the page cache holds the
# files and gives them back under pressure); the largest is put while the store is still
# empty, then the others from read-only maps of their files, each closed once stored. The
# peak is then the data plus one small array's moment of two copies (measured: 1.30x; about
# 30 s more before the first trial for that file). The trials map the stored arrays without
# copying them (read-only views).

SHARED_MIN_BYTES = 1 << 16  # smaller arrays travel inside the data's skeleton
STAGE_MIN_BYTES = 1 << 30  # below this, the moment of two copies costs too little to stage
_TMPFS = "tmpfs"


@dataclass(frozen=True)
class _Stored:
    """Stands in a split's field for an array kept in the object store as its own object."""

    ref: Any


def data_bytes(data: MultData) -> int:
    """Bytes of the data's arrays: what Ray's object store will hold."""
    return sum(a.nbytes for split in data.splits.values() for name in _ARRAYS
               if isinstance(a := getattr(split, name), np.ndarray))


def share(holder: list[MultData]) -> Any:
    """The data of `holder` (emptied: the caller keeps no reference) in Ray's object store,
    one array at a time; an ObjectRef that `fetch` turns back into the data."""
    import ray

    data = holder.pop()
    fields_ = [(split, name) for split in data.splits.values() for name in _ARRAYS
               if getattr(split, name).nbytes >= SHARED_MIN_BYTES]
    fields_.sort(key=lambda f: -getattr(f[0], f[1]).nbytes)  # largest first
    where = _stage_dir(data_bytes(data))
    if where is None:
        for split, name in fields_:  # put, then replace: the driver's copy freed at once
            setattr(split, name, _Stored(ray.put(getattr(split, name))))
        return ray.put(data)
    first, *rest = fields_  # the largest goes straight in while the store is empty
    staged = []
    try:
        for split, name in rest:
            a = getattr(split, name)
            if a.dtype.hasobject:  # object arrays (ids) are small: put as they are
                setattr(split, name, _Stored(ray.put(a)))
                continue
            # a file without a name (O_TMPFILE): nothing is left behind, even by kill -9
            f = tempfile.TemporaryFile(dir=where)
            staged.append((split, name, f, a.dtype, a.shape))
            a.tofile(f)
            f.flush()
            setattr(split, name, None)  # the driver's copy goes; the file holds it
            del a
        setattr(first[0], first[1], _Stored(ray.put(getattr(*first))))
        for split, name, f, dtype, shape in staged:
            mapped = np.memmap(f, dtype=dtype, mode="r", shape=shape)
            setattr(split, name, _Stored(ray.put(np.asarray(mapped))))
            del mapped  # unmapped; the file's pages go when it is closed
            f.close()
    finally:
        for *_, f, _dtype, _shape in staged:
            f.close()
    return ray.put(data)


def _stage_dir(nbytes: int) -> str | None:
    """The temporary folder to stage `nbytes` through, or None when staging would not help:
    small data, a temporary folder in memory (tmpfs), or too little disk."""
    if nbytes < STAGE_MIN_BYTES:
        return None
    tmp = tempfile.gettempdir()
    try:
        st = os.statvfs(tmp)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < nbytes * 1.1 or _fs_type(tmp) == _TMPFS:
        return None
    return tmp


def _fs_type(path: str) -> str:
    """The file system type of the mount holding `path` (Linux's /proc/mounts; '' if unknown)."""
    real, best, kind = os.path.realpath(path), "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (real == parts[1] or real.startswith(
                        parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        return ""
    return kind


def fetch(ref: Any) -> MultData:
    """The data `share` stored, its arrays read-only views on the object store's copy."""
    import ray

    data: MultData = ray.get(ref)
    stored = [(split, name) for split in data.splits.values() for name in _ARRAYS
              if isinstance(getattr(split, name), _Stored)]
    arrays = ray.get([getattr(split, name).ref for split, name in stored])
    for (split, name), array in zip(stored, arrays, strict=True):
        setattr(split, name, array)
    return data


_ARRAYS = tuple(f.name for f in fields(Split) if f.type in ("np.ndarray", np.ndarray))
