"""`python -m ucrn train|synth|predict`: one trial on one machine, no Ray.

`train` accepts the authors' command line verbatim (their flag names, including the
quirk that passing `--attn_mask` turns the causal mask OFF), plus our own names.
Precedence: TrainConfig defaults < `--config FILE.json` < flags on the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ucrn.data import DataError, load_dataset
from ucrn.metrics import mean_std
from ucrn.train import FitResult, TrainConfig, fit

# authors' flag -> our name (one name per thing; theirs stay accepted)
ALIASES = {"nlevels": "layers", "num_heads": "heads"}
SHOWN = ("loss", "MAE", "Corr", "Has0_acc_2", "Mult_acc_7", "Mean_acc")


class CliError(Exception):
    """A bad flag or file: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback
        raise CliError(f"{self.prog}: {message}")


def _add(p: argparse.ArgumentParser, *names: str, **kw: Any) -> None:
    p.add_argument(*names, default=argparse.SUPPRESS, **kw)


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ucrn train", description="Train one UCRN configuration.",
                argument_default=argparse.SUPPRESS)
    _add(p, "--config", help="a saved config (e.g. a search's best_config.json); flags override it")
    _add(p, "--name", help="run name: the run folder is OUT/NAME")
    _add(p, "--out", help="folder for run folders (default: runs)")
    _add(p, "--seeds", help="comma-separated seeds: one run each, then mean and std")
    # data
    _add(p, "--dataset", help="synthetic (default) | mosi | mosei_senti | iemocap")
    _add(p, "--data_path", "--data-path", dest="data_path", help="folder with the MulT pickle, or the file")
    _add(p, "--aligned", action="store_true", help="word-aligned files (*_data.pkl)")
    _add(p, "--preset", help="synthetic preset (tiny, mosi, mosei, ...)")
    _add(p, "--data_seed", type=int, help="synthetic data seed")
    # modalities (authors' flags: none given = all three)
    _add(p, "--lonly", action="store_true", help="use text")
    _add(p, "--aonly", action="store_true", help="use audio")
    _add(p, "--vonly", action="store_true", help="use vision")
    _add(p, "--modalities", help="subset of 'lav' (overrides --lonly/--aonly/--vonly)")
    # model
    _add(p, "--model", help="only UCRN")
    _add(p, "--d_model", type=int)
    _add(p, "--nlevels", "--layers", dest="layers", type=int, help="layers per encoder")
    _add(p, "--num_heads", "--heads", dest="heads", type=int)
    _add(p, "--temp_proj", type=int, help="steps after temporal projection (0 = last step)")
    _add(p, "--attn_mask", action="store_true",
         help="authors' flag: passing it turns the causal mask OFF (their store_false)")
    _add(p, "--causal", help="true|false: causal mask in the encoders (default true)")
    _add(p, "--positional", help="none | sinusoidal")
    for name in ("attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout",
                 "embed_dropout", "res_dropout", "out_dropout"):
        _add(p, f"--{name}", type=float)
    # optimisation
    _add(p, "--batch_size", type=int)
    _add(p, "--clip", type=float)
    _add(p, "--lr", type=float)
    _add(p, "--optim", help="Adam | AdamW | SGD")
    _add(p, "--weight_decay", type=float)
    _add(p, "--num_epochs", type=int)
    _add(p, "--when", type=int, help="ReduceLROnPlateau patience")
    _add(p, "--jsd", action="store_true", help="authors' flag: MJS on with weight 1 (our default)")
    _add(p, "--jsd_weight", type=float, help="MJS weight; 0 switches MJS off")
    _add(p, "--mjs", help="jsd (default) | authors (their formula, for reproduction)")
    _add(p, "--patience", type=int, help="early stopping patience on the selection metric (0 = off)")
    # run
    _add(p, "--seed", type=int)
    _add(p, "--device", help="auto | cpu | cuda | cuda:N")
    _add(p, "--no_cuda", action="store_true", help="same as --device cpu")
    _add(p, "--threads", type=int, help="torch CPU threads (0 = default)")
    _add(p, "--amp", help="auto | bf16 | off")
    _add(p, "--select_metric", help="validation metric that picks the best epoch")
    # accepted for compatibility with the authors' script, no effect here
    _add(p, "-f", dest="ignored_f")
    _add(p, "--log_interval", dest="ignored_log_interval", type=int)
    _add(p, "--train_mode", help="regression (the only mode for mosi/mosei)")
    return p


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    args = vars(ns)
    base: dict[str, Any] = {}
    if "config" in args:
        path = Path(args["config"])
        try:
            base = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliError(f"--config {path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CliError(f"--config {path}: not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise CliError(f"--config {path}: expected a JSON object of config keys")
        base = base.get("config", base)  # accept a run folder's config.json too
    model = args.get("model", "UCRN")
    if str(model).upper() != "UCRN":
        raise CliError(f"--model={model}: only UCRN is implemented")
    if args.get("train_mode", "regression") != "regression":
        raise CliError(f"--train_mode={args['train_mode']}: only regression is supported")
    flags = {k: v for k, v in args.items() if not k.startswith("ignored_")}
    for k in ("config", "name", "out", "seeds", "model", "train_mode", "lonly", "aonly", "vonly",
              "attn_mask", "jsd", "no_cuda"):
        flags.pop(k, None)
    picked = "".join(m for m, f in (("l", "lonly"), ("a", "aonly"), ("v", "vonly")) if args.get(f))
    if picked and "modalities" not in flags:
        flags["modalities"] = picked
    if args.get("attn_mask"):
        flags["causal"] = False
    if args.get("jsd") and "jsd_weight" not in flags and "jsd_weight" not in base:
        flags["jsd_weight"] = 1.0
    if args.get("no_cuda"):
        flags["device"] = "cpu"
    if "config" in args:  # a saved config must be whole, or it would not reproduce its run
        missing = [k for k in TrainConfig.__dataclass_fields__ if k not in base and k not in flags]
        if missing:
            raise CliError(f"--config {args['config']}: incomplete, missing {', '.join(missing)} "
                           "(expected a full config as run_search.py or ucrn train writes it)")
    merged = {**base, **flags}
    try:
        return TrainConfig.from_dict(merged, where=str(args.get("config", "flags")))
    except ValueError as e:
        raise CliError(str(e)) from None


def new_run_dir(out: Path, name: str) -> Path:
    """A fresh folder: an existing run is never overwritten."""
    run = out / name
    if run.exists() and any(run.iterdir()):
        run = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        i = 1
        while run.exists():
            run, i = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{i}", i + 1
    run.mkdir(parents=True, exist_ok=True)
    return run


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def format_record(rec: dict[str, float], total: int) -> str:
    shown = "  ".join(f"{k} {rec[k]:.4f}" for k in SHOWN if k in rec)
    return (f"epoch {rec['epoch']:>3}/{total}  train_loss {rec['train_loss']:.4f}  "
            f"val {shown}  lr {rec['current_lr']:.2g}  {rec['seconds']:.1f}s")


def run_one(cfg: TrainConfig, run: Path, data) -> FitResult:
    """Train, printing progress and appending per-epoch metrics to the run folder."""
    write_json(run / "config.json", cfg.to_dict())
    epochs_path = run / "epochs.jsonl"

    def on_epoch(epoch: int, rec: dict[str, float], _trainer) -> None:
        print(format_record(rec, cfg.num_epochs), flush=True)
        with open(epochs_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    result = fit(cfg, data, on_epoch=on_epoch)
    if result.model_state is not None:
        mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
        ckpt = {"state_dict": result.model_state, "model_config": mcfg.to_dict(),
                "config": cfg.to_dict(), "epoch": result.best_epoch}
        tmp = run / "checkpoint.pt.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, run / "checkpoint.pt")
    final = {"status": result.status, "seed": cfg.seed, "best_epoch": result.best_epoch,
             "valid": result.best, "test": result.test, "n_params": result.n_params,
             "seconds": result.seconds, "epochs_run": len(result.history)}
    write_json(run / "final.json", final)
    return result


def summarize(results: list[tuple[int, FitResult]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds, per split and metric."""
    out: dict[str, Any] = {"seeds": [s for s, _ in results]}
    for split in ("valid", "test"):
        keys = [k for k in getattr(results[0][1], "best" if split == "valid" else "test")
                if k not in ("epoch", "seconds", "current_lr", "train_loss", "mjs")]
        stats = {}
        for k in keys:
            mean, std = mean_std([(r.best if split == "valid" else r.test).get(k, math.nan)
                                  for _, r in results])
            stats[k] = {"mean": mean, "std": std}
        out[split] = stats
    return out


def train_main(argv: list[str]) -> int:
    ns = train_parser().parse_args(argv)
    cfg = config_from_args(ns)
    seeds = [cfg.seed]
    if getattr(ns, "seeds", None):
        try:
            seeds = [int(s) for s in ns.seeds.split(",") if s.strip()]
        except ValueError:
            raise CliError(f"--seeds {ns.seeds!r}: expected comma-separated integers") from None
        if not seeds:
            raise CliError("--seeds: expected at least one seed")
    try:
        data = load_dataset(cfg.dataset, cfg.data_path, cfg.aligned, cfg.preset, cfg.data_seed)
    except DataError as e:
        raise CliError(str(e)) from None
    for split, counts in data.nonfinite.items():
        bad = {m: n for m, n in counts.items() if n}
        if bad:
            print(f"note: {split}: replaced non-finite values with 0: {bad}")
    name = getattr(ns, "name", None) or f"ucrn-{cfg.dataset}"
    run = new_run_dir(Path(getattr(ns, "out", "runs")), name)
    print(f"run folder: {run}  (data: {data.source}, train/valid/test = "
          f"{'/'.join(str(len(data.splits[s])) for s in ('train', 'valid', 'test'))})", flush=True)
    results = []
    for seed in seeds:
        seed_cfg = TrainConfig.from_dict({**cfg.to_dict(), "seed": seed})
        seed_run = run if len(seeds) == 1 else run / f"seed_{seed}"
        seed_run.mkdir(exist_ok=True)
        if len(seeds) > 1:
            print(f"-- seed {seed}", flush=True)
        result = run_one(seed_cfg, seed_run, data)
        results.append((seed, result))
        print(f"seed {seed}: {result.status}, best epoch {result.best_epoch}: "
              f"valid MAE/loss {result.best.get('MAE', result.best.get('loss')):.4f}, test "
              + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items()), flush=True)
    if len(seeds) > 1:
        summary = summarize(results)
        write_json(run / "summary.json", summary)
        print(f"mean ± std over seeds {seeds}:")
        for split in ("valid", "test"):
            print(f"  {split}: " + "  ".join(
                f"{k} {v['mean']:.4f}±{v['std']:.4f}" for k, v in summary[split].items()))
    print(f"results: {run}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "synth": _synth, "predict": _predict}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m ucrn {{{'|'.join(commands)}}} [flags]  (-h for help)",
              file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _synth(argv: list[str]) -> int:
    from ucrn.data import synth_main

    return synth_main(argv)


def _predict(argv: list[str]) -> int:
    from ucrn.predict import predict_main

    return predict_main(argv)
