"""UCRN: Unimodal and Crossmodal Refinement Network (Guo et al., EMNLP 2021).

One file, in the manner of nanoGPT's model.py. Stages (docs/model.md):

    input projection -> URM (per-modality transformer) -> temporal projection
    -> [MJS regulariser on these] -> SQIL gate -> CRM (crossmodal transformer) -> residual head

All tensors are batch-first. B = batch, T = time steps, D = feature dims, d = d_model,
k = temp_proj steps, M = number of enabled modalities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MODALITY_KEYS = "lav"  # l = text (language), a = audio, v = vision; order of input_dims/seq_lens
POSITIONAL = ("none", "sinusoidal")
DROPOUTS = ("embed_dropout", "attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout",
            "res_dropout", "out_dropout")


def hparam(default: Any, help: str, choices: tuple = ()) -> Any:
    """A config field with its help text (and allowed values): the CLI and docs read these."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class UCRNHyper:
    """The model's hyperparameters. Each field is also a training-config field, a
    `ucrn train` flag, a search-space key and a results column (ucrn/config.py derives
    them all from here), so adding one touches this file only."""

    modalities: str = hparam("lav", "any non-empty subset of 'lav' (l=text, a=audio, v=vision)")
    d_model: int = hparam(30, "width d of every modality's encoder")
    heads: int = hparam(3, "attention heads; must divide d_model and M*d_model")
    layers: int = hparam(5, "layers per encoder (URM and CRM)")
    ff_mult: int = hparam(4, "feed-forward width of every encoder layer, times its width")
    temp_proj: int = hparam(1, "steps k after the temporal projection; 0 = take the last step")
    causal: bool = hparam(True, "causal attention mask, as the authors ran it")
    positional: str = hparam("none", "positions added to encoder inputs: none as the authors, "
                             "or MulT's sinusoidal table", POSITIONAL)
    embed_dropout: float = hparam(0.25, "dropout on the scaled encoder input (and text input)")
    attn_dropout: float = hparam(0.1, "attention dropout, text URM and CRM")
    attn_dropout_a: float = hparam(0.0, "attention dropout, audio URM")
    attn_dropout_v: float = hparam(0.0, "attention dropout, vision URM")
    relu_dropout: float = hparam(0.1, "dropout after the feed-forward ReLU")
    res_dropout: float = hparam(0.1, "dropout on each residual branch")
    out_dropout: float = hparam(0.5, "dropout in the prediction head")
    sqil_reduction: int = hparam(16, "SQIL squeeze ratio r: gate width max(1, d_model // r)")

    def validate(self) -> None:
        """Fail early, naming the values, instead of deep inside attention."""
        mods = self.modalities
        if not mods or any(m not in MODALITY_KEYS for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(
                f"modalities={mods!r}: expected a non-empty subset of 'lav' (l=text, a=audio, v=vision)"
            )
        for name in ("d_model", "heads", "layers", "ff_mult", "sqil_reduction"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.temp_proj < 0:
            raise ValueError(f"temp_proj={self.temp_proj}: expected >= 0 (0 = last time step)")
        if self.d_model % self.heads:
            raise ValueError(f"heads={self.heads} does not divide d_model={self.d_model}")
        crm_dim = len(mods) * self.d_model
        if crm_dim % self.heads:
            raise ValueError(
                f"heads={self.heads} does not divide the crossmodal width "
                f"M*d_model={len(mods)}*{self.d_model}={crm_dim}"
            )
        if self.positional not in POSITIONAL:
            raise ValueError(f"positional={self.positional!r}: expected 'none' or 'sinusoidal'")
        if self.positional == "sinusoidal" and self.d_model < 4:
            raise ValueError(f"positional='sinusoidal' needs d_model >= 4 (MulT's table divides "
                             f"by d_model // 2 - 1), got d_model={self.d_model}")
        for name in DROPOUTS:
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name}={p}: expected a dropout probability in [0, 1)")


@dataclass
class UCRNConfig(UCRNHyper):
    """The hyperparameters plus what the data decides."""

    input_dims: tuple[int, int, int] = (300, 74, 35)  # (Dl, Da, Dv), read from the data
    seq_lens: tuple[int, int, int] = (50, 500, 500)  # (Tl, Ta, Tv), read from the data
    output_dim: int = 1  # 1 = sentiment regression, 8 = IEMOCAP (4 emotions x 2 logits)

    def __post_init__(self) -> None:
        self.input_dims = tuple(int(x) for x in self.input_dims)
        self.seq_lens = tuple(int(x) for x in self.seq_lens)
        self.validate()

    def validate(self) -> None:
        super().validate()
        if self.output_dim < 1:
            raise ValueError(f"output_dim={self.output_dim}: expected an integer >= 1")
        if len(self.input_dims) != 3 or len(self.seq_lens) != 3:
            raise ValueError(
                f"input_dims={self.input_dims}, seq_lens={self.seq_lens}: expected 3 values each (l, a, v)"
            )
        longest = max(self.seq_lens[MODALITY_KEYS.index(m)] for m in self.modalities)
        if self.temp_proj > longest:
            raise ValueError(f"temp_proj={self.temp_proj}: more steps than the longest input "
                             f"sequence ({longest}); the projection pools time, it cannot add it")

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(x_in: Tensor) -> Tensor:
    """MulT's positional table (fairseq's): (B, T, C) -> (B, T, C), no parameters.

    Positions count from 1; a step whose first input channel is exactly 0 counts as
    padding and gets a zero row (as MulT marks padding); per position, sin of C // 2
    frequencies 10000^(-i / (C // 2 - 1)) then their cos, and a zero column when C is odd.
    """
    B, T, C = x_in.shape
    half = C // 2
    freq = torch.exp(torch.arange(half, device=x_in.device, dtype=torch.float32)
                     * -(math.log(10000.0) / (half - 1)))
    pos = torch.arange(1, T + 1, device=x_in.device, dtype=torch.float32)
    ang = pos[:, None] * freq[None, :]  # (T, half)
    table = F.pad(torch.cat([ang.sin(), ang.cos()], dim=1), (0, C - 2 * half))  # (T, C)
    real = (x_in[..., :1] != 0).to(x_in.dtype)  # (B, T, 1): 0 on padding steps
    return table.to(x_in.dtype)[None] * real


class SelfAttention(nn.Module):
    """Multi-head self-attention on (B, T, C) through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, causal: bool):
        super().__init__()
        self.heads, self.attn_dropout, self.causal = heads, attn_dropout, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # (B, h, T, C/h); causal: each step sees itself and earlier steps, mask fused in the kernel
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=self.causal and T > 1,
        )
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: x + drop(attn(LN x)); x + drop(W2 drop(relu(W1 LN x)))."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, causal: bool, ff_mult: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attn_dropout, causal)
        self.ln_ff = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ff_mult * dim)
        self.fc2 = nn.Linear(ff_mult * dim, dim)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        x = x + F.dropout(self.attn(self.ln_attn(x)), self.res_dropout, self.training)
        h = F.dropout(F.relu(self.fc1(self.ln_ff(x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class Encoder(nn.Module):
    """A stack of pre-LN layers. Input scaled by sqrt(C), optional sinusoidal positions,
    embedding dropout, final LayerNorm: the URM and the CRM are both this."""

    def __init__(self, dim: int, cfg: UCRNConfig, attn_dropout: float):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.positional = cfg.positional == "sinusoidal"
        self.embed_dropout = cfg.embed_dropout
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg.heads, attn_dropout, cfg.relu_dropout, cfg.res_dropout, cfg.causal,
                         cfg.ff_mult)
            for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        x_in, x = x, self.scale * x
        if self.positional:
            x = x + sinusoidal_positions(x_in)
        x = F.dropout(x, self.embed_dropout, self.training)
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)


class SQIL(nn.Module):
    """Self-quality improvement: a bias-free squeeze-and-excitation gate over channels."""

    def __init__(self, d: int, reduction: int):
        super().__init__()
        hidden = max(1, d // reduction)
        self.squeeze = nn.Linear(d, hidden, bias=False)
        self.excite = nn.Linear(hidden, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, k, d) -> (B, k, d)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=1)))))  # (B, d)
        return x * gate[:, None, :]


class Unimodal(nn.Module):
    """One modality's path up to the MJS point: projection, URM, temporal projection."""

    def __init__(self, in_dim: int, seq_len: int, cfg: UCRNConfig, attn_dropout: float,
                 input_dropout: float):
        super().__init__()
        d = cfg.d_model
        self.input_dropout = input_dropout  # text only: embedding dropout before projection
        # kernel-1 Conv1d in the authors' code == a per-step bias-free linear map
        self.proj = nn.Linear(in_dim, d, bias=False) if in_dim != d else nn.Identity()
        self.urm = Encoder(d, cfg, attn_dropout)
        self.temporal = nn.Linear(seq_len, cfg.temp_proj, bias=False) if cfg.temp_proj else None

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, k, d)
        x = F.dropout(x, self.input_dropout, self.training)
        h = self.urm(self.proj(x))  # (B, T, d)
        if self.temporal is None:
            return h[:, -1:, :]  # (B, 1, d)
        return self.temporal(h.transpose(1, 2)).transpose(1, 2)  # learned pooling over time


