"""The own-features layout: a folder of train.npz, valid.npz and test.npz (what `ucrn
convert` writes), read with every .npy header checked before numpy allocates anything."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np

from ucrn.data.dataset import DATASET_TASK, MODALITIES, SPLITS, MultData, _fail
from ucrn.data.layout import _LABEL_KEYS, LAYOUTS
from ucrn.errors import DataError, one_line
from ucrn.fileio import new_file_mode

# Keys per split (LAYOUTS["npz"]): text, audio, vision (N, T, D); labels (N,), or (N, 4)
# for IEMOCAP's emotions; optionally id, <modality>_lengths and CH-SIMS's labels_T/A/V.
# Read with allow_pickle=False; an .npz is a zip, so a small file can claim a huge array:
# the claims are checked against the bytes stored and the memory free first.

NPZ_FILES = tuple(f"{s}.npz" for s in SPLITS)
DATASET_KEY = "dataset"  # the dataset's name, as `ucrn convert` records it: task and metrics
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # a member's header; an empty archive
# what zipfile, zlib and numpy raise on a damaged archive or member
_NPZ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, RuntimeError,
               NotImplementedError, ValueError, KeyError, SyntaxError, TokenError, TypeError,
               IndexError)


def _npz_folder(p: Path) -> Path | None:
    """The own-features folder `p` names: the folder, or one of its split files."""
    if p.suffix == ".npz" and not p.is_dir():
        if p.name not in NPZ_FILES:
            raise _fail(f"--data_path {p}: own features are a folder of {', '.join(NPZ_FILES)} "
                        f"(one .npz per split); give that folder")
        return p.parent
    if p.is_dir() and any((p / f).is_file() for f in NPZ_FILES):
        return p
    return None


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of one .npy member, read before numpy allocates."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"format version {version} (expected 1.0 or 2.0)")
    except (OSError, *_NPZ_ERRORS) as e:  # a damaged header: numpy parses it as Python
        raise _fail(f"{where}: not a readable .npy array ({_reason(e)})") from None
    return tuple(shape), dtype, fh.tell()


def _npz_used_keys() -> set[str]:
    lay = LAYOUTS["npz"]
    return {*MODALITIES, *_LABEL_KEYS, "id", DATASET_KEY, *(k for _, k in lay.lengths),
            *(k for _, k in lay.extra_labels)}


def _reason(e: BaseException) -> str:
    """A library's error as a short reason, never numpy's advice to load with
    allow_pickle (an .npz of arrays never needs it, and pickles run code)."""
    text = one_line(e) or type(e).__name__
    if "pickle" in text.lower():
        return "its bytes are not an array numpy can read without unpickling, which is refused"
    return text[:200]


def _check_zip_start(path: Path) -> None:
    """np.load treats a file that does not start with a zip header as a pickle (and says to
    allow that); zipfile would read past bytes put before the archive. Both refused here."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except IsADirectoryError:
        raise _fail(f"{path}: a folder, not an .npz file") from None
    if head not in _ZIP_STARTS:
        raise _fail(f"{path}: not a readable .npz (zip) file: it does not start with a zip "
                    f"archive's header (starts with {head!r}); np.savez writes the archive "
                    f"from the first byte")


def _npz_claims(path: Path) -> dict[str, int]:
    """Bytes each array member of an .npz claims, from its .npy header, checked before
    numpy allocates anything: numbers or strings only (no objects, fields or zero-size
    items), no duplicate names, and a claim the member's stored size can back."""
    claims: dict[str, int] = {}
    _check_zip_start(path)
    try:
        with zipfile.ZipFile(path) as zf:
            first = min((i.header_offset for i in zf.infolist()), default=0)
            if first:  # an archive after other bytes (zipfile allows, np.load does not)
                raise _fail(f"{path}: not a readable .npz (zip) file: {first} bytes precede "
                            f"its first member")
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                where = f"{path} key {key!r}"
                if not info.filename.endswith(".npy"):
                    raise _fail(f"{path}: member {info.filename!r} is not an array (.npy)")
                if key in claims:
                    raise _fail(f"{where}: the file holds two arrays of this name")
                with zf.open(info) as fh:
                    shape, dtype, header = _npy_header(fh, where)
                if dtype.hasobject or dtype.fields is not None or dtype.itemsize == 0:
                    raise _fail(f"{where}: dtype {dtype} refused (pickled objects, fields or "
                                f"zero-size items); expected numbers, or strings for 'id'")
                claimed = math.prod(shape) * dtype.itemsize
                if claimed != info.file_size - header:
                    raise _fail(f"{where}: claims {claimed} bytes of data for shape {shape} but "
                                f"holds {info.file_size - header}")
                claims[key] = claimed
    except DataError:
        raise
    except _NPZ_ERRORS as e:  # encrypted or unknown compression: RuntimeError, NIE
        raise _fail(f"{path}: not a readable .npz (zip) file ({_reason(e)})") from None
    return claims


def _check_memory(claimed: int, where: str) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    free = page * os.sysconf("SC_AVPHYS_PAGES")
    if claimed > free:
        raise _fail(f"{where}: its arrays need {claimed / 2**30:.1f} GiB, more than the "
                    f"{free / 2**30:.1f} GiB of memory free on this machine")


def read_npz_split(path: Path, keys: set[str] | None = None) -> dict[str, np.ndarray]:
    """One split's .npz with ``allow_pickle=False``, only the members in `keys` (default:
    all), after _npz_claims has checked every header and the memory they need."""
    claims = _npz_claims(path)
    wanted = [k for k in claims if keys is None or k in keys]
    _check_memory(sum(claims[k] for k in wanted), str(path))
    return _load_npz(path, wanted)


