"""The one validator every input goes through (from_raw), whatever its layout (Layout:
which key of a split holds what; LAYOUTS: MulT's, MMSA's and the own-features .npz one)."""

from __future__ import annotations

import re
import unicodedata
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
    with np.errstate(over="ignore", invalid="ignore"):  # numpy's warning names no key
        if inplace:
            out = np.ascontiguousarray(a, dtype=np.float32)
            if not out.flags.writeable:
                out = out.copy()
        else:
            out = np.array(a, dtype=np.float32, order="C", copy=True)
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        _check_cast(a, out, where)
    return out


_F32_MAX = float(np.finfo(np.float32).max)


def _check_cast(src: np.ndarray, out: np.ndarray, where: str) -> None:
    """Finite values that became inf in the cast to float32 are refused: zeroing them as
    if the file held inf would silently change real data, and keeping them as inf makes the
    model's loss NaN. Chunked, and only where the cast produced an inf."""
    per = max(1, int(out[:1].size) or 1)
    step = max(1, _CHUNK_ELEMS // per)
    for i in range(0, out.shape[0], step):
        sub = out[i : i + step]
        if not np.isinf(sub).any():
            continue
        bad = np.isinf(sub) & np.isfinite(src[i : i + step])
        if bad.any():
            sample = i + int(np.argwhere(bad)[0][0])
            big = np.format_float_scientific(np.abs(src[i : i + step][bad]).max(), 2,
                                               unique=False)
            raise _fail(f"{where}: values beyond float32's range (|x| up to {big}, first in "
                        f"sample {sample}); the model computes in float32, which holds at "
                        f"most {_F32_MAX:.3g}: rescale or standardise these features")


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


# Control characters (C0, DEL, C1) and line/paragraph separators: NUL cuts an id short in
# numpy's fixed-width strings and in Arrow (so two ids became one in predict's output), the
# others break the one-line messages and tables ids are shown in; no dataset's ids hold them.
# control characters, line separators, and the invisible format characters that reorder or
# hide text (U+202E turns an id around on screen, U+200B hides inside one)
_BAD_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u00ad\u061c\u180e"
                           "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")
_MAX_ID_CHARS = 1000  # numpy stores N ids at the longest one's width: a huge id is GBs


