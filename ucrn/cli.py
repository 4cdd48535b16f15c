"""`python -m ucrn train|synth|convert|predict|robustness`: one trial on one machine, no Ray.

`train` takes one flag per TrainConfig field (`--lr`, `--heads`, ..., dashes or underscores),
derived from the fields themselves, plus the authors' command line verbatim: their flag
names (a small table below, including the quirk that passing `--attn_mask` turns the
causal mask OFF). Precedence: TrainConfig defaults < `--config FILE.json` < flags.
Everything is checked before the run folder is made; SIGINT/SIGTERM keep the best
weights so far and write final.json with status `interrupted`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from dataclasses import Field, replace
from pathlib import Path
from typing import Any

import torch

from ucrn.config import (
    ROBUST_REGRESSION_ONLY,
    SEED_MAX,
    TrainConfig,
    config_fields,
    defaulted_fields,
    field_type,
    missing_fields,
    normalize_keys,
    parse_text,
)
from ucrn.data import load_dataset, resolve_dataset
from ucrn.errors import (
    OneLineParser,
    RunFailed,
    UsageError,
    one_line,
    run_main,
    signals_held,
)
from ucrn.fileio import append_line, atomic_write, check_name, write_json
from ucrn.metrics import mean_std, undefined_metric
from ucrn.train import FitResult, Trainer, check_selection, fit, resolve_device

# The authors' flags that name one of our fields differently (and our own old names).
FLAG_ALIASES = {"--nlevels": "layers", "--num_heads": "heads", "--mjs": "mjs_variant"}
SHOWN = ("loss", "MAE", "Corr", "Has0_acc_2", "Mult_acc_7", "Mean_acc", "robust_MAE")
FINISHED = ("completed", "stopped")  # statuses with a selected model


def _flag_type(f: Field):
    kind = field_type(f)

    def parse(text: str) -> Any:
        return parse_text(kind, text)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def _help(f: Field) -> str:
    choices = f.metadata.get("choices")
    extra = f" ({' | '.join(map(str, choices))})" if choices else ""
    return f"{f.metadata.get('help', '')}{extra} [default: {f.default}]"


def train_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m ucrn train", description="Train one UCRN configuration.",
                      argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--config", help="a saved config (e.g. a search's best_config.json); flags override it")
    a("--name", help="run name: the run folder is OUT/NAME")
    a("--out", help="folder for run folders (default: runs)")
    a("--seeds", help="comma-separated distinct seeds: one run each, then mean and std")
    for f in config_fields():
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        names += [flag for flag, name in FLAG_ALIASES.items() if name == f.name]
        extra = {"nargs": "?", "const": True} if field_type(f) is bool else {}
        a(*names, dest=f.name, type=_flag_type(f), help=_help(f), **extra)
    # the authors' switches (none of --lonly/--aonly/--vonly given = all three)
    for m, name in (("l", "text"), ("a", "audio"), ("v", "vision")):
        a(f"--{m}only", action="store_true", help=f"authors' flag: use {name}")
    a("--attn_mask", action="store_true",
      help="authors' flag: passing it turns the causal mask OFF (their store_false)")
    a("--jsd", action="store_true", help="authors' flag: MJS on with weight 1 (our default)")
    a("--no_cuda", action="store_true", help="authors' flag: same as --device cpu")
    a("--model", help="only UCRN")
    a("--train_mode", help="regression (the only mode for mosi/mosei)")
    a("-f", dest="ignored_f", help=argparse.SUPPRESS)
    a("--log_interval", dest="ignored_log_interval", type=int, help=argparse.SUPPRESS)
    return p


def _read_config(path: Path) -> dict[str, Any]:
    from ucrn.safeload import load_json

    base = load_json(path, "--config", expect=dict)
    base = base.get("config", base)  # a run folder's config.json or a final.json-like bundle
    if not isinstance(base, dict):
        raise UsageError(f"--config {path}: expected a JSON object of config keys")
    return normalize_keys(base, f"--config {path}")


def config_from_args(ns: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The run's config and a note on where its data comes from (printed by the caller)."""
    args = vars(ns)
    base = _read_config(Path(args["config"])) if "config" in args else {}
    if str(args.get("model", "UCRN")).upper() != "UCRN":
        raise UsageError(f"--model={args['model']}: only UCRN is implemented")
    if args.get("train_mode", "regression") != "regression":
        raise UsageError(f"--train_mode={args['train_mode']}: only regression is supported")
    flags = {f.name: args[f.name] for f in config_fields() if f.name in args}
    picked = "".join(m for m in "lav" if args.get(f"{m}only"))
    if picked and "modalities" not in flags:
        flags["modalities"] = picked
    if args.get("attn_mask"):
        flags["causal"] = False
    if args.get("jsd") and "jsd_weight" not in flags and "jsd_weight" not in base:
        flags["jsd_weight"] = 1.0
    if args.get("no_cuda"):
        flags["device"] = "cpu"
    if "config" in args:  # a saved config must be whole, or it would not reproduce its run
        missing = missing_fields({**base, **flags})
        if missing:
            raise UsageError(f"--config {args['config']}: incomplete, missing "
                             f"{', '.join(missing)} (expected a full config as run_search.py "
                             f"or ucrn train writes it)")
        newer = defaulted_fields({**base, **flags})
        if newer:
            warnings.warn(f"--config {args['config']} predates {', '.join(newer)}: using the "
                          f"default{'s' if len(newer) > 1 else ''} (what its run used)",
                          UserWarning, stacklevel=2)
    merged = {**base, **flags}
    where = f"--config {args['config']} and flags" if "config" in args else "flags"
    cfg = TrainConfig.from_dict(merged, where=where)
    note = ""
    if cfg.data_path is not None:  # a given path is never ignored (ucrn.data.resolve_dataset)
        r = resolve_dataset(merged.get("dataset"), cfg.data_path, cfg.aligned, cfg.data_format)
        cfg = replace(cfg, dataset=r.dataset, aligned=r.aligned, data_path=str(r.path),
                      data_format=r.format)
        note = r.note
    return cfg, note


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """Comma-separated, distinct, each a valid seed; one line naming the flag otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not seeds:
        raise UsageError(f"{flag} {text!r}: expected at least one seed")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"{flag} {text!r}: expected distinct seeds ({repeated} repeated: the "
                         f"same run twice would count twice in the mean and std)")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise UsageError(f"{flag}: seed {bad[0]} is out of range: expected 0..{SEED_MAX}")
    return seeds


def new_run_dir(out: Path, name: str) -> Path:
    """A folder this run creates itself (mkdir is atomic): an existing run, or one another
    process starts at the same moment under the same name, is never shared or overwritten;
    the new one gets a time suffix instead."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run = out / (name if i == 0 else f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i - 1}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise UsageError(f"--name {name}: could not make a new run folder under {out}")


