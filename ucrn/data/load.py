"""Which dataset, file and format a --data_path means (resolve_dataset), and load_dataset,
the one entry point trainers call: a MulT or MMSA pickle, an .npz folder, or synthetic data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ucrn.data.dataset import DATASET_TASK, DATASETS, FORMATS, MultData, _fail, canonical_dataset
from ucrn.data.layout import LAYOUTS, _from_raw
from ucrn.data.mmsa import _dataset_from_folders, _mmsa_files
from ucrn.data.mult import (
    _from_file_name,
    _known_files,
    data_file_name,
    load_mult_pickle,
    resolve_data_file,
)
from ucrn.data.npz import (
    NPZ_FILES,
    _npz_folder,
    read_npz_folder,
    reconcile_dataset,
    recorded_dataset,
)
from ucrn.data.synthetic import make_synthetic, preset_name


@dataclass(frozen=True)
class Resolved:
    """What a --data_path means: the dataset, alignment, file (or .npz folder), format,
    and a note saying what was picked (empty when the flags said it all)."""

    dataset: str
    aligned: bool
    path: Path
    format: str
    note: str = ""


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
        recorded = recorded_dataset(npz)
        named, dataset = dataset, reconcile_dataset(dataset, recorded, npz)
        note = ("" if named == dataset else
                f"data: {npz} (own features, one .npz per split; dataset {dataset}, recorded "
                f"in its files)" if recorded else
                f"data: {npz} (own features, one .npz per split; dataset custom, its task "
                f"read off the labels; --dataset names it)")
        return Resolved(dataset, aligned, npz, "npz", note)
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
            raw = read_npz_folder(r.path)
            dataset = reconcile_dataset(dataset, recorded_dataset(r.path, raw), r.path)
            return _from_raw(raw, str(r.path), DATASET_TASK[dataset], True, LAYOUTS["npz"],
                             target, dataset)
        return load_mult_pickle(r.path, task, r.format, target, dataset)
    if dataset != "synthetic":
        raise _fail(f"dataset {dataset!r} needs --data_path (a folder or the file itself)")
    name = preset_name(preset, aligned)
    raw = make_synthetic(name, seed)
    return _from_raw(raw, f"synthetic:{name}:seed={seed}", None, True, target=target,
                     dataset=dataset)