def _show(x: Any) -> str:
    text = ascii(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _raw_ids(raw_id: Any, where: str) -> np.ndarray:
    """The ids as an object array of the file's own values: np.asarray on a list of str or
    bytes would make a fixed-width array, which drops trailing NULs before any check."""
    if isinstance(raw_id, (list, tuple)):
        try:
            return np.array(raw_id, dtype=object)
        except (ValueError, TypeError) as e:
            raise _fail(f"{where}: expected an array, got {type(raw_id).__name__} that numpy "
                        f"cannot read as one ({e})") from None
    return _array(raw_id, where)


def _make_ids(raw_id: Any, n: int, split: str, where: str) -> np.ndarray:
    """Segment ids as str, each exactly as it will appear in predict's output: ids with
    control characters are refused, and so are two different ids that would become one
    (decoding bytes, joining MulT's (video, start, end) with "|"); exact duplicates in a
    split are a warning (the rows stay, in the split's order)."""
    if raw_id is None:
        return np.array([f"{split}_{i:06d}" for i in range(n)], dtype=str)
    a = _raw_ids(raw_id, where)
    if a.ndim not in (1, 2) or a.shape[0] != n:
        raise _fail(f"{where}: expected shape ({n},) or ({n}, k) to match N={n}, got {a.shape}")
    rows = a.tolist()
    for i, row in enumerate(rows):
        for x in (row if a.ndim == 2 else [row]):
            if not isinstance(x, (str, bytes, int, float)):
                raise _fail(f"{where}: id {i} holds a {type(x).__name__}; expected strings "
                            f"(or bytes, or numbers), shape ({n},) or ({n}, k)")
    ids = ([_decode_id(x) for x in rows] if a.ndim == 1
           else ["|".join(_decode_id(x) for x in row) for row in rows])
    seen: dict[str, int] = {}
    dups: list[tuple[int, int]] = []
    forms: dict[str, int] = {}  # NFC form -> first id of it
    alike: list[tuple[int, int]] = []  # ids that differ only in their Unicode form
    for i, text in enumerate(ids):
        if len(text) > _MAX_ID_CHARS:
            raise _fail(f"{where}: id {i} has {len(text)} characters; expected at most "
                        f"{_MAX_ID_CHARS}")
        if _BAD_ID_CHARS.search(text):
            raise _fail(f"{where}: id {i} ({_show(rows[i])}) holds a control character or an "
                        f"invisible one; ids must be printable and visible (NUL would cut it "
                        f"short in the output, U+202E would show it reversed)")
        k = forms.setdefault(unicodedata.normalize("NFC", text), i)
        if ids[k] != text:
            alike.append((k, i))
        j = seen.setdefault(text, i)
        if j != i:
            if _raw_key(rows[i]) != _raw_key(rows[j]):
                raise _fail(f"{where}: ids {j} ({_show(rows[j])}) and {i} ({_show(rows[i])}) "
                            f"differ in the file but both read as {_show(text)}; make them "
                            f"distinct")
            dups.append((j, i))
    if alike:  # kept apart (they differ in the file), but say it: on screen they are one
        j, i = alike[0]
        warnings.warn(one_line(f"{where}: {len(alike)} id(s) look like an earlier id but are "
                               f"another Unicode form of it (first: {_show(ids[j])} at {j} "
                               f"and {_show(ids[i])} at {i}); they stay distinct ids"),
                      RuntimeWarning, stacklevel=4)
    if dups:
        j, i = dups[0]
        warnings.warn(one_line(f"{where}: {len(dups)} id(s) repeat an earlier id of the split "
                               f"(first: {_show(ids[i])} at {j} and {i}); predict's rows "
                               f"keep the split's order"), RuntimeWarning, stacklevel=4)
    return np.array(ids, dtype=str)


def _raw_key(x: Any) -> Any:
    """A hashable, exact form of one raw id (a row of MulT's (video, start, end), bytes
    or str), to tell ids that differ in the file from exact duplicates."""
    if isinstance(x, (list, tuple)):
        return tuple(_raw_key(v) for v in x)
    if isinstance(x, bytes):
        return ("bytes", bytes(x))
    return ("str", str(x)) if isinstance(x, str) else ("other", ascii(x))


def _infer_task(labels: np.ndarray) -> str:
    emotions = IEMOCAP_LABEL_SHAPE[:1]  # (N, 4) class indices, as an .npz may hold them
    return "iemocap" if labels.shape[1:] in (IEMOCAP_LABEL_SHAPE, emotions) else "regression"


def _labels(raw_labels: Any, n: int, task: str, where: str, how: str = "") -> np.ndarray:
    """Labels checked against the task (``how``: the dataset that named it, or the shape it
    was read off), in float64 before any cast: a value float32 cannot hold is named here,
    not by numpy's overflow warning."""
    a = _array(raw_labels, where)
    how = f" ({how}; N={n})" if how else f" (N={n})"
    if a.dtype.kind not in "fiub":
        raise _fail(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim == 0 or a.shape[0] != n:
        raise _fail(f"{where}: expected N={n} rows (as the features), got shape {a.shape}")
    if task == "iemocap":
        return _emotion_classes(a, where, how)
    if a.shape[1:] not in ((1, 1), (1,), ()):
        emotions = a.shape[1:] in (IEMOCAP_LABEL_SHAPE, IEMOCAP_LABEL_SHAPE[:1])
        raise _fail(f"{where}: labels of shape (N,1,1), (N,1) or (N,) expected for "
                    f"{task}{how}, got {a.shape}"
                    + ("; that is IEMOCAP's emotion shape (--dataset iemocap)" if emotions
                       else ""))
    y = a.reshape(n).astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise _fail(
            f"{where}: expected finite sentiment labels, got {int((~np.isfinite(y)).sum())} inf/NaN"
        )
    lo, hi = float(y.min()), float(y.max())
    bound = LABEL_RANGES[task]
    if lo < -bound - _LABEL_TOL or hi > bound + _LABEL_TOL:
        raise _fail(f"{where}: expected sentiment labels in [-{bound:g}, {bound:g}] (task "
                    f"{task}), got range [{lo:g}, {hi:g}]")
    return np.clip(y, -bound, bound).astype(np.float32)


def _emotion_classes(a: np.ndarray, where: str, how: str = "") -> np.ndarray:
    """IEMOCAP: (N, 4, 2) one-hot (MulT) or (N, 4) class indices 0/1 (.npz) -> (N, 4)."""
    if not np.all(np.isfinite(a)):
        raise _fail(f"{where}: expected finite emotion labels, got inf or NaN")
    if a.shape[1:] == IEMOCAP_LABEL_SHAPE:
        return np.argmax(a, axis=2).astype(np.int64)
    if a.shape[1:] == IEMOCAP_LABEL_SHAPE[:1]:
        if not np.isin(a, (0, 1)).all():
            bad = float(a[~np.isin(a, (0, 1))].flat[0])
            raise _fail(f"{where}: labels of shape (N,4,2) one-hot or (N,4) of 0/1 expected "
                        f"for iemocap{how}, got shape {a.shape} holding {bad!r}; sentiment "
                        f"labels are (N,) (one score per sample)")
        return a.astype(np.int64)
    raise _fail(f"{where}: labels of shape (N,4,2) one-hot or (N,4) of 0/1 expected for "
                f"iemocap{how}, got shape {a.shape}")


def _same_labels(used: Any, other: Any, n: int, where: str, keys: tuple[str, str]) -> None:
    """A split holding labels under two keys (MulT's `labels`, MMSA's `regression_labels`)
    must hold the same ones: which of two different sets a run trained on would be a guess."""
    a, b = _array(used, where), _array(other, where)
    detail = f"shapes {a.shape} and {b.shape}"
    if a.dtype.kind in "fiub" and b.dtype.kind in "fiub" and a.size == b.size == n:
        x, y = a.reshape(n).astype(np.float64), b.reshape(n).astype(np.float64)
        with np.errstate(all="ignore"):  # inf - inf: NaN, which counts as a difference
            diff = ~(np.abs(x - y) <= _LABEL_TOL)
        if not diff.any():
            return
        i = int(np.argmax(diff))
        detail = f"{int(diff.sum())} of {n} differ, first sample {i}: {x[i]:g} and {y[i]:g}"
    raise _fail(f"{where}: keys {keys[0]!r} and {keys[1]!r} both hold labels and disagree "
                f"({detail}); this layout trains on {keys[0]!r}: remove the wrong key")


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
    split_files: bool = False  # one file per split (SOURCE/train.npz): messages name it


LAYOUTS: dict[str, Layout] = {
    "mult": Layout("mult", "labels"),
    # MMSA (thuiar/MMSA): also raw_text, text_bert (BERT token ids), annotations and
    # classification_labels, which UCRN does not use
    "mmsa": Layout("mmsa", "regression_labels",
                   (("audio", "audio_lengths"), ("vision", "vision_lengths")),
                   tuple((t, f"regression_labels_{t}") for t in TARGETS[1:])),
    "npz": Layout("npz", "labels", tuple((m, f"{m}_lengths") for m in MODALITIES),
                  tuple((t, f"labels_{t}") for t in TARGETS[1:]), split_files=True),
}
# every layout's label key: a split holding two of them must hold the same labels in both
_LABEL_KEYS = tuple(dict.fromkeys(lay.labels for lay in LAYOUTS.values()))


def _from_raw(raw: object, source: str, task: str | None, inplace: bool,
              layout: Layout = LAYOUTS["mult"], target: str = "M",
              dataset: str | None = None) -> MultData:
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
    def at(split: str) -> str:
        return (f"{source}/{split}.npz: split {split!r}" if layout.split_files
                else f"{source}: split {split!r}")

    for split in SPLITS:
        sd = raw[split]
        if not isinstance(sd, dict):
            raise _fail(
                f"{at(split)}: expected a dict of arrays, got {type(sd).__name__}"
            )
        miss = [k for k in (*MODALITIES, label_key) if k not in sd]
        if miss:
            raise _fail(
                f"{at(split)}: missing key(s) {miss}; expected text, audio, "
                f"vision, {label_key} [, id] ({layout.name} format), got {sorted(map(str, sd))}"
            )
    if task is None:
        train_labels = _array(raw["train"][label_key], f"{at('train')} key {label_key!r}")
        task = _infer_task(train_labels)
        how = f"task read off split 'train' labels of shape {train_labels.shape}"
    else:
        how = f"dataset {dataset}" if dataset else f"task {task}"
    if target not in TARGETS:
        raise _fail(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    splits: dict[str, Split] = {}
    nonfinite: dict[str, dict[str, int]] = {}
    ref_shapes: dict[str, tuple[int, int]] = {}
    for split in SPLITS:
        sd = raw[split]
        where_split = at(split)
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
                        f"{where}: every value is non-finite (inf/NaN); the modality is all "
                        f"zeros in this split"
                    ),
                    RuntimeWarning,
                    stacklevel=3,
                )
            feats[m] = a
            counts[m] = k
        labels = _labels(sd[label_key], n, task, f"{where_split} key {label_key!r}", how)
        for other in _LABEL_KEYS:
            if other != label_key and sd.get(other) is not None:
                _same_labels(sd[label_key], sd[other], n, where_split, (label_key, other))
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
        extra = {t: _labels(sd[k], n, task, f"{where_split} key {k!r}", how)
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
                    format=layout.name, dataset=dataset, label_key=label_key)


def from_raw(raw: object, source: str, task: str | None = None,
             layout: Layout = LAYOUTS["mult"], target: str = "M",
             dataset: str | None = None) -> MultData:
    """Validate a dict of splits in ``layout`` and return float32, finite, checked splits.

    The task is inferred from the train labels' shape unless given; ``dataset`` is the
    name that gave it (recorded, and named in label errors). ``raw`` is not modified.
    Every problem raises DataError naming ``source``, the split and the key.
    """
    return _from_raw(raw, source, task, False, layout, target, dataset)