def format_record(rec: dict[str, float], total: int) -> str:
    shown = "  ".join(f"{k} {rec[k]:.4f}" for k in SHOWN if k in rec)
    return (f"epoch {rec['epoch']:>3}/{total}  train_loss {rec['train_loss']:.4f}  "
            f"val {shown}  lr {rec['current_lr']:.2g}  {rec['seconds']:.1f}s")


def save_checkpoint(path: Path, state: dict, cfg: TrainConfig, data, epoch: int) -> None:
    """The bundle `ucrn predict` reads: weights, model config, training config, epoch."""
    mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
    bundle = {"state_dict": state, "model_config": mcfg.to_dict(), "config": cfg.to_dict(),
              "epoch": epoch}
    atomic_write(path, lambda f: torch.save(bundle, f))


def run_one(cfg: TrainConfig, run: Path, data) -> FitResult:
    """Train, printing progress, appending per-epoch metrics and keeping the best weights
    on disk as they improve, so that an interrupted run keeps them (final.json says
    `interrupted`; KeyboardInterrupt is re-raised)."""
    write_json(run / "config.json", cfg.to_dict())
    trainer: list[Trainer] = []
    # what checkpoint.pt holds: an interrupt can land after the trainer found a new best
    # and before it was saved, so final.json names the epoch on disk, not the trainer's
    saved: dict[str, Any] = {"epoch": 0, "valid": {}}

    def on_epoch(epoch: int, rec: dict[str, float], tr: Trainer) -> None:
        trainer[:] = [tr]
        print(format_record(rec, cfg.num_epochs), flush=True)
        append_line(run / "epochs.jsonl", json.dumps(rec))
        if tr.best_epoch == epoch and tr.best_state is not None:
            with signals_held():  # the file and `saved` change together
                save_checkpoint(run / "checkpoint.pt", tr.best_state, cfg, data, epoch)
                saved.update(epoch=epoch, valid=dict(tr.best_record))

    t0 = time.perf_counter()
    try:
        result = fit(cfg, data, on_epoch=on_epoch)
    except (RuntimeError, MemoryError) as e:  # out of memory, a numeric error inside torch
        (run / "error.txt").write_text(traceback.format_exc())
        tr = trainer[0] if trainer else None
        write_json(run / "final.json", {
            "status": "failed", "seed": cfg.seed, "error": one_line(e)[:500],
            "best_epoch": saved["epoch"], "epochs_run": len(tr.history) if tr else 0,
            "checkpoint": "checkpoint.pt" if saved["epoch"] else None})
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RunFailed(f"training failed: {type(e).__name__}: {first} (traceback in "
                        f"{run / 'error.txt'})") from None
    except KeyboardInterrupt:
        tr = trainer[0] if trainer else None
        with signals_held():  # one more signal must not cut this record short
            write_json(run / "final.json", {
                "status": "interrupted", "seed": cfg.seed, "best_epoch": saved["epoch"],
                "valid": saved["valid"], "test": {},
                "epochs_run": len(tr.history) if tr else 0,
                "seconds": time.perf_counter() - t0,
                "checkpoint": "checkpoint.pt" if saved["epoch"] else None})
        raise
    with signals_held():  # the weights and their record, both or (before) neither
        if result.model_state is not None:
            save_checkpoint(run / "checkpoint.pt", result.model_state, cfg, data,
                            result.best_epoch)
        write_json(run / "final.json", {
            "status": result.status, "seed": cfg.seed, "best_epoch": result.best_epoch,
            "valid": result.best, "test": result.test, "n_params": result.n_params,
            "seconds": result.seconds, "epochs_run": len(result.history),
            "checkpoint": "checkpoint.pt" if result.model_state is not None else None})
    return result


