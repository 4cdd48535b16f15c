"""`python -m ucrn predict`: one row per segment with the data's own ids, the metrics of
training's test evaluation, and one-line errors that leave no output file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ucrn import cli
from ucrn.data import load_dataset, make_synthetic, write_mult_pickle
from ucrn.metrics import IEMOCAP_EMOTIONS

SMALL = ["--num_epochs=1", "--d_model=12", "--num_heads=2", "--nlevels=1", "--threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 1-epoch tiny run (synthetic tiny data: 512/128/128) and the data as a pickle."""
    tmp = tmp_path_factory.mktemp("predict")
    assert cli.main(["train", *SMALL, "--out", str(tmp), "--name", "p"]) == 0
    write_mult_pickle(make_synthetic("tiny", seed=0), tmp / "synthetic_data_noalign.pkl")
    return tmp


def predict(*args: object) -> int:
    return cli.main(["predict", *map(str, args)])


def test_one_row_per_segment_with_the_data_ids(trained, tmp_path, capsys):
    out = tmp_path / "preds.parquet"
    data_file = trained / "synthetic_data_noalign.pkl"
    rc = predict("--checkpoint", trained / "p" / "checkpoint.pt", "--dataset", "synthetic",
                 "--data_path", data_file, "--out", out, "--batch_size", 50)
    stdout = capsys.readouterr().out
    assert rc == 0
    df = pd.read_parquet(out)
    test = load_dataset("synthetic", data_file).splits["test"]
    assert len(df) == len(test) == 128
    assert list(df.columns) == ["id", "prediction", "label"]
    assert df["id"].tolist() == test.ids.tolist()
    np.testing.assert_allclose(df["label"], test.labels, rtol=0, atol=1e-6)
    # the same weights on the same split: training's own test numbers
    final = json.loads((trained / "p" / "final.json").read_text())["test"]
    mae = float(np.mean(np.abs(df["prediction"] - df["label"])))
    assert mae == pytest.approx(final["MAE"], abs=1e-5)
    assert f"MAE {final['MAE']:.4f}" in stdout and "test (128 segments" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["preds.parquet"]  # no temp file left


def test_iemocap_columns(tmp_path, capsys):
    write_mult_pickle(make_synthetic("iemocap_tiny", seed=1), tmp_path / "iemocap_data_noalign.pkl")
    assert cli.main(["train", *SMALL, "--dataset", "iemocap", "--data_path", str(tmp_path),
                     "--out", str(tmp_path), "--name", "iem"]) == 0
    out = tmp_path / "iem.parquet"
    rc = predict("--checkpoint", tmp_path / "iem" / "checkpoint.pt", "--dataset", "iemocap",
                 "--data_path", tmp_path, "--split", "valid", "--out", out)
    capsys.readouterr()
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 128
    for i, emo in enumerate(IEMOCAP_EMOTIONS):
        assert set(df[f"{emo}_pred"]) <= {0, 1}
        expected = (df[f"logit_{2 * i + 1}"] > df[f"logit_{2 * i}"]).astype(int)
        assert (df[f"{emo}_pred"] == expected).all()
        assert f"{emo}_label" in df.columns
    assert [f"logit_{j}" for j in range(8)] == [c for c in df.columns if c.startswith("logit_")]


def _random_bytes(path: Path, ckpt: Path) -> None:
    path.write_bytes(os.urandom(2048))


def _odd_protocol(path: Path, ckpt: Path) -> None:
    """A pickle of protocol 167: torch warns about it before it fails (about 1 in 256 random files
    starts so), and its warning was a second line."""
    path.write_bytes(b"\x80\xa7" + os.urandom(2048))


def _truncated(path: Path, ckpt: Path) -> None:
    path.write_bytes(ckpt.read_bytes()[:1500])


def _no_state_dict(path: Path, ckpt: Path) -> None:
    bundle = torch.load(ckpt, weights_only=True)
    del bundle["state_dict"]
    torch.save(bundle, path)


def _protocol_4(path: Path, ckpt: Path) -> None:
    """A whole, valid torch file whose pickle is of protocol 4: the safe unpickler lacks its
    opcodes, and the file was called "truncated or corrupt"."""
    torch.save(torch.load(ckpt, weights_only=True), path, pickle_protocol=4)


def _weights_as(change):
    """Weights of another kind: int64 ones were cast without a word (MAE 8.6e10, exit 0),
    complex ones with torch's warning naming neither file nor key; sparse and meta ones
    gave load_state_dict's traceback."""
    def make(path: Path, ckpt: Path) -> None:
        bundle = torch.load(ckpt, weights_only=True)
        k = next(k for k, v in bundle["state_dict"].items() if v.dim() == 2)
        bundle["state_dict"][k] = change(bundle["state_dict"][k])
        torch.save(bundle, path)
    return make


def _weights_of(dtype: torch.dtype):
    return _weights_as(lambda w: (w * 1000).to(dtype))


@pytest.mark.parametrize("make,needle", [(_random_bytes, "not a readable checkpoint"),
                                         (_odd_protocol, "not a readable checkpoint"),
                                         (_truncated, "not a readable checkpoint"),
                                         (_no_state_dict, "'state_dict'"),
                                         (_protocol_4, "pickle opcode 149"),
                                         (_weights_of(torch.int64), "torch.int64 values"),
                                         (_weights_of(torch.complex64), "torch.complex64"),
                                         (_weights_as(lambda w: w.to_sparse()), "sparse_coo"),
                                         (_weights_as(lambda w: torch.empty_like(w, device="meta")),
                                          "a meta tensor")],
                         ids=["random-bytes", "odd-protocol", "truncated", "missing-key",
                              "protocol-4", "int64-weights", "complex-weights",
                              "sparse-weights", "meta-weights"])
def test_bad_checkpoint_is_one_line_and_no_output(make, needle, trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    make(bad, trained / "p" / "checkpoint.pt")
    out = tmp_path / "out" / "preds.parquet"
    rc = predict("--checkpoint", bad, "--data_path", trained / "synthetic_data_noalign.pkl",
                 "--out", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and str(bad) in err[0] and needle in err[0]
    assert not out.exists() and not out.parent.exists()


def test_data_errors(trained, tmp_path, capsys):
    ckpt = trained / "p" / "checkpoint.pt"
    out = tmp_path / "preds.parquet"
    mosi = tmp_path / "mosi_data_noalign.pkl"
    write_mult_pickle(make_synthetic("mosi", seed=0, n_train=4, n_valid=4, n_test=4), mosi)
    cases = [
        (["--dataset", "mosi", "--data_path", tmp_path], "input_dims (300, 5, 20)"),
        (["--data_path", tmp_path / "missing.pkl"], "missing.pkl"),
        (["--split", "dev"], "--split 'dev'"),
    ]
    for extra, needle in cases:
        rc = predict("--checkpoint", ckpt, "--out", out, *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (extra, err)
        assert not out.exists()
    # the mismatch message names both sides
    predict("--checkpoint", ckpt, "--out", out, "--dataset", "mosi", "--data_path", tmp_path)
    err = capsys.readouterr().err
    assert "input_dims (24, 8, 10)" in err and str(ckpt) in err and str(mosi) in err
