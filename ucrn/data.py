"""Loading feature files (MulT's pickles, MMSA's pickles, a folder of .npz) and making
synthetic data like them.

Why this module exists:
- the real files are pickles from third-party mirrors, so they are read with a restricted
  unpickler that refuses any global other than numpy array reconstruction; .npz files are
  read with ``allow_pickle=False``;
- the real files have quirks (``-inf``/NaN in audio, varying shapes), so every input, in
  every layout (:class:`Layout`: which key holds what), goes through one validator
  (:func:`from_raw`) that fails with a one-line :class:`DataError` or repairs and counts
  what the original loaders silently zeroed;
- no machine of this project can download the real files, so a seeded generator writes
  data of exactly the same structure whose labels reward trimodal fusion.

numpy only: no torch, no Ray, so it can be imported anywhere cheaply.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ucrn.errors import DataError, one_line
from ucrn.fileio import atomic_write, new_file_mode
from ucrn.safeload import SafeLoadError, load_pickle

__all__ = [
    "DATASETS",
    "DATASET_ALIASES",
    "DATASET_TASK",
    "FORMATS",
    "LAYOUTS",
    "MMSA_DIRS",
    "MODALITIES",
    "NPZ_FILES",
    "PRESETS",
    "SPLITS",
    "TARGETS",
    "DataError",
    "Layout",
    "MultData",
    "Resolved",
    "Split",
    "canonical_dataset",
    "data_file_name",
    "from_raw",
    "load_dataset",
    "load_mult_pickle",
    "make_synthetic",
    "pickle_layout",
    "preset_name",
    "read_npz_folder",
    "read_npz_split",
    "resolve_data_file",
    "resolve_dataset",
    "write_mult_pickle",
    "write_npz_folder",
]

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")
# dataset -> its task (None: read off the labels); "mosei" is accepted for "mosei_senti"
DATASET_TASK: dict[str, str | None] = {
    "mosi": "regression", "mosei_senti": "regression", "iemocap": "iemocap",
    "sims": "sims", "simsv2": "sims", "custom": None, "synthetic": None}
DATASETS = tuple(DATASET_TASK)
DATASET_ALIASES = {"mosei": "mosei_senti"}
TASKS = ("regression", "sims", "iemocap")
IEMOCAP_LABEL_SHAPE = (4, 2)  # 4 emotions (Neutral, Happy, Sad, Angry) x 2 logits
LABEL_RANGES = {"regression": 3.0, "sims": 1.0}  # MOSI/MOSEI in [-3, 3]; CH-SIMS in [-1, 1]
LABEL_RANGE = LABEL_RANGES["regression"]
FORMATS = ("auto", "mult", "mmsa", "npz")
TARGETS = ("M", "T", "A", "V")  # the multimodal label; CH-SIMS's unimodal ones
_LABEL_TOL = 1e-4  # float rounding in third-party files; beyond this is an error, not clipped
_CHUNK_ELEMS = 1 << 22  # ~16 MB of float32 per chunk: bounds temporaries on MOSEI-sized arrays


def _fail(msg: str) -> DataError:
    return DataError(one_line(msg))


@dataclass
class Split:
    """One split, validated: float32 finite features, labels ready for the loss."""

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    # read and recorded, never used by the model (it sees the padded sequences, as with
    # the MulT files): modality -> (N,) valid steps; "T"/"A"/"V" -> CH-SIMS's labels
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def modality(self, name: str) -> np.ndarray:
        """Features of one modality by name, so callers can loop over MODALITIES."""
        if name not in MODALITIES:
            raise KeyError(f"unknown modality {name!r}; expected one of {MODALITIES}")
        return getattr(self, name)


@dataclass
class MultData:
    """All three splits plus where they came from and what had to be repaired."""

    splits: dict[str, Split]
    task: str
    source: str
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    format: str = "mult"

    @property
    def input_dims(self) -> tuple[int, int, int]:
        s = self.splits["train"]
        return (int(s.text.shape[2]), int(s.audio.shape[2]), int(s.vision.shape[2]))

    @property
    def seq_lens(self) -> tuple[int, int, int]:
        s = self.splits["train"]
        return (int(s.text.shape[1]), int(s.audio.shape[1]), int(s.vision.shape[1]))

    @property
    def output_dim(self) -> int:
        return 8 if self.task == "iemocap" else 1

    def identity(self) -> dict[str, Any]:
        """What makes two loads the same data, cheaply: task, sizes, shapes and a hash of
        every label (a search resumed on other data would mix two datasets)."""
        digest = hashlib.sha256()
        for name in SPLITS:
            digest.update(np.ascontiguousarray(self.splits[name].labels).tobytes())
        return {"task": self.task, "sizes": [len(self.splits[s]) for s in SPLITS],
                "input_dims": list(self.input_dims), "seq_lens": list(self.seq_lens),
                "labels_sha256": digest.hexdigest()}

    def summary(self) -> str:
        """One line for logs: source, task, sizes, shapes and repaired values."""
        sizes = "/".join(str(len(self.splits[s])) for s in SPLITS)
        shapes = ", ".join(
            f"{m} {t}x{d}"
            for m, t, d in zip(MODALITIES, self.seq_lens, self.input_dims, strict=True)
        )
        bad = {f"{s}.{m}": n for s, per in self.nonfinite.items() for m, n in per.items() if n}
        bad_txt = ", ".join(f"{k}={v}" for k, v in bad.items()) or "none"
        train = self.splits["train"]
        lens = "".join(f"; {m} lengths read (mean {float(np.mean(v)):.1f} of {t} steps, "
                       f"the model sees the padded steps)"
                       for m, t in zip(MODALITIES, self.seq_lens, strict=True)
                       if (v := train.lengths.get(m)) is not None)
        extra = (f"; unimodal labels {''.join(train.extra_labels)} kept"
                 if train.extra_labels else "")
        return (
            f"{self.source} ({self.format} format): task {self.task}, train/valid/test "
            f"{sizes}, {shapes}; non-finite values set to 0: {bad_txt}{lens}{extra}"
        )


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _array(x: Any, where: str) -> np.ndarray:
    """np.asarray, with ragged or odd nesting as a DataError naming the key."""
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise _fail(f"{where}: expected an array, got {type(x).__name__} that numpy cannot "
                    f"read as one ({e})") from None


def _float_features(arr: Any, where: str, inplace: bool) -> np.ndarray:
    """Cast to C-contiguous float32; copy unless we own the array and may write to it."""
    a = _array(arr, where)
    if a.dtype.kind not in "fiub":
        raise _fail(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 3:
        raise _fail(f"{where}: expected rank 3 (N, T, D), got shape {a.shape}")
    if inplace:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not a.flags.writeable:
            a = a.copy()
        return a
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _zero_nonfinite(a: np.ndarray) -> int:
    """Replace inf/-inf/NaN by 0 in place, chunked so MOSEI does not need a GB-sized mask."""
    n = a.shape[0]
    per = max(1, int(a[:1].size) or 1)
    step = max(1, _CHUNK_ELEMS // per)
    count = 0
    for i in range(0, n, step):
        sub = a[i : i + step]
        bad = ~np.isfinite(sub)
        k = int(np.count_nonzero(bad))
        if k:
            sub[bad] = 0.0
            count += k
    return count


def _decode_id(x: Any) -> str:
    if isinstance(x, (bytes, np.bytes_)):
        try:
            return bytes(x).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(x).decode("latin-1")
    # a lone surrogate cannot be written to Parquet (or any UTF-8): shown escaped
    return str(x).encode("utf-8", "backslashreplace").decode("utf-8")


def _make_ids(raw_id: Any, n: int, split: str, where: str) -> np.ndarray:
    if raw_id is None:
        return np.array([f"{split}_{i:06d}" for i in range(n)], dtype=str)
    a = _array(raw_id, where)
    if a.ndim not in (1, 2) or a.shape[0] != n:
        raise _fail(f"{where}: expected shape ({n},) or ({n}, k) to match N={n}, got {a.shape}")
    if a.ndim == 1:
        return np.array([_decode_id(x) for x in a], dtype=str)
    return np.array(["|".join(_decode_id(x) for x in row) for row in a], dtype=str)


def _infer_task(labels: np.ndarray) -> str:
    emotions = IEMOCAP_LABEL_SHAPE[:1]  # (N, 4) class indices, as an .npz may hold them
    return "iemocap" if labels.shape[1:] in (IEMOCAP_LABEL_SHAPE, emotions) else "regression"


def _labels(raw_labels: Any, n: int, task: str, where: str) -> np.ndarray:
    a = _array(raw_labels, where)
    if a.dtype.kind not in "fiub":
        raise _fail(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim == 0 or a.shape[0] != n:
        raise _fail(f"{where}: expected N={n} rows (as the features), got shape {a.shape}")
    if task == "iemocap":
        return _emotion_classes(a, where)
    if a.shape[1:] not in ((1, 1), (1,), ()):
        raise _fail(
            f"{where}: labels of shape (N,1,1), (N,1) or (N,) expected for {task}, "
            f"got {a.shape}"
        )
    y = a.reshape(n).astype(np.float32)
    if not np.all(np.isfinite(y)):
        raise _fail(
            f"{where}: expected finite sentiment labels, got {int((~np.isfinite(y)).sum())} inf/NaN"
        )
    lo, hi = float(y.min()), float(y.max())
    bound = LABEL_RANGES[task]
    if lo < -bound - _LABEL_TOL or hi > bound + _LABEL_TOL:
        raise _fail(f"{where}: expected sentiment labels in [-{bound:g}, {bound:g}] (task "
                    f"{task}), got range [{lo:g}, {hi:g}]")
    return np.clip(y, -bound, bound)


def _emotion_classes(a: np.ndarray, where: str) -> np.ndarray:
    """IEMOCAP: (N, 4, 2) one-hot (MulT) or (N, 4) class indices 0/1 (.npz) -> (N, 4)."""
    if not np.all(np.isfinite(a)):
        raise _fail(f"{where}: expected finite emotion labels, got inf or NaN")
    if a.shape[1:] == IEMOCAP_LABEL_SHAPE:
        return np.argmax(a, axis=2).astype(np.int64)
    if a.shape[1:] == IEMOCAP_LABEL_SHAPE[:1] and np.isin(a, (0, 1)).all():
        return a.astype(np.int64)
    raise _fail(f"{where}: labels of shape (N,4,2) one-hot or (N,4) of 0/1 expected for "
                f"iemocap, got shape {a.shape}")


_MAX_LENGTH = 2**31 - 1


def _lengths(raw: Any, n: int, steps: int, where: str) -> tuple[np.ndarray, int]:
    """Valid steps per sample: N whole numbers in [0, 2**31); those beyond the file's T
    steps (sequences truncated to T) are clipped to T and counted. (lengths, clipped)."""
    a = _array(raw, where)
    if a.dtype.kind not in "fiu" or a.shape != (n,):
        raise _fail(f"{where}: expected {n} sequence lengths, shape ({n},), got "
                    f"{a.dtype} of shape {a.shape}")
    v = a.astype(np.float64)  # checked before any integer cast can wrap
    if not (np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(v <= _MAX_LENGTH)
            and np.all(v == np.floor(v))) or (a.dtype.kind == "u" and a.max() > _MAX_LENGTH):
        raise _fail(f"{where}: expected whole numbers from 0 to {_MAX_LENGTH} (valid steps "
                    f"per sample)")
    out = a.astype(np.int64)
    clipped = int((out > steps).sum())
    return np.minimum(out, steps), clipped


@dataclass(frozen=True)
class Layout:
    """Which key of a split holds what: the one difference between the file formats, so
    all of them go through the same validator."""

    name: str
    labels: str  # the sentiment (or emotion) labels the model is trained on
    lengths: tuple[tuple[str, str], ...] = ()  # optional (modality, key): valid steps
    extra_labels: tuple[tuple[str, str], ...] = ()  # optional (target, key): CH-SIMS T/A/V


LAYOUTS: dict[str, Layout] = {
    "mult": Layout("mult", "labels"),
    # MMSA (thuiar/MMSA): also raw_text, text_bert (BERT token ids), annotations and
    # classification_labels, which UCRN does not use
    "mmsa": Layout("mmsa", "regression_labels",
                   (("audio", "audio_lengths"), ("vision", "vision_lengths")),
                   tuple((t, f"regression_labels_{t}") for t in TARGETS[1:])),
    "npz": Layout("npz", "labels", tuple((m, f"{m}_lengths") for m in MODALITIES),
                  tuple((t, f"labels_{t}") for t in TARGETS[1:])),
}


def _from_raw(raw: object, source: str, task: str | None, inplace: bool,
              layout: Layout = LAYOUTS["mult"], target: str = "M") -> MultData:
    label_key = layout.labels
    if task is not None and task not in TASKS:
        raise _fail(f"{source}: unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(raw, dict):
        raise _fail(
            f"{source}: expected a dict with keys {list(SPLITS)} at the top level, "
            f"got {type(raw).__name__}"
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise _fail(
            f"{source}: missing split(s) {missing}; expected keys {list(SPLITS)}, "
            f"got {sorted(map(str, raw))}"
        )
    for split in SPLITS:
        sd = raw[split]
        if not isinstance(sd, dict):
            raise _fail(
                f"{source}: split {split!r}: expected a dict of arrays, got {type(sd).__name__}"
            )
        miss = [k for k in (*MODALITIES, label_key) if k not in sd]
        if miss:
            raise _fail(
                f"{source}: split {split!r}: missing key(s) {miss}; expected text, audio, "
                f"vision, {label_key} [, id] ({layout.name} format), got {sorted(map(str, sd))}"
            )
    if task is None:
        task = _infer_task(_array(raw["train"][label_key],
                                  f"{source}: split 'train' key {label_key!r}"))
    if target not in TARGETS:
        raise _fail(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    splits: dict[str, Split] = {}
    nonfinite: dict[str, dict[str, int]] = {}
    ref_shapes: dict[str, tuple[int, int]] = {}
    for split in SPLITS:
        sd = raw[split]
        where_split = f"{source}: split {split!r}"
        feats: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        n = -1
        for m in MODALITIES:
            where = f"{where_split} key {m!r}"
            a = _float_features(sd[m], where, inplace)
            if inplace:
                sd[m] = a  # drop the original (e.g. float64) array early: MOSEI is GBs
            if n < 0:
                n = a.shape[0]
                if n == 0:
                    raise _fail(f"{where}: expected at least one sample, got an empty split (N=0)")
            elif a.shape[0] != n:
                raise _fail(f"{where}: expected N={n} samples (as 'text'), got shape {a.shape}")
            if a.shape[1] < 1 or a.shape[2] < 1:
                raise _fail(f"{where}: expected T >= 1 and D >= 1, got shape {a.shape}")
            if split == "train":
                ref_shapes[m] = (a.shape[1], a.shape[2])
            elif (a.shape[1], a.shape[2]) != ref_shapes[m]:
                t, d = ref_shapes[m]
                raise _fail(
                    f"{where}: expected (T, D) = ({t}, {d}) as in split 'train', "
                    f"got ({a.shape[1]}, {a.shape[2]})"
                )
            k = _zero_nonfinite(a)
            if k == a.size:
                warnings.warn(
                    one_line(
                        f"{where}: every value is non-finite (inf/NaN, or beyond float32's "
                        f"range); the modality is all "
                        f"zeros in this split"
                    ),
                    RuntimeWarning,
                    stacklevel=3,
                )
            feats[m] = a
            counts[m] = k
        labels = _labels(sd[label_key], n, task, f"{where_split} key {label_key!r}")
        ids = _make_ids(sd.get("id"), n, split, f"{where_split} key 'id'")
        lengths = {}
        for m, k in layout.lengths:
            if sd.get(k) is not None:
                lengths[m], clipped = _lengths(sd[k], n, feats[m].shape[1],
                                               f"{where_split} key {k!r}")
                if clipped:
                    warnings.warn(one_line(f"{where_split} key {k!r}: {clipped} length(s) "
                                           f"beyond the {feats[m].shape[1]} steps the file "
                                           f"holds, taken as {feats[m].shape[1]}"),
                                  RuntimeWarning, stacklevel=3)
        if task == "iemocap" and target != "M":
            raise _fail(f"target {target}: CH-SIMS's unimodal sentiment labels; this data's "
                        f"task is iemocap (emotions), use target M")
        extra = {t: _labels(sd[k], n, task, f"{where_split} key {k!r}")
                 for t, k in layout.extra_labels if sd.get(k) is not None and task != "iemocap"}
        if target != "M":
            if target not in extra:
                key = dict(layout.extra_labels).get(target, f"labels_{target}")
                raise _fail(f"target {target}: {where_split} has no {key!r} (CH-SIMS's "
                            f"unimodal labels; target M trains on {label_key!r})")
            labels, extra = extra[target], {"M": labels, **extra}  # M kept for analysis
        splits[split] = Split(feats["text"], feats["audio"], feats["vision"], labels, ids,
                              lengths, extra)
        nonfinite[split] = counts
    return MultData(splits=splits, task=task, source=source, nonfinite=nonfinite,
                    format=layout.name)


def from_raw(raw: object, source: str, task: str | None = None,
             layout: Layout = LAYOUTS["mult"], target: str = "M") -> MultData:
    """Validate a dict of splits in ``layout`` and return float32, finite, checked splits.

    The task is inferred from the train labels' shape unless given. ``raw`` is not
    modified. Every problem raises DataError naming ``source``, the split and the key.
    """
    return _from_raw(raw, source, task, False, layout, target)


# --------------------------------------------------------------------------------------
# reading files: pickles (MulT or MMSA, told apart by their keys) and .npz folders
# --------------------------------------------------------------------------------------

# The restricted, budgeted unpickler lives in ucrn/safeload.py, next to the other hardened
# loaders; here its one-line refusals become DataError, the class callers of this module catch.

NPZ_FILES = tuple(f"{s}.npz" for s in SPLITS)


def _safe_unpickle(path: Path) -> object:
    try:
        return load_pickle(path)
    except SafeLoadError as exc:
        raise _fail(str(exc)) from None


def pickle_layout(raw: object, source: str, data_format: str = "auto") -> Layout:
    """MulT or MMSA, told apart by the train split's label key, and checked against a
    format the user named."""
    train = raw.get("train") if isinstance(raw, dict) else None
    found = next((name for name in ("mmsa", "mult") if isinstance(train, dict)
                  and LAYOUTS[name].labels in train), None)
    if data_format == "npz":
        raise _fail(f"--data_format npz: {source} is a pickle; expected a folder holding "
                    f"{', '.join(NPZ_FILES)}")
    if data_format in ("mult", "mmsa"):
        if found is not None and found != data_format:
            raise _fail(f"--data_format {data_format}: {source} is a {found} file (its splits "
                        f"hold {LAYOUTS[found].labels!r}); use --data_format {found} or auto")
        return LAYOUTS[data_format]
    return LAYOUTS[found or "mult"]  # neither: the validator names the missing keys


def load_mult_pickle(path: str | Path, task: str | None = None, data_format: str = "auto",
                     target: str = "M") -> MultData:
    """Load a MulT or MMSA pickle with the restricted unpickler, then validate it."""
    p = Path(path)
    raw = _safe_unpickle(p)
    return _from_raw(raw, str(p), task, True, pickle_layout(raw, str(p), data_format), target)


def write_mult_pickle(raw: dict, path: str | Path) -> Path:
    """Write ``raw`` as a pickle (protocol 4), atomically (temp file + rename)."""
    p = Path(path)
    atomic_write(p, lambda fh: pickle.dump(raw, fh, protocol=4))
    return p


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
    except (ValueError, SyntaxError, EOFError, OSError) as e:
        raise _fail(f"{where}: not a readable .npy array ({e})") from None
    return tuple(shape), dtype, fh.tell()


def _npz_used_keys() -> set[str]:
    lay = LAYOUTS["npz"]
    return {*MODALITIES, lay.labels, "id", *(k for _, k in lay.lengths),
            *(k for _, k in lay.extra_labels)}


def _npz_claims(path: Path) -> dict[str, int]:
    """Bytes each array member of an .npz claims, from its .npy header, checked before
    numpy allocates anything: numbers or strings only (no objects, fields or zero-size
    items), no duplicate names, and a claim the member's stored size can back."""
    claims: dict[str, int] = {}
    try:
        with zipfile.ZipFile(path) as zf:
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
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError,
            NotImplementedError) as e:  # encrypted or unknown compression: RuntimeError, NIE
        raise _fail(f"{path}: not a readable .npz (zip) file ({e})") from None
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
    except (ValueError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as e:
        raise _fail(f"{path}: cannot read its arrays ({e})") from None


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


def write_npz_folder(data: MultData, folder: str | Path) -> Path:
    """``data`` in the own-features layout (what `python -m ucrn convert` writes): per
    split text/audio/vision (N, T, D) float32, labels (N,) or (N, 4), id, and the lengths
    and unimodal labels where the data has them.

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


# --------------------------------------------------------------------------------------
# file names and dataset selection
# --------------------------------------------------------------------------------------

# MMSA's folder names (MOSI/Processed/unaligned_50.pkl), also what `ucrn synth` writes
MMSA_DIRS = {"mosi": "MOSI", "mosei_senti": "MOSEI", "sims": "SIMS", "simsv2": "SIMSv2"}
_DIR_NAMES = {**{v.lower(): k for k, v in MMSA_DIRS.items()}, "ch-sims": "sims",
              "ch-simsv2": "simsv2", "ch-sims-v2": "simsv2", "ch_sims": "sims"}


def canonical_dataset(name: str) -> str:
    """A dataset name or its alias (mosei) -> the name used everywhere else."""
    name = DATASET_ALIASES.get(name, name)
    if name not in DATASETS:
        raise _fail(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                    f"(or mosei for mosei_senti)")
    return name


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


def _mmsa_files(folder: Path) -> list[tuple[bool, Path]]:
    """(aligned, path) of MMSA-named pickles (aligned_50.pkl, unaligned_39.pkl, ...) in a
    folder or its Processed/ subfolder, as MMSA's downloads are laid out."""
    found = []
    for where in (folder, folder / "Processed"):
        if where.is_dir():
            for f in sorted(where.glob("*.pkl")):
                for prefix, aligned in (("aligned", True), ("unaligned", False)):
                    if f.is_file() and (f.stem == prefix or f.stem.startswith(prefix + "_")):
                        found.append((aligned, f))
    return found


def _from_file_name(name: str) -> tuple[str, bool] | None:
    for ds in DATASETS:
        for aligned in (False, True):
            if name == data_file_name(ds, aligned):
                return ds, aligned
    return None


def _dataset_from_folders(p: Path) -> str | None:
    """MMSA keeps each dataset in a folder named after it: MOSI/Processed/unaligned_50.pkl.
    Only that folder is read (the file's folder or the one above; for a folder, itself
    or its parent), never a distant ancestor."""
    full = p.resolve()
    near = full.parents[:2] if p.is_file() else (full, *full.parents[:1])
    for folder in near:
        if folder.name.lower() in _DIR_NAMES:
            return _DIR_NAMES[folder.name.lower()]
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


@dataclass(frozen=True)
class Resolved:
    """What a --data_path means: the dataset, alignment, file (or .npz folder), format,
    and a note saying what was picked (empty when the flags said it all)."""

    dataset: str
    aligned: bool
    path: Path
    format: str
    note: str = ""


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


def resolve_dataset(dataset: str | None, data_path: str | Path, aligned: bool,
                    data_format: str = "auto") -> Resolved:
    """Which dataset, file and format a given --data_path means.

    A path is never ignored. A folder with train.npz/valid.npz/test.npz is the own-features
    layout (dataset `custom` unless named). Without --dataset, a MulT file's dataset is
    read off its name and an MMSA file's off its folder (MOSI/Processed/...); a folder is
    searched for the one file that matches --aligned. Anything ambiguous is one line
    listing what was found. Pickles are told apart by their keys when loaded.
    """
    p = Path(data_path).absolute()  # recorded in configs: must not depend on the cwd
    if not p.exists():
        raise _fail(f"--data_path {data_path} does not exist")
    if data_format not in FORMATS:
        raise _fail(f"--data_format {data_format!r}: expected one of {', '.join(FORMATS)}")
    dataset = None if dataset is None else canonical_dataset(dataset)
    npz = _npz_folder(p) if data_format in ("auto", "npz") else None
    if npz is not None:
        missing = [f for f in NPZ_FILES if not (npz / f).is_file()]
        if missing:
            raise _fail(f"--data_path {p}: {', '.join(missing)} missing (own features: one "
                        f".npz per split, {', '.join(NPZ_FILES)})")
        others = [f.name for _, _, f in _known_files(npz)] + [
            str(f.relative_to(npz)) for _, f in _mmsa_files(npz)]
        if others and data_format == "auto":
            raise _fail(f"--data_path {p}: several datasets here ({', '.join(NPZ_FILES)} and "
                        f"{', '.join(others)}); pass --data_format npz, or the file itself")
        if aligned:
            raise _fail(f"--aligned: {npz} holds own features (.npz), which have no aligned "
                        f"variant; leave --aligned out")
        note = "" if dataset else (f"data: {npz} (own features, one .npz per split; dataset "
                                   f"custom, its task read off the labels; --dataset names it)")
        return Resolved(dataset or "custom", aligned, npz, "npz", note)
    if data_format == "npz":
        raise _fail(f"--data_format npz: {p} holds no {', '.join(NPZ_FILES)}")
    if p.is_file():
        return _resolve_file(dataset, p, aligned, data_format)
    if dataset is not None and data_format != "mmsa" and (
            data_format == "mult" or not _mmsa_files(p)):  # the MulT name, or why not
        return Resolved(dataset, aligned, resolve_data_file(dataset, p, aligned), data_format)
    return _resolve_folder(dataset, p, aligned, data_format)


def _resolve_file(dataset: str | None, p: Path, aligned: bool, data_format: str) -> Resolved:
    if dataset is not None:
        return Resolved(dataset, aligned, p, data_format)
    named = _from_file_name(p.name)
    if named is not None:
        ds, al = named
        return Resolved(ds, al, p, data_format, f"data: {p} (dataset {ds}, "
                        f"{'aligned' if al else 'unaligned'}, from the file name)")
    ds = _dataset_from_folders(p)
    if ds is not None:
        return Resolved(ds, aligned, p, data_format, f"data: {p} (dataset {ds}, from the "
                        f"folder name)")
    raise _fail(f"--data_path {p}: cannot tell the dataset from the file name or its "
                f"folder; pass --dataset ({', '.join(DATASETS)}) or use a MulT name such as "
                f"{data_file_name('mosi', False)}")


def _resolve_folder(dataset: str | None, p: Path, aligned: bool, data_format: str
                    ) -> Resolved:
    found: list[tuple[str | None, bool, Path]] = []
    if data_format in ("auto", "mult"):
        found += [(d, al, f) for d, al, f in _known_files(p) if dataset in (None, d)]
    if data_format in ("auto", "mmsa"):
        found += [(dataset or _dataset_from_folders(f), al, f) for al, f in _mmsa_files(p)]
    if not found and data_format != "auto":
        raise _fail(f"--data_path {p}: no {data_format} data file in this folder (--data_format "
                    f"{data_format} expects "
                    f"{'a MulT name like ' + data_file_name('mosi', False) if data_format == 'mult' else 'an MMSA name like unaligned_50.pkl'})")
    if not found:
        raise _fail(f"--data_path {p}: no data file in this folder (expected a MulT name like "
                    f"{data_file_name('mosei_senti', False)}, an MMSA name like "
                    f"unaligned_50.pkl, or {', '.join(NPZ_FILES)}); pass the file or another "
                    f"folder")
    match = [f for f in found if f[1] == aligned]
    names = ", ".join(str(f.relative_to(p)) for _, _, f in found)
    if not match:
        flag = "--aligned" if not aligned else "no --aligned"
        raise _fail(f"--data_path {p}: no {'aligned' if aligned else 'unaligned'} file; found "
                    f"{names} (use {flag})")
    if len(match) > 1:
        raise _fail(f"--data_path {p}: several datasets here ({names}); pass --dataset or "
                    f"the file itself")
    ds, al, f = match[0]
    if ds is None:
        raise _fail(f"--data_path {p}: cannot tell the dataset of {f.name} from its folders; "
                    f"pass --dataset ({', '.join(DATASETS)})")
    how = "--dataset was not given" if dataset is None else "the one file that matches"
    return Resolved(ds, al, f, data_format, f"data: picked {f} (dataset {ds}; {how})")


def load_dataset(
    dataset: str,
    data_path: str | Path | None,
    aligned: bool = False,
    preset: str = "tiny",
    seed: int = 0,
    data_format: str = "auto",
    target: str = "M",
) -> MultData:
    """The one entry point trainers call: a file (MulT, MMSA, or an .npz folder), or the
    synthetic generator.

    A given ``data_path`` is always loaded (see `resolve_dataset`), for ``synthetic`` too;
    only ``synthetic`` without a path generates the preset in memory (``aligned=True``
    picks the preset's ``_aligned`` variant). ``target`` T/A/V trains on CH-SIMS's
    unimodal labels instead of the multimodal one (M).
    """
    dataset = canonical_dataset(dataset)
    task = DATASET_TASK[dataset]
    if data_path is not None:
        r = resolve_dataset(dataset, data_path, aligned, data_format)
        if r.format == "npz":
            return _from_raw(read_npz_folder(r.path), str(r.path), task, True, LAYOUTS["npz"],
                             target)
        return load_mult_pickle(r.path, task, r.format, target)
    if dataset != "synthetic":
        raise _fail(f"dataset {dataset!r} needs --data_path (a folder or the file itself)")
    name = preset_name(preset, aligned)
    raw = make_synthetic(name, seed)
    return _from_raw(raw, f"synthetic:{name}:seed={seed}", None, True, target=target)


# --------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------


def _preset(
    n: tuple[int, int, int],
    seq_lens: tuple[int, int, int],
    input_dims: tuple[int, int, int],
    task: str,
    dataset: str,
    aligned: bool,
) -> dict:
    """Split sizes, (Tl, Ta, Tv), (Dl, Da, Dv), task, and the MulT file name it is saved under."""
    return dict(
        n=n, seq_lens=seq_lens, input_dims=input_dims, task=task, dataset=dataset, aligned=aligned
    )


_TINY_N, _TINY_DIMS = (512, 128, 128), (24, 8, 10)
_MOSI_N, _MOSEI_N = (1284, 229, 686), (16326, 1871, 4659)
_MOSEI_ALIGNED_N, _IEMOCAP_N = (16265, 1869, 4643), (2717, 798, 938)

# Shapes as published (docs/data.md); "dataset" and "aligned" choose the MulT file name.
PRESETS: dict[str, dict] = {
    "tiny": _preset(_TINY_N, (12, 16, 14), _TINY_DIMS, "regression", "synthetic", False),
    "tiny_aligned": _preset(_TINY_N, (12, 12, 12), _TINY_DIMS, "regression", "synthetic", True),
    "iemocap_tiny": _preset(_TINY_N, (12, 16, 14), _TINY_DIMS, "iemocap", "iemocap", False),
    "mosi": _preset(_MOSI_N, (50, 375, 500), (300, 5, 20), "regression", "mosi", False),
    "mosi_aligned": _preset(_MOSI_N, (50, 50, 50), (300, 5, 20), "regression", "mosi", True),
    "mosei": _preset(_MOSEI_N, (50, 500, 500), (300, 74, 35), "regression", "mosei_senti", False),
    "mosei_aligned": _preset(
        _MOSEI_ALIGNED_N, (50, 50, 50), (300, 74, 35), "regression", "mosei_senti", True
    ),
    "iemocap": _preset(_IEMOCAP_N, (20, 400, 500), (300, 74, 35), "iemocap", "iemocap", False),
    "iemocap_aligned": _preset(_IEMOCAP_N, (20, 20, 20), (300, 74, 35), "iemocap", "iemocap", True),
}

# Label model: y = A*s_t + B*s_a + C*s_v + E*s_a*s_v + F*s_t*s_a + noise. The conditional
# mean given one modality is linear in its latent (the products have mean 0 given one
# factor), so a single modality explains at most coef^2 / total of the variance: 30% text,
# 25% audio, 25% vision; all three linearly 80%; with the two interactions 98%.
_COEF = dict(text=1.1, audio=1.0, vision=1.0, audio_vision=0.65, text_audio=0.55)
_LABEL_NOISE = 0.3
_LABEL_STD = 1.4  # MOSI-like spread; ~3% of labels reach the clip at +-3
_SIGNAL_DIMS = 16  # big feature spaces carry the signal on a subset of dims
_N_NUISANCE = 2  # per modality, plus one shared across modalities: look like signal, aren't
_DEFAULT_NOISE = 1.0


def preset_name(preset: str, aligned: bool) -> str:
    if preset not in PRESETS:
        raise _fail(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if not aligned or PRESETS[preset]["aligned"]:
        return preset
    alt = f"{preset}_aligned"
    if alt not in PRESETS:
        aligned_ones = [k for k, v in PRESETS.items() if v["aligned"]]
        raise _fail(
            f"preset {preset!r} has no aligned variant; aligned presets: {', '.join(aligned_ones)}"
        )
    return alt


def _check_triple(name: str, val: Any) -> tuple[int, int, int]:
    try:
        t = tuple(int(v) for v in val)
    except (TypeError, ValueError) as exc:
        raise _fail(
            f"{name}: expected 3 positive integers (text, audio, vision), got {val!r}"
        ) from exc
    if len(t) != 3 or min(t) < 1:
        raise _fail(f"{name}: expected 3 positive integers (text, audio, vision), got {val!r}")
    return t  # type: ignore[return-value]


def _unit_direction(rng: np.random.Generator, dim: int) -> np.ndarray:
    support = rng.permutation(dim)[: min(dim, _SIGNAL_DIMS)]
    u = np.zeros(dim, dtype=np.float64)
    u[support] = rng.standard_normal(len(support))
    return (u / np.linalg.norm(u)).astype(np.float32)


def _time_weights(rng: np.random.Generator, steps: int) -> np.ndarray:
    w = 0.5 + rng.random(steps)  # positive: mean pooling and the last step both see it
    return (w / w.mean()).astype(np.float32)


def _world(rng: np.random.Generator, seq_lens: tuple[int, ...], dims: tuple[int, ...]) -> dict:
    """Fixed structure shared by all splits: where each latent lives in each modality."""
    world = {}
    for m, t, d in zip(MODALITIES, seq_lens, dims, strict=True):
        k = 2 + _N_NUISANCE  # own latent, own nuisances, shared nuisance
        dirs = np.stack([_unit_direction(rng, d) for _ in range(k)])  # (k, D)
        weights = np.stack([_time_weights(rng, t) for _ in range(k)])  # (k, T)
        weights[-1] = 1.0  # the shared nuisance is constant in time (a speaker-like offset)
        world[m] = (dirs, weights)
    return world


def _emotion_labels(rng: np.random.Generator, lat: dict[str, np.ndarray]) -> np.ndarray:
    """(N,4,2) one-hot per emotion; each emotion a different fusion-needing score."""
    st, sa, sv = lat["text"], lat["audio"], lat["vision"]
    n = st.shape[0]
    half_normal_mean = math.sqrt(2 / math.pi)  # E|s|: centres the neutral score
    scores = np.stack(
        [
            2 * half_normal_mean - np.abs(st) - np.abs(sa) + 0.8 * sa * sv,  # neutral
            st + 0.8 * sa + 0.7 * st * sv,  # happy
            -st - 0.6 * sv + 0.8 * sa * sv,  # sad
            0.6 * st + sa - 0.8 * st * sa,  # angry
        ],
        axis=1,
    )
    # divide by the analytic std (not the sample's, which is 0 for a split of one)
    std = np.sqrt([2 * (1 - 2 / math.pi) + 0.64, 1 + 0.64 + 0.49, 1 + 0.36 + 0.64, 2.0])
    scores = scores / std + 0.3 * rng.standard_normal((n, 4))
    on = scores > 0.4  # ~1/3 positive per emotion, imbalanced like IEMOCAP
    out = np.zeros((n, 4, 2), dtype=np.float32)
    out[..., 1] = on
    out[..., 0] = ~on
    return out


def _make_split(
    rng: np.random.Generator,
    split: str,
    n: int,
    seq_lens: tuple[int, int, int],
    dims: tuple[int, int, int],
    world: dict,
    task: str,
    noise: float,
    nonfinite_rate: float,
) -> dict:
    lat = {m: rng.standard_normal(n) for m in MODALITIES}
    shared = rng.standard_normal(n)
    nuis = {m: rng.standard_normal((n, _N_NUISANCE)) for m in MODALITIES}
    out: dict[str, Any] = {}
    for m, t, d in zip(MODALITIES, seq_lens, dims, strict=True):
        dirs, weights = world[m]
        z = np.concatenate([lat[m][:, None], nuis[m], shared[:, None]], axis=1)
        z = z.astype(np.float32)  # (n, k)
        x = np.empty((n, t, d), dtype=np.float32)
        step = max(1, _CHUNK_ELEMS // (t * d))
        for i in range(0, n, step):
            j = min(n, i + step)
            chunk = rng.standard_normal((j - i, t, d), dtype=np.float32)
            chunk *= np.float32(noise)
            # sum_k z[n,k] * w[k,t] * u[k,d], in float32, chunk-sized temporaries only
            chunk += np.einsum("nk,kt,kd->ntd", z[i:j], weights, dirs, optimize=True)
            x[i:j] = chunk
        if m != "text" and nonfinite_rate > 0:
            k = int(rng.binomial(x.size, nonfinite_rate))
            if k:
                flat = x.reshape(-1)
                idx = rng.integers(0, x.size, size=k)
                vals = np.where(rng.random(k) < 2 / 3, -np.inf, np.nan).astype(np.float32)
                flat[idx] = vals
        out[m] = x
    if task == "iemocap":
        out["labels"] = _emotion_labels(rng, lat)
    else:
        st, sa, sv = lat["text"], lat["audio"], lat["vision"]
        c = _COEF
        y = (
            c["text"] * st
            + c["audio"] * sa
            + c["vision"] * sv
            + c["audio_vision"] * sa * sv
            + c["text_audio"] * st * sa
            + _LABEL_NOISE * rng.standard_normal(n)
        )
        total = sum(v * v for v in c.values()) + _LABEL_NOISE**2
        y = np.clip(y * (_LABEL_STD / math.sqrt(total)), -LABEL_RANGE, LABEL_RANGE)
        out["labels"] = y.astype(np.float32).reshape(n, 1, 1)
    ids = np.empty((n, 3), dtype=object)
    for i in range(n):  # MOSI style: video id, segment start, segment end, as bytes
        seg = i % 8
        ids[i, 0] = f"syn_{split}_{i // 8:05d}".encode()
        ids[i, 1] = f"{seg * 4.0:.2f}".encode()
        ids[i, 2] = f"{seg * 4.0 + 3.5:.2f}".encode()
    out["id"] = ids
    return out


def make_synthetic(
    preset: str = "tiny",
    seed: int = 0,
    *,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seq_lens: tuple[int, int, int] | None = None,
    input_dims: tuple[int, int, int] | None = None,
    nonfinite_rate: float = 1e-3,
    noise: float | None = None,
) -> dict:
    """A raw MulT-format dict, deterministic for ``seed``, whose labels reward fusion.

    Each sample has one latent per modality, embedded along a fixed direction of that
    modality with positive time weights (so pooling recovers it), plus nuisance latents.
    The label mixes all three latents and two pairwise products (see ``_COEF``), so no
    single modality can explain most of it. Audio and vision get ``-inf``/NaN sprinkled
    at ``nonfinite_rate`` like the real files.
    """
    if preset not in PRESETS:
        raise _fail(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    sizes = [cfg["n"][i] if v is None else v for i, v in enumerate((n_train, n_valid, n_test))]
    for s, v in zip(SPLITS, sizes, strict=True):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise _fail(f"n_{s}: expected a positive integer, got {v!r}")
    lens = _check_triple("seq_lens", cfg["seq_lens"] if seq_lens is None else seq_lens)
    dims = _check_triple("input_dims", cfg["input_dims"] if input_dims is None else input_dims)
    if not (0.0 <= float(nonfinite_rate) < 1.0):
        raise _fail(f"nonfinite_rate: expected a value in [0, 1), got {nonfinite_rate!r}")
    noise_v = _DEFAULT_NOISE if noise is None else float(noise)
    if not (noise_v >= 0.0 and math.isfinite(noise_v)):
        raise _fail(f"noise: expected a finite value >= 0, got {noise!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise _fail(f"seed: expected a non-negative integer, got {seed!r}")
    ss = np.random.SeedSequence(int(seed))
    world_ss, *split_ss = ss.spawn(1 + len(SPLITS))
    world = _world(np.random.default_rng(world_ss), lens, dims)
    return {
        s: _make_split(
            np.random.default_rng(sseq),
            s,
            int(n),
            lens,
            dims,
            world,
            cfg["task"],
            noise_v,
            float(nonfinite_rate),
        )
        for s, n, sseq in zip(SPLITS, sizes, split_ss, strict=True)
    }
