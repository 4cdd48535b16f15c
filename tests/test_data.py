"""Tests for ucrn.data: safe loading, validation, the synthetic generator and its CLI."""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from ucrn import data as D
from ucrn.convert import synth_main
from ucrn.data import DataError


def small_raw(seed: int = 0, **kw) -> dict:
    """A fast raw dict (fewer samples than tiny) for the validation tests."""
    opts = dict(n_train=20, n_valid=8, n_test=8)
    opts.update(kw)
    return D.make_synthetic("tiny", seed, **opts)


def count_nonfinite(raw: dict) -> dict[str, dict[str, int]]:
    return {s: {m: int((~np.isfinite(raw[s][m])).sum()) for m in D.MODALITIES} for s in D.SPLITS}


# ------------------------------------------------------------------ round trip


def test_round_trip_equals_from_raw(tmp_path: Path) -> None:
    raw = D.make_synthetic("tiny", 3)
    before = copy.deepcopy(raw)
    expected = count_nonfinite(raw)
    assert expected["train"]["audio"] > 0 and expected["train"]["vision"] > 0
    assert all(expected[s]["text"] == 0 for s in D.SPLITS)

    direct = D.from_raw(raw, "mem")
    for s in D.SPLITS:  # from_raw must not touch the caller's dict
        for k in (*D.MODALITIES, "labels"):
            np.testing.assert_array_equal(raw[s][k], before[s][k])

    path = D.write_mult_pickle(raw, tmp_path / "sub" / "x.pkl")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = D.load_mult_pickle(path)

    assert loaded.task == direct.task == "regression"
    assert loaded.source == str(path)
    assert loaded.nonfinite == direct.nonfinite == expected
    for s in D.SPLITS:
        a, b = loaded.splits[s], direct.splits[s]
        for m in D.MODALITIES:
            x = a.modality(m)
            assert x.dtype == np.float32 and np.isfinite(x).all()
            np.testing.assert_array_equal(x, b.modality(m))
            bad = ~np.isfinite(raw[s][m])
            assert (x[bad] == 0).all()
            np.testing.assert_array_equal(x[~bad], raw[s][m][~bad])
        assert a.labels.shape == (len(a),) and a.labels.dtype == np.float32
        np.testing.assert_array_equal(a.labels, raw[s]["labels"].reshape(-1))
        np.testing.assert_array_equal(a.ids, b.ids)
    assert loaded.splits["train"].ids[0] == "syn_train_00000|0.00|3.50"
    assert loaded.input_dims == (24, 8, 10)
    assert loaded.seq_lens == (12, 16, 14)
    assert loaded.output_dim == 1
    assert len(loaded.splits["train"]) == 512
    assert "train.audio=" in loaded.summary()


def test_float64_and_label_shapes_and_generated_ids() -> None:
    raw = small_raw(nonfinite_rate=0.0)
    for s in D.SPLITS:
        raw[s]["audio"] = raw[s]["audio"].astype(np.float64)
        del raw[s]["id"]
    raw["valid"]["labels"] = raw["valid"]["labels"].reshape(-1, 1)
    raw["test"]["labels"] = raw["test"]["labels"].reshape(-1)
    md = D.from_raw(raw, "mem")
    assert md.splits["train"].audio.dtype == np.float32
    assert md.splits["test"].labels.shape == (8,)
    assert list(md.splits["valid"].ids[:2]) == ["valid_000000", "valid_000001"]


def test_iemocap_labels_become_class_indices(tmp_path: Path) -> None:
    raw = D.make_synthetic("iemocap_tiny", 0, n_train=30, n_valid=10, n_test=10)
    assert raw["train"]["labels"].shape == (30, 4, 2)
    md = D.from_raw(raw, "mem")
    assert md.task == "iemocap" and md.output_dim == 8
    lab = md.splits["train"].labels
    assert lab.shape == (30, 4) and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, raw["train"]["labels"].argmax(-1))
    assert 0 < lab.mean() < 1  # both classes occur
    D.write_mult_pickle(raw, tmp_path / D.data_file_name("iemocap", False))
    assert D.load_dataset("iemocap", tmp_path).task == "iemocap"


