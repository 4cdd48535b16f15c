"""TrainConfig: one name and one home per setting, derived flags, and one-line refusals."""

from __future__ import annotations

import math
import os
from dataclasses import fields

import pytest
import torch

from ucrn.cli import train_parser
from ucrn.config import TrainConfig
from ucrn.model import UCRN, UCRNConfig, UCRNHyper, sinusoidal_positions


def test_model_hyperparameters_are_training_fields_flags_and_model_config():
    """Adding a UCRNHyper field makes it a TrainConfig field, a `ucrn train` flag and a
    model-config value with no other change (the old bridge dropped sqil_reduction)."""
    hyper = [f.name for f in fields(UCRNHyper)]
    train = [f.name for f in fields(TrainConfig)]
    assert set(hyper) <= set(train)
    flags = {a.dest for a in train_parser()._actions}
    assert set(train) <= flags
    cfg = TrainConfig(sqil_reduction=4, d_model=16, heads=2, positional="sinusoidal")
    mcfg = cfg.model_config((8, 8, 8), (4, 4, 4), 1)
    for name in hyper:
        assert getattr(mcfg, name) == getattr(cfg, name), name
    assert UCRN(mcfg).sqil["l"].squeeze.out_features == 16 // 4


def test_old_mjs_key_is_an_alias_with_a_note():
    with pytest.warns(FutureWarning, match="'mjs' is now called 'mjs_variant'"):
        cfg = TrainConfig.from_dict({"mjs": "authors"})
    assert cfg.mjs_variant == "authors"
    with pytest.raises(ValueError, match="both 'mjs' and its new name"):
        TrainConfig.from_dict({"mjs": "jsd", "mjs_variant": "jsd"})
    ns = train_parser().parse_args(["--mjs", "authors"])
    assert ns.mjs_variant == "authors"


@pytest.mark.parametrize(("config", "needle"), [
    ({"lr": None}, "lr=null: expected a value of type float"),
    ({"heads": None}, "heads=null"),
    ({"weight_decay": math.inf}, "weight_decay=inf: expected a finite number"),
    ({"clip": math.nan}, "clip=nan"),
    ({"lr": "Infinity"}, "lr=inf"),
    ({"seed": 2**63}, f"seed={2**63}: expected an integer in 0..{2**63 - 1}"),
    ({"seed": -1}, "seed=-1"),
    ({"data_seed": -5}, "data_seed=-5"),
    ({"device": "foo"}, "device='foo': expected auto, cpu, cuda or cuda:N"),
    ({"batch_size": True}, "batch_size=True: expected a value of type int"),
    ({"batch_size": 32.5}, "batch_size=32.5"),
    ({"causal": "maybe"}, "causal='maybe': expected a value of type bool"),
    ({"positional": "rope"}, "positional='rope'"),
    ({"positional": "sinusoidal", "d_model": 3, "heads": 1}, "needs d_model >= 4"),
    ({"mjs_variant": "kl"}, "mjs_variant='kl': expected one of jsd, authors"),
])
def test_bad_values_are_one_line_naming_the_key(config, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(config, where="best_config.json")
    msg = str(e.value)
    assert needle in msg and msg.startswith("best_config.json: ") and "\n" not in msg, msg


def test_threads_beyond_the_cores_are_refused_before_torch_sees_them():
    cores = os.cpu_count() or 1
    TrainConfig(threads=cores).check_machine()
    with pytest.raises(ValueError, match=f"threads={cores + 1}: this machine has {cores}"):
        TrainConfig(threads=cores + 1).check_machine()


def test_sinusoidal_positions_are_mults_table():
    """fairseq/MulT: positions from 1, sin then cos of C // 2 frequencies
    10000^(-i / (C // 2 - 1)), a zero column for odd C, a zero row where the first input
    channel is 0 (padding)."""
    x = torch.ones(1, 3, 5)
    x[0, 1, 0] = 0.0  # step 2 is padding
    table = sinusoidal_positions(x)[0]
    f = [1.0, 1e-4]  # 10000^(-0/1), 10000^(-1/1)
    for t in (0, 2):
        p = t + 1
        want = [math.sin(p * f[0]), math.sin(p * f[1]), math.cos(p * f[0]), math.cos(p * f[1]),
                0.0]
        torch.testing.assert_close(table[t], torch.tensor(want), rtol=0, atol=1e-6)
    assert torch.equal(table[1], torch.zeros(5))


def test_sinusoidal_model_runs_and_differs_from_none():
    kw = dict(input_dims=(6, 4, 5), seq_lens=(5, 6, 7), d_model=8, heads=2, layers=1)
    torch.manual_seed(0)
    a = UCRN(UCRNConfig(**kw, positional="sinusoidal")).eval()
    torch.manual_seed(0)
    b = UCRN(UCRNConfig(**kw)).eval()
    x = [torch.randn(2, t, d) for t, d in zip(kw["seq_lens"], kw["input_dims"])]
    out_a, out_b = a(*x)[0], b(*x)[0]
    assert torch.isfinite(out_a).all() and not torch.allclose(out_a, out_b)
