"""Robustness to missing and noisy modalities (ucrn/robustness.py): each condition changes
its own modality only, numbers are seeded and independent of the batch size, a model
that ignores a modality loses nothing without it, the training options change nothing when
off, robust_MAE costs nothing unless asked for, and the command writes the rows it says."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from search.space import validate_space
from ucrn import cli, train
from ucrn.augment import TrainingAugment, modality_keep_mask, training_augment
from ucrn.conditions import (
    CHUNK,
    Condition,
    apply_condition,
    conditions,
    feature_std,
    missing_one_mae,
)
from ucrn.config import TrainConfig
from ucrn.data import MultData, Split, load_dataset
from ucrn.losses import training_loss
from ucrn.metrics import IEMOCAP_METRICS, REGRESSION_METRICS, metric_mode
from ucrn.model import MODALITY_KEYS, UCRN
from ucrn.robustness import robustness_rows, rows_table, summary_table
from ucrn.train import Trainer, fit

SMALL = dict(d_model=8, heads=2, layers=1, batch_size=32, threads=1, num_epochs=1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny() -> MultData:
    return load_dataset("synthetic", None, preset="tiny")


def trained_model(data: MultData, **overrides) -> UCRN:
    cfg = TrainConfig(**{**SMALL, **overrides})
    result = fit(cfg, data)
    model = UCRN(cfg.model_config(data.input_dims, data.seq_lens, data.output_dim))
    model.load_state_dict(result.model_state)
    return model.eval()


@pytest.fixture(scope="module")
def model(tiny) -> UCRN:
    return trained_model(tiny)


def _inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, t, d, generator=g) for t, d in ((12, 24), (16, 8), (14, 10))]


# ---- conditions ----------------------------------------------------------------------


def test_condition_lists_follow_the_models_modalities():
    lav = conditions("lav")
    assert len(lav) == 1 + 6 + 4 * 4 + 4 * 3
    missing = [c.modality for c in lav if c.condition == "missing"]
    assert missing == ["l", "a", "v", "la", "lv", "av"]  # never all three
    assert {c.modality for c in lav if c.condition == "noise"} == {"l", "a", "v", "all"}
    assert [c.modality for c in conditions("va") if c.condition == "missing"] == ["a", "v"]
    single = conditions("l")
    assert not [c for c in single if c.condition == "missing"]
    assert {c.modality for c in single if c.condition != "clean"} == {"l"}
    assert all(c.random == (c.condition in ("noise", "time_drop")) for c in lav)
    with pytest.raises(ValueError, match="not among the model's modalities"):
        Condition("missing", "v").keys("la")
    with pytest.raises(ValueError, match="level=-0.1"):
        Condition("noise", "l", -0.1)


@pytest.mark.parametrize("cond", conditions("lav")[1:], ids=lambda c: f"{c.condition}-"
                         f"{c.modality}-{c.level}")
def test_a_condition_changes_its_own_modalities_only(cond):
    inputs = _inputs(CHUNK + 44)  # crosses a chunk boundary
    before = [x.clone() for x in inputs]
    scales = {k: torch.full((x.shape[2],), 0.5) for k, x in zip(MODALITY_KEYS, inputs)}
    out = apply_condition(inputs, cond, "lav", scales, torch.Generator().manual_seed(1))
    touched = set(cond.keys("lav"))
    for key, x, y, x0 in zip(MODALITY_KEYS, inputs, out, before):
        assert torch.equal(x, x0)  # the data itself is never written
        if key not in touched:
            assert y is x
            continue
        assert y.shape == x.shape
        if cond.condition == "missing":
            assert not y.any()
        elif cond.condition == "noise":
            assert not torch.equal(y, x)
        else:  # whole steps zeroed, the others untouched
            zeroed = (y == 0).all(dim=2)
            assert torch.equal(y[~zeroed], x[~zeroed])
            assert 0.5 * cond.level < zeroed.float().mean() < 1.5 * cond.level


def test_noise_and_time_drop_have_the_stated_size():
    x = torch.randn(2000, 20, 3) * torch.tensor([1.0, 2.0, 5.0])
    scales = {"l": torch.tensor([0.1, 0.2, 0.5])}
    out = apply_condition([x, None, None], Condition("noise", "l", 0.1), "l", scales,
                          torch.Generator().manual_seed(0))
    ratio = (out[0] - x).std(dim=(0, 1)) / scales["l"]
    assert torch.allclose(ratio, torch.ones(3), atol=0.02)
    out = apply_condition([x, None, None], Condition("time_drop", "l", 0.3), "l", None,
                          torch.Generator().manual_seed(0))
    assert (out[0] == 0).all(dim=2).float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_feature_std_is_float64_and_chunked(tiny):
    train_split = tiny.splits["train"]
    whole = feature_std(train_split)
    small = feature_std(train_split, chunk_elems=1000)  # many blocks, one sample per block
    for key, name in zip(MODALITY_KEYS, ("text", "audio", "vision")):
        x = getattr(train_split, name).astype(np.float64)
        want = x.reshape(-1, x.shape[2]).std(axis=0)
        assert whole[key].dtype == np.float64 and whole[key].shape == want.shape
        np.testing.assert_allclose(whole[key], want, rtol=1e-12)
        np.testing.assert_allclose(small[key], want, rtol=1e-12)
    assert set(feature_std(train_split, "av")) == {"a", "v"}


# ---- evaluation: seeded, batch-size independent --------------------------------------


def _metrics(rows: list[dict]) -> list[dict]:
    """The numbers of each row (NaN compares unequal to itself, so it is left out)."""
    return [{k: v for k, v in r.items() if k in ("loss", "n", *REGRESSION_METRICS)
             and not (isinstance(v, float) and math.isnan(v))} for r in rows]


def test_zero_noise_is_clean_and_a_seed_repeats_exactly(model, tiny):
    conds = [Condition("clean"), Condition("noise", "all", 0.0), Condition("noise", "all", 1.0),
             Condition("time_drop", "all", 0.0), Condition("time_drop", "a", 0.5)]
    rows = robustness_rows(model, tiny, ("valid",), repeats=2, conds=conds)
    assert [(r["condition"], r["modality"], r["repeat"]) for r in rows] == [
        ("clean", "", 0), ("noise", "all", 0), ("noise", "all", 1), ("noise", "all", 0),
        ("noise", "all", 1), ("time_drop", "all", 0), ("time_drop", "all", 1),
        ("time_drop", "a", 0), ("time_drop", "a", 1)]
    clean = {k: v for k, v in rows[0].items() if k in REGRESSION_METRICS or k == "loss"}
    for zero in (rows[1], rows[2], rows[5], rows[6]):  # sigma 0 and rate 0: exactly clean
        assert {k: zero[k] for k in clean} == clean
    assert rows[3]["MAE"] != rows[4]["MAE"] != clean["MAE"]  # repeats draw anew
    again = robustness_rows(model, tiny, ("valid",), repeats=2, conds=conds)
    assert _metrics(again) == _metrics(rows)
    other = robustness_rows(model, tiny, ("valid",), repeats=2, conds=conds, seed=1)
    assert other[3]["MAE"] != rows[3]["MAE"]


def test_numbers_do_not_depend_on_the_batch_size(model):
    """The perturbed inputs the model sees are bit-identical for any batch size (the draws
    go by fixed chunks); the outputs too wherever the BLAS rounds a row the same whatever
    the batch (measured here: identical for 64, 256 and 600; up to 2.4e-7 apart for 1 or 7
    rows at a time), so the metrics are compared to 1e-6 besides."""
    data = load_dataset("synthetic", None, preset="tiny", seed=3)
    data.splits["valid"] = data.splits["train"]  # 512 samples: two chunks
    conds = [Condition("noise", "all", 0.5), Condition("time_drop", "all", 0.3)]
    seen: dict[int, list] = {}
    rows: dict[int, list] = {}
    for batch in (7, 64, 256, 600):
        seen[batch] = []
        hook = model.register_forward_pre_hook(
            lambda m, args, b=batch: seen[b].append([a.clone() for a in args]))
        try:
            rows[batch] = robustness_rows(model, data, ("valid",), repeats=1, conds=conds,
                                          batch_size=batch)
        finally:
            hook.remove()
    for batch in (7, 64, 600):
        for i in range(3):  # per modality, all forward calls concatenated
            assert torch.equal(torch.cat([c[i] for c in seen[batch]]),
                               torch.cat([c[i] for c in seen[256]]))
        for got, want in zip(rows[batch], rows[256]):
            assert got.keys() == want.keys()
            for k in REGRESSION_METRICS:
                assert got[k] == pytest.approx(want[k], abs=1e-6), (batch, k)


def test_a_model_that_ignores_a_modality_loses_nothing_without_it(tiny):
    data = copy.deepcopy(tiny)
    for split in data.splits.values():
        split.vision[:] = 0.0
    model = trained_model(data)
    with pytest.warns(RuntimeWarning, match="vision: 10 of 10 features are constant"):
        rows = robustness_rows(model, data, ("test",), repeats=1)
    by = {(r["condition"], r["modality"], r["level"]): r for r in rows}
    clean = by[("clean", "", 0.0)]
    assert not np.isnan(clean["MAE"])
    for key in (("missing", "v", 0.0), ("noise", "v", 1.0), ("time_drop", "v", 0.5)):
        assert _metrics([by[key]]) == _metrics([clean]), key
    assert by[("missing", "l", 0.0)]["MAE"] != clean["MAE"]


def test_rows_table_types_and_summary(model, tiny):
    rows = robustness_rows(model, tiny, ("test",), repeats=1,
                           conds=[Condition("clean"), Condition("missing", "l")])
    table = rows_table(rows)
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {"split": "string", "condition": "string", "modality": "string",
                     "level": "double", "repeat": "int64", "loss": "double",
                     **dict.fromkeys(REGRESSION_METRICS, "double"), "n": "int64"}
    text = summary_table(rows)
    assert "test (128 samples): MAE" in text and "+0.0000" in text
    assert f"{rows[1]['MAE'] - rows[0]['MAE']:+.4f}" in text


def test_iemocap_rows_have_its_metrics():
    data = load_dataset("synthetic", None, preset="iemocap_tiny")
    cfg = TrainConfig(**SMALL)
    torch.manual_seed(0)
    model = UCRN(cfg.model_config(data.input_dims, data.seq_lens, data.output_dim))
    rows = robustness_rows(model, data, ("valid",), repeats=1,
                           conds=[Condition("clean"), Condition("missing", "av")])
    assert {"loss", *IEMOCAP_METRICS} <= set(rows[0]) and "MAE" not in rows[0]
    assert "valid (128 samples): Mean_acc" in summary_table(rows) and "(- = worse)" in (
        summary_table(rows))


# ---- training options ----------------------------------------------------------------


class _BeforeTheOptions(Trainer):
    """Trainer._train_step as it was before modality_dropout and input_noise existed."""

    def _train_step(self, idx: torch.Tensor) -> None:
        cfg = self.cfg
        inputs, labels = self.splits["train"].batch(idx)
        with self._autocast(cache=False):
            out, reps = self.net(*inputs)
        total, loss, mjs = training_loss(out, labels, reps, self.task, cfg.jsd_weight,
                                         cfg.mjs_variant)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.opt.step()
        n = idx.numel()
        self._acc += torch.stack([loss.detach() * n, mjs.detach() * n])


def _history(result) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")}
            for r in result.history]


def test_options_off_train_exactly_as_before(tiny, monkeypatch):
    two = dict(SMALL, num_epochs=2)
    absent = fit(TrainConfig(**two), tiny)
    zero = fit(TrainConfig(**two, modality_dropout=0.0, input_noise=0.0), tiny)
    monkeypatch.setattr(train, "Trainer", _BeforeTheOptions)
    used: set[type] = set()
    before = fit(TrainConfig(**two), tiny, on_epoch=lambda e, r, tr: used.add(type(tr)))
    assert used == {_BeforeTheOptions}
    assert _history(absent) == _history(zero) == _history(before)
    assert absent.test == before.test
    assert Trainer(TrainConfig(**two), tiny)._augment is None


def test_options_on_change_training(tiny):
    two = dict(SMALL, num_epochs=2)
    plain = _history(fit(TrainConfig(**two), tiny))
    for option in ({"modality_dropout": 0.3}, {"input_noise": 0.5}):
        hist = _history(fit(TrainConfig(**two, **option), tiny))
        assert hist[-1]["train_loss"] != plain[-1]["train_loss"], option
    # one modality: nothing could be dropped, so the option is refused, not ignored
    with pytest.raises(ValueError, match="modality_dropout=0.5: needs two or more"):
        TrainConfig(**SMALL, modalities="l", modality_dropout=0.5)


def test_options_on_resume_exactly(tiny):
    """Their draws come from torch's RNG, which a checkpoint saves: a resumed run is the
    same run."""
    cfg = TrainConfig(**dict(SMALL, num_epochs=2, modality_dropout=0.3, input_noise=0.2))
    straight = fit(cfg, tiny)
    saved = {}

    def stop_at_1(epoch, record, trainer):
        saved["ckpt"] = copy.deepcopy(trainer.checkpoint())
        return True

    fit(cfg, tiny, on_epoch=stop_at_1)
    resumed = fit(cfg, tiny, resume=saved["ckpt"])
    assert _history(resumed) == _history(straight)


def test_modality_dropout_never_drops_every_modality():
    gen = torch.Generator().manual_seed(0)
    keep = modality_keep_mask(30000, 3, 0.45, CPU, gen)
    dropped = (~keep).sum(dim=1)
    assert dropped.max().item() == 1  # at most one per sample
    assert dropped.float().mean().item() == pytest.approx(0.45, abs=0.01)
    for j in range(3):  # uniform over the modalities
        assert (~keep[:, j]).float().mean().item() == pytest.approx(0.15, abs=0.01)
    two = modality_keep_mask(10000, 2, 0.99, CPU, gen)
    assert two.any(dim=1).all()
    # through the augmentation: a dropped modality is exactly zero, the others untouched
    split = Split(*[np.ones((4000, 3, 2), np.float32)] * 3, np.zeros(4000, np.float32),
                  np.arange(4000))
    aug = TrainingAugment("lav", 0.6, 0.0, split, CPU)
    ones = [torch.ones(4000, 3, 2) for _ in range(3)]
    out = aug(ones)
    alive = torch.stack([x.flatten(1).amax(dim=1) for x in out], dim=1)  # (B, 3): 1 or 0
    assert set(torch.unique(torch.cat([x.flatten() for x in out])).tolist()) == {0.0, 1.0}
    assert alive.sum(dim=1).min().item() >= 2
    assert (alive.sum(dim=1) == 2).float().mean().item() == pytest.approx(0.6, abs=0.03)


def test_input_noise_is_scaled_by_the_training_feature_std():
    rng = np.random.default_rng(0)
    scale = np.array([0.5, 2.0, 10.0], np.float32)
    feats = [(rng.standard_normal((400, 5, 3)) * scale).astype(np.float32) for _ in range(3)]
    split = Split(*feats, np.zeros(400, np.float32), np.arange(400))
    std = feature_std(split)["a"]
    aug = training_augment("av", 0.0, 0.2, split, CPU)
    x = [None, torch.zeros(3000, 5, 3), torch.zeros(3000, 5, 3)]
    out = aug(x)
    assert out[0] is None
    got = out[1].std(dim=(0, 1)).double().numpy()
    np.testing.assert_allclose(got, 0.2 * std, rtol=0.03)
    assert training_augment("av", 0.0, 0.0, split, CPU) is None


@pytest.mark.parametrize(("config", "needle"), [
    ({"modality_dropout": 1.0}, "modality_dropout=1.0: expected a probability in [0, 1)"),
    ({"modality_dropout": -0.1}, "modality_dropout=-0.1"),
    ({"input_noise": -1.0}, "input_noise=-1.0: expected 0 (off) to 100"),
    ({"input_noise": math.inf}, "input_noise=inf: expected a finite number"),
    ({"robust_metrics": True, "dataset": "iemocap"}, "regression only"),
    ({"select_metric": "robust_MAE", "preset": "iemocap_tiny"}, "regression only"),
])
def test_bad_option_values_are_one_line(config, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(config)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_are_searchable_and_robust_mae_selectable():
    validate_space({"modality_dropout": {"uniform": [0.0, 0.5]},
                    "input_noise": {"choice": [0.0, 0.1, 0.25]}}, "x", {})
    with pytest.raises(ValueError, match="modality_dropout=1.0"):
        validate_space({"modality_dropout": {"uniform": [0.0, 1.0]}}, "x", {})
    assert metric_mode("robust_MAE") == "min"
    assert TrainConfig(select_metric="robust_MAE").wants_robust_metrics()
    assert not TrainConfig().wants_robust_metrics()


# ---- robust_MAE ----------------------------------------------------------------------


def _count_forwards(trainer: Trainer) -> list[int]:
    calls = [0]
    trainer.model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_robust_mae_only_when_asked_and_equal_to_the_missing_one_mean(tiny):
    plain = Trainer(TrainConfig(**SMALL), tiny)
    calls = _count_forwards(plain)
    record = plain.evaluate("valid")
    assert "robust_MAE" not in record and calls[0] == 1  # 128 samples, one batch of 512
    robust = Trainer(TrainConfig(**SMALL, robust_metrics=True), tiny)
    robust.train_epoch()
    calls = _count_forwards(robust)
    record = robust.evaluate("valid")
    assert calls[0] == 1 + 3
    assert "robust_MAE" not in robust.evaluate("test")
    rows = robustness_rows(robust.model, tiny, ("valid",), batch_size=512,
                           conds=[Condition("missing", k) for k in "lav"])
    assert record["robust_MAE"] == float(np.mean([r["MAE"] for r in rows]))
    assert record["robust_MAE"] != record["MAE"]
    two = Trainer(TrainConfig(**SMALL, modalities="av", robust_metrics=True), tiny)
    split = two.splits["valid"]
    assert two.evaluate("valid")["robust_MAE"] == missing_one_mae(two.model, split, 512)
    assert missing_one_mae(two.model, split, 512) == float(np.mean([r["MAE"] for r in
        robustness_rows(two.model, tiny, ("valid",), batch_size=512,
                        conds=[Condition("missing", k) for k in "av"])]))
    # one modality: "missing" would be no input at all, so robust_MAE is refused
    with pytest.raises(ValueError, match="robust_MAE needs two or more modalities"):
        TrainConfig(**SMALL, modalities="a", robust_metrics=True)


def test_robust_mae_selects_and_leaves_training_alone(tiny):
    two = dict(SMALL, num_epochs=2)
    plain = fit(TrainConfig(**two), tiny)
    robust = fit(TrainConfig(**two, select_metric="robust_MAE"), tiny)
    assert all("robust_MAE" in r for r in robust.history)
    assert [{k: v for k, v in r.items() if k != "robust_MAE"}
            for r in _history(robust)] == _history(plain)
    best = min(robust.history, key=lambda r: r["robust_MAE"])
    assert robust.best_epoch == best["epoch"]


def test_robust_mae_is_refused_for_iemocap_data():
    data = load_dataset("synthetic", None, preset="iemocap_tiny")
    with pytest.raises(ValueError, match="regression only"):
        Trainer(TrainConfig(**SMALL, robust_metrics=True), data)


# ---- the command ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("robustness")
    assert cli.main(["train", "--num_epochs=1", "--d_model=8", "--heads=2", "--layers=1",
                     "--threads=1", "--out", str(tmp), "--name", "r"]) == 0
    return tmp / "r" / "checkpoint.pt"


def robustness(*args: object) -> int:
    return cli.main(["robustness", *map(str, args)])


def test_command_writes_one_row_per_condition_and_repeat(checkpoint, tmp_path, capsys):
    out = tmp_path / "rob.parquet"
    rc = robustness("--checkpoint", checkpoint, "--out", out, "--split", "both",
                    "--repeats", 2, "--batch_size", 100)
    stdout = capsys.readouterr().out
    assert rc == 0
    df = pd.read_parquet(out)
    per_split = 1 + 6 + (16 + 12) * 2
    assert len(df) == 2 * per_split
    assert list(df.columns) == ["split", "condition", "modality", "level", "repeat", "loss",
                                *REGRESSION_METRICS, "n"]
    assert str(df["level"].dtype) == "float64" and str(df["repeat"].dtype) == "int64"
    assert str(df["n"].dtype) == "int64" and (df["n"] == 128).all()
    for split in ("test", "valid"):
        part = df[df["split"] == split]
        counts = part.groupby("condition").size().to_dict()
        assert counts == {"clean": 1, "missing": 6, "noise": 32, "time_drop": 24}
        assert set(part[part["condition"].isin(["clean", "missing"])]["repeat"]) == {0}
        assert set(part[part["condition"] == "noise"]["repeat"]) == {0, 1}
        assert set(part[part["condition"] == "noise"]["level"]) == {0.1, 0.25, 0.5, 1.0}
        assert set(part[part["condition"] == "time_drop"]["level"]) == {0.1, 0.3, 0.5}
        assert part[part["condition"] == "clean"]["modality"].tolist() == [""]
    # the clean test row is training's own test evaluation of these weights
    final = json.loads((checkpoint.parent / "final.json").read_text())["test"]
    clean = df[(df["split"] == "test") & (df["condition"] == "clean")].iloc[0]
    assert clean["MAE"] == pytest.approx(final["MAE"], abs=1e-6)
    assert "test (128 samples): MAE" in stdout and "valid (128 samples)" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["rob.parquet"]  # no temporary file left


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(2048))


@pytest.mark.parametrize(("args", "needle"), [
    (["--checkpoint", "{bad}"], "not a readable checkpoint"),
    (["--split", "train"], "--split 'train': expected one of test, valid, both"),
    (["--repeats", "0"], "--repeats 0: expected an integer from 1 to 100"),
    (["--out", "{folder}"], "names a folder"),
    (["--seed", "-1"], "--seed -1"),
])
def test_command_errors_are_one_line_and_write_nothing(args, needle, checkpoint, tmp_path,
                                                        capsys):
    bad, folder = tmp_path / "bad.pt", tmp_path / "folder"
    _random_bytes(bad)
    folder.mkdir()
    out = tmp_path / "rob.parquet"
    args = [a.format(bad=bad, folder=folder) for a in args]
    flags = {"--checkpoint": str(checkpoint), "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        flags[flag] = value
    rc = robustness(*[x for kv in flags.items() for x in kv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err
    assert not out.exists() and not any(folder.iterdir())