# ------------------------------------------------------------------ safe unpickling


class _Evil:
    def __init__(self, func, args) -> None:  # noqa: ANN001
        self.func, self.args = func, args

    def __reduce__(self):  # noqa: ANN204
        return (self.func, self.args)


def test_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    raw = small_raw()
    raw["train"]["text"] = _Evil(os.system, (f"touch {marker}",))
    path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(DataError) as ei:
        D.load_mult_pickle(path)
    msg = str(ei.value)
    assert "refused to load" in msg and str(path) in msg
    assert f"names global '{os.system.__module__}.system'" in msg  # posix.system on Linux
    assert "only numpy arrays and plain containers are allowed" in msg
    assert "\n" not in msg
    assert not marker.exists()


def _global_call_pickle(module: str, name: str, args: tuple[str, ...], stack: bool) -> bytes:
    """A pickle calling module.name(*args), via GLOBAL (protocol 0-2) or STACK_GLOBAL (4+)."""

    def u(x: str) -> bytes:
        e = x.encode()
        return b"\x8c" + bytes([len(e)]) + e  # SHORT_BINUNICODE

    if stack:
        head = b"\x80\x04" + u(module) + u(name) + b"\x93"  # STACK_GLOBAL
    else:
        head = b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL
    return head + b"(" + b"".join(u(a) for a in args) + b"tR."


@pytest.mark.parametrize("stack", [False, True])
def test_refuses_builtins_open(tmp_path: Path, stack: bool) -> None:
    target = tmp_path / "CREATED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_global_call_pickle("builtins", "open", (str(target), "w"), stack))
    with pytest.raises(DataError, match=r"names global 'builtins\.open'"):
        D.load_mult_pickle(path)
    assert not target.exists()
    # the crafted pickle is live: an unrestricted load would create the file
    with open(path, "rb") as fh:
        pickle.load(fh).close()
    assert target.exists()


@pytest.mark.parametrize("proto", [2, 4, 5])
def test_refuses_io_open_any_protocol(tmp_path: Path, proto: int) -> None:
    target = tmp_path / "CREATED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": _Evil(open, (str(target), "w"))}, protocol=proto))
    with pytest.raises(DataError, match=r"names global 'io\.open'"):
        D.load_mult_pickle(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "glob", ["os.system", "posix.system", "subprocess.check_call", "builtins.exec", "numpy.load"]
)
def test_refuses_named_globals(tmp_path: Path, glob: str) -> None:
    marker = tmp_path / "MARKER2"
    path = tmp_path / "evil.pkl"
    module, name = glob.rsplit(".", 1)
    path.write_bytes(_global_call_pickle(module, name, (f"touch {marker}",), True))
    with pytest.raises(DataError, match=f"names global '{glob}'"):
        D.load_mult_pickle(path)
    assert not marker.exists()


def test_refuses_eval(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(eval, ("1+1",))))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        D.load_mult_pickle(path)


def test_old_numpy_core_names_and_python2_protocol(tmp_path: Path) -> None:
    """Files pickled by numpy 1.x name numpy.core.*; MulT-era files may use protocol 2."""
    raw = small_raw()
    blob = pickle.dumps(raw, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob)
    md = D.load_mult_pickle(path)
    np.testing.assert_array_equal(md.splits["train"].text, raw["train"]["text"])


# ------------------------------------------------------------------ validation errors


def _err(raw: object, *needles: str) -> str:
    with pytest.raises(DataError) as ei:
        D.from_raw(raw, "SRC")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("SRC")
    for n in needles:
        assert n in msg, msg
    return msg


def test_not_a_dict() -> None:
    _err([1, 2, 3], "top level", "list")


def test_missing_split() -> None:
    raw = small_raw()
    del raw["valid"]
    _err(raw, "missing split", "valid")


