"""Model shape rules and the authors' exact parameter counts."""

import pytest
import torch

from ucrn.model import UCRN, UCRNConfig


@pytest.mark.parametrize(
    ("dims", "lens", "expected"),
    [
        ((300, 74, 35), (50, 500, 500), 690_031),  # MOSEI unaligned
        ((300, 5, 20), (50, 375, 500), 687_386),  # MOSI unaligned
    ],
)
def test_parameter_count_matches_authors(dims, lens, expected):
    model = UCRN(UCRNConfig(input_dims=dims, seq_lens=lens))
    assert sum(p.numel() for p in model.parameters()) == expected


def tiny(**kw) -> UCRNConfig:
    base = dict(input_dims=(12, 6, 8), seq_lens=(7, 9, 5), d_model=12, heads=2, layers=2)
    return UCRNConfig(**{**base, **kw})


@pytest.mark.parametrize("mods", ["l", "a", "v", "la", "av", "lav"])
@pytest.mark.parametrize("temp_proj", [0, 1, 3])
def test_forward_shapes_any_subset(mods, temp_proj):
    model = UCRN(tiny(modalities=mods, temp_proj=temp_proj))
    x = (torch.randn(4, 7, 12), torch.randn(4, 9, 6), torch.randn(4, 5, 8))
    pred, reps = model(*x)
    assert pred.shape == (4, 1)
    assert len(reps) == len(mods)
    assert all(r.shape == (4, max(temp_proj, 1), 12) for r in reps)


def test_iemocap_output_and_options():
    model = UCRN(tiny(output_dim=8, positional="sinusoidal", causal=False))
    pred, _ = model(torch.randn(2, 7, 12), torch.randn(2, 9, 6), torch.randn(2, 5, 8))
    assert pred.shape == (2, 8)


def test_projection_skipped_when_dims_match():
    model = UCRN(tiny(input_dims=(12, 12, 8)))
    assert isinstance(model.branches["l"].proj, torch.nn.Identity)
    assert isinstance(model.branches["v"].proj, torch.nn.Linear)


def test_causal_mask_hides_the_future():
    torch.manual_seed(0)
    model = UCRN(tiny(modalities="l", temp_proj=0)).eval()  # temp_proj 0 = last step
    enc = model.branches["l"].urm
    x = torch.randn(1, 7, 12)
    y = x.clone()
    y[:, -1] += torch.randn(12)  # change only the last step
    assert torch.allclose(enc(x)[:, :-1], enc(y)[:, :-1], atol=1e-6)
    assert not torch.allclose(enc(x)[:, -1], enc(y)[:, -1])


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(heads=5), "heads=5 does not divide d_model=12"),
        (dict(d_model=10, heads=5, modalities="la"), None),  # valid: 10 % 5 == 0, 20 % 5 == 0
        (dict(d_model=6, heads=4), "heads=4 does not divide d_model=6"),
        (dict(modalities=""), "modalities=''"),
        (dict(modalities="lx"), "modalities='lx'"),
        (dict(layers=0), "layers=0"),
        (dict(positional="rope"), "positional='rope'"),
    ],
)
def test_invalid_configs_name_the_values(kw, needle):
    if needle is None:
        tiny(**kw)
        return
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        tiny(**kw)