def _load_npz(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except _NPZ_ERRORS as e:
        raise _fail(f"{path}: not a readable .npz (zip) file ({_reason(e)})") from None
    except OSError as e:
        if e.errno is not None:  # a real I/O error (exit 1), not a damaged file
            raise
        raise _fail(f"{path}: not a readable .npz (zip) file ({_reason(e)})") from None


def read_npz_folder(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """The own-features layout: <folder>/train.npz, valid.npz, test.npz; only the members
    the layout uses are read, and only when all three splits fit in free memory (an .npz
    is a zip: a small file can claim a huge array)."""
    keys = _npz_used_keys()
    paths = {s: folder / f for s, f in zip(SPLITS, NPZ_FILES, strict=True)}
    claims = {s: _npz_claims(p) for s, p in paths.items()}
    _check_memory(sum(c for per in claims.values() for k, c in per.items() if k in keys),
                  f"{folder} ({', '.join(NPZ_FILES)})")
    return {s: _load_npz(p, [k for k in claims[s] if k in keys]) for s, p in paths.items()}


def _recorded_name(value: Any, where: str) -> str | None:
    """The `dataset` member's name: one string naming a dataset with a task of its own
    (custom and synthetic, whose task is read off the labels, record nothing)."""
    a = np.asarray(value)
    if a.dtype.kind != "U" or a.size != 1:
        raise _fail(f"{where} key {DATASET_KEY!r}: expected one dataset name (a string, as "
                    f"`ucrn convert` writes it), got {a.dtype} of shape {a.shape}")
    name = str(a.reshape(()))
    if name not in DATASET_TASK:
        raise _fail(f"{where} key {DATASET_KEY!r}: unknown dataset {name!r}; expected one of "
                    f"{', '.join(DATASET_TASK)}")
    return name if DATASET_TASK[name] is not None else None


def recorded_dataset(folder: Path, raw: dict[str, dict[str, Any]] | None = None
                     ) -> str | None:
    """The dataset `ucrn convert` recorded in the folder's files (it decides the task, the
    label range and the metrics), the same in all three, or None; `raw` is the folder
    already read (its `dataset` members are taken out)."""
    names = {}
    for s, f in zip(SPLITS, NPZ_FILES, strict=True):
        member = (raw[s].pop(DATASET_KEY, None) if raw is not None
                  else read_npz_split(folder / f, {DATASET_KEY}).get(DATASET_KEY))
        names[f] = None if member is None else _recorded_name(member, str(folder / f))
    if len(set(names.values())) > 1:
        said = ", ".join(f"{f} {n or 'none'}" for f, n in names.items())
        raise _fail(f"{folder}: the files record different datasets ({said}); expected the "
                    f"same in all three")
    return names[NPZ_FILES[0]]


def reconcile_dataset(named: str | None, recorded: str | None, folder: Path) -> str:
    """The dataset of an own-features folder: the one its files record, unless --dataset
    names another with a task of its own (refused: the labels are that dataset's)."""
    if recorded is None:
        return named or "custom"
    if named is None or DATASET_TASK[named] is None or named == recorded:
        return recorded
    raise _fail(f"--dataset {named}: {folder} holds dataset {recorded} (recorded in its .npz "
                f"files by `ucrn convert`; task {DATASET_TASK[recorded]}); pass --dataset "
                f"{recorded} or leave --dataset out")


def write_npz_folder(data: MultData, folder: str | Path) -> Path:
    """``data`` in the own-features layout (what `python -m ucrn convert` writes): per
    split text/audio/vision (N, T, D) float32, labels (N,) or (N, 4), id, the lengths
    and unimodal labels where the data has them, and the dataset's name where it has a
    task of its own (without it a CH-SIMS folder would load as `custom`, on MOSI's metrics).

    The three files appear together or not at all, and never over existing files: they
    are written in a hidden temporary folder, then hard-linked into place (a link fails
    where the name exists); any failure or interrupt removes what was placed."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lay = LAYOUTS["npz"]
    tmp = Path(tempfile.mkdtemp(prefix=".npz-", dir=out))
    placed: list[Path] = []
    try:
        for s, name in zip(SPLITS, NPZ_FILES, strict=True):
            sp = data.splits[s]
            arrays = {m: sp.modality(m) for m in MODALITIES}
            arrays[lay.labels] = sp.labels
            arrays["id"] = sp.ids.astype(str)
            arrays.update({k: sp.lengths[m] for m, k in lay.lengths if m in sp.lengths})
            arrays.update({k: sp.extra_labels[t] for t, k in lay.extra_labels
                           if t in sp.extra_labels})
            if data.dataset and DATASET_TASK.get(data.dataset) is not None:
                arrays[DATASET_KEY] = np.array(data.dataset)  # task, labels, metrics
            with open(tmp / name, "wb") as fh:
                np.savez(fh, **arrays)
            os.chmod(tmp / name, new_file_mode())
        for name in NPZ_FILES:
            os.link(tmp / name, out / name)
            placed.append(out / name)
    except FileExistsError as e:
        for q in placed:
            q.unlink(missing_ok=True)
        raise _fail(f"{e.filename2 or out}: already exists; nothing was written (choose "
                    f"another folder)") from None
    except BaseException:
        for q in placed:
            q.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
