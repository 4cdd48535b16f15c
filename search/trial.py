"""What runs inside a trial: `ucrn.train.fit` plus reporting and checkpoints.

Two executors share one body (`run_body`):
- `train`: the Tune trial builds a Ray Train `TorchTrainer`; its workers run the body and
  report with `ray.train.report`, forwarded to Tune by `TuneReportCallback`. Worker
  deaths are retried by Ray Train from the last checkpoint; `workers > 1` is DDP.
- `tune`: the Tune trial runs the body itself and reports with `tune.report`; no Ray
  Train processes, so start-up is a few seconds instead of tens.

Configs and settings (`search.settings.TrialSettings`) reach the workers as arguments,
never as module globals or environment variables.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from search.dataload import fetch
from search.objstore import ray_storage
from search.settings import TrialSettings
from ucrn.config import TrainConfig
from ucrn.errors import UsageError
from ucrn.safeload.checkpoints import load_checkpoint
from ucrn.train import fit

STATE_FILE = "state.pt"
REPLAYED_EPOCH = "replayed_epoch"  # the epoch of a report re-sent from a checkpoint
Report = Callable[[dict[str, Any], str | None], None]


def _node_info() -> dict[str, Any]:
    node_id = ""
    if ray.is_initialized():  # asking outside Ray would start (or hang joining) a cluster
        try:
            node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - a worker without a node id: leave it empty
            node_id = ""
    return {"node": socket.gethostname(), "node_id": node_id}


SaveModel = Callable[[dict[str, Any], Any, Any], str]  # (bundle, trainer, data) -> location


def run_body(config: dict[str, Any], data: Any, report: Report, checkpoint_dir: str | None,
             rank: int = 0, save_model: SaveModel | None = None, fault: str = "") -> None:
    """Train one config, reporting every epoch with a resumable checkpoint.

    On resume (checkpoint_dir given) the checkpoint's history is reported again first:
    the driver upserts rows by (trial, epoch), so an epoch whose report was lost when
    the driver died is recovered and none is duplicated. Those reports carry the epoch as
    REPLAYED_EPOCH, not `epoch`, the scheduler's clock: a restored ASHA would otherwise
    judge a long-running trial again at its first rung, by its first epoch. A diverged run ends with one
    report flagged `diverged`. With `save_model`, the final report also carries the
    selected weights' location and the test metrics (re-training).
    """
    cfg = TrainConfig.from_dict(config)
    t0 = time.perf_counter()
    resume = None
    if checkpoint_dir is not None:
        # the safe loader: a regular file within the size cap, torch's weights-only
        # unpickler, one line naming the file (a FIFO put there hung the trial for good)
        resume = load_checkpoint(Path(checkpoint_dir) / STATE_FILE, what="resume state")
    node = _node_info()
    n_train = len(data.splits["train"])
    speeds: list[float] = []
    last: dict[str, Any] = {}

    def extras(rec: dict[str, Any], trainer: Any) -> dict[str, Any]:
        speeds.append(n_train / max(rec.get("train_seconds", rec["seconds"]), 1e-9))
        return {**node, "diverged": 0.0, "replay": 0.0,
                "samples_per_s": statistics.median(speeds),
                **trainer.gpu_memory.read(),  # this trial's peaks (reset when it started)
                "wall_seconds": time.perf_counter() - t0, "ended_at": time.time()}

    if fault:
        raise RuntimeError(f"injected fault ({fault})")
    if resume is not None:  # under REPLAYED_EPOCH, not `epoch`: ASHA must not judge it again
        for rec in resume["history"]:
            replayed = {k: v for k, v in rec.items() if k != "epoch"}
            report({**replayed, REPLAYED_EPOCH: rec["epoch"], **node, "diverged": 0.0,
                    "replay": 1.0}, None)

    def on_epoch(epoch: int, rec: dict[str, Any], trainer) -> None:
        metrics = {**rec, **extras(rec, trainer)}
        last.update(metrics)
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save(trainer.checkpoint(), Path(d) / STATE_FILE)
            report(metrics, d if rank == 0 else None)

    result = fit(cfg, data, on_epoch=on_epoch, resume=resume)
    if result.status == "diverged":
        metric, mode = cfg.selection(data.task)  # Tune requires the metric in every report
        final = dict(last) if last else {"epoch": 0, **node,
                                         metric: math.inf if mode == "min" else -math.inf}
        report({**final, "diverged": 1.0, "replay": 0.0}, None)
    elif save_model is not None and result.model_state is not None:
        location = ""
        if rank == 0:  # every rank reports (a Ray Train report is a barrier); rank 0 saves
            mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
            location = save_model({"state_dict": result.model_state,
                                   "model_config": mcfg.to_dict(), "config": cfg.to_dict(),
                                   "epoch": result.best_epoch}, result.trainer, data)
        final = {**result.best, **{f"test_{k}": v for k, v in result.test.items()},
                 "best_epoch": result.best_epoch, "model_checkpoint": location, "final": 1.0,
                 "diverged": 0.0, "replay": 0.0, **node}
        final["epoch"] = result.history[-1]["epoch"]
        report(final, None)


# ---- executor "tune": the body runs in the Tune trial process --------------------------

def tune_trial(config: dict[str, Any], data_box: list, settings: TrialSettings) -> None:
    from ray import tune

    cfg = settings.config(config)
    _run_from(tune.get_checkpoint(), cfg, fetch(data_box[0]),
              _reporter(tune.report, tune.Checkpoint), rank=0,
              save_model=_model_saver(settings, cfg), fault=settings.injected_fault(cfg))


def _reporter(report_fn: Callable, checkpoint_cls: Any) -> Report:
    def report(metrics: dict[str, Any], d: str | None) -> None:
        if d is None:
            report_fn(metrics)
        else:
            report_fn(metrics, checkpoint=checkpoint_cls.from_directory(d))

    return report


def _run_from(ckpt: Any, cfg: dict[str, Any], data: Any, report: Report, rank: int,
              save_model: SaveModel | None, fault: str) -> None:
    """run_body from a Ray checkpoint (Tune's or Train's), or from scratch."""
    if ckpt is None:
        run_body(cfg, data, report, None, rank=rank, save_model=save_model, fault=fault)
        return
    with ckpt.as_directory() as d:
        run_body(cfg, data, report, d, rank=rank, save_model=save_model, fault=fault)


def newer_checkpoint(fs: Any, path: str) -> str | None:
    """The trial's newest whole checkpoint folder after `path` when `path` is gone or not
    whole (the one Tune meant to restore was superseded and deleted), else None. Whole: it
    holds STATE_FILE (on an object store a folder can exist, as a marker, before its file
    is uploaded or after it was deleted)."""
    import pyarrow.fs as pafs

    def whole(folder: str) -> bool:
        return fs.get_file_info(f"{folder}/{STATE_FILE}").type == pafs.FileType.File

    if whole(path.rstrip("/")):
        return None
    parent, _, name = path.rstrip("/").rpartition("/")
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    later = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name > name),
                   reverse=True)
    return next((f"{parent}/{n}" for n in later if whole(f"{parent}/{n}")), None)


def restorable(fn: Callable, name: str) -> type:
    """`fn` as a Tune trainable that restores from the trial's newest checkpoint when the one
    Tune's saved state names is gone.

    Why: Tune deletes a trial's older checkpoint as soon as a newer one is registered, but
    uploads its own state to a remote store only every few seconds; a driver killed in
    between leaves a state that names a deleted checkpoint, and `--resume` then failed that
    trial ("does not exist on storage anymore"). The newer checkpoint holds the trial's
    history, which run_body reports again, so nothing is lost or counted twice."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.trainable.function_trainable import wrap_function

    class Restorable(wrap_function(fn, name=name)):
        def restore(self, checkpoint_path: Any) -> Any:
            result = checkpoint_path
            ckpt = getattr(result, "checkpoint", result)
            if isinstance(ckpt, Checkpoint):
                later = newer_checkpoint(ckpt.filesystem, ckpt.path)
                if later is not None:
                    result = _TrainingResult(
                        checkpoint=Checkpoint(later, filesystem=ckpt.filesystem),
                        metrics=getattr(result, "metrics", {}))
            return super().restore(result)

    Restorable.__name__ = Restorable.__qualname__ = name
    return Restorable


