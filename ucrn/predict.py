"""`python -m ucrn predict`: run a saved checkpoint over one split, write one row per segment.

    python -m ucrn predict --checkpoint PATH [--data_path DIR] [--dataset NAME] [--aligned]
                           [--split test] [--out preds.parquet] [--device cpu] [--batch_size N]

Why: a search or a training run leaves a checkpoint bundle (`state_dict`, `model_config`,
`config`, `epoch`, as `ucrn/cli.py run_one` writes it); this turns it into per-segment
predictions keyed by the data's own segment ids, so that errors can be inspected and
models compared outside the trainer. Every problem (unreadable checkpoint, missing key,
data that does not fit the model, unknown split) is one `error:` line and exit code 2,
and no output file is left behind; the output is written to a temporary file and renamed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ucrn.data import SPLITS, DataError, MultData, Split, load_dataset, resolve_data_file
from ucrn.metrics import IEMOCAP_EMOTIONS, iemocap_metrics, regression_metrics
from ucrn.model import UCRN, UCRNConfig

BUNDLE_KEYS = ("state_dict", "model_config")  # "config" and "epoch" are used when present


class PredictError(Exception):
    """One line for the user; exit code 2."""


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise PredictError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ucrn predict",
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


def load_bundle(path: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint dict, checked for the keys a run writes; PredictError otherwise."""
    if not path.exists():
        raise PredictError(f"--checkpoint {path}: no such file")
    if path.is_dir():
        raise PredictError(f"--checkpoint {path}: is a folder, expected a checkpoint file "
                           f"(e.g. runs/NAME/checkpoint.pt)")
    try:
        bundle = torch.load(path, weights_only=True, map_location=device)
    except Exception as e:  # noqa: BLE001 - truncated, random bytes, not a torch file
        raise PredictError(f"--checkpoint {path}: not a readable checkpoint (truncated or "
                           f"corrupt?): {type(e).__name__}: {_load_reason(e)}") from None
    if not isinstance(bundle, dict):
        raise PredictError(f"--checkpoint {path}: expected a dict bundle, got "
                           f"{type(bundle).__name__}")
    missing = [k for k in BUNDLE_KEYS if k not in bundle]
    if missing:
        raise PredictError(f"--checkpoint {path}: missing key(s) {missing}; expected a bundle "
                           f"with {list(BUNDLE_KEYS)} as `python -m ucrn train` writes it "
                           f"(has {sorted(map(str, bundle))[:8]})")
    if not isinstance(bundle["model_config"], dict):
        raise PredictError(f"--checkpoint {path}: key 'model_config' is not a dict")
    return bundle


def _load_reason(e: Exception) -> str:
    """The informative part of torch.load's multi-paragraph messages."""
    msg = str(e)
    if "WeightsUnpickler error:" in msg:  # random bytes, or objects weights_only refuses
        detail = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return f"refused by torch.load(weights_only=True): {_one_line(detail)}"
    return _one_line(msg).split(". ")[0][:300]


def build_model(bundle: dict[str, Any], path: Path, device: torch.device) -> UCRN:
    try:
        mcfg = UCRNConfig(**bundle["model_config"])
    except (TypeError, ValueError) as e:
        raise PredictError(f"--checkpoint {path}: bad 'model_config': {_one_line(e)}") from None
    model = UCRN(mcfg).to(device)
    try:
        model.load_state_dict(bundle["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PredictError(f"--checkpoint {path}: 'state_dict' does not fit its "
                           f"'model_config': {_one_line(first)}") from None
    return model.eval()


def check_shapes(data: MultData, mcfg: UCRNConfig, path: Path) -> None:
    """The data must have the dims the model was built for; name both sides otherwise."""
    have = (tuple(data.input_dims), tuple(data.seq_lens), data.output_dim)
    want = (tuple(mcfg.input_dims), tuple(mcfg.seq_lens), mcfg.output_dim)
    if have != want:
        fmt = "input_dims {}, seq_lens {}, output_dim {}"
        raise PredictError(f"data {data.source} has {fmt.format(*have)} but checkpoint {path} "
                           f"expects {fmt.format(*want)}")


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
    cols: dict[str, Any] = {"id": pa.array(split.ids.astype(str))}
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
    return pa.table(cols)


def split_metrics(out: np.ndarray, split: Split, task: str) -> dict[str, float]:
    """loss (L1, or cross-entropy for IEMOCAP, as the trainer's) plus the metrics.md set."""
    if task == "iemocap":
        logits = torch.from_numpy(out).view(-1, 2)
        loss = torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(split.labels).long().view(-1)).item()
        return {"loss": loss, **iemocap_metrics(out, split.labels)}
    loss = float(np.mean(np.abs(out.reshape(-1) - split.labels.reshape(-1))))
    return {"loss": loss, **regression_metrics(out.reshape(-1), split.labels)}


def write_atomic(table: pa.Table, out: Path, meta: dict[str, Any]) -> None:
    """Temp file in the same folder, then rename: a reader never sees a partial file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({"ucrn_predict": json.dumps(meta)})
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- command line --------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PredictError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {name!r}: CUDA is not available on this machine")
    return dev


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.split not in SPLITS:
        raise PredictError(f"--split {args.split!r}: expected one of {', '.join(SPLITS)}")
    if args.batch_size < 1:
        raise PredictError(f"--batch_size {args.batch_size}: expected an integer >= 1")
    device = _resolve_device(args.device)
    ckpt = Path(args.checkpoint)
    bundle = load_bundle(ckpt, device)
    model = build_model(bundle, ckpt, device)
    cfg = bundle.get("config") if isinstance(bundle.get("config"), dict) else {}
    dataset = args.dataset or cfg.get("dataset") or "synthetic"
    aligned = bool(cfg.get("aligned", False)) if args.aligned is None else args.aligned
    try:
        if args.data_path is not None:  # load_dataset would generate synthetic data instead
            resolve_data_file(dataset, args.data_path, aligned)
        data = load_dataset(dataset, args.data_path, aligned, cfg.get("preset", "tiny"),
                            int(cfg.get("data_seed", 0)))
    except DataError as e:
        raise PredictError(str(e)) from None
    check_shapes(data, model.cfg, ckpt)
    split = data.splits[args.split]
    out = predict_split(model, split, device, args.batch_size)
    metrics = split_metrics(out, split, data.task)
    meta = {"checkpoint": str(ckpt), "epoch": bundle.get("epoch"), "dataset": dataset,
            "source": data.source, "split": args.split, "metrics": metrics}
    write_atomic(prediction_table(out, split, data.task), Path(args.out), meta)
    print(f"{args.split} ({len(split)} segments of {data.source}), checkpoint epoch "
          f"{bundle.get('epoch', '?')}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"predictions: {args.out}")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m ucrn predict`; 0 ok, 2 for any bad input, 1 for I/O."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(predict_main())
