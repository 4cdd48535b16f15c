"""run_search.py's flags: one frozen dataclass, the parser derived from it, and every check
that needs no Ray (one line, exit code 2, nothing written).

The validated `Flags` is saved in search.json, so `--resume` continues a search with
exactly its own settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from search.trackers import parse_trackers
from ucrn.config import DATASETS
from ucrn.data import DATASET_ALIASES, FORMATS, TARGETS
from ucrn.errors import OneLineParser, UsageError
from ucrn.fileio import check_name, is_uri, local_folder, normalize_uri, redact
from ucrn.metrics import metric_mode

EXECUTORS = ("auto", "train", "tune")
SEARCH_ALGS = ("tpe", "random", "gp")
ONE_EPOCH = "one-epoch"  # the 1-epoch baseline: search/schedulers.py
SCHEDULERS = ("asha", "fifo", ONE_EPOCH)
# values a saved search.json may hold (a search records the executor it resolved to; an
# older or hand-edited "auto" resolves as on the command line)
SAVED_CHOICES = {"executor": EXECUTORS, "search_alg": SEARCH_ALGS, "scheduler": SCHEDULERS,
                 "data_format": FORMATS, "target": TARGETS}
# how trials run, which a resumed search may change (a smaller machine, another cluster)
RESUME_MAY_CHANGE = ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures",
                     "trial_resources", "tracker")  # (trackers only watch: add or drop one)


def flag(default: Any, help: str, **argparse_kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kw})


@dataclass(frozen=True)
class Flags:
    """Every run_search.py flag (`--num-samples` is `num_samples`), as given or defaulted."""

    dataset: str | None = flag(None, f"{' | '.join(DATASETS)} (mosei = mosei_senti; default: "
                               "synthetic, or read off the files under --data-path)")
    data_path: str | None = flag(None, "the data file (MulT or MMSA pickle), a folder holding "
                                 "it, or a folder of train/valid/test.npz")
    data_format: str = flag("auto", f"{' | '.join(FORMATS)}: file layout (auto = told by the "
                            "files themselves)")
    aligned: bool = flag(False, "word-aligned files", action="store_true")
    target: str = flag("M", "labels to train on: M (multimodal) or CH-SIMS's T, A, V")
    preset: str = flag("tiny", "synthetic data preset (tiny, mosi, mosei, ...)")
    modalities: str = flag("lav", "subset of 'lav'")
    space: str | None = flag(None, "search space YAML (default: search/spaces/default.yaml)")
    num_samples: int = flag(20, "trials to run (TPE proposes from the 11th: the first 10 are "
                            "random, Optuna's start-up)")
    max_concurrent: int = flag(0, "trials at once (0 = as resources allow)")
    max_epochs: int = flag(4, "epochs per trial (ASHA's max_t)")
    grace_period: int = flag(1, "ASHA: epochs before a trial can be stopped")
    reduction_factor: float = flag(2.0, "ASHA reduction factor")
    brackets: int = flag(1, "ASHA: brackets (> 1 is asynchronous Hyperband: each bracket "
                         "starts stopping trials at a later rung)")
    keep: int = flag(3, "--scheduler one-epoch: configurations continued to --max-epochs "
                     "after every sampled one trained one epoch")
    metric: str = flag("auto", "validation metric to optimise, with its natural mode; auto = "
                       "MAE (sentiment) or loss (IEMOCAP)")
    cpus_per_trial: float = flag(1.0, "CPUs for each of the trial's workers (also its torch "
                                 "thread cap)")
    gpus_per_trial: float = flag(0.0, "GPUs for each of the trial's workers; 0.25 packs 4 "
                                 "trials on a GPU")
    workers_per_trial: int = flag(1, "Ray Train workers per trial (DDP when > 1): a trial takes "
                                  "this many times the CPUs and GPUs above")
    trial_resources: str | None = flag(None, 'extra Ray resources per trial, e.g. \'{"gpu_node"'
                                       ': 1}\' to pin trials to a node type', metavar="JSON")
    executor: str = flag("auto", "auto (tune for one worker, train for DDP) | train (Ray "
                         "Train per trial) | tune (the trial runs in its Tune process, reused "
                         "by the next trial)")
    max_failures: int = flag(2, "retries of a failed trial, from its checkpoint")
    storage: str = flag("ray_results", "results folder or URI (s3://..., shared on clusters)")
    name: str = flag("ucrn-search", "search name: results go to STORAGE/NAME")
    address: str | None = flag(None, "existing Ray cluster (host:port or auto); default: start one")
    resume: bool = flag(False, "continue the interrupted search STORAGE/NAME (or re-training, "
                        "with --retrain)", action="store_true")
    seed: int = flag(1234, "seed of the trials and of Optuna's sampler")
    retrain: str | None = flag(None, "re-train that search's best config once per --seeds and "
                               "test it", metavar="STORAGE/NAME")
    seeds: str = flag("1111,1112,1113,1114,1115", "seeds for --retrain")
    trial: str | None = flag(None, "with --retrain: this trial's config instead of the best")
    search_alg: str = flag("tpe", "how configurations are proposed: tpe (Optuna's TPE) | "
                           "random (Optuna's random sampler) | gp (Optuna's GPSampler)")
    scheduler: str = flag("asha", "asha (stop weak trials at rungs) | fifo (every trial runs "
                          "all its epochs) | one-epoch (every trial one epoch, then the "
                          "--keep best to the end)")
    multivariate: bool = flag(False, "TPE: model the parameters jointly (multivariate TPE, "
                              "Optuna 5's default) instead of one by one",
                              action="store_true")
    constant_liar: bool = flag(False, "TPE: treat running trials as if they had the worst "
                               "value seen, so parallel proposals spread out",
                               action="store_true")
    epoch_budget: int = flag(0, "stop the search once this many epochs have been trained in "
                             "all (0 = no budget: --num-samples decides)")
    warm_start: str | None = flag(None, "comma-separated earlier searches (STORAGE/NAME) whose "
                                  "finished trials seed the sampler", metavar="STORAGE/NAME")
    robustness_repeats: int = flag(3, "with --retrain: repeats of each random robustness "
                                   "condition scored on the test split (0 = none)")
    robust_metrics: bool = flag(False, "record robust_MAE (validation MAE with each modality "
                                "missing in turn) for every trial (implied by --metric "
                                "robust_MAE)", action="store_true")
    tracker: str | None = flag(None, "comma-separated experiment trackers for every trial's "
                               "epochs and config: tensorboard, mlflow, wandb (docs/"
                               "trackers.md)", metavar="LIST")

    def __post_init__(self) -> None:
        # auto: a one-worker trial runs in its Tune process (start-up 0.1 s in a reused one,
        # about 5 s in a new one, against about 20 s for Ray Train's controller and worker
        # group: docs/benchmarks.md); DDP needs Ray Train. Resolved here, so that
        # search.json, trials.parquet and every check see the executor that runs.
        # What was asked is kept beside it (not a field: never saved), so that a refusal
        # names the value the user typed.
        object.__setattr__(self, "_asked_executor", self.executor)
        if self.executor == "auto":
            object.__setattr__(self, "executor", auto_executor(self.workers_per_trial))

    @property
    def extra_resources(self) -> dict[str, float]:
        return parse_resources(self.trial_resources)

    def saved(self) -> dict[str, Any]:
        """What search.json keeps (everything but how this particular driver connects)."""
        return {k: v for k, v in asdict(self).items() if k not in ("resume", "address")}

    def resumed_from(self, saved: Any, where: str, given: set[str] = frozenset()) -> Flags:
        """The interrupted search's own flags. Flags given again on this command line may
        change how trials run (RESUME_MAY_CHANGE: resources, retries, the cluster), not
        what is searched: one line if they differ from the search's own."""
        if not isinstance(saved, dict):
            raise UsageError(f"{where}: 'flags' is not an object; the file is damaged")
        known = {f.name: f for f in fields(self)}
        kept = {}
        for key, value in saved.items():
            if key not in known or key in ("resume", "address", "retrain", "seeds", "trial",
                                           "robustness_repeats", "warm_start"):
                continue  # older or newer searches may carry other keys
            kept[key] = _typed(known[key], value, f"{where}: flags.{key}")
            choices = SAVED_CHOICES.get(key)
            if choices is not None and kept[key] not in choices:
                raise UsageError(f"{where}: flags.{key}={kept[key]!r}: expected one of "
                                 f"{', '.join(map(repr, choices))}; the file was edited or "
                                 f"is damaged")
        for key in given & set(kept):
            mine, shown = getattr(self, key), getattr(self, key)
            if key == "executor" and self._asked_executor == "auto":
                # auto as the resumed search's own workers make it, not this command line's
                workers = kept.get("workers_per_trial", self.workers_per_trial)
                mine = auto_executor(workers)
                shown = f"auto ({mine} for {workers} worker(s) per trial)"
            if key in RESUME_MAY_CHANGE:
                kept.pop(key)
            elif kept[key] != mine:
                raise UsageError(f"--{key.replace('_', '-')} {shown}: a resumed "
                                 f"search keeps its own ({kept[key]}); only "
                                 f"{', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)}"
                                 f" may change on --resume")
        return replace(self, **kept)