class UCRN(nn.Module):
    def __init__(self, cfg: UCRNConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        attn = {"l": cfg.attn_dropout, "a": cfg.attn_dropout_a, "v": cfg.attn_dropout_v}
        self.branches = nn.ModuleDict()
        self.sqil = nn.ModuleDict()
        for m in cfg.modalities:
            i = MODALITY_KEYS.index(m)
            in_drop = cfg.embed_dropout if m == "l" else 0.0
            self.branches[m] = Unimodal(cfg.input_dims[i], cfg.seq_lens[i], cfg, attn[m], in_drop)
            self.sqil[m] = SQIL(d, cfg.sqil_reduction)
        width = len(cfg.modalities) * d
        self.crm = Encoder(width, cfg, cfg.attn_dropout)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, cfg.output_dim)

    def forward(self, text: Tensor | None, audio: Tensor | None, vision: Tensor | None
                ) -> tuple[Tensor, list[Tensor]]:
        """Inputs (B, Tm, Dm) (unused modalities may be None). Returns the prediction
        (B, output_dim) and the per-modality temporally projected URM outputs, M x (B, k, d)."""
        inputs = {"l": text, "a": audio, "v": vision}
        reps = [self.branches[m](inputs[m]) for m in self.cfg.modalities]  # M x (B, k, d)
        gated = [self.sqil[m](r) for m, r in zip(self.cfg.modalities, reps)]
        h = self.crm(torch.cat(gated, dim=-1))[:, -1, :]  # (B, M*d), last step
        h = h + self.fc2(F.dropout(F.relu(self.fc1(h)), self.cfg.out_dropout, self.training))
        return self.head(h), reps  # (B, output_dim)
