"""The one validator every input goes through (from_raw), whatever its layout (Layout:
which key of a split holds what; LAYOUTS: MulT's, MMSA's and the own-features .npz one)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ucrn.data.dataset import (
    _CHUNK_ELEMS,
    IEMOCAP_LABEL_SHAPE,
    LABEL_RANGES,
    MODALITIES,
    SPLITS,
    TARGETS,
    TASKS,
    MultData,
    Split,
    _fail,
)
from ucrn.errors import one_line

# The real files have quirks (-inf/NaN in audio, varying shapes), so from_raw fails with a
# one-line DataError naming the source, split and key, or repairs and counts what the
# original loaders silently zeroed.

_LABEL_TOL = 1e-4  # float rounding in third-party files; beyond this is an error, not clipped


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