def auto_executor(workers_per_trial: int) -> str:
    """What `--executor auto` runs: Ray Train for DDP, the trial's own Tune process else."""
    return "train" if workers_per_trial > 1 else "tune"


def _typed(f, value: Any, where: str) -> Any:
    default = f.default if f.default is not MISSING else None
    if value is None:
        if default is None:
            return None
        raise UsageError(f"{where}=null: expected a value like {default!r}")
    kind = type(default) if default is not None else str
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{where}={value!r}: expected a value of type {kind.__name__}")
    return value


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """run_search.py's parser, one flag per Flags field (without defaults: to tell which
    flags were given)."""
    p = OneLineParser(prog="run_search.py",
                      description="Search UCRN hyperparameters with Ray Tune (Optuna TPE + ASHA).",
                      argument_default=None if defaults else argparse.SUPPRESS)
    for f in fields(Flags):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if meta.get("action") != "store_true" and f.default is not None:
            meta["type"] = type(f.default)  # int, float or str
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                       default=f.default if defaults else argparse.SUPPRESS,
                       help=help_text, **meta)
    return p


# flags that shape a search, meaningless for --retrain (which runs one config on seeds)
SEARCH_ONLY = ("space", "num_samples", "grace_period", "reduction_factor", "brackets", "keep",
               "search_alg", "scheduler", "constant_liar", "multivariate", "epoch_budget",
               "warm_start", "metric", "tracker")
