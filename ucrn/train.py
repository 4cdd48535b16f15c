"""Train one UCRN configuration: no Ray, no cluster.

`fit(config, data)` is the whole trial. The search (search/) wraps it and uses the
`on_epoch` hook to report metrics and save checkpoints; the CLI writes a run folder.
Selection (best epoch, LR schedule, early stopping) sees the validation split only;
the test split is evaluated once, for the selected weights.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ucrn.data import MultData, Split
from ucrn.losses import mjs_divergence
from ucrn.metrics import iemocap_metrics, metric_mode, regression_metrics
from ucrn.model import UCRN, UCRNConfig

OPTIMIZERS = ("Adam", "AdamW", "SGD")


@dataclass
class TrainConfig:
    """Everything one trial needs, flat, so that a search space, a CLI and a saved
    best_config.json all use the same names."""

    # data
    dataset: str = "synthetic"
    data_path: str | None = None
    aligned: bool = False
    preset: str = "tiny"  # synthetic only
    data_seed: int = 0  # synthetic only
    # model (see UCRNConfig)
    modalities: str = "lav"
    d_model: int = 30
    heads: int = 3
    layers: int = 5
    temp_proj: int = 1
    causal: bool = True
    positional: str = "none"
    embed_dropout: float = 0.25
    attn_dropout: float = 0.1
    attn_dropout_a: float = 0.0
    attn_dropout_v: float = 0.0
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    out_dropout: float = 0.5
    # optimisation
    lr: float = 1e-3
    batch_size: int = 32
    num_epochs: int = 40
    optim: str = "Adam"
    weight_decay: float = 0.0
    clip: float = 0.8  # gradient-norm clip; 0 = off
    when: int = 20  # ReduceLROnPlateau patience (epochs)
    lr_factor: float = 0.1
    jsd_weight: float = 1.0  # weight of the MJS regulariser; 0 switches it off
    mjs: str = "jsd"  # "jsd" (spec) | "authors" (their code, for reproduction)
    patience: int = 0  # early stopping on the selection metric; 0 = off
    # run
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    select_metric: str = "auto"  # auto = MAE (regression) or loss (iemocap)
    eval_batch_size: int = 512

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a dict, refusing unknown keys and coercing JSON/YAML scalars."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{where}: unknown key {key!r}{hint}")
            kwargs[key] = _coerce(key, value, cls.__dataclass_fields__[key].default, where)
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, where: str = "config") -> None:
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.num_epochs >= 1, "num_epochs", "an integer >= 1"),
            (self.optim in OPTIMIZERS, "optim", f"one of {', '.join(OPTIMIZERS)}"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.clip >= 0, "clip", ">= 0 (0 = off)"),
            (self.when >= 1, "when", "an integer >= 1"),
            (0 < self.lr_factor < 1, "lr_factor", "in (0, 1)"),
            (self.jsd_weight >= 0 and math.isfinite(self.jsd_weight), "jsd_weight", ">= 0"),
            (self.mjs in ("jsd", "authors"), "mjs", "'jsd' or 'authors'"),
            (self.patience >= 0, "patience", ">= 0 (0 = off)"),
            (self.threads >= 0, "threads", ">= 0 (0 = torch default)"),
            (self.amp in ("auto", "bf16", "off"), "amp", "auto, bf16 or off"),
            (self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"{where}: {name}={getattr(self, name)!r}: expected {expected}")
        if self.select_metric != "auto":
            try:
                metric_mode(self.select_metric)
            except ValueError as e:
                raise ValueError(f"{where}: select_metric: {e}") from None
        try:  # model shape rules, independent of the data's dims
            self.model_config((1, 1, 1), (1, 1, 1), 1)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def model_config(self, input_dims, seq_lens, output_dim: int) -> UCRNConfig:
        names = {f.name for f in fields(UCRNConfig)} - {"input_dims", "seq_lens", "output_dim"}
        kw = {n: getattr(self, n) for n in names if hasattr(self, n)}
        return UCRNConfig(input_dims=tuple(input_dims), seq_lens=tuple(seq_lens),
                          output_dim=output_dim, **kw)

    def selection(self, task: str) -> tuple[str, str]:
        """(metric, mode) used to pick the best epoch."""
        name = self.select_metric
        if name == "auto":
            name = "loss" if task == "iemocap" else "MAE"
        return name, metric_mode(name)


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise ValueError(f"{where}: {key}={value!r}: expected a value of type {kind}") from None
    return value


@dataclass
class FitResult:
    config: dict[str, Any]
    status: str  # completed | stopped (by the caller or early stopping) | diverged
    best_epoch: int
    best: dict[str, float]  # validation record of the best epoch
    test: dict[str, float]  # test metrics of the best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)
    model_state: dict[str, Tensor] | None = None  # best weights
    n_params: int = 0
    seconds: float = 0.0


@dataclass
class DeviceSplit:
    """One split as tensors on the training device; batches are index selects."""

    inputs: tuple[Tensor | None, Tensor | None, Tensor | None]
    labels: Tensor
    n: int

    @classmethod
    def from_split(cls, split: Split, modalities: str, task: str, device: torch.device):
        def put(a: np.ndarray, key: str) -> Tensor | None:
            return torch.as_tensor(a, device=device) if key in modalities else None

        labels = torch.as_tensor(split.labels, device=device)
        labels = labels.long() if task == "iemocap" else labels.float().view(-1, 1)
        return cls((put(split.text, "l"), put(split.audio, "a"), put(split.vision, "v")),
                   labels, len(split))

    def batch(self, idx: Tensor) -> tuple[tuple[Tensor | None, ...], Tensor]:
        return tuple(x.index_select(0, idx) if x is not None else None
                     for x in self.inputs), self.labels.index_select(0, idx)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return dev


def task_loss(out: Tensor, labels: Tensor, task: str) -> Tensor:
    if task == "iemocap":  # (B, 8) -> 4 two-way decisions
        return F.cross_entropy(out.float().view(-1, 2), labels.view(-1))
    return F.l1_loss(out.float(), labels)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Holds model, optimizer and scheduler for one trial; `fit` drives it."""

    def __init__(self, cfg: TrainConfig, data: MultData):
        self.cfg, self.task = cfg, data.task
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = _distributed()
        torch.manual_seed(cfg.seed)
        mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
        self.model = UCRN(mcfg).to(self.device)
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        params = self.model.parameters()
        if cfg.optim == "SGD":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            opt_cls = torch.optim.Adam if cfg.optim == "Adam" else torch.optim.AdamW
            self.opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", patience=cfg.when, factor=cfg.lr_factor)
        self.splits = {name: DeviceSplit.from_split(s, mcfg.modalities, data.task, self.device)
                       for name, s in data.splits.items()}
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda"
                                         and torch.cuda.is_bf16_supported())
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_record, self.best_state = 0, {}, None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split. Returns (mean loss, mean MJS); the only host
        sync is at the end."""
        cfg, split = self.cfg, self.splits["train"]
        self.net.train()
        perm = torch.randperm(split.n, generator=self.shuffle).to(self.device)
        per_rank = max(1, cfg.batch_size // self.world)
        # each rank takes its own slice of every global batch (DDP averages the gradients)
        total = torch.zeros(2, device=self.device)
        count = 0
        for start in range(0, split.n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size][self.rank * per_rank:(self.rank + 1) * per_rank]
            if idx.numel() == 0:
                idx = perm[start:start + 1]  # keep collective calls in step across ranks
            inputs, labels = split.batch(idx)
            with self._autocast():
                out, reps = self.net(*inputs)
            loss = task_loss(out, labels, self.task)
            mjs = (mjs_divergence(reps, cfg.mjs) if cfg.jsd_weight > 0
                   else torch.zeros((), device=self.device))
            total_loss = loss + cfg.jsd_weight * mjs
            self.opt.zero_grad(set_to_none=True)
            total_loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            self.opt.step()
            n = idx.numel()
            total += torch.stack([loss.detach() * n, mjs.detach() * n])
            count += n
        train_loss, train_mjs = (total / max(count, 1)).tolist()
        return train_loss, train_mjs

    @torch.inference_mode()
    def predict(self, split: DeviceSplit) -> Tensor:
        """Model outputs for a whole split, in order, as float32 on the host."""
        self.model.eval()
        outs = []
        for start in range(0, split.n, self.cfg.eval_batch_size):
            idx = torch.arange(start, min(start + self.cfg.eval_batch_size, split.n),
                               device=self.device)
            inputs, _ = split.batch(idx)
            with self._autocast():
                out, _ = self.model(*inputs)
            outs.append(out.float())
        return torch.cat(outs).cpu()

    def evaluate(self, name: str) -> dict[str, float]:
        split = self.splits[name]
        out = self.predict(split)
        labels = split.labels.cpu()
        loss = task_loss(out, labels, self.task).item()
        if self.task == "iemocap":
            metrics = iemocap_metrics(out.numpy(), labels.numpy())
        else:
            metrics = regression_metrics(out.numpy().ravel(), labels.numpy().ravel())
        return {"loss": loss, **metrics}

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume exactly; loadable with torch.load(weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "shuffle_rng": self.shuffle.get_state(),
            "best_epoch": self.best_epoch,
            "best_record": self.best_record,
            "best_state": self.best_state,
            "history": self.history,
            "config": self.cfg.to_dict(),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.shuffle.set_state(ckpt["shuffle_rng"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.best_record = dict(ckpt["best_record"])
        self.best_state = ckpt["best_state"]
        self.history = list(ckpt["history"])


OnEpoch = Callable[[int, dict[str, float], Trainer], Any]


def fit(config: TrainConfig | dict[str, Any], data: MultData, on_epoch: OnEpoch | None = None,
        resume: dict[str, Any] | None = None) -> FitResult:
    """Train one configuration for `num_epochs` (or until stopped) and test the best epoch.

    `on_epoch(epoch, record, trainer)` runs after each epoch's validation with the
    epoch's record (train_loss, mjs, validation `loss` and metrics, lr, seconds);
    `trainer.checkpoint()` gives a resumable state. Returning True stops training.
    `resume` is such a checkpoint: training continues after its epoch.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    t_start = time.perf_counter()
    tr = Trainer(cfg, data)
    if resume is not None:
        tr.restore(resume)
    sel, mode = cfg.selection(data.task)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    status, since_best = "completed", 0
    if tr.best_epoch:
        since_best = tr.epoch - tr.best_epoch
    while tr.epoch < cfg.num_epochs:
        t0 = time.perf_counter()
        train_loss, train_mjs = tr.train_epoch()
        tr.epoch += 1
        if not (math.isfinite(train_loss) and math.isfinite(train_mjs)):
            status = "diverged"
            break
        val = tr.evaluate("valid")
        tr.sched.step(val["loss"])
        record = {"epoch": tr.epoch, "train_loss": train_loss, "mjs": train_mjs, **val,
                  "current_lr": tr.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        tr.history.append(record)
        score = record[sel]
        if not tr.best_epoch or (math.isfinite(score) and better(score, tr.best_record[sel])):
            tr.best_epoch, tr.best_record = tr.epoch, record
            tr.best_state = copy.deepcopy(tr.model.state_dict())
            since_best = 0
        else:
            since_best += 1
        if on_epoch is not None and on_epoch(tr.epoch, record, tr):
            status = "stopped"
            break
        if cfg.patience and since_best >= cfg.patience:
            status = "stopped"
            break
    test: dict[str, float] = {}
    if tr.best_state is not None:
        tr.model.load_state_dict(tr.best_state)
        test = tr.evaluate("test")
    return FitResult(config=cfg.to_dict(), status=status, best_epoch=tr.best_epoch,
                     best=dict(tr.best_record), test=test, history=list(tr.history),
                     model_state=tr.best_state, n_params=sum(p.numel() for p in tr.model.parameters()),
                     seconds=time.perf_counter() - t_start)


def set_thread_env(threads: int) -> None:
    """Cap OpenMP/MKL threads for child libraries (set before heavy imports where possible)."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        torch.set_num_threads(threads)
