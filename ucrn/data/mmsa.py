"""MMSA's pickles (thuiar/MMSA): how they are told from MulT's (by their keys), where they
are found and which dataset they hold (by their folders: MOSI/Processed/unaligned_50.pkl)."""

from __future__ import annotations

from pathlib import Path

from ucrn.data.dataset import _fail
from ucrn.data.layout import LAYOUTS, Layout
from ucrn.data.npz import NPZ_FILES

# An MMSA pickle is read by the same restricted unpickler as a MulT one
# (ucrn.data.mult.load_mult_pickle); pickle_layout then picks LAYOUTS["mmsa"]: per split
# text, audio, vision (N, T, D), regression_labels, optionally id, audio_lengths and
# vision_lengths, and CH-SIMS's unimodal regression_labels_T/A/V. Its other keys
# (raw_text, text_bert, annotations, classification_labels) are not used by UCRN.

# MMSA's folder names (MOSI/Processed/unaligned_50.pkl), also what `ucrn synth` writes
MMSA_DIRS = {"mosi": "MOSI", "mosei_senti": "MOSEI", "sims": "SIMS", "simsv2": "SIMSv2"}
_DIR_NAMES = {**{v.lower(): k for k, v in MMSA_DIRS.items()}, "ch-sims": "sims",
              "ch-simsv2": "simsv2", "ch-sims-v2": "simsv2", "ch_sims": "sims"}


def pickle_layout(raw: object, source: str, data_format: str = "auto") -> Layout:
    """MulT or MMSA, told apart by the train split's label key, and checked against a
    format the user named. A file with both keys is MMSA's (`regression_labels`) unless
    --data_format mult names the other; the validator then checks both hold the same
    labels, and the load's summary says which key was used."""
    train = raw.get("train") if isinstance(raw, dict) else None
    found = [name for name in ("mmsa", "mult") if isinstance(train, dict)
             and LAYOUTS[name].labels in train]
    if data_format == "npz":
        raise _fail(f"--data_format npz: {source} is a pickle; expected a folder holding "
                    f"{', '.join(NPZ_FILES)}")
    if data_format in ("mult", "mmsa"):
        if found and data_format not in found:
            raise _fail(f"--data_format {data_format}: {source} is a {found[0]} file (its "
                        f"splits hold {LAYOUTS[found[0]].labels!r}); use --data_format "
                        f"{found[0]} or auto")
        return LAYOUTS[data_format]
    return LAYOUTS[found[0] if found else "mult"]  # neither: the validator names the keys


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
