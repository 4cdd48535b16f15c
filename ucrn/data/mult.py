"""MulT's pickles (<dataset>_data.pkl aligned, <dataset>_data_noalign.pkl not): their file
names, and the pickle reader (which MMSA's pickles share) and writer."""

from __future__ import annotations

import pickle
from pathlib import Path

from ucrn.data.dataset import DATASETS, MultData, _fail
from ucrn.data.layout import _from_raw
from ucrn.data.mmsa import pickle_layout
from ucrn.fileio import atomic_write
from ucrn.safeload import SafeLoadError, load_pickle

# Per split: text, audio, vision (N, T, D), labels (N, 1, 1), or (N, 4, 2) one-hot for
# IEMOCAP, and id. The files come from third-party mirrors, so they are read with the
# restricted unpickler of ucrn.safeload (numpy arrays and plain containers only).


def data_file_name(dataset: str, aligned: bool) -> str:
    """The names MulT published: ``<dataset>_data.pkl`` aligned, ``_data_noalign.pkl`` not."""
    return f"{dataset}_data.pkl" if aligned else f"{dataset}_data_noalign.pkl"


def _known_files(folder: Path) -> list[tuple[str, bool, Path]]:
    """(dataset, aligned, path) of every MulT-named file in a folder."""
    found = []
    for ds in DATASETS:
        for aligned in (False, True):
            p = folder / data_file_name(ds, aligned)
            if p.is_file():
                found.append((ds, aligned, p))
    return found


def _from_file_name(name: str) -> tuple[str, bool] | None:
    for ds in DATASETS:
        for aligned in (False, True):
            if name == data_file_name(ds, aligned):
                return ds, aligned
    return None


def resolve_data_file(dataset: str, data_path: str | Path, aligned: bool) -> Path:
    """Accept either the file itself or a folder holding the MulT-named file."""
    p = Path(data_path)
    if p.is_file():
        return p
    if not p.exists():
        raise _fail(f"--data_path {p} does not exist")
    name = data_file_name(dataset, aligned)
    cand = p / name
    if cand.is_file():
        return cand
    other = p / data_file_name(dataset, not aligned)
    found = [f.name for _, _, f in _known_files(p)]
    hint = ""
    if other.is_file():
        flag = "--aligned" if not aligned else "no --aligned"
        hint = f" ({other.name} is there: use {flag})"
    elif found:
        hint = f" (found {', '.join(found)}: pass the matching --dataset)"
    raise _fail(f"--data_path {p}: no file {name} found (looked for {cand}){hint}")


# The restricted, budgeted unpickler lives in ucrn/safeload/, next to the other hardened
# loaders; here its one-line refusals become DataError, the class callers of ucrn.data catch.


def _safe_unpickle(path: Path) -> object:
    try:
        return load_pickle(path)
    except SafeLoadError as exc:
        raise _fail(str(exc)) from None


def load_mult_pickle(path: str | Path, task: str | None = None, data_format: str = "auto",
                     target: str = "M", dataset: str | None = None) -> MultData:
    """Load a MulT or MMSA pickle with the restricted unpickler, then validate it."""
    p = Path(path)
    raw = _safe_unpickle(p)
    return _from_raw(raw, str(p), task, True, pickle_layout(raw, str(p), data_format), target,
                     dataset)


def write_mult_pickle(raw: dict, path: str | Path) -> Path:
    """Write ``raw`` as a pickle (protocol 4), atomically (temp file + rename)."""
    p = Path(path)
    atomic_write(p, lambda fh: pickle.dump(raw, fh, protocol=4))
    return p
