"""Writing datasets in each layout the loader reads: `python -m ucrn synth` (the built-in
synthetic data as a MulT pickle, an MMSA pickle or an .npz folder) and
`python -m ucrn convert` (any loadable dataset to the own-features .npz layout).

No machine of this project can download the real files, so `synth --format mmsa` writes
files with everything MMSA's carry (BERT token ids, lengths, raw text, CH-SIMS's unimodal
labels): the whole MMSA loading path is tested on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ucrn.data import (
    DATASET_TASK,
    FORMATS,
    LABEL_MODELS,
    MMSA_DIRS,
    NPZ_FILES,
    PRESETS,
    TARGETS,
    canonical_dataset,
    data_file_name,
    from_raw,
    load_dataset,
    make_synthetic,
    preset_name,
    resolve_dataset,
    write_mult_pickle,
    write_npz_folder,
)
from ucrn.errors import OneLineParser, UsageError, run_main

_SIMS_STEP = 0.2  # CH-SIMS labels: means of five annotators' -1/-0.5/0/0.5/1, a 0.2 grid


def _grid(y: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(y, -1.0, 1.0) / _SIMS_STEP) * _SIMS_STEP).astype(np.float32)


def to_mmsa(raw: dict[str, dict[str, Any]], dataset: str, seed: int = 0) -> dict:
    """A MulT-layout dict (as make_synthetic writes it) in MMSA's layout: per split text,
    audio, vision, regression_labels, plus id ("video$_$clip"), raw_text, text_bert
    (N, 3, T) token ids / mask / segments, audio_lengths and vision_lengths (features past
    them zeroed, as MMSA pads), annotations, classification_labels; CH-SIMS datasets get
    labels on [-1, 1] and the unimodal regression_labels_T/A/V."""
    rng = np.random.default_rng(seed)
    sims = DATASET_TASK[dataset] == "sims"
    out = {}
    for split, sd in raw.items():
        y = np.asarray(sd["labels"], dtype=np.float32).reshape(-1)
        n = y.shape[0]
        if sims:
            y = _grid(y / 3.0)
        d: dict[str, Any] = {"text": sd["text"], "regression_labels": y}
        for m in ("audio", "vision"):
            x = np.array(sd[m], dtype=np.float32)
            t = x.shape[1]
            lengths = rng.integers(max(1, t // 2), t + 1, size=n)
            x[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
            d[m], d[f"{m}_lengths"] = x, [int(v) for v in lengths]
        tl = sd["text"].shape[1]
        words = rng.integers(max(1, tl // 2), tl + 1, size=n)
        mask = (np.arange(tl)[None, :] < words[:, None]).astype(np.int64)
        token_ids = rng.integers(1000, 30000, size=(n, tl)) * mask
        d["text_bert"] = np.stack([token_ids, mask, np.zeros_like(mask)], axis=1)
        d["id"] = [f"{bytes(r[0]).decode()}$_${i}" for i, r in enumerate(sd["id"])]
        d["raw_text"] = [f"synthetic utterance {i} of {split}" for i in range(n)]
        cls = np.where(y < 0, 0, np.where(y > 0, 2, 1))  # MMSA: Negative 0, Neutral 1, Positive 2
        d["classification_labels"] = cls.astype(np.float32)
        d["annotations"] = [("Negative", "Neutral", "Positive")[c] for c in cls]
        if sims:
            for t in TARGETS[1:]:
                d[f"regression_labels_{t}"] = _grid(y + rng.normal(0.0, 0.25, n))
        out[split] = d
    return out


def mmsa_path(out: Path, dataset: str, aligned: bool, text_steps: int) -> Path:
    """Where MMSA's downloads keep a file: OUT/MOSI/Processed/unaligned_50.pkl."""
    name = f"{'aligned' if aligned else 'unaligned'}_{text_steps}.pkl"
    return out / MMSA_DIRS[dataset] / "Processed" / name


def _out(text: str) -> Path:
    if not text.strip():
        raise UsageError("--out: empty; expected a folder")
    return Path(text)


def _refuse_existing(paths: list[Path]) -> None:
    """Never over a file already there (a user's own features or real data)."""
    there = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if there:
        raise UsageError(f"--out: {', '.join(there)} already exist(s); nothing was "
                         f"overwritten (choose another --out)")