def summarize(results: list[tuple[int, FitResult]], seeds: list[int]) -> dict[str, Any]:
    """Mean and standard deviation per split and metric over the seeds that finished with
    a model (diverged ones are listed, not averaged)."""
    done = [(s, r) for s, r in results if r.status in FINISHED]
    out: dict[str, Any] = {
        "seeds": seeds, "summarized_seeds": [s for s, _ in done],
        "diverged_seeds": [s for s, r in results if r.status == "diverged"],
        "not_run_seeds": [s for s in seeds if s not in {s2 for s2, _ in results}],
    }
    for split, part in (("valid", "best"), ("test", "test")):
        keys = [k for k in (getattr(done[0][1], part) if done else {})
                if k not in ("epoch", "seconds", "current_lr", "train_loss", "mjs")]
        out[split] = {k: dict(zip(("mean", "std"), mean_std(
            [getattr(r, part).get(k, math.nan) for _, r in done]))) for k in keys}
    return out


def _seed_line(seed: int, r: FitResult) -> str:
    if r.status not in FINISHED:
        why = r.reason.split(": ", 2)[-1] if r.reason else "non-finite training loss"
        return f"seed {seed}: {r.status} in epoch {len(r.history) + 1} ({why}); not in the mean"
    name = next((k for k in (r.config.get("select_metric"), "MAE", "loss")
                 if k in r.best), "loss")
    return (f"seed {seed}: {r.status}, best epoch {r.best_epoch}: valid {name} "
            f"{r.best.get(name, math.nan):.4f}, test "
            + "  ".join(f"{k} {v:.4f}" for k, v in r.test.items()))


