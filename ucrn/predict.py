"""`python -m ucrn predict`: run a saved checkpoint over one split, write one row per segment.

    python -m ucrn predict --checkpoint PATH [--data_path DIR] [--dataset NAME] [--aligned]
                           [--split test] [--out preds.parquet] [--device cpu] [--batch_size N]

Why: a search or a training run leaves a checkpoint bundle (`state_dict`, `model_config`,
`config`, `epoch`, as `ucrn/cli.py run_one` writes it); this turns it into per-segment
predictions keyed by the data's own segment ids, so that errors can be inspected and
models compared outside the trainer. Every problem (unreadable checkpoint, missing key,
data that does not fit the model, unknown split) is one `error:` line and exit code 2,
and no output file is left behind; the output is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ucrn.config import data_args
from ucrn.data import DATASET_TASK, SPLITS, MultData, Split, load_dataset, resolve_dataset
from ucrn.errors import OneLineParser, UsageError, one_line, run_main
from ucrn.fileio import (
    atomic_write,
    check_output,
    display_uri,
    is_uri,
    local_copy,
    local_path,
    redact,
)
from ucrn.losses import task_loss
from ucrn.metrics import IEMOCAP_EMOTIONS, TASK_METRICS, task_metrics
from ucrn.model import UCRN, UCRNConfig
from ucrn.safeload import MAX_CHECKPOINT_BYTES, load_checkpoint
from ucrn.train import resolve_device

BUNDLE_KEYS = ("state_dict", "model_config")  # "config" and "epoch" are used when present


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m ucrn predict",
                      description="Predict one split with a saved checkpoint; write Parquet.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt bundle of a run")
    p.add_argument("--data_path", "--data-path", dest="data_path",
                   help="folder with the MulT pickle, or the file (synthetic: optional)")
    p.add_argument("--dataset", help="synthetic | mosi | mosei_senti | iemocap "
                   "(default: the checkpoint's)")
    p.add_argument("--aligned", action="store_true", default=None,
                   help="word-aligned files (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="train | valid | test (default test)")
    p.add_argument("--out", default="preds.parquet", help="output Parquet file")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--batch_size", type=int, default=256)
    return p


# ---- checkpoint ----------------------------------------------------------------------


def checkpoint_arg(text: str) -> Path | str:
    """--checkpoint: a local file, or a URI (s3://...) where a search stored it."""
    if is_uri(text):
        return text
    try:
        return Path(local_path(text))
    except ValueError as e:
        raise UsageError(f"--checkpoint {e}") from None


def load_bundle(path: Path | str, device: torch.device) -> dict[str, Any]:
    """The checkpoint dict, checked for the keys a run writes; UsageError otherwise. A URI
    is copied to a private temporary file first (the safe loader reads local files)."""
    if isinstance(path, str):
        tmp = None
        try:
            with local_copy(path, ".pt", MAX_CHECKPOINT_BYTES) as tmp:
                bundle = load_checkpoint(tmp, map_location=device, what="")
        except OSError as e:  # NoAnswer (a store that stopped answering) among them
            raise UsageError(f"--checkpoint {display_uri(path)}: cannot read it "
                             f"({redact(' '.join(str(e).split()))[:200]})") from None
        except ValueError as e:  # the safe loader's line names the copy: name the URI
            text = str(e).replace(str(tmp), display_uri(path)) if tmp else str(e)
            raise UsageError(f"--checkpoint {redact(text)}") from None
    else:
        bundle = load_checkpoint(path, map_location=device)
    missing = [k for k in BUNDLE_KEYS if k not in bundle]
    if missing:
        raise UsageError(f"--checkpoint {path}: missing key(s) {missing}; expected a bundle "
                         f"with {list(BUNDLE_KEYS)} as `python -m ucrn train` writes it "
                         f"(has {sorted(map(str, bundle))[:8]})")
    if not isinstance(bundle["model_config"], dict):
        raise UsageError(f"--checkpoint {path}: key 'model_config' is not a dict")
    if not isinstance(bundle["state_dict"], dict) or not all(
            isinstance(v, torch.Tensor) for v in bundle["state_dict"].values()):
        raise UsageError(f"--checkpoint {path}: key 'state_dict' is not a dict of tensors")
    return bundle


def build_model(bundle: dict[str, Any], path: Path, device: torch.device) -> UCRN:
    """The model the bundle describes, with its weights. The config's shapes are checked
    against the state_dict on the meta device first (no memory): a crafted model_config
    must not make us allocate what the file does not hold."""
    state = bundle["state_dict"]
    try:
        mcfg = UCRNConfig(**bundle["model_config"])
        if mcfg.layers > len(state):  # every layer has weights in the state_dict
            raise ValueError(f"layers={mcfg.layers} but the state_dict has only "
                             f"{len(state)} tensors")
    except (TypeError, ValueError) as e:
        raise UsageError(f"--checkpoint {path}: bad 'model_config': {one_line(e)}") from None
    with torch.device("meta"):
        own = UCRN(mcfg).state_dict()
    shapes = {k: tuple(v.shape) for k, v in own.items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != have:
        diff = sorted(set(shapes) ^ set(have)) or [k for k in shapes if shapes[k] != have[k]]
        k = diff[0]
        raise UsageError(f"--checkpoint {path}: 'state_dict' does not fit its 'model_config': "
                         f"{k}: model {shapes.get(k, 'absent')}, state_dict "
                         f"{have.get(k, 'absent')} ({len(diff)} difference(s))")
    # weights of another kind would be cast without a word (int64: predictions off by
    # 1e10; complex: torch's warning names neither file nor key); sparse or meta ones
    # gave load_state_dict's traceback
    odd = {k: why for k, v in state.items() if (why := _odd_weights(v, own[k]))}
    if odd:
        k = next(iter(odd))
        raise UsageError(f"--checkpoint {path}: 'state_dict' key {k!r} holds {odd[k]}; "
                         f"expected dense {own[k].dtype} values ({len(odd)} such key(s))")
    model = UCRN(mcfg).to(device)
    model.load_state_dict(state)
    bad = sum(int((~torch.isfinite(v.float())).sum()) for v in state.values()
              if v.is_floating_point())
    if bad:
        warnings.warn(f"--checkpoint {path}: {bad} weight(s) are NaN or infinite; the "
                      f"predictions will be too", RuntimeWarning, stacklevel=2)
    return model.eval()


def _odd_weights(v: torch.Tensor, own: torch.Tensor) -> str | None:
    """What makes a checkpoint's tensor unfit for the model's own, or None."""
    if v.layout != torch.strided:
        return f"a tensor of layout {v.layout}"
    if v.is_meta:
        return "a meta tensor (shapes, no values)"
    if v.is_complex() or v.is_floating_point() != own.is_floating_point():
        return f"{v.dtype} values"
    return None


def bundle_data(bundle: dict[str, Any], dataset: str | None, data_path: str | None,
                aligned: bool | None) -> tuple[MultData, str]:
    """The data the checkpoint was trained on, unless the flags say otherwise: (data, the
    dataset's name). Other data is loaded as the dataset its own files or folders name
    (a CH-SIMS folder is CH-SIMS whatever the checkpoint was trained on), falling back to
    the checkpoint's dataset where they name none; compare_data then says what differs."""
    cfg = bundle.get("config") if isinstance(bundle.get("config"), dict) else {}
    args = data_args(cfg)
    trained = cfg.get("dataset") if isinstance(cfg.get("dataset"), str) else None
    aligned = bool(cfg.get("aligned", False)) if aligned is None else aligned
    recorded = cfg.get("data_path")
    if data_path is None and isinstance(recorded, str):  # the file the model was trained on
        if not Path(recorded).exists():
            raise UsageError(f"the checkpoint was trained on {recorded}, which is gone; "
                             f"pass --data_path (the data to score)")
        data_path = recorded
    if dataset is None and data_path is not None and data_path != recorded:
        dataset = _own_dataset(data_path, aligned)
    dataset = dataset or trained or "synthetic"
    seed = args["seed"]
    fmt = args["data_format"] if data_path == recorded else "auto"  # other data: told by its files
    data = load_dataset(dataset, data_path, aligned, str(args["preset"]),
                        seed if isinstance(seed, int) and seed >= 0 else 0, str(fmt),
                        str(args["target"]))
    return data, data.dataset or dataset


def _own_dataset(data_path: str, aligned: bool) -> str | None:
    """The dataset other data names itself (MulT file name, MMSA folder, the name `ucrn
    convert` recorded), or None where it names none with a task of its own."""
    try:
        found = resolve_dataset(None, data_path, aligned).dataset
    except ValueError:  # nothing to tell it by: the checkpoint's dataset, as before
        return None
    return found if DATASET_TASK.get(found) is not None else None


_KIND = {"regression": "sentiment in [-3, 3]", "sims": "CH-SIMS sentiment in [-1, 1]",
         "iemocap": "IEMOCAP's 4 emotions"}


def check_shapes(data: MultData, mcfg: UCRNConfig, path: Path) -> None:
    """The data must have the dims the model was built for; name both sides otherwise."""
    have = (tuple(data.input_dims), tuple(data.seq_lens), data.output_dim)
    want = (tuple(mcfg.input_dims), tuple(mcfg.seq_lens), mcfg.output_dim)
    if have != want:
        fmt = "input_dims {}, seq_lens {}, output_dim {}"
        what = [name for name, a, b in zip(("feature dimensions", "sequence lengths",
                                            "label kind"), have, want, strict=True) if a != b]
        raise UsageError(f"data {data.source} has {fmt.format(*have)} but checkpoint {path} "
                         f"expects {fmt.format(*want)} ({', '.join(what)} differ)")


def compare_data(bundle: dict[str, Any], data: MultData, path: Path | str) -> None:
    """Data of another dataset than the checkpoint's: refused where the label kind differs
    (CH-SIMS's [-1, 1] scored by a model of [-3, 3], or the reverse: its numbers would mean
    nothing), one warning line where only the name does (a model of one dataset scored on
    another of the same kind, a cross-dataset test)."""
    cfg = bundle.get("config") if isinstance(bundle.get("config"), dict) else {}
    trained = cfg.get("dataset") if isinstance(cfg.get("dataset"), str) else None
    if trained is None or trained not in DATASET_TASK or data.dataset in (None, trained):
        return
    was, now = DATASET_TASK[trained], DATASET_TASK.get(data.dataset or "")
    if was is not None and now is not None and was != now:
        raise UsageError(f"checkpoint {path} was trained on dataset {trained} ({_KIND[was]}) "
                         f"but data {data.source} is dataset {data.dataset} ({_KIND[now]}); "
                         f"its scores would not mean anything")
    warnings.warn(one_line(f"checkpoint {path} was trained on dataset {trained}, data "
                           f"{data.source} is dataset {data.dataset} (task {data.task}, same "
                           f"shapes): scored as another dataset's data"),
                  RuntimeWarning, stacklevel=2)


# ---- prediction ----------------------------------------------------------------------


@torch.inference_mode()
def predict_split(model: UCRN, split: Split, device: torch.device, batch_size: int
                  ) -> np.ndarray:
    """Model outputs (N, output_dim) in float32, in the split's order."""
    mods = model.cfg.modalities
    outs = []
    for i in range(0, len(split), batch_size):
        inputs = [torch.from_numpy(split.modality(name)[i:i + batch_size]).to(device)
                  if key in mods else None
                  for key, name in zip("lav", ("text", "audio", "vision"))]
        out, _ = model(*inputs)
        outs.append(out.float().cpu())
    return torch.cat(outs).numpy()


def prediction_table(out: np.ndarray, split: Split, task: str) -> pa.Table:
    """One row per segment: id, prediction(s) and label(s)."""
    # from Python strings: Arrow cuts a numpy string at its first NUL (the loader refuses
    # ids that hold one, or that would read as another's)
    cols: dict[str, Any] = {"id": pa.array(split.ids.tolist(), type=pa.string())}
    if task == "iemocap":
        logits = out.reshape(-1, len(IEMOCAP_EMOTIONS), 2)
        for i, emo in enumerate(IEMOCAP_EMOTIONS):
            cols[f"{emo}_pred"] = logits[:, i].argmax(axis=-1).astype(np.int64)
        for j in range(out.shape[1]):
            cols[f"logit_{j}"] = out[:, j].astype(np.float64)
        for i, emo in enumerate(IEMOCAP_EMOTIONS):
            cols[f"{emo}_label"] = split.labels[:, i].astype(np.int64)
    else:
        cols["prediction"] = out.reshape(-1).astype(np.float64)
        cols["label"] = split.labels.reshape(-1).astype(np.float64)
        for t, y in split.extra_labels.items():  # CH-SIMS's unimodal labels, for analysis
            cols[f"label_{t}"] = y.astype(np.float64)
    return pa.table(cols)


def split_metrics(out: np.ndarray, split: Split, task: str) -> dict[str, float]:
    """loss (as the trainer's) plus the metrics; all NaN when a prediction is not finite
    (an accuracy computed from NaN predictions would be a made-up number)."""
    if not np.isfinite(out).all():
        return dict.fromkeys(["loss", *TASK_METRICS[task]], math.nan)
    labels = torch.from_numpy(split.labels)
    loss = task_loss(torch.from_numpy(out), labels.long() if task == "iemocap" else labels,
                     task).item()
    return {"loss": loss, **task_metrics(task, out, split.labels)}


def write_parquet(table: pa.Table, out: Path, meta: dict[str, Any]) -> None:
    """Written whole or not at all (a reader never sees a partial file)."""
    table = table.replace_schema_metadata({"ucrn_predict": json.dumps(meta)})
    atomic_write(out, lambda f: pq.write_table(table, f))


# ---- command line --------------------------------------------------------------------


def open_scoring(args: Any) -> tuple[Path | str, Path, torch.device, dict[str, Any], UCRN,
                                     MultData, str]:
    """What `predict` and `robustness` both start from, checked in this order: batch size,
    device, --out, the checkpoint, its model, the data it is scored on, their shapes."""
    if args.batch_size < 1:
        raise UsageError(f"--batch_size {args.batch_size}: expected an integer >= 1")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
    ckpt = checkpoint_arg(args.checkpoint)
    inputs = (ckpt, *([args.data_path] if args.data_path else []))
    out_path = check_output(args.out, "--out", inputs=inputs)
    bundle = load_bundle(ckpt, device)
    model = build_model(bundle, ckpt, device)
    data, dataset = bundle_data(bundle, args.dataset, args.data_path, args.aligned)
    check_shapes(data, model.cfg, ckpt)
    compare_data(bundle, data, ckpt)
    return ckpt, out_path, device, bundle, model, data, dataset


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.split not in SPLITS:
        raise UsageError(f"--split {args.split!r}: expected one of {', '.join(SPLITS)}")
    ckpt, out_path, device, bundle, model, data, dataset = open_scoring(args)
    split = data.splits[args.split]
    out = predict_split(model, split, device, args.batch_size)
    metrics = split_metrics(out, split, data.task)
    if not np.isfinite(out).all():
        warnings.warn(f"{int((~np.isfinite(out)).sum())} prediction(s) are NaN or infinite: "
                      f"no metric computed", RuntimeWarning, stacklevel=2)
    target = (bundle.get("config") or {}).get("target", "M")
    meta = {"checkpoint": str(ckpt), "epoch": bundle.get("epoch"), "dataset": dataset,
            "source": data.source, "split": args.split, "target": target, "metrics": metrics}
    write_parquet(prediction_table(out, split, data.task), out_path, meta)
    print(f"{args.split} ({len(split)} segments of {data.source}), checkpoint epoch "
          f"{bundle.get('epoch', '?')}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"predictions: {args.out}")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m ucrn predict`; 0 ok, 2 for any bad input, 1 for I/O."""
    return run_main(run, argv)