def synth_main(argv: list[str] | None = None) -> int:
    """``python -m ucrn synth --out DIR [--preset NAME] [--format mult|mmsa|npz] ...``."""
    return run_main(_synth, argv)


def _synth(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m ucrn synth",
                      description="Write a synthetic dataset as a MulT pickle, an MMSA pickle "
                                  "or an .npz folder, loadable with --data_path DIR.")
    p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aligned", action="store_true", help="use the preset's aligned variant")
    p.add_argument("--labels", default="fusion",
                   help=f"sentiment label model, one of: {', '.join(LABEL_MODELS)} (fusion: "
                        f"mostly linear; interaction: products across modalities)")
    p.add_argument("--format", default="mult", choices=FORMATS[1:],
                   help="mult: DIR/<MulT name>.pkl; mmsa: DIR/<MOSI|...>/Processed/*.pkl; "
                        "npz: DIR/train.npz, valid.npz, test.npz")
    p.add_argument("--dataset", default=None,
                   help=f"mmsa only: whose folder and label convention (default mosi), one of "
                        f"{', '.join(MMSA_DIRS)} or mosei (sims, simsv2: labels on [-1, 1] "
                        f"and unimodal labels)")
    args = p.parse_args(argv)
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected an integer >= 0")
    if args.dataset is not None and args.format != "mmsa":
        raise UsageError(f"--dataset {args.dataset}: only with --format mmsa (the MulT and "
                         f".npz files are named by --preset)")
    dataset = canonical_dataset(args.dataset or "mosi")
    if dataset not in MMSA_DIRS:
        raise UsageError(f"--dataset {args.dataset}: MMSA has files of {', '.join(MMSA_DIRS)} "
                         f"(or mosei)")
    name = preset_name(args.preset, args.aligned)
    cfg = PRESETS[name]
    out = _out(args.out)
    if args.format == "npz":
        _refuse_existing([out / f for f in NPZ_FILES])
        raw = make_synthetic(name, args.seed, labels=args.labels)
        print(write_npz_folder(from_raw(raw, f"synthetic:{name}"), out))
        return 0
    if cfg["task"] == "iemocap" and args.format == "mmsa":
        raise UsageError(f"--format mmsa --preset {args.preset}: MMSA has no IEMOCAP files; "
                         f"use --format mult or npz")
    raw = make_synthetic(name, args.seed, labels=args.labels)
    if args.format == "mmsa":
        path = mmsa_path(out, dataset, cfg["aligned"], cfg["seq_lens"][0])
        raw = to_mmsa(raw, dataset, args.seed)
    else:
        path = out / data_file_name(cfg["dataset"], cfg["aligned"])
    _refuse_existing([path])
    path.parent.mkdir(parents=True, exist_ok=True)
    print(write_mult_pickle(raw, path))
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    """``python -m ucrn convert --data_path P --out DIR [--dataset ...]``."""
    return run_main(_convert, argv)


def _convert(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m ucrn convert",
                      description="Write any dataset the loader reads (MulT, MMSA, or the "
                                  "synthetic preset) as DIR/train.npz, valid.npz, test.npz.")
    p.add_argument("--data_path", "--data-path", dest="data_path", default=None,
                   help="the data (file or folder); without it the synthetic --preset")
    p.add_argument("--dataset", default=None, help="as for ucrn train (default: read off "
                                                   "the files)")
    p.add_argument("--data_format", "--data-format", dest="data_format", default="auto",
                   choices=FORMATS)
    p.add_argument("--aligned", action="store_true")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    out = _out(args.out)
    _refuse_existing([out / f for f in NPZ_FILES])  # early; write_npz_folder never overwrites
    try:
        dataset = canonical_dataset(args.dataset) if args.dataset else None
        if args.data_path is None:
            data = load_dataset(dataset or "synthetic", None, args.aligned, args.preset,
                                args.seed)
        else:
            r = resolve_dataset(dataset, args.data_path, args.aligned, args.data_format)
            if r.note:
                print(r.note)
            data = load_dataset(r.dataset, r.path, r.aligned, data_format=r.format)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"data: {data.summary()}")
    print(write_npz_folder(data, out))
    return 0