def test_split_not_a_dict() -> None:
    raw = small_raw()
    raw["test"] = [1]
    _err(raw, "'test'", "dict")


def test_missing_key() -> None:
    raw = small_raw()
    del raw["test"]["vision"]
    _err(raw, "'test'", "missing key", "vision")


def test_wrong_rank() -> None:
    raw = small_raw()
    raw["valid"]["audio"] = raw["valid"]["audio"][:, 0, :]
    _err(raw, "'valid'", "'audio'", "rank 3")


def test_non_numeric() -> None:
    raw = small_raw()
    raw["train"]["text"] = raw["train"]["text"].astype(object)
    _err(raw, "'train'", "'text'", "numeric")


def test_n_mismatch_modality() -> None:
    raw = small_raw()
    raw["train"]["vision"] = raw["train"]["vision"][:-1]
    _err(raw, "'train'", "'vision'", "N=20")


def test_n_mismatch_labels_and_id() -> None:
    raw = small_raw()
    raw["train"]["labels"] = raw["train"]["labels"][:-2]
    _err(raw, "'train'", "'labels'", "N=20")
    raw = small_raw()
    raw["test"]["id"] = raw["test"]["id"][:3]
    _err(raw, "'test'", "'id'", "N=8")


def test_dims_differ_across_splits() -> None:
    raw = small_raw()
    raw["test"]["audio"] = raw["test"]["audio"][:, :, :5]
    _err(raw, "'test'", "'audio'", "(16, 8)", "(16, 5)")


def test_wrong_label_shape() -> None:
    raw = small_raw()
    raw["valid"]["labels"] = np.zeros((8, 2), np.float32)
    _err(raw, "'valid'", "'labels'", "(N,1,1)")
    raw = small_raw()
    with pytest.raises(DataError, match=r"labels of shape \(N,4,2\) one-hot or \(N,4\) of 0/1 expected for iemocap"):
        D.from_raw(raw, "SRC", task="iemocap")
    iemo = D.make_synthetic("iemocap_tiny", 0, n_train=5, n_valid=5, n_test=5)
    with pytest.raises(DataError, match="expected for regression"):
        D.from_raw(iemo, "SRC", task="regression")


def test_bad_label_values() -> None:
    raw = small_raw()
    raw["train"]["labels"][0] = np.nan
    _err(raw, "'labels'", "finite")
    raw = small_raw()
    raw["train"]["labels"][0] = 7.0
    _err(raw, "'labels'", "[-3, 3]")


def test_empty_split() -> None:
    raw = small_raw()
    for k in (*D.MODALITIES, "labels", "id"):
        raw["test"][k] = raw["test"][k][:0]
    _err(raw, "'test'", "empty")


def test_all_nonfinite_modality_warns_and_zeros() -> None:
    raw = small_raw()
    raw["valid"]["vision"][:] = np.nan
    with pytest.warns(RuntimeWarning, match=r"'valid' key 'vision'.*non-finite"):
        md = D.from_raw(raw, "SRC")
    v = md.splits["valid"].vision
    assert (v == 0).all()
    assert md.nonfinite["valid"]["vision"] == v.size


def test_no_warning_for_sprinkled_nonfinite() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.from_raw(small_raw(), "SRC")