ASHA_ONLY = ("grace_period", "reduction_factor", "brackets")


def check_given(fl: Flags, given: set[str]) -> None:
    """Flags given that would do nothing are one line, never silently ignored."""
    if fl.retrain:
        idle = [k for k in SEARCH_ONLY if k in given]
        if idle:
            raise UsageError(f"--{idle[0].replace('_', '-')}: a search flag; --retrain runs the "
                             f"chosen configuration on seeds (its flags: --seeds, --trial, "
                             f"--robustness-repeats and the resources)")
    elif fl.resume:
        return  # the search's own scheduler is known only from search.json: resumed_from
    elif fl.scheduler != "asha" and given & set(ASHA_ONLY):
        name = next(k for k in ASHA_ONLY if k in given).replace("_", "-")
        what = "stops no trial" if fl.scheduler == "fifo" else "stops trials by its own rule"
        raise UsageError(f"--{name}: an ASHA setting, with --scheduler {fl.scheduler} (which "
                         f"{what}); leave it out or use --scheduler asha")
    elif fl.scheduler != "one-epoch" and "keep" in given:
        raise UsageError(f"--keep: a --scheduler one-epoch setting, with --scheduler "
                         f"{fl.scheduler}; leave it out or use --scheduler one-epoch")


def parse_flags(argv: list[str] | None) -> tuple[Flags, set[str]]:
    """The flags, and the names of those given on the command line (not defaulted)."""
    ns = build_parser().parse_args(argv)
    given = build_parser(defaults=False).parse_args(argv)
    return Flags(**vars(ns)), set(vars(given))


