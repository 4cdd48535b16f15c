"""Train one UCRN configuration: no Ray, no cluster.

`fit(config, data)` is the whole trial. The search (search/) wraps it and uses the
`on_epoch` hook to report metrics and save checkpoints; the CLI writes a run folder.
Selection (best epoch, LR schedule, early stopping) sees the validation split only;
the test split is evaluated once, for the selected weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ucrn.augment import training_augment
from ucrn.batches import HostSplit, Inputs
from ucrn.conditions import missing_one_mae
from ucrn.config import ROBUST_REGRESSION_ONLY, TrainConfig
from ucrn.data import MultData
from ucrn.gpumem import GpuMemory
from ucrn.losses import task_loss, training_loss
from ucrn.metrics import ROBUST_METRICS, TASK_METRICS, task_metrics
from ucrn.model import UCRN

GRAPH_WARMUP_STEPS = 3  # eager steps before capture: lazy state (Adam moments, cuBLAS) must exist
# torch's CPU threads when this process started: threads=0 means these, also in a process
# that an earlier trial (Tune's reused actors) set to another number
DEFAULT_THREADS = torch.get_num_threads()


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
    # the trainer, its model holding the best weights (to score them further, e.g. under
    # missing inputs), also when a resumed run had no epoch left to train
    trainer: Any = field(default=None, repr=False)
    reason: str = ""  # why a diverged run stopped: the epoch, what became non-finite, a cause


def check_selection(cfg: TrainConfig, task: str) -> None:
    """The metric that picks the best epoch must be one the data's task has: a custom
    folder's (N, 4) labels are IEMOCAP's emotions, which have no MAE (a KeyError after the
    first epoch, before this check)."""
    name, _ = cfg.selection(task)
    fits = ("loss", *TASK_METRICS[task], *(ROBUST_METRICS if task != "iemocap" else ()))
    if name not in fits:
        raise ValueError(f"select_metric={name}: the data's task is {task}, which has no "
                         f"{name}; use one of {', '.join(fits[:4])}, ... (or auto)")


FEATURE_MAGNITUDE_WARN = 1e4  # above this a feature, not the lr, is the likely culprit


def divergence_cause(data: MultData, lr: float) -> str:
    """The likely cause of a non-finite loss, for its one line: features of huge
    magnitude (float32 overflows inside the model) or, failing that, the learning rate."""
    big, where = 0.0, ""
    for name, split in data.splits.items():
        for m in ("text", "audio", "vision"):
            a = split.modality(m)
            size = max(abs(float(a.max())), abs(float(a.min()))) if a.size else 0.0
            if size > big:
                big, where = size, f"split {name!r} {m}"
    if big > FEATURE_MAGNITUDE_WARN:
        return (f"likely cause: feature magnitude (|x| up to {big:.3g} in {where}; standardise "
                f"the features)")
    return f"likely cause: the learning rate (lr {lr:g}; try a lower one)"


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device this machine has; ValueError naming it if not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    return dev


def use_cuda_graphs(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    """Whether the whole training step is captured as a CUDA graph.

    Only on one CUDA device (DDP's collectives need their own graph handling), with
    Adam/AdamW (capturable) and no torch.compile (its reduce-overhead mode brings its own
    graphs, and a recompile must never happen inside a capture)."""
    possible = device.type == "cuda" and world == 1 and cfg.compile == "off" \
        and cfg.optim in ("Adam", "AdamW")
    if cfg.cuda_graphs == "on" and not possible:
        raise ValueError(f"cuda_graphs='on' needs one CUDA device (device={device}, "
                         f"world size {world}), optim Adam or AdamW and compile='off'")
    return possible and cfg.cuda_graphs != "off"


class CudaStepGraph:
    """A training step recorded once as a CUDA graph; `replay` reruns all its kernels on
    the same buffers with one launch, removing the per-kernel launch cost that bounds this
    small model (docs/benchmarks.md: 53 -> 10.9 ms/step on an H200). Recording executes
    nothing: the caller replays for the batch it captured with.

    The capture is spelt out rather than `with torch.cuda.graph(...)`: when the step fails
    inside a capture, that context manager's exit calls `capture_end`, which raises in turn,
    before it leaves the capture stream, so the thread stayed on it and the error shown was
    capture_end's. Here the capture is ended, the stream left, and the step's own error
    raised. `cuda` stands in for torch.cuda (tests)."""

    def __init__(self, step: Callable[[], None], opt: torch.optim.Optimizer | None = None,
                 cuda: Any = None):
        cuda = torch.cuda if cuda is None else cuda
        self.graph = cuda.CUDAGraph()
        cuda.synchronize()  # nothing of the eager steps may still run while capturing
        with cuda.stream(cuda.Stream()):  # left on every path
            self.graph.capture_begin()
            try:
                step()
            except BaseException:
                with contextlib.suppress(Exception):  # says less than the step's error
                    self.graph.capture_end()
                raise
            self.graph.capture_end()

    def replay(self) -> None:
        self.graph.replay()


@contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """Warm-up before a capture runs on a side stream, as the CUDA-graph docs require."""
    if device.type != "cuda":
        yield
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of DDP rank `rank` > 0 from `epoch` on: its own dropout masks and noise
    (rank 0 keeps the config's stream, so one worker trains as before)."""
    text = f"{seed}|rank {rank}|epoch {epoch}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def own_cuda_rng(saved: Any, index: int) -> Tensor | None:
    """The CUDA generator state for device `index` from a checkpoint: one state (this
    version saves only the trainer's own device), or a list with one per visible GPU
    (earlier versions), which may hold fewer GPUs than this machine sees; None when it
    holds none (no key, or a run on the CPU). Anything else is one ValueError line: a
    resume that silently drew other random numbers would not be exact."""
    def state(x: Any) -> Tensor:
        if isinstance(x, Tensor) and x.dtype == torch.uint8 and x.dim() == 1:
            return x
        what = (f"a {x.dim()}-D {str(x.dtype).replace('torch.', '')} tensor"
                if isinstance(x, Tensor) else f"a {type(x).__name__}")
        raise ValueError(f"checkpoint key 'cuda_rng': {what}; expected a CUDA generator state "
                         f"(a 1-D uint8 tensor) or a list of them, one per GPU")

    if saved is None:
        return None
    if isinstance(saved, (list, tuple)):
        states = [state(x) for x in saved]
        return states[index] if len(states) > index else None
    return state(saved) if not isinstance(saved, Tensor) or saved.numel() else None


# makes the step graph: (step, optimizer) -> object with replay(); CudaStepGraph on a GPU
GraphFactory = Callable[[Callable[[], None], torch.optim.Optimizer], Any]


class Trainer:
    """Holds model, optimizer and scheduler for one trial; `fit` drives it.

    `graph_factory` replaces CudaStepGraph (tests use a stand-in that reruns the step, so
    the capture/replay bookkeeping is checked on CPU); given, it is used on any device.
    `compile_backend` replaces torch.compile's inductor (tests count compilations with a
    cheap one).

    The data stays in host memory (ucrn/batches.py): each step moves its batch alone."""

    def __init__(self, cfg: TrainConfig, data: MultData,
                 graph_factory: GraphFactory | None = None, compile_backend: Any = None):
        self.cfg, self.task = cfg, data.task
        cfg.check_machine()
        check_selection(cfg, data.task)  # before any memory is taken
        # everything a trial sets in its process, set anew: a process may run trial after
        # trial (Tune's reused actors), and none may inherit the last one's settings
        torch.set_num_threads(cfg.threads or DEFAULT_THREADS)
        torch.set_default_dtype(torch.float32)  # the data is float32; parameters follow
        self.device = resolve_device(cfg.device)
        self.gpu_memory = GpuMemory(self.device)  # this trial's peaks from here on
        self.rank, self.world = _distributed()
        torch.manual_seed(cfg.seed)  # every rank: the same initial weights
        mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
        self.model = UCRN(mcfg).to(self.device)
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._reseed_rank(0)
        self.compiled = cfg.compile != "off"
        self._eager_net = self.net  # a compiled trial's one-row batches (see _step)
        if self.compiled:  # earlier trials' compiled code would count towards dynamo's
            torch._dynamo.reset()  # recompile limit (8), past which it stops compiling
            mode = None if cfg.compile == "default" or compile_backend else cfg.compile
            self.net = torch.compile(self.net, mode=mode, backend=compile_backend or "inductor")
        self.uses_cuda_graphs = use_cuda_graphs(cfg, self.device, self.world)
        params = self.model.parameters()
        if cfg.optim == "SGD":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            # foreach: the same arithmetic as the per-parameter loop, fewer kernels/dispatches;
            # capturable: step counter and bias correction on the device, as graphs need
            opt_cls = torch.optim.Adam if cfg.optim == "Adam" else torch.optim.AdamW
            self.opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True,
                               capturable=self.uses_cuda_graphs)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", patience=cfg.when, factor=cfg.lr_factor)
        self.splits = {name: HostSplit.from_split(s, mcfg.modalities, data.task, self.device)
                       for name, s in data.splits.items()}
        # robustness options (ucrn/augment.py). Off (the default), nothing is set up and no
        # random number is drawn.
        self._augment: Callable[[tuple], tuple] | None = None
        if cfg.modality_dropout > 0 or cfg.input_noise > 0:
            self._augment = training_augment(mcfg.modalities, cfg.modality_dropout,
                                             cfg.input_noise, data.splits["train"], self.device)
        self.robust_metrics = cfg.wants_robust_metrics()
        if self.robust_metrics and data.task == "iemocap":
            raise ValueError(ROBUST_REGRESSION_ONLY)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda"
                                         and torch.cuda.is_bf16_supported())
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_record, self.best_state = 0, {}, None
        # (sum of loss * n, sum of mjs * n) over the epoch, on the device; a persistent
        # buffer because a captured step adds into this very memory
        self._acc = torch.zeros(2, device=self.device)
        if graph_factory is None and self.uses_cuda_graphs:
            graph_factory = CudaStepGraph
        self._graph_factory: GraphFactory | None = graph_factory
        self._graph: Any = None
        self._graph_key: list[dict[str, Any]] | None = None
        self._static: tuple[Inputs, Tensor] | None = None  # the graph's input buffers
        self._warm_steps = 0

    def _reseed_rank(self, epoch: int) -> None:
        """DDP ranks > 0 draw their own random numbers (dropout, augmentation); without this
        every rank drew the same masks. Called at the start of every epoch, from the epoch's
        number: the checkpoint holds rank 0's generator state only, and a rank reseeded just
        once at a restore drew other masks than in an uninterrupted run (a killed worker's
        trial then resumed to other results)."""
        if self.rank > 0:
            torch.manual_seed(rank_seed(self.cfg.seed, self.rank, epoch))

    def _autocast(self, cache: bool = True):
        # no weight-cast cache in training: each weight is used once per step, and a cache
        # must not be used inside a graph capture
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None, cache_enabled=cache)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split. Returns (mean loss, mean MJS); the only host
        sync is at the end."""
        cfg, split = self.cfg, self.splits["train"]
        self._reseed_rank(self.epoch)
        self.net.train()
        perm = torch.randperm(split.n, generator=self.shuffle)  # on the host, as the data
        per_rank = max(1, cfg.batch_size // self.world)
        # each rank takes its own slice of every global batch (DDP averages the gradients)
        self._acc.zero_()
        count = 0
        for start in range(0, split.n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size][self.rank * per_rank:(self.rank + 1) * per_rank]
            if idx.numel() == 0:
                idx = perm[start:start + 1]  # keep collective calls in step across ranks
            if self._graph_factory is not None and idx.numel() == cfg.batch_size:
                self._graphed_step(idx)
            else:  # eager: CPU, DDP, or the last partial batch
                self._train_step(idx)
            count += idx.numel()
        if self.world > 1:  # every rank reports (and judges divergence by) the same epoch mean
            total = torch.cat([self._acc, torch.tensor([float(count)], device=self.device)])
            dist.all_reduce(total)
            self._acc.copy_(total[:2])
            count = int(total[2].item())
        train_loss, train_mjs = (self._acc / max(count, 1)).tolist()
        return train_loss, train_mjs

    def _train_step(self, idx: Tensor) -> None:
        """One eager optimisation step on training rows `idx` (host indices): the batch is
        moved to the device, then `_step`."""
        self._step(*self.splits["train"].batch(idx))

    def _step(self, inputs: Inputs, labels: Tensor) -> None:
        """One optimisation step on a batch already on the device. No host sync and nothing
        that depends on tensor values on the host, so the same code can be captured as a
        graph (tests/test_gpu_path.py scans it for syncs)."""
        cfg = self.cfg
        if self._augment is not None:  # modality_dropout / input_noise: device RNG, no sync
            inputs = self._augment(inputs)
        net = self.net
        if self.compiled:  # one compiled graph for every batch size: the last, partial batch
            for x in inputs:  # of an epoch no longer recompiles
                if x is not None:
                    torch._dynamo.maybe_mark_dynamic(x, 0)
            # except a batch of one row, which dynamo always specialises (0/1 sizes): one
            # more compilation per trial (inductor: as long as the first) for one step, so
            # that step runs eagerly (unless every batch has one row)
            if labels.shape[0] == 1 and cfg.batch_size // self.world > 1:
                net = self._eager_net
        with self._autocast(cache=False):
            out, reps = net(*inputs)
        total, loss, mjs = training_loss(out, labels, reps, self.task, cfg.jsd_weight,
                                         cfg.mjs_variant)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.clip > 0:  # foreach norm and a clamped scale: no host sync
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.opt.step()
        n = labels.shape[0]
        self._acc += torch.stack([loss.detach() * n, mjs.detach() * n])

    def _hyper_key(self) -> list[dict[str, Any]]:
        """Optimizer hyperparameters; a graph bakes them in, so a change means recapture."""
        return [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]

    def _graphed_step(self, idx: Tensor) -> None:
        """A full batch through the captured step: eager warm-up steps first (they are real
        steps), then capture once (and again after the LR scheduler changes the LR) on input
        buffers that hold the batch, then for each batch copy its rows into those buffers
        (asynchronously, from pinned host memory) and replay."""
        key = self._hyper_key()
        if self._graph is not None and key != self._graph_key:
            self._graph = None
        if self._graph is None:
            if self._warm_steps < GRAPH_WARMUP_STEPS:
                with _side_stream(self.device):
                    self._train_step(idx)
                self._warm_steps += 1
                return
            self._static = static = self.splits["train"].batch(idx)
            self.opt.zero_grad(set_to_none=True)  # gradients are allocated inside the graph
            try:
                self._graph = self._graph_factory(lambda: self._step(*static), self.opt)
            except RuntimeError as e:  # a capture never executes the step: fall back to eager
                if self.cfg.cuda_graphs == "on":
                    raise
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                warnings.warn(f"CUDA graph capture failed ({why}); training this run eagerly",
                              RuntimeWarning, stacklevel=2)
                self._graph_factory, self._graph, self._static = None, None, None
                self._step(*static)
                return
            self._graph_key = key
        else:
            self.splits["train"].batch_into(idx, self._static)
        self._graph.replay()

    @torch.inference_mode()
    def predict(self, split: HostSplit) -> Tensor:
        """Model outputs for a whole split, in order, as float32 on the host."""
        self.model.eval()
        outs = []
        for start in range(0, split.n, self.cfg.eval_batch_size):
            inputs, _ = split.rows(start, start + self.cfg.eval_batch_size)
            with self._autocast():
                out, _ = self.model(*inputs)
            outs.append(out.float())
        return torch.cat(outs).cpu()

    def evaluate(self, name: str) -> dict[str, float]:
        split = self.splits[name]
        out = self.predict(split)
        labels = split.labels  # on the host
        loss = task_loss(out, labels, self.task).item()
        metrics = task_metrics(self.task, out.numpy(), labels.numpy())
        record = {"loss": loss, **metrics}
        if name == "valid" and self.robust_metrics:  # one more pass per modality: on request
            record["robust_MAE"] = missing_one_mae(self.model, split, self.cfg.eval_batch_size,
                                                   self.autocast_dtype, self.task)
        return record

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume exactly; loadable with torch.load(weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            # the trainer's own device only: a resume may see another number of GPUs
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
            else [],
            # the trial's peaks so far: a resumed trial reports at least these
            "gpu_memory": self.gpu_memory.read() if self.device.type == "cuda" else None,
            "shuffle_rng": self.shuffle.get_state(),
            "best_epoch": self.best_epoch,
            "best_record": self.best_record,
            "best_state": self.best_state,
            "history": self.history,
            "config": self.cfg.to_dict(),
        }

    def _own_optimizer_flags(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's optimizer state with this trainer's own implementation flags
        (capturable, foreach, fused, differentiable). They say how this process runs the
        step, not what it computes: a checkpoint of a GPU trial with CUDA graphs
        (capturable) must resume on a CPU, and one of an eager or CPU run must not turn
        the graph capture off (torch's load_state_dict would take the saved flags)."""
        own = self.opt.param_groups[0]
        flags = {k: own[k] for k in ("capturable", "foreach", "fused", "differentiable")
                 if k in own}
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not flags or not isinstance(groups, list):
            return state
        return {**state, "param_groups": [{**g, **{k: v for k, v in flags.items() if k in g}}
                                          if isinstance(g, dict) else g for g in groups]}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(self._own_optimizer_flags(ckpt["optimizer"]))
        # new state tensors: a graph would be stale
        self._graph, self._warm_steps = None, 0
        self.sched.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = own_cuda_rng(ckpt.get("cuda_rng"), self.device.index or 0)  # checked on any device
        if state is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        self.gpu_memory.carry(ckpt.get("gpu_memory"))
        self._reseed_rank(self.epoch)
        self.shuffle.set_state(ckpt["shuffle_rng"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.best_record = dict(ckpt["best_record"])
        self.best_state = ckpt["best_state"]
        self.history = list(ckpt["history"])


OnEpoch = Callable[[int, dict[str, float], Trainer], Any]


def fit(config: TrainConfig | dict[str, Any], data: MultData, on_epoch: OnEpoch | None = None,
        resume: dict[str, Any] | None = None,
        graph_factory: GraphFactory | None = None) -> FitResult:
    """Train one configuration for `num_epochs` (or until stopped) and test the best epoch.

    `on_epoch(epoch, record, trainer)` runs after each epoch's validation with the
    epoch's record (train_loss, mjs, validation `loss` and metrics, lr, seconds of the
    epoch and of its training pass);
    `trainer.checkpoint()` gives a resumable state. Returning True stops training.
    `resume` is such a checkpoint: training continues after its epoch. `graph_factory`:
    see Trainer.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    t_start = time.perf_counter()
    tr = Trainer(cfg, data, graph_factory=graph_factory)
    if resume is not None:
        tr.restore(resume)
    sel, mode = cfg.selection(data.task)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    status, since_best, reason = "completed", 0, ""
    if tr.best_epoch:
        since_best = tr.epoch - tr.best_epoch
    while tr.epoch < cfg.num_epochs:
        t0 = time.perf_counter()
        train_loss, train_mjs = tr.train_epoch()  # ends in a host sync: the time is real
        train_seconds = time.perf_counter() - t0
        tr.epoch += 1
        if not (math.isfinite(train_loss) and math.isfinite(train_mjs)):
            what = "training loss" if not math.isfinite(train_loss) else "MJS term"
            value = train_loss if not math.isfinite(train_loss) else train_mjs
            status, reason = "diverged", f"the {what} became non-finite ({value})"
            break
        val = tr.evaluate("valid")
        # a non-finite validation loss or MAE: predictions went NaN or inf (huge features
        # in that split overflow float32 inside the model); never a completed run on NaN
        bad = [k for k in ("loss", "MAE") if k in val and not math.isfinite(val[k])]
        if bad:
            status = "diverged"
            reason = (f"the validation {' and '.join(bad)} became non-finite "
                      f"({val[bad[0]]}; training loss {train_loss:.4g})")
            break
        tr.sched.step(val["loss"])
        record = {"epoch": tr.epoch, "train_loss": train_loss, "mjs": train_mjs, **val,
                  "current_lr": tr.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                  "train_seconds": train_seconds}
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
    if reason:
        reason = (f"seed {cfg.seed}: diverged in epoch {tr.epoch}: {reason}; "
                  f"{divergence_cause(data, cfg.lr)}")
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
    test: dict[str, float] = {}
    if tr.best_state is not None:
        tr.model.load_state_dict(tr.best_state)
        test = tr.evaluate("test")
        if not math.isfinite(test["loss"]):
            warnings.warn(f"seed {cfg.seed}: the test loss of the selected weights (epoch "
                          f"{tr.best_epoch}) is non-finite ({test['loss']}); "
                          f"{divergence_cause(data, cfg.lr)}", RuntimeWarning, stacklevel=2)
    return FitResult(config=cfg.to_dict(), status=status, best_epoch=tr.best_epoch,
                     best=dict(tr.best_record), test=test, history=list(tr.history),
                     model_state=tr.best_state, n_params=sum(p.numel() for p in tr.model.parameters()),
                     seconds=time.perf_counter() - t_start, trainer=tr, reason=reason)
