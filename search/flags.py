"""run_search.py's flags and everything checked before Ray starts: one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
from pathlib import Path

from ucrn.metrics import metric_mode

EXECUTORS = ("train", "tune")


class UsageError(Exception):
    """A bad flag or input: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run_search.py", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--dataset", default="synthetic", help="synthetic | mosi | mosei_senti | iemocap")
    a("--data-path", default=None, help="folder with the MulT pickle (or the file)")
    a("--aligned", action="store_true", help="word-aligned MulT files")
    a("--preset", default="tiny", help="synthetic data preset (tiny, mosi, mosei, ...)")
    a("--modalities", default="lav", help="subset of 'lav'")
    a("--space", default=None, help="search space YAML (default: search/spaces/default.yaml)")
    a("--num-samples", type=int, default=8, help="trials to run")
    a("--max-concurrent", type=int, default=0, help="trials at once (0 = as resources allow)")
    a("--max-epochs", type=int, default=4, help="epochs per trial (ASHA's max_t)")
    a("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    a("--reduction-factor", type=float, default=2, help="ASHA reduction factor")
    a("--metric", default="MAE", help="validation metric to optimise (mode is the natural one)")
    a("--cpus-per-trial", type=float, default=1.0,
      help="CPUs for each of the trial's workers (also its torch thread cap)")
    a("--gpus-per-trial", type=float, default=0.0,
      help="GPUs for each of the trial's workers; 0.25 packs 4 trials on a GPU")
    a("--workers-per-trial", type=int, default=1,
      help="Ray Train workers per trial (DDP when > 1): a trial takes this many times the "
           "CPUs and GPUs above")
    a("--trial-resources", default=None, metavar="JSON",
      help='extra Ray resources per trial, e.g. \'{"gpu_node": 1}\' to pin trials to a node type')
    a("--executor", default="train", help="train (Ray Train per trial) | tune (plain Tune function)")
    a("--max-failures", type=int, default=2, help="retries of a failed trial, from its checkpoint")
    a("--storage", default="ray_results", help="results folder or URI (s3://..., shared on clusters)")
    a("--name", default="ucrn-search", help="search name: results go to STORAGE/NAME")
    a("--address", default=None, help="existing Ray cluster (host:port or auto); default: start one")
    a("--resume", action="store_true", help="continue the interrupted search STORAGE/NAME")
    a("--seed", type=int, default=1234, help="seed of the trials and of Optuna's sampler")
    a("--retrain", default=None, metavar="STORAGE/NAME",
      help="re-train that search's best config once per --seeds and test it")
    a("--seeds", default="1111,1112,1113,1114,1115", help="seeds for --retrain")
    a("--trial", default=None, help="with --retrain: this trial's config instead of the best")
    return p


# ---- validation, before Ray --------------------------------------------------------------

def check_flags(ns: argparse.Namespace) -> None:
    rules = [
        (ns.num_samples >= 1, "--num-samples", ns.num_samples, "an integer >= 1"),
        (ns.max_concurrent >= 0, "--max-concurrent", ns.max_concurrent, ">= 0 (0 = auto)"),
        (ns.max_epochs >= 1, "--max-epochs", ns.max_epochs, "an integer >= 1"),
        (1 <= ns.grace_period <= ns.max_epochs, "--grace-period", ns.grace_period,
         f"between 1 and --max-epochs ({ns.max_epochs})"),
        (ns.reduction_factor > 1, "--reduction-factor", ns.reduction_factor, "> 1"),
        (math.isfinite(ns.cpus_per_trial) and ns.cpus_per_trial > 0, "--cpus-per-trial",
         ns.cpus_per_trial, "a number > 0"),
        (math.isfinite(ns.gpus_per_trial) and ns.gpus_per_trial >= 0, "--gpus-per-trial",
         ns.gpus_per_trial, "a number >= 0"),
        (ns.workers_per_trial >= 1, "--workers-per-trial", ns.workers_per_trial, "an integer >= 1"),
        (ns.executor in EXECUTORS, "--executor", ns.executor, "train or tune"),
        (ns.max_failures >= 0, "--max-failures", ns.max_failures, ">= 0"),
    ]
    for ok, flag, value, expected in rules:
        if not ok:
            raise UsageError(f"{flag} {value}: expected {expected}")
    ns.extra_resources = parse_resources(ns.trial_resources)
    if ns.executor == "tune" and ns.workers_per_trial > 1:
        raise UsageError("--workers-per-trial > 1 needs --executor train (DDP runs on Ray Train)")
    if ns.executor == "train" and ns.cpus_per_trial <= 0.1:
        raise UsageError(f"--cpus-per-trial {ns.cpus_per_trial}: --executor train needs > 0.1 "
                         "(0.1 CPU goes to the trial's driver)")
    if ns.gpus_per_trial > 1:
        raise UsageError(f"--gpus-per-trial {ns.gpus_per_trial}: a worker trains on one device; "
                         f"use --gpus-per-trial 1 --workers-per-trial {math.ceil(ns.gpus_per_trial)}"
                         " for DDP over several GPUs")
    try:
        metric_mode(ns.metric)
    except ValueError as e:
        raise UsageError(f"--metric {ns.metric}: {e}") from None
    if ns.gpus_per_trial > 0 and ns.address is None:
        import torch

        if torch.cuda.device_count() == 0:
            raise UsageError(f"--gpus-per-trial {ns.gpus_per_trial}: this machine has no GPU "
                             "(use 0, or --address of a cluster with GPUs)")


def parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        res = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"--trial-resources {text}: expected JSON like '{{\"name\": 1}}'") from None
    if not isinstance(res, dict) or not all(
            isinstance(v, (int, float)) and v > 0 for v in res.values()):
        raise UsageError(f"--trial-resources {text}: expected a JSON object of positive numbers")
    for key in ("CPU", "GPU", "memory"):
        if key in res:
            raise UsageError(f"--trial-resources: {key} is set by --{key.lower()}s-per-trial")
    return {str(k): float(v) for k, v in res.items()}


def check_storage(storage: str) -> str:
    """An absolute local path (created, writable) or a URI; returns what Ray should get."""
    if "://" in storage and not storage.startswith("file://"):
        return storage
    path = Path(storage.removeprefix("file://")).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--storage {storage}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--storage {storage}: not writable ({e.strerror or e})") from None
    return str(path)


def check_address(address: str | None) -> None:
    """Fail within seconds when nobody answers, instead of Ray's long retries."""
    if address is None or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected host:port, auto or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError:
        raise UsageError(f"--address {address}: nobody answers there (waited 5 s); "
                         "is the Ray head running?") from None