# ---- checks before Ray -------------------------------------------------------------------

def check_flags(fl: Flags) -> None:
    rules = [
        (fl.num_samples >= 1, "--num-samples", fl.num_samples, "an integer >= 1"),
        (fl.max_concurrent >= 0, "--max-concurrent", fl.max_concurrent, ">= 0 (0 = auto)"),
        (fl.max_epochs >= 1, "--max-epochs", fl.max_epochs, "an integer >= 1"),
        (1 <= fl.grace_period <= fl.max_epochs, "--grace-period", fl.grace_period,
         f"between 1 and --max-epochs ({fl.max_epochs})"),
        (math.isfinite(fl.reduction_factor) and fl.reduction_factor > 1, "--reduction-factor",
         fl.reduction_factor, "> 1"),
        (math.isfinite(fl.cpus_per_trial) and fl.cpus_per_trial >= 0.01, "--cpus-per-trial",
         fl.cpus_per_trial, "a number >= 0.01"),
        (math.isfinite(fl.gpus_per_trial) and (fl.gpus_per_trial == 0
                                               or fl.gpus_per_trial >= 0.01),
         "--gpus-per-trial", fl.gpus_per_trial, "0 or a number >= 0.01"),
        (fl.workers_per_trial >= 1, "--workers-per-trial", fl.workers_per_trial,
         "an integer >= 1"),
        (fl.executor in EXECUTORS, "--executor", fl.executor, "auto, train or tune"),
        (fl.max_failures >= 0, "--max-failures", fl.max_failures, ">= 0"),
        (0 <= fl.seed < 2**63, "--seed", fl.seed, "an integer in 0..2**63-1"),
        (0 <= fl.robustness_repeats <= 100, "--robustness-repeats", fl.robustness_repeats,
         "0 (none) to 100"),
        (fl.search_alg in SEARCH_ALGS, "--search-alg", fl.search_alg, " or ".join(SEARCH_ALGS)),
        (fl.scheduler in SCHEDULERS, "--scheduler", fl.scheduler, " or ".join(SCHEDULERS)),
        (fl.epoch_budget >= 0, "--epoch-budget", fl.epoch_budget, ">= 0 (0 = none)"),
        (not (fl.constant_liar and fl.search_alg != "tpe"), "--constant-liar", "with "
         f"--search-alg {fl.search_alg}", "--search-alg tpe"),
        (not (fl.multivariate and fl.search_alg != "tpe"), "--multivariate", "with "
         f"--search-alg {fl.search_alg}", "--search-alg tpe"),
        (1 <= fl.brackets <= 8, "--brackets", fl.brackets, "an integer from 1 to 8"),
        (fl.keep >= 1, "--keep", fl.keep, "an integer >= 1"),
        (not (fl.warm_start and fl.resume), "--warm-start", "with --resume",
         "a new search (a resumed one keeps its own sampler state)"),
        (fl.dataset is None or fl.dataset in (*DATASETS, *DATASET_ALIASES), "--dataset",
         fl.dataset, f"one of {', '.join(DATASETS)} (or mosei)"),
        (fl.data_format in FORMATS, "--data-format", fl.data_format, " or ".join(FORMATS)),
        (fl.target in TARGETS, "--target", fl.target, " or ".join(TARGETS)),
    ]
    for ok, name, value, expected in rules:
        if not ok:
            shown = "''" if value == "" else value  # an empty value, visibly
            raise UsageError(f"{name} {shown}: expected {expected}")
    if fl.scheduler == ONE_EPOCH:
        if fl.max_epochs < 2:
            raise UsageError(f"--scheduler one-epoch with --max-epochs {fl.max_epochs}: the kept "
                             f"configurations would only repeat their first epoch; expected "
                             f"--max-epochs >= 2")
        try:
            one_epoch_plan(fl.max_epochs, fl.keep, fl.epoch_budget, fl.num_samples)
        except ValueError as e:
            raise UsageError(str(e)) from None
    rungs = asha_rungs(fl.max_epochs, fl.grace_period, fl.reduction_factor)
    if fl.scheduler == "asha" and fl.brackets > rungs + 1:
        raise UsageError(f"--brackets {fl.brackets}: with --max-epochs {fl.max_epochs}, "
                         f"--grace-period {fl.grace_period} and --reduction-factor "
                         f"{fl.reduction_factor:g} ASHA has {rungs} rung(s), room for at most "
                         f"{rungs + 1} bracket(s) (the last stops no trial)")
    try:
        check_name(fl.name, "--name")
    except ValueError as e:
        raise UsageError(str(e)) from None
    fl.extra_resources  # noqa: B018 - parses --trial-resources, one line if malformed
    parse_trackers(fl.tracker)  # names only; packages: search.trackers.check_trackers
    if fl.executor == "tune" and fl.workers_per_trial > 1:
        raise UsageError("--workers-per-trial > 1 needs --executor train (DDP runs on Ray Train)")
    if fl.executor == "train" and fl.cpus_per_trial <= 0.1:
        why = ("--executor train" if getattr(fl, "_asked_executor", "train") == "train" else
               f"--workers-per-trial {fl.workers_per_trial} (DDP, which --executor auto runs "
               f"on Ray Train)")
        raise UsageError(f"--cpus-per-trial {fl.cpus_per_trial}: {why} needs > 0.1 "
                         "(0.1 CPU is kept for the trial's driver)")
    if fl.workers_per_trial > 1 and 0 < fl.gpus_per_trial < 1:
        raise UsageError(f"--workers-per-trial {fl.workers_per_trial} with --gpus-per-trial "
                         f"{fl.gpus_per_trial:g}: DDP workers need a whole GPU each (nccl "
                         "refuses two ranks on one device); use --gpus-per-trial 1, or "
                         "--workers-per-trial 1 to share a GPU between trials")
    if fl.gpus_per_trial > 1:
        raise UsageError(f"--gpus-per-trial {fl.gpus_per_trial}: a worker trains on one device; "
                         f"use --gpus-per-trial 1 --workers-per-trial {math.ceil(fl.gpus_per_trial)}"
                         " for DDP over several GPUs")
    try:
        if fl.metric != "auto":
            metric_mode(fl.metric)
    except ValueError as e:
        raise UsageError(f"--metric {fl.metric}: {e}") from None
    if fl.gpus_per_trial > 0 and fl.address is None:
        import torch

        if torch.cuda.device_count() == 0:
            raise UsageError(f"--gpus-per-trial {fl.gpus_per_trial}: this machine has no GPU "
                             "(use 0, or --address of a cluster with GPUs)")


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: float) -> int:
    """How many rungs ASHA's first bracket has: epochs grace * rf^k below max_epochs."""
    if not (math.isfinite(reduction_factor) and reduction_factor > 1 and grace_period >= 1):
        return 0
    k, t = 0, float(grace_period)
    while t < max_epochs:
        k, t = k + 1, t * reduction_factor
    return k