# ---- executor "train": a Ray Train run per Tune trial ----------------------------------

def train_worker(loop_config: dict[str, Any]) -> None:
    """Per-worker loop of the TorchTrainer (rank 0 checkpoints; all ranks report)."""
    import ray.train
    import ray.train.torch

    settings: TrialSettings = loop_config["settings"]
    cfg = dict(loop_config["config"])
    if settings.gpus_per_worker > 0:
        cfg["device"] = str(ray.train.torch.get_device())
    _run_from(ray.train.get_checkpoint(), cfg, fetch(loop_config["data_box"][0]),
              _reporter(ray.train.report, ray.train.Checkpoint),
              rank=ray.train.get_context().get_world_rank(),
              save_model=_model_saver(settings, cfg), fault=settings.injected_fault(cfg))


def train_trial(config: dict[str, Any], data_box: list, settings: TrialSettings) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    workers, gpus = settings.workers, settings.gpus_per_worker
    per_worker = {"CPU": settings.cpus_per_worker,
                  **{k: v / workers for k, v in settings.extra_resources.items()}}
    if gpus > 0:
        per_worker["GPU"] = gpus
    trainer = _without_group_cleaner(TorchTrainer)(
        train_worker,
        train_loop_config={"config": settings.config(config), "data_box": data_box,
                           "settings": settings},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # stable: a retried or restored trial resumes its own run
            **ray_storage(settings.train_storage),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def _without_group_cleaner(trainer_cls: type) -> type:
    """The trainer without Ray Train's placement-group cleaner: a detached actor per run
    (a process of about 200 MB) that asks the dashboard whether the run's controller
    lives, to remove its worker group's placement group once it does not. Without a
    dashboard it never learns that: each trial's cleaner process outlived the search. The
    driver removes those groups itself, with or without a dashboard (search.groups). A
    Ray without this callback gets the trainer as it is."""

    class Trainer(trainer_cls):
        def _create_default_callbacks(self) -> list:
            return [c for c in super()._create_default_callbacks()
                    if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return Trainer


def _model_saver(settings: TrialSettings, cfg: dict[str, Any]) -> SaveModel | None:
    """Re-training keeps each seed's selected weights in the results storage, and scores
    them under missing and noisy inputs (robustness.parquet) while they are in memory."""
    if not settings.save_models:
        return None

    def save(bundle: dict[str, Any], trainer: Any, data: Any) -> str:
        import io

        from search.results import ResultsStore

        buf = io.BytesIO()
        torch.save(bundle, buf)
        store = ResultsStore(settings.results_uri)
        location = store.write_bytes(retrain_key(settings.retrain_of, cfg["seed"],
                                                 "checkpoint.pt"), buf.getvalue())
        if settings.robustness_repeats > 0:  # an extra: its failure never loses the seed
            try:
                from ucrn.robustness import robustness_rows

                rows = robustness_rows(trainer.model, data, ("test",),
                                       settings.robustness_repeats, seed=int(cfg["seed"]),
                                       device=trainer.device, autocast=trainer.autocast_dtype)
                write_robustness(store, settings.results_uri, settings.retrain_of,
                                 trainer.cfg.to_dict(), rows)
            except Exception as e:  # noqa: BLE001 - said in the log and in the seed's report
                print(f"warning: seed {cfg['seed']}: robustness rows not written "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]})", flush=True)
        return location

    return save


