"""What a loaded dataset is, whatever file it came from: the names every layout shares
(modalities, splits, datasets and their tasks) and the validated Split and MultData."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ucrn.errors import DataError, one_line

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
    # the dataset's name (it decides task, label range and metrics; `ucrn convert` writes
    # it into the .npz files) and the key the labels came from, both said in summary()
    dataset: str | None = None
    label_key: str = "labels"

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
        named = f", dataset {self.dataset}" if self.dataset else ""
        return (
            f"{self.source} ({self.format} format{named}): task {self.task}, labels from "
            f"{self.label_key!r}, train/valid/test {sizes}, {shapes}; non-finite values set "
            f"to 0: {bad_txt}{lens}{extra}"
        )


def canonical_dataset(name: str) -> str:
    """A dataset name or its alias (mosei) -> the name used everywhere else."""
    name = DATASET_ALIASES.get(name, name)
    if name not in DATASETS:
        raise _fail(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                    f"(or mosei for mosei_senti)")
    return name