def one_epoch_plan(max_epochs: int, keep: int, epoch_budget: int, num_samples: int) -> int:
    """How many configurations get their first epoch under --scheduler one-epoch: the
    trials --num-samples allows besides the kept ones, and no more than the epoch budget
    leaves after the kept ones' full runs. ValueError when fewer than --keep are left."""
    first, why = num_samples - keep, f"--num-samples {num_samples} leaves"
    if epoch_budget and epoch_budget - keep * max_epochs < first:
        first = epoch_budget - keep * max_epochs
        why = (f"--epoch-budget {epoch_budget}, less the {keep} kept trials' "
               f"{keep * max_epochs} epochs, leaves")
    if first < keep:
        raise ValueError(f"--keep {keep}: {why} {first} first-epoch trials; expected at "
                         f"least {keep} (raise the budget, or lower --keep or --max-epochs)")
    return first


def parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        res = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise UsageError(f"--trial-resources {text}: expected JSON like '{{\"name\": 1}}'") from None
    if not isinstance(res, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in res.values()):
        raise UsageError(f"--trial-resources {text}: expected a JSON object of positive numbers")
    for key in ("CPU", "GPU", "memory"):
        if key in res:
            raise UsageError(f"--trial-resources: {key} is set by --{key.lower()}s-per-trial")
    return {str(k): float(v) for k, v in res.items()}