def test_missing_file_directory_truncated(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.pkl"):
        D.load_mult_pickle(tmp_path / "nope.pkl")
    with pytest.raises(DataError, match="directory"):
        D.load_mult_pickle(tmp_path)
    good = D.write_mult_pickle(small_raw(), tmp_path / "good.pkl")
    blob = good.read_bytes()
    for i, cut in enumerate((len(blob) // 2, 10, 0)):
        bad = tmp_path / f"trunc{i}.pkl"
        bad.write_bytes(blob[:cut])
        with pytest.raises(DataError) as ei:
            D.load_mult_pickle(bad)
        assert str(bad) in str(ei.value) and "\n" not in str(ei.value)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="junk.pkl"):
        D.load_mult_pickle(junk)


# ------------------------------------------------------------------ synthetic data


def test_synthetic_deterministic() -> None:
    a, b, c = small_raw(5), small_raw(5), small_raw(6)
    for s in D.SPLITS:
        for k in (*D.MODALITIES, "labels"):
            np.testing.assert_array_equal(a[s][k], b[s][k])  # NaN positions equal too
        np.testing.assert_array_equal(a[s]["id"], b[s]["id"])
    assert not np.array_equal(a["train"]["text"], c["train"]["text"])
    assert not np.array_equal(a["train"]["labels"], c["train"]["labels"])


def test_synthetic_raw_format() -> None:
    raw = small_raw()
    tr = raw["train"]
    assert set(tr) == {"text", "audio", "vision", "labels", "id"}
    assert all(tr[m].dtype == np.float32 for m in D.MODALITIES)
    assert tr["labels"].shape == (20, 1, 1) and tr["labels"].dtype == np.float32
    assert np.abs(tr["labels"]).max() <= 3.0
    assert tr["id"].shape == (20, 3) and tr["id"].dtype == object
    assert isinstance(tr["id"][0, 0], bytes)
    big = D.make_synthetic("tiny", 0, nonfinite_rate=0.05)["train"]["audio"]
    assert np.isneginf(big).any() and np.isnan(big).any()
    clean = D.make_synthetic("tiny", 0, nonfinite_rate=0.0)
    assert all(np.isfinite(clean[s][m]).all() for s in D.SPLITS for m in D.MODALITIES)


@pytest.mark.parametrize(
    ("preset", "seq", "dims"),
    [
        ("tiny", (12, 16, 14), (24, 8, 10)),
        ("mosi", (50, 375, 500), (300, 5, 20)),
        ("mosi_aligned", (50, 50, 50), (300, 5, 20)),
        ("mosei", (50, 500, 500), (300, 74, 35)),
        ("mosei_aligned", (50, 50, 50), (300, 74, 35)),
        ("iemocap_tiny", (12, 16, 14), (24, 8, 10)),
    ],
)
def test_preset_shapes(preset: str, seq: tuple, dims: tuple) -> None:
    cfg = D.PRESETS[preset]
    assert tuple(cfg["seq_lens"]) == seq and tuple(cfg["input_dims"]) == dims
    raw = D.make_synthetic(preset, 0, n_train=3, n_valid=2, n_test=1)
    md = D.from_raw(raw, preset)
    assert md.seq_lens == seq and md.input_dims == dims
    assert [len(md.splits[s]) for s in D.SPLITS] == [3, 2, 1]


def test_preset_sizes_as_published() -> None:
    assert D.PRESETS["tiny"]["n"] == (512, 128, 128)
    assert D.PRESETS["mosi"]["n"] == (1284, 229, 686)
    assert D.PRESETS["mosei"]["n"] == (16326, 1871, 4659)
    assert D.PRESETS["mosei_aligned"]["n"] == (16265, 1869, 4643)


def test_synthetic_overrides_and_bad_args() -> None:
    raw = D.make_synthetic(
        "tiny",
        1,
        n_train=4,
        n_valid=3,
        n_test=2,
        seq_lens=(3, 4, 5),
        input_dims=(6, 7, 8),
        noise=0.0,
        nonfinite_rate=0.0,
    )
    assert raw["valid"]["audio"].shape == (3, 4, 7)
    with pytest.raises(DataError, match="unknown preset 'nope'.*mosei"):
        D.make_synthetic("nope")
    with pytest.raises(DataError, match="n_valid"):
        D.make_synthetic("tiny", n_valid=0)
    with pytest.raises(DataError, match="seq_lens"):
        D.make_synthetic("tiny", seq_lens=(1, 2))
    with pytest.raises(DataError, match="nonfinite_rate"):
        D.make_synthetic("tiny", nonfinite_rate=1.5)


def _ols(x: np.ndarray, y: np.ndarray):  # noqa: ANN202
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    return lambda z: np.c_[z, np.ones(len(z))] @ w


def test_labels_reward_fusion() -> None:
    """OLS on time-mean-pooled features: trimodal < every single modality < constant (MAE)."""
    md = D.load_dataset("synthetic", None, preset="tiny", seed=0)
    tr, va = md.splits["train"], md.splits["valid"]
    const = np.abs(tr.labels.mean() - va.labels).mean()
    preds, mae = {}, {}
    for m in D.MODALITIES:
        f = _ols(tr.modality(m).mean(1), tr.labels)
        preds[m] = (f(tr.modality(m).mean(1)), f(va.modality(m).mean(1)))
        mae[m] = np.abs(preds[m][1] - va.labels).mean()

    def fused(i: int) -> np.ndarray:
        t, a, v = (preds[m][i] for m in D.MODALITIES)
        return np.c_[t, a, v, t * a, a * v, t * v]

    f = _ols(fused(0), tr.labels)
    mae_all = np.abs(f(fused(1)) - va.labels).mean()
    for m in D.MODALITIES:
        assert mae[m] < 0.97 * const, (m, mae[m], const)
        assert mae_all < 0.8 * mae[m], (m, mae_all, mae[m])
    assert mae_all < 0.6 * const


# ------------------------------------------------------------------ files, load_dataset, CLI


def test_data_file_names_and_resolve(tmp_path: Path) -> None:
    assert D.data_file_name("mosi", True) == "mosi_data.pkl"
    assert D.data_file_name("mosei_senti", False) == "mosei_senti_data_noalign.pkl"
    raw = small_raw()
    al = D.write_mult_pickle(raw, tmp_path / "mosi_data.pkl")
    un = D.write_mult_pickle(raw, tmp_path / "mosi_data_noalign.pkl")
    assert D.resolve_data_file("mosi", tmp_path, True) == al
    assert D.resolve_data_file("mosi", tmp_path, False) == un
    assert D.resolve_data_file("mosi", un, True) == un  # the file itself wins
    with pytest.raises(DataError, match="mosei_senti_data_noalign.pkl"):
        D.resolve_data_file("mosei_senti", tmp_path, False)
    with pytest.raises(DataError, match="does not exist"):
        D.resolve_data_file("mosi", tmp_path / "missing", False)
    md = D.load_dataset("mosi", tmp_path, aligned=True)
    assert md.source == str(al) and md.task == "regression"


def test_load_dataset_errors_and_synthetic(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mosei_senti"):
        D.load_dataset("cmu", tmp_path)
    with pytest.raises(DataError, match="data_path"):
        D.load_dataset("mosi", None)
    md = D.load_dataset("synthetic", None, preset="tiny", seed=2)
    assert md.source == "synthetic:tiny:seed=2"
    assert D.load_dataset("synthetic", None, aligned=True).seq_lens == (12, 12, 12)
    f = D.write_mult_pickle(small_raw(), tmp_path / "anything.pkl")
    assert len(D.load_dataset("synthetic", f).splits["train"]) == 20


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_main(["--preset", "tiny", "--out", str(tmp_path), "--seed", "1"]) == 0
    out = tmp_path / "synthetic_data_noalign.pkl"
    assert capsys.readouterr().out.strip() == str(out)
    md = D.load_dataset("synthetic", tmp_path)
    assert md.source == str(out) and len(md.splits["train"]) == 512
    assert synth_main(["--preset", "tiny", "--out", str(tmp_path), "--aligned"]) == 0
    assert (tmp_path / "synthetic_data.pkl").is_file()
    assert synth_main(["--preset", "iemocap_tiny", "--out", str(tmp_path)]) == 0
    assert D.load_dataset("iemocap", tmp_path).task == "iemocap"
    capsys.readouterr()
    for argv in (
        ["--preset", "nope", "--out", str(tmp_path)],
        ["--preset", "tiny"],
        ["--out", str(tmp_path), "--seed", "x"],
        ["--preset", "iemocap_tiny", "--aligned", "--out", str(tmp_path)],
    ):
        assert synth_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
