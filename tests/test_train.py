"""The one-trial trainer: it learns, fusion pays, it is deterministic and resumable."""

import numpy as np
import pytest
import torch

from ucrn.data import load_dataset
from ucrn.metrics import regression_metrics
from ucrn.train import TrainConfig, fit

FAST = dict(d_model=16, heads=2, layers=2, num_epochs=6, batch_size=32, lr=2e-3, threads=1,
            out_dropout=0.1, embed_dropout=0.1)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", None, preset="tiny", seed=0)


def constant_mae(data) -> float:
    mean = float(data.splits["train"].labels.mean())
    labels = data.splits["valid"].labels
    return regression_metrics(np.full_like(labels, mean), labels)["MAE"]


def test_trained_model_beats_constant_predictor(tiny):
    result = fit(TrainConfig(**FAST), tiny)
    base = constant_mae(tiny)
    assert result.status == "completed"
    assert len(result.history) == FAST["num_epochs"]
    assert result.best["MAE"] < 0.75 * base, (result.best["MAE"], base)
    assert set(result.test) >= {"MAE", "Corr", "Has0_acc_2", "Non0_F1_score", "loss"}
    assert result.best_epoch == min(result.history, key=lambda r: r["MAE"])["epoch"]


@pytest.mark.slow
def test_trimodal_beats_every_single_modality(tiny):
    budget = dict(FAST, num_epochs=8)
    maes = {m: fit(TrainConfig(**budget, modalities=m), tiny).best["MAE"] for m in ("l", "a", "v", "lav")}
    best_single = min(maes["l"], maes["a"], maes["v"])
    assert maes["lav"] < 0.9 * best_single, maes


def test_same_seed_same_numbers(tiny):
    cfg = TrainConfig(**dict(FAST, num_epochs=2))
    a, b = fit(cfg, tiny), fit(cfg, tiny)
    assert all(_same(ra, rb) for ra, rb in zip(a.history, b.history))
    c = fit(TrainConfig(**dict(FAST, num_epochs=2, seed=7)), tiny)
    assert c.history[-1]["MAE"] != a.history[-1]["MAE"]


def _same(ra: dict, rb: dict) -> bool:
    keys = set(ra) - {"seconds", "train_seconds"}
    return all(ra[k] == rb[k] or (np.isnan(ra[k]) and np.isnan(rb[k])) for k in keys)


def test_resume_continues_exactly(tiny):
    """Stop after 2 epochs, resume from the checkpoint: same numbers as 4 epochs straight."""
    cfg = TrainConfig(**dict(FAST, num_epochs=4))
    straight = fit(cfg, tiny)
    saved = {}

    def stop_at_2(epoch, record, trainer):
        if epoch == 2:
            saved["ckpt"] = torch.load(_roundtrip(trainer.checkpoint()), weights_only=True)
            return True
        return False

    first = fit(cfg, tiny, on_epoch=stop_at_2)
    assert first.status == "stopped" and len(first.history) == 2
    resumed = fit(cfg, tiny, resume=saved["ckpt"])
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert all(_same(ra, rb) for ra, rb in zip(straight.history, resumed.history))
    assert resumed.test["MAE"] == straight.test["MAE"]


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_diverging_training_is_reported_not_best(tiny):
    cfg = TrainConfig(**dict(FAST, num_epochs=3, lr=1e12, clip=0.0, optim="SGD"))
    result = fit(cfg, tiny)
    assert result.status == "diverged"
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_iemocap_task_trains():
    data = load_dataset("synthetic", None, preset="iemocap_tiny", seed=0)
    result = fit(TrainConfig(**dict(FAST, num_epochs=2)), data)
    assert result.status == "completed"
    assert "Mean_acc" in result.best and "Mean_F1" in result.test
    assert 0.0 <= result.best["Mean_acc"] <= 1.0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"lr": -1}, "lr=-1"),
        ({"heads": 7}, "heads=7 does not divide d_model=30"),
        ({"optim": "Adagrad"}, "optim='Adagrad'"),
        ({"layer": 3}, "unknown key 'layer' (did you mean 'layers'?)"),
        ({"batch_size": "big"}, "batch_size='big'"),
        ({"select_metric": "R2"}, "select_metric"),
    ],
)
def test_bad_config_names_the_value(bad, needle):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(bad)
    assert needle in str(err.value)