def check_storage(storage: str) -> str:
    """An absolute local path (writable: probed in it, or in its nearest existing parent,
    since the run makes it; a refused run leaves no folder behind) or a URI (probed:
    written to, in bounded time); returns what Ray should get."""
    if is_uri(storage):
        from search.objstore import check_remote

        check_remote(storage)
        try:
            return normalize_uri(storage)  # one spelling, in search.json too
        except ValueError as e:
            raise UsageError(f"--storage {e}") from None
    try:
        path = local_folder(storage)
    except ValueError as e:
        raise UsageError(f"--storage {e}") from None
    there = path
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        what = "is a file" if there == path else f"is under {there}, a file"
        raise UsageError(f"--storage {redact(storage)}: {what}; expected a folder")
    try:
        probe = there / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--storage {redact(storage)}: not writable ({e.strerror or e})"
                         ) from None
    return str(path)


def check_address(address: str | None) -> None:
    """Fail within seconds when nobody answers, instead of Ray's long retries. `auto` is
    what RAY_ADDRESS or Ray's pointer file names (a killed cluster leaves that file)."""
    if address is None or address.startswith("ray://"):
        return
    if address == "auto":
        pointer = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
        named = os.environ.get("RAY_ADDRESS", "").strip()
        source = "RAY_ADDRESS"
        if not named:
            try:
                named, source = pointer.read_text().strip(), str(pointer)
            except OSError:
                named = ""
        if not named:
            raise UsageError("--address auto: no running Ray cluster found (RAY_ADDRESS unset, "
                             f"no {pointer}); start one with `ray start --head` or give host:port")
        if "://" in named:
            return
        try:
            check_address(named)
        except UsageError:
            raise UsageError(f"--address auto: {named} (from {source}) does not answer; a "
                             f"cluster stopped without cleaning up leaves that behind: give "
                             f"host:port, or omit --address for a local Ray") from None
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


def resolve_metric(fl: Flags) -> str:
    """`auto` as the task the flags name: loss for IEMOCAP, MAE for sentiment (a synthetic
    file's task is checked once it is loaded: check_metric_task)."""
    if fl.metric != "auto":
        return fl.metric
    from ucrn.data import PRESETS

    iemocap = fl.dataset == "iemocap" or (
        (fl.dataset in (None, "synthetic")) and fl.data_path is None
        and PRESETS.get(fl.preset, {}).get("task") == "iemocap")
    return "loss" if iemocap else "MAE"


def check_metric_task(metric: str, task: str, valid_labels: Any = None) -> None:
    """A metric the data's task has (every IEMOCAP trial failed on MAE before), and that
    the validation labels can define (Corr of constant labels is NaN for every trial)."""
    from ucrn.metrics import ROBUST_METRICS, TASK_METRICS, undefined_metric

    fits = ("loss", *TASK_METRICS[task], *(ROBUST_METRICS if task != "iemocap" else ()))
    if metric not in fits:
        fit = ", ".join(fits[:4]) + ", ..."
        raise UsageError(f"--metric {metric}: the data's task is {task}, which has no "
                         f"{metric}; use {fit} (or auto)")
    why = undefined_metric(metric, valid_labels, task) if valid_labels is not None else None
    if why:
        raise UsageError(f"--metric {metric}: {why}; choose another --metric")