def write_robustness(store: Any, search: str, trial_id: str, config: dict[str, Any],
                     rows: list[dict[str, Any]]) -> None:
    """A re-trained seed's robustness rows (ucrn.robustness) with the search, the trial and
    the config, as one file of robustness.parquet."""
    from search.results import ROBUSTNESS

    full = [{"search": search, "trial_id": trial_id, **row, **config} for row in rows]
    store.write_rows(ROBUSTNESS, retrain_key(trial_id, int(config["seed"])), full)


def retrain_key(trial_id: str, seed: int, leaf: str = "") -> str:
    """Where a re-training run of `trial_id` ("best" or a trial id) with `seed` keeps its
    checkpoint (leaf given) or its row (retrain.parquet/<key>.parquet)."""
    key = f"{trial_id}-seed_{seed}"
    return f"retrain/{key}/{leaf}" if leaf else key


# How often Ray Train's controller collects its workers' reports (Ray's default: 2 s). A
# worker's report waits in a queue of one until then, so with the default no epoch of the
# `train` executor took under 2 s: a 0.25-s epoch of a small model took 2.0 s.
TRAIN_POLL_S = "0.2"
# what the environment may set instead: below, the controller polls busily; above, a
# report waits that long (1e6: no epoch ever arrived), or Ray's timer overflows (1e308)
TRAIN_POLL_RANGE = (0.01, 60.0)


def trial_env(threads: int) -> dict[str, str]:
    """Environment for trial processes: thread caps, Ray Train's preemption watcher off
    (it polls node drain state; useless off spot instances and it slows start-up), and its
    controller's poll every TRAIN_POLL_S unless the environment sets one."""
    poll = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
    try:
        ok = TRAIN_POLL_RANGE[0] <= float(poll) <= TRAIN_POLL_RANGE[1]
    except ValueError:
        ok = False
    if not ok:  # Ray Train's controller fails on it, or holds every epoch that long
        raise UsageError(f"environment variable RAY_TRAIN_HEALTH_CHECK_INTERVAL_S={poll!r}: "
                         f"expected seconds from {TRAIN_POLL_RANGE[0]:g} to "
                         f"{TRAIN_POLL_RANGE[1]:g} (default {TRAIN_POLL_S})")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": poll,
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),
                                                       str(Path(__file__).resolve().parents[1]))
                                          if p)}