def train_main(argv: list[str]) -> int:
    ns = train_parser().parse_args(argv)
    cfg, note = config_from_args(ns)
    seeds = parse_seeds(ns.seeds) if getattr(ns, "seeds", None) else [cfg.seed]
    name = check_name(ns.name if "name" in vars(ns) else f"ucrn-{cfg.dataset}", "--name")
    cfg.check_machine()
    resolve_device(cfg.device)
    if note:
        print(note, flush=True)
    data = load_dataset(**cfg.data_args())
    print(f"data: {data.summary()}", flush=True)
    if cfg.data_path is not None:  # the format the file turned out to have, recorded
        cfg = replace(cfg, data_format=data.format)
    cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)  # shape rules, now
    if cfg.wants_robust_metrics() and data.task == "iemocap":  # the data decided the task
        raise UsageError(ROBUST_REGRESSION_ONLY)
    for split, counts in data.nonfinite.items():
        bad = {m: n for m, n in counts.items() if n}
        if bad:
            print(f"note: {split}: replaced non-finite values with 0: {bad}")
    try:
        check_selection(cfg, data.task)
    except ValueError as e:
        raise UsageError(str(e)) from None
    select = cfg.selection(data.task)[0]
    if why := undefined_metric(select, data.splits["valid"].labels, data.task):
        raise UsageError(f"--select_metric {select}: {why}; choose another")
    run = new_run_dir(Path(getattr(ns, "out", "runs")), name)  # only now: all checks passed
    print(f"run folder: {run}  (data: {data.source}, train/valid/test = "
          f"{'/'.join(str(len(data.splits[s])) for s in ('train', 'valid', 'test'))})", flush=True)
    results: list[tuple[int, FitResult]] = []
    seed_run = run
    try:
        for seed in seeds:
            seed_cfg = TrainConfig.from_dict({**cfg.to_dict(), "seed": seed})
            seed_run = run if len(seeds) == 1 else run / f"seed_{seed}"
            seed_run.mkdir(exist_ok=True)
            if len(seeds) > 1:
                print(f"-- seed {seed}", flush=True)
            result = run_one(seed_cfg, seed_run, data)
            results.append((seed, result))
            print(_seed_line(seed, result), flush=True)
    except KeyboardInterrupt:
        if len(seeds) > 1:
            with signals_held():
                write_json(run / "summary.json",
                           {**summarize(results, seeds), "interrupted": True})
        if (seed_run / "final.json").exists():
            status = json.loads((seed_run / "final.json").read_text()).get("status", "?")
            print(f"interrupted: the best weights so far and final.json (status {status}) are "
                  f"in {run}", file=sys.stderr, flush=True)
        else:  # stopped before training began: no weights, no record
            print(f"interrupted before training began (no final.json in {seed_run})",
                  file=sys.stderr, flush=True)
        return 130
    finished = sum(r.status in FINISHED for _, r in results)
    if len(seeds) > 1:
        summary = summarize(results, seeds)
        write_json(run / "summary.json", summary)
        print(f"mean ± std over {finished} of {len(seeds)} seeds "
              f"{summary['summarized_seeds']}:")
        for split in ("valid", "test"):
            print(f"  {split}: " + "  ".join(
                f"{k} {v['mean']:.4f}±{v['std']:.4f}" for k, v in summary[split].items()))
    print(f"results: {run}")
    return 0 if finished else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "synth": _synth, "convert": _convert,
                "predict": _predict, "robustness": _robustness}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m ucrn {{{'|'.join(commands)}}} [flags]  (-h for help)",
              file=sys.stderr)
        return 2
    return run_main(commands[argv[0]], argv[1:])


def _synth(argv: list[str]) -> int:
    from ucrn.convert import synth_main

    return synth_main(argv)


def _convert(argv: list[str]) -> int:
    from ucrn.convert import convert_main

    return convert_main(argv)


def _predict(argv: list[str]) -> int:
    from ucrn.predict import predict_main

    return predict_main(argv)


def _robustness(argv: list[str]) -> int:
    from ucrn.robustness import robustness_main

    return robustness_main(argv)
