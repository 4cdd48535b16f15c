"""TrainConfig: everything one trial needs, flat, under one name per setting.

The model's hyperparameters are `ucrn.model.UCRNHyper`'s fields, inherited here; the
rest (data, optimisation, run) are declared below. A search space, `ucrn train`'s flags,
a saved best_config.json and the Parquet config columns all use these names, and all
are derived from the fields: a new hyperparameter is added in one place.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import warnings
from dataclasses import MISSING, Field, asdict, dataclass, fields
from typing import Any

from ucrn.data import DATASET_ALIASES, DATASET_TASK, DATASETS, FORMATS, PRESETS, TARGETS
from ucrn.metrics import ROBUST_METRICS, metric_mode
from ucrn.model import UCRNConfig, UCRNHyper, hparam

OPTIMIZERS = ("Adam", "AdamW", "SGD")
MJS_VARIANTS = ("jsd", "authors")
AMP_MODES = ("auto", "bf16", "off")
GRAPH_MODES = ("auto", "on", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead")
SEED_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
# old key -> current name; still accepted in JSON configs and as flags
RENAMED = {"mjs": "mjs_variant"}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
ROBUST_REGRESSION_ONLY = ("robust_metrics / select_metric robust_MAE: regression only (robust_MAE "
                          "is a mean MAE; IEMOCAP has no MAE)")


@dataclass
class TrainConfig(UCRNHyper):
    """One trial: the model's hyperparameters (inherited) plus the fields below."""

    # data
    dataset: str = hparam("synthetic", "which data (mosei = mosei_senti; custom = your own "
                          ".npz features; synthetic = built in); without it a --data_path "
                          "names it by its file or folder name", DATASETS)
    data_path: str | None = hparam(None, "the data file (MulT or MMSA pickle), or a folder "
                                   "holding it, or a folder of train/valid/test.npz")
    data_format: str = hparam("auto", "file layout: auto = told by the files themselves",
                              FORMATS)
    aligned: bool = hparam(False, "word-aligned files (MulT *_data.pkl, MMSA aligned_*.pkl)")
    target: str = hparam("M", "the labels to train and score on: M = the multimodal "
                         "sentiment; T, A, V = CH-SIMS's unimodal labels (MMSA files)", TARGETS)
    preset: str = hparam("tiny", "synthetic data preset (tiny, mosi, mosei, ...)")
    data_seed: int = hparam(0, "synthetic data seed")
    # optimisation
    lr: float = hparam(1e-3, "learning rate")
    batch_size: int = hparam(32, "training batch size")
    num_epochs: int = hparam(40, "epochs")
    optim: str = hparam("Adam", "optimizer", OPTIMIZERS)
    weight_decay: float = hparam(0.0, "weight decay")
    clip: float = hparam(0.8, "gradient-norm clip; 0 = off")
    when: int = hparam(20, "ReduceLROnPlateau patience (epochs)")
    lr_factor: float = hparam(0.1, "ReduceLROnPlateau factor")
    jsd_weight: float = hparam(1.0, "weight of the MJS regulariser; 0 switches it off")
    mjs_variant: str = hparam("jsd", "MJS formula: jsd = generalised JS divergence; authors = "
                              "theirs, for reproducing their numbers", MJS_VARIANTS)
    patience: int = hparam(0, "early stopping patience on the selection metric; 0 = off")
    # run
    seed: int = hparam(1234, "seed of initialisation, dropout and shuffling")
    device: str = hparam("auto", "auto | cpu | cuda | cuda:N")
    threads: int = hparam(0, "torch CPU threads; 0 = torch's default")
    amp: str = hparam("auto", "bf16 autocast: auto = on CUDA only", AMP_MODES)
    select_metric: str = hparam("auto", "validation metric that picks the best epoch; auto = "
                                "MAE (regression) or loss (IEMOCAP)")
    eval_batch_size: int = hparam(512, "batch size of evaluation passes")
    # speed (GPU): whole-step CUDA graph for full batches; torch.compile of the forward
    cuda_graphs: str = hparam("auto", "whole-step CUDA graph; auto = on one CUDA device with "
                              "Adam or AdamW and no compile", GRAPH_MODES)
    compile: str = hparam("off", "torch.compile mode", COMPILE_MODES)
    # robustness (ucrn/robustness.py); all off by default: off, training is exactly as before
    modality_dropout: float = hparam(0.0, "training only: per sample, with this probability, "
                                     "zero one of the model's modalities (never all)")
    input_noise: float = hparam(0.0, "training only: Gaussian noise on the inputs, sigma in "
                                "units of the training split's per-feature std")
    robust_metrics: bool = hparam(False, "add robust_MAE (mean validation MAE with each "
                                  "modality zeroed in turn) to every validation record; "
                                  "regression only")

    def __post_init__(self) -> None:
        self.dataset = DATASET_ALIASES.get(self.dataset, self.dataset)  # mosei: mosei_senti
        self.validate()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a dict, refusing unknown keys and coercing JSON/YAML scalars."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in normalize_keys(d, where).items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{where}: unknown key {key!r}{hint}")
            kwargs[key] = coerce(known[key], value, where)
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name}={value!r}: expected one of {', '.join(choices)}")
            if isinstance(value, float) and not (math.isfinite(value)
                                                 and abs(value) <= FLOAT32_MAX):
                raise ValueError(f"{f.name}={value!r}: expected a finite number (within "
                                 f"float32's range: training computes in float32)")
        checks = [
            (self.lr > 0, "lr", "a positive number"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.num_epochs >= 1, "num_epochs", "an integer >= 1"),
            (self.weight_decay >= 0, "weight_decay", "a finite number >= 0"),
            (self.clip >= 0, "clip", ">= 0 (0 = off)"),
            (self.when >= 1, "when", "an integer >= 1"),
            (0 < self.lr_factor < 1, "lr_factor", "in (0, 1)"),
            (self.jsd_weight >= 0, "jsd_weight", ">= 0"),
            (self.patience >= 0, "patience", ">= 0 (0 = off)"),
            (0 <= self.seed <= SEED_MAX, "seed", f"an integer in 0..{SEED_MAX}"),
            (0 <= self.data_seed <= SEED_MAX, "data_seed", f"an integer in 0..{SEED_MAX}"),
            (self.threads >= 0, "threads", ">= 0 (0 = torch default)"),
            (_DEVICE.fullmatch(self.device) is not None, "device", "auto, cpu, cuda or cuda:N"),
            (self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1"),
            (0 <= self.modality_dropout < 1, "modality_dropout", "a probability in [0, 1)"),
            (0 <= self.input_noise <= 100, "input_noise", "0 (off) to 100 (feature stds)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected {expected}")
        if self.cuda_graphs == "on" and (self.compile != "off" or self.optim == "SGD"):
            raise ValueError(f"cuda_graphs='on' needs compile='off' and optim Adam or AdamW, "
                             f"got compile={self.compile!r}, optim={self.optim!r}")
        if self.select_metric != "auto":
            try:
                metric_mode(self.select_metric)
            except ValueError as e:
                raise ValueError(f"select_metric: {e}") from None
        if self.wants_robust_metrics() and self.known_task() == "iemocap":
            raise ValueError(ROBUST_REGRESSION_ONLY)
        if len(self.modalities) < 2 and self.wants_robust_metrics():
            raise ValueError(f"robust_MAE needs two or more modalities (with modalities="
                             f"{self.modalities!r}, one missing means no input at all)")
        if len(self.modalities) < 2 and self.modality_dropout > 0:
            raise ValueError(f"modality_dropout={self.modality_dropout}: needs two or more "
                             f"modalities (it never drops all), got modalities="
                             f"{self.modalities!r}")
        super().validate()  # the model's shape rules, independent of the data's dims

    def wants_robust_metrics(self) -> bool:
        """robust_MAE costs one validation pass per modality: only when asked for."""
        return self.robust_metrics or self.select_metric in ROBUST_METRICS

    def known_task(self) -> str | None:
        """The task when the config alone decides it (None: only the data can tell), so that
        what needs a task is refused before any data is read."""
        if self.dataset == "synthetic" and self.data_path is None and self.preset in PRESETS:
            return PRESETS[self.preset]["task"]
        return DATASET_TASK.get(self.dataset)

    def data_args(self) -> dict[str, Any]:
        """What ucrn.data.load_dataset needs to load this config's data."""
        return data_args(self.to_dict())

    def check_machine(self) -> None:
        """What only the machine that trains can judge (a config may come from a bigger
        one): a thread count past its cores crashes torch, not just slows it."""
        cores = os.cpu_count() or 1
        if self.threads > cores:
            raise ValueError(f"threads={self.threads}: this machine has {cores} CPU cores; "
                             f"expected 0 (torch's default) to {cores}")

    def model_config(self, input_dims, seq_lens, output_dim: int) -> UCRNConfig:
        hyper = {f.name: getattr(self, f.name) for f in fields(UCRNHyper)}
        return UCRNConfig(input_dims=tuple(input_dims), seq_lens=tuple(seq_lens),
                          output_dim=output_dim, **hyper)

    def selection(self, task: str) -> tuple[str, str]:
        """(metric, mode) used to pick the best epoch."""
        name = self.select_metric
        if name == "auto":
            name = "loss" if task == "iemocap" else "MAE"
        return name, metric_mode(name)


def data_args(config: dict[str, Any]) -> dict[str, Any]:
    """load_dataset's arguments from a (partial) config dict; absent keys take the
    defaults, which is what configs saved before those fields were added ran with."""
    get = {f.name: config.get(f.name, f.default) for f in fields(TrainConfig)}.__getitem__
    return {"dataset": get("dataset"), "data_path": get("data_path"), "aligned": get("aligned"),
            "preset": get("preset"), "seed": get("data_seed"),
            "data_format": get("data_format"), "target": get("target")}


def config_fields() -> tuple[Field, ...]:
    return fields(TrainConfig)


def normalize_keys(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Old key names (RENAMED) -> current ones, with a note; both at once is an error."""
    out = dict(d)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}: both {old!r} and its new name {new!r} given")
            warnings.warn(f"{where}: key {old!r} is now called {new!r}", FutureWarning,
                          stacklevel=3)
            out[new] = out.pop(old)
    return out


# Every config this project has saved has these keys (after RENAMED). A field added
# later is absent from older files and takes its default, which is what those runs used.
FIRST_SAVED = (
    "dataset", "data_path", "aligned", "preset", "data_seed", "modalities", "d_model", "heads",
    "layers", "temp_proj", "causal", "positional", "embed_dropout", "attn_dropout",
    "attn_dropout_a", "attn_dropout_v", "relu_dropout", "res_dropout", "out_dropout", "lr",
    "batch_size", "num_epochs", "optim", "weight_decay", "clip", "when", "lr_factor",
    "jsd_weight", "mjs_variant", "patience", "seed", "device", "threads", "amp",
    "select_metric", "eval_batch_size", "cuda_graphs", "compile",
)


def missing_fields(d: dict[str, Any]) -> list[str]:
    """Keys a saved config lacks that every saved config has had: without them it would
    not reproduce its run."""
    return [name for name in FIRST_SAVED if name not in d]


def defaulted_fields(d: dict[str, Any]) -> list[str]:
    """Fields newer than the saved config: they take their defaults (say so)."""
    return [f.name for f in fields(TrainConfig) if f.name not in d and f.name not in FIRST_SAVED]


def field_type(f: Field) -> type:
    """bool, int, float or str: the type of the field's default (None defaults are str)."""
    default = f.default if f.default is not MISSING else None
    return type(default) if default is not None else str


def coerce(f: Field, value: Any, where: str) -> Any:
    """A JSON/YAML/command-line value as the field's type; one line naming the key if not."""
    kind = field_type(f)
    optional = f.default is None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: {f.name}=null: expected a value of type {kind.__name__}")
    try:
        if isinstance(value, str) and kind is not str:
            return parse_text(kind, value)
        if kind is bool:
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: {f.name}={value!r}: expected a value of type "
                         f"{kind.__name__}") from None


def parse_text(kind: type, text: str) -> Any:
    """A command-line string as bool/int/float (ValueError when it is not one)."""
    if kind is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text
