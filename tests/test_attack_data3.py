"""The third attack on the data path, each finding as the class it belongs to: segment ids
that collapse on the way to predict's output, label shapes the dataset does not have,
features float32 cannot hold (and runs whose validation went NaN), damaged .npz archives,
two label keys that disagree, a converted folder that forgot its dataset, and scoring a
checkpoint on data of another dataset (docs/reliability.md; docs/data.md)."""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ucrn import cli
from ucrn.config import TrainConfig
from ucrn.convert import convert_main, to_mmsa
from ucrn.data import (
    MMSA_DIRS,
    NPZ_FILES,
    DataError,
    load_dataset,
    make_synthetic,
    resolve_dataset,
    write_mult_pickle,
)
from ucrn.train import Trainer, fit

SMALL = dict(n_train=48, n_valid=16, n_test=16)
TRAIN = ["--num_epochs", "1", "--d_model", "8", "--heads", "2", "--layers", "1",
         "--threads", "1"]


def _mmsa_raw(dataset: str = "mosi", seed: int = 0) -> dict:
    return to_mmsa(make_synthetic("tiny", seed, **SMALL), dataset, seed)


def _write_mmsa(raw: dict, folder: Path, dataset: str = "mosi") -> Path:
    return write_mult_pickle(raw, folder / MMSA_DIRS[dataset] / "Processed" / "unaligned_12.pkl")


def _npz(folder: Path, change=None) -> Path:
    raw = make_synthetic("tiny", 0, **SMALL)
    arrays = {s: {"text": raw[s]["text"], "audio": raw[s]["audio"], "vision": raw[s]["vision"],
                  "labels": raw[s]["labels"].reshape(-1)} for s in raw}
    if change is not None:
        change(arrays)
    folder.mkdir(parents=True, exist_ok=True)
    for split, a in arrays.items():
        np.savez(folder / f"{split}.npz", **a)
    return folder


def _one_line(capsys, rc: int, code: int = 2) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if not ln.startswith("warning:")]
    assert rc == code and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def _refused(path: Path, *needles: str, dataset: str = "mosi") -> str:
    """load_dataset refuses with one DataError line naming the file and each needle, and
    numpy says nothing of its own on the way (warnings are errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as e:
            load_dataset(dataset, path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ---- 1. segment ids: exactly as in the file, or refused -------------------------------

# pairs of ids that differ in the file; each once came out of `ucrn predict` as one id (NUL:
# Arrow cuts a numpy string there; a trailing NUL vanished in numpy's fixed-width str), or
# would read as one after decoding or joining
ID_CASES = {
    "nul-inside": (["clip\x00a", "clip\x00b"], "id 5 (", "control character"),
    "nul-trailing": (["clip\x00", "clip"], "id 5 (", "control character"),
    "newline": (["clip\n1", "clip 1"], "id 5 (", "control character"),
    "escape": (["\x1b[2Jclip", "clip"], "id 5 (", "control character"),
    "c1-next-line": (["clip\x85", "clip"], "id 5 (", "control character"),
    "line-separator": (["clip\u2028", "clip"], "id 5 (", "control character"),
    "right-to-left-override": (["clip\u202e1", "clip1"], "id 5 (", "invisible one"),
    "zero-width-space": (["cl\u200bip", "clip"], "id 5 (", "invisible one"),
    "utf8-vs-latin1": ([b"caf\xc3\xa9", b"caf\xe9"], "ids 5 (", "both read as"),
    "surrogate-vs-its-escape": (["x\udc80", "x\\udc80"], "ids 5 (", "both read as"),
    "number-vs-text": ([7, "7"], "ids 5 (", "both read as"),
}


@pytest.mark.parametrize("case", list(ID_CASES))
def test_ids_that_would_collapse_are_refused_naming_split_key_and_index(case, tmp_path):
    pair, index, needle = ID_CASES[case]
    raw = _mmsa_raw()
    raw["test"]["id"][5:7] = pair
    path = _write_mmsa(raw, tmp_path)
    msg = _refused(path, "split 'test' key 'id'", index, needle)
    assert "and 6 (" in msg or index.startswith("id ")


def test_ids_that_differ_only_in_their_unicode_form_are_kept_and_said(tmp_path):
    """'café' composed (NFC) and decomposed (e + U+0301) look the same: both are kept as
    the distinct ids they are in the file, with a warning naming them."""
    raw = _mmsa_raw()
    raw["test"]["id"][5:7] = ["caf\u00e9", "cafe\u0301"]
    path = _write_mmsa(raw, tmp_path)
    with pytest.warns(RuntimeWarning, match=r"split 'test' key 'id': 1 id\(s\) look like an "
                      r"earlier id but are another Unicode form of it \(first: 'caf\\xe9' at 5"):
        ids = load_dataset("mosi", path).splits["test"].ids.tolist()
    assert ids[5:7] == ["caf\u00e9", "cafe\u0301"]


def test_mult_id_rows_that_join_into_one_id_are_refused(tmp_path):
    raw = make_synthetic("tiny", 0, **SMALL)
    ids = raw["valid"]["id"]
    ids[0] = np.array([b"v|1", b"2", b"3"], dtype=object)
    ids[1] = np.array([b"v", b"1|2", b"3"], dtype=object)
    path = write_mult_pickle(raw, tmp_path / "mosi_data_noalign.pkl")
    _refused(path, "split 'valid' key 'id'", "ids 0", "and 1", "both read as 'v|1|2|3'")


@pytest.mark.parametrize("bad", [None, ["a", "b"], {"a": 1}], ids=["none", "list", "dict"])
def test_ids_that_are_not_strings_or_numbers_are_refused(bad, tmp_path):
    """str(None) or str(['a', 'b']) would be a made-up id (a ragged list of lists was one)."""
    raw = _mmsa_raw()
    raw["train"]["id"][4] = bad
    _refused(_write_mmsa(raw, tmp_path), "split 'train' key 'id': id 4 holds a")


def test_refused_ids_are_one_line_in_the_commands_and_nothing_is_written(tmp_path, capsys):
    raw = _mmsa_raw()
    raw["train"]["id"][0] = "a\x00"
    path = _write_mmsa(raw, tmp_path)
    rc = cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp_path / "r")])
    assert "key 'id': id 0" in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_ids_round_trip_exactly_to_predicts_output(tmp_path, capsys):
    raw = _mmsa_raw()
    odd = ["a b", "a  b", "a|b", "ä", "a\u00e4", "emoji \U0001f600", "x\udc80",
           "'quoted'", "trailing space ", " leading"]
    raw["test"]["id"][:len(odd)] = odd
    path = _write_mmsa(raw, tmp_path)
    assert cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp_path / "r"),
                     "--name", "m"]) == 0
    out = tmp_path / "p.parquet"
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "r/m/checkpoint.pt"),
                     "--out", str(out)]) == 0, capsys.readouterr().err
    got = pd.read_parquet(out)["id"].tolist()
    want = load_dataset("mosi", path).splits["test"].ids.tolist()
    assert got == want and len(set(got)) == len(got) == SMALL["n_test"]
    assert got[:len(odd)] == [*odd[:6], "x\\udc80", *odd[7:]]


def test_exact_duplicate_ids_are_one_warning_and_kept(tmp_path):
    raw = _mmsa_raw()
    raw["valid"]["id"][3] = raw["valid"]["id"][1]
    path = _write_mmsa(raw, tmp_path)
    with pytest.warns(RuntimeWarning) as rec:
        data = load_dataset("mosi", path)
    lines = [str(w.message) for w in rec if "key 'id'" in str(w.message)]
    assert len(lines) == 1 and "split 'valid'" in lines[0] and "at 1 and 3" in lines[0]
    ids = data.splits["valid"].ids
    assert ids[1] == ids[3] and len(ids) == SMALL["n_valid"]


# ---- 2. label shapes checked against the dataset at load --------------------------------

LABEL_SHAPES = {
    "n-4-1": (lambda n: np.zeros((n, 4, 1), np.float32), "custom",
              "labels of shape (N,1,1), (N,1) or (N,) expected for regression"),
    "n-2": (lambda n: np.zeros((n, 2), np.float32), "custom", "got (48, 2)"),
    "n-4-3": (lambda n: np.zeros((n, 4, 3), np.float32), "custom", "got (48, 4, 3)"),
    "n-4-not-0-1": (lambda n: np.full((n, 4), 0.5, np.float32), "custom",
                    "(N,4) of 0/1 expected for iemocap (task read off split 'train' labels"),
    "emotions-as-mosi": (lambda n: np.zeros((n, 4), np.float32), "mosi",
                         "expected for regression (dataset mosi; N=48), got (48, 4); that is "
                         "IEMOCAP's emotion shape"),
    "one-hot-as-sims": (lambda n: np.zeros((n, 4, 2), np.float32), "sims",
                        "expected for sims (dataset sims; N=48)"),
    "sentiment-as-iemocap": (lambda n: np.zeros(n, np.float32), "iemocap",
                             "expected for iemocap (dataset iemocap; N=48), got shape (48,)"),
}


@pytest.mark.parametrize("case", list(LABEL_SHAPES))
def test_label_shapes_the_dataset_has_not_are_one_line_at_load(case, tmp_path, capsys):
    make, dataset, needle = LABEL_SHAPES[case]
    folder = _npz(tmp_path / "own", lambda a: a["train"].update(labels=make(48)))
    _refused(folder, "train.npz", "split 'train' key 'labels'", needle, dataset=dataset)
    rc = cli.main(["train", "--data_path", str(folder), "--dataset", dataset, *TRAIN,
                   "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_a_selection_metric_the_task_has_not_is_one_line_before_training(tmp_path, capsys):
    """(N, 4) labels of 0/1 are IEMOCAP's emotions; MAE was a KeyError after epoch 1."""
    rng = np.random.default_rng(0)
    folder = _npz(tmp_path / "emo", lambda a: [a[s].update(
        labels=rng.integers(0, 2, (len(a[s]["labels"]), 4)).astype(np.float32)) for s in a])
    assert load_dataset("custom", folder).task == "iemocap"
    rc = cli.main(["train", "--data_path", str(folder), "--select_metric", "MAE", *TRAIN,
                   "--out", str(tmp_path / "r")])
    line = _one_line(capsys, rc)
    assert "select_metric=MAE: the data's task is iemocap, which has no MAE" in line
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
    data = load_dataset("synthetic", None)
    with pytest.raises(ValueError, match="select_metric=Mean_acc: the data's task is regression"):
        Trainer(TrainConfig(d_model=8, heads=2, layers=1, threads=1,
                            select_metric="Mean_acc"), data)


# ---- 3. features float32 cannot hold; runs whose validation went non-finite -------------

@pytest.mark.parametrize("split,key,value,dtype", [
    ("valid", "audio", 1e39, np.float64),
    ("train", "text", -3.5e38, np.float64),
    ("test", "vision", 1e300, np.float64),
    ("train", "audio", "1e4000", np.longdouble),
])
def test_features_beyond_float32_are_refused_naming_split_and_key(split, key, value, dtype,
                                                                   tmp_path):
    def change(arrays: dict) -> None:
        a = np.nan_to_num(arrays[split][key]).astype(dtype)
        a[2, 1, 0] = dtype(value)
        arrays[split][key] = a

    folder = _npz(tmp_path / "own", change)  # the safe unpickler refuses long doubles
    _refused(folder, f"{split}.npz: split {split!r} key {key!r}", "beyond float32's range",
             "sample 2", dataset="custom")
    if dtype is np.float64:  # the same in a pickle
        raw = make_synthetic("tiny", 0, **SMALL)
        change(raw)
        path = write_mult_pickle(raw, tmp_path / "mosi_data_noalign.pkl")
        _refused(path, f"split {split!r} key {key!r}", "beyond float32's range", "sample 2")


def test_real_inf_and_nan_in_float64_features_are_still_zeroed_and_counted(tmp_path):
    raw = make_synthetic("tiny", 0, **SMALL)
    for s in raw:
        raw[s]["audio"] = raw[s]["audio"].astype(np.float64)
    raw["train"]["audio"][0, 0, :2] = [-np.inf, np.nan]
    want = int((~np.isfinite(raw["train"]["audio"])).sum())
    path = write_mult_pickle(raw, tmp_path / "mosi_data_noalign.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset("mosi", path)
    assert data.nonfinite["train"]["audio"] == want and np.isfinite(data.splits["train"].audio).all()


def test_huge_float64_labels_are_one_line_without_numpys_warning(tmp_path):
    raw = _mmsa_raw()
    raw["valid"]["regression_labels"] = np.full(16, 1e300)
    _refused(_write_mmsa(raw, tmp_path), "split 'valid' key 'regression_labels'",
             "expected sentiment labels in [-3, 3]")


def test_a_run_whose_validation_goes_nan_is_diverged_not_completed(tmp_path, capsys):
    """float32-finite features near its limit in the valid split: the model's outputs there
    are NaN; the run was `completed` with `valid MAE nan`."""
    raw = make_synthetic("tiny", 0, **SMALL)
    raw["valid"]["audio"][:] = 3e38
    path = write_mult_pickle(raw, tmp_path / "d" / "synthetic_data_noalign.pkl")
    data = load_dataset("synthetic", path)
    cfg = dict(d_model=8, heads=2, layers=1, threads=1, num_epochs=2)
    with pytest.warns(RuntimeWarning, match="diverged in epoch 1: the validation loss"):
        result = fit(cfg, data)
    assert result.status == "diverged" and result.history == []
    assert "feature magnitude" in result.reason and "split 'valid' audio" in result.reason
    rc = cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp_path / "r"),
                   "--name", "n"])
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "diverged" in ln]
    assert rc == 1 and len(warning) == 1 and warning[0].startswith("warning: seed 1234: ")
    assert "epoch 1: the validation loss" in warning[0] and "feature magnitude" in warning[0]
    final = (tmp_path / "r/n/final.json").read_text()
    assert json.loads(final)["status"] == "diverged" and "NaN" not in final


def test_a_diverging_learning_rate_is_named_as_the_likely_cause():
    data = load_dataset("synthetic", None)
    cfg = dict(d_model=8, heads=2, layers=1, threads=1, num_epochs=2, lr=1e30)
    with pytest.warns(RuntimeWarning, match="diverged in epoch"):
        result = fit(cfg, data)
    assert result.status == "diverged" and "learning rate (lr 1e+30" in result.reason


# ---- 4. .npz archives numpy would advise to unpickle -----------------------------------

def _prefixed(p: Path) -> None:
    p.write_bytes(b"#!junk before the archive\n" + p.read_bytes())


def _pk_prefixed(p: Path) -> None:
    p.write_bytes(b"PK\x03\x04" + bytes(40) + p.read_bytes())


def _pickle(p: Path) -> None:
    p.write_bytes(pickle.dumps({"text": [1, 2, 3]}))


def _npy(p: Path) -> None:
    with open(p, "wb") as fh:
        np.save(fh, np.zeros(3))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _damaged_deflate(p: Path) -> None:
    with np.load(p) as z:
        arrays = dict(z)
    np.savez_compressed(p, **arrays)
    b = bytearray(p.read_bytes())
    for k in range(60, 120):
        b[k] ^= 0x55
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [_prefixed, _pk_prefixed, _pickle, _npy, _empty,
                                    _damaged_deflate], ids=lambda f: f.__name__.strip("_"))
def test_damaged_npz_is_one_line_that_never_advises_unpickling(damage, tmp_path, capsys):
    folder = _npz(tmp_path / "own")
    damage(folder / "valid.npz")
    msg = _refused(folder / "valid.npz", "not a readable .np", dataset="custom")
    assert "pickle" not in msg
    rc = cli.main(["train", "--data_path", str(folder), *TRAIN, "--out", str(tmp_path / "r")])
    line = _one_line(capsys, rc)
    assert "valid.npz" in line and "not a readable .np" in line and "pickle" not in line
    assert not (tmp_path / "r").exists()


# ---- 5. two label keys ------------------------------------------------------------------

def test_labels_under_two_keys_must_agree_and_the_used_key_is_said(tmp_path, capsys):
    raw = _mmsa_raw()
    for s in raw:
        raw[s]["labels"] = raw[s]["regression_labels"].reshape(-1, 1, 1).copy()
    path = _write_mmsa(raw, tmp_path)
    data = load_dataset("mosi", path)  # they agree: MMSA's key, and the summary says it
    assert data.format == "mmsa" and "labels from 'regression_labels'" in data.summary()
    mult = load_dataset("mosi", path, data_format="mult")
    assert mult.label_key == "labels"
    np.testing.assert_array_equal(mult.splits["test"].labels, data.splits["test"].labels)
    raw["valid"]["labels"][3] += 0.5
    write_mult_pickle(raw, path)
    _refused(path, "split 'valid': keys 'regression_labels' and 'labels' both hold labels and "
             "disagree", "sample 3")
    rc = cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp_path / "r")])
    assert "disagree" in _one_line(capsys, rc) and not (tmp_path / "r").exists()


def test_an_npz_with_a_second_label_key_that_disagrees_is_refused(tmp_path):
    folder = _npz(tmp_path / "own", lambda a: a["test"].update(
        regression_labels=-a["test"]["labels"]))
    _refused(folder, "test.npz: split 'test': keys 'labels' and 'regression_labels'",
             dataset="custom")


# ---- 6. `ucrn convert` keeps the dataset ------------------------------------------------

def test_a_converted_sims_folder_trains_as_sims(tmp_path, capsys):
    path = _write_mmsa(_mmsa_raw("sims"), tmp_path, "sims")
    out = tmp_path / "npz"
    assert convert_main(["--data_path", str(path), "--out", str(out)]) == 0
    r = resolve_dataset(None, out, False)
    assert r.dataset == "sims" and "recorded in its files" in r.note
    data = load_dataset("custom", out)
    assert (data.dataset, data.task) == ("sims", "sims")
    rc = cli.main(["train", "--data_path", str(out), *TRAIN, "--out", str(tmp_path / "r"),
                   "--name", "c"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r/c/config.json").read_text())["dataset"] == "sims"
    test = json.loads((tmp_path / "r/c/final.json").read_text())["test"]
    assert "Mult_acc_3" in test and "Has0_acc_2" not in test
    capsys.readouterr()
    rc = cli.main(["train", "--data_path", str(out), "--dataset", "mosi", *TRAIN, "--out",
                   str(tmp_path / "r2")])
    assert "--dataset mosi: " in _one_line(capsys, rc) and not (tmp_path / "r2").exists()


def test_files_of_one_folder_that_record_different_datasets_are_refused(tmp_path):
    path = _write_mmsa(_mmsa_raw("sims"), tmp_path, "sims")
    out = tmp_path / "npz"
    assert convert_main(["--data_path", str(path), "--out", str(out)]) == 0
    with np.load(out / "test.npz") as z:
        arrays = {**dict(z), "dataset": np.array("mosi")}
    np.savez(out / "test.npz", **arrays)
    with pytest.raises(DataError, match="record different datasets"):
        load_dataset("custom", out)
    with zipfile.ZipFile(out / "test.npz") as zf:
        assert "dataset.npy" in zf.namelist()
    assert all((out / f).is_file() for f in NPZ_FILES)


# ---- 7. scoring a checkpoint on another dataset's data ---------------------------------

@pytest.fixture(scope="module")
def mosi_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mosi")
    path = _write_mmsa(_mmsa_raw("mosi"), tmp)
    assert cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp), "--name",
                     "m"]) == 0
    return tmp / "m" / "checkpoint.pt", tmp


@pytest.mark.parametrize("command", ["predict", "robustness"])
def test_data_of_another_label_kind_is_refused_naming_both(command, mosi_checkpoint,
                                                          tmp_path, capsys):
    ckpt, _ = mosi_checkpoint
    sims = _write_mmsa(_mmsa_raw("sims", seed=1), tmp_path, "sims")
    out = tmp_path / "o.parquet"
    rc = cli.main([command, "--checkpoint", str(ckpt), "--data_path", str(sims), "--out",
                   str(out), *(["--repeats", "1"] if command == "robustness" else [])])
    line = _one_line(capsys, rc)
    assert str(ckpt) in line and str(sims) in line and "dataset mosi" in line
    assert "dataset sims" in line and not out.exists()


@pytest.mark.parametrize("command", ["predict", "robustness"])
def test_data_of_another_dataset_of_the_same_kind_is_one_warning(command, mosi_checkpoint,
                                                                 tmp_path, capsys):
    ckpt, _ = mosi_checkpoint
    mosei = _write_mmsa(_mmsa_raw("mosei_senti", seed=2), tmp_path, "mosei_senti")
    rc = cli.main([command, "--checkpoint", str(ckpt), "--data_path", str(mosei), "--out",
                   str(tmp_path / "o.parquet"),
                   *(["--repeats", "1"] if command == "robustness" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and len(err) == 1 and err[0].startswith("warning: "), err
    assert "trained on dataset mosi" in err[0] and "is dataset mosei_senti" in err[0]


def test_data_of_other_dimensions_says_what_differs(mosi_checkpoint, tmp_path, capsys):
    ckpt, _ = mosi_checkpoint
    raw = _mmsa_raw("mosi")
    for s in raw:
        raw[s]["audio"] = raw[s]["audio"][:, :, :5]
    other = _write_mmsa(raw, tmp_path)
    rc = cli.main(["robustness", "--checkpoint", str(ckpt), "--data_path", str(other),
                   "--out", str(tmp_path / "o.parquet")])
    line = _one_line(capsys, rc)
    assert "feature dimensions differ" in line and str(ckpt) in line and str(other) in line


def test_the_training_data_itself_scores_without_a_word(mosi_checkpoint, tmp_path, capsys):
    ckpt, _ = mosi_checkpoint
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "p.parquet")]) == 0
    assert capsys.readouterr().err == ""


def test_npz_mutations_load_or_are_one_line(tmp_path):
    """Seeded mutations of one split's .npz: of its bytes (zip structures, CRC) and of a
    member's .npy bytes re-zipped with a correct CRC (numpy's header parser): each loads
    or is one DataError line that never mentions pickling; no other exception or warning."""
    import io
    import random

    folder = _npz(tmp_path / "own")
    good = (folder / "valid.npz").read_bytes()
    with np.load(folder / "valid.npz") as z:
        members = {k: z[k] for k in z.files}
    rng, outcomes = random.Random(7), {"loaded": 0, "refused": 0}
    for _ in range(300):
        if rng.random() < 0.5:
            b = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            key = rng.choice(sorted(members))
            npy = io.BytesIO()
            np.save(npy, members[key])
            m = bytearray(npy.getvalue())
            for _ in range(rng.randint(1, 4)):
                m[rng.randrange(min(len(m), 128))] = rng.randrange(256)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for k, v in members.items():
                    if k == key:
                        zf.writestr(f"{k}.npy", bytes(m))
                    else:
                        with zf.open(f"{k}.npy", "w") as fh:
                            np.lib.format.write_array(fh, v)
            b = bytearray(buf.getvalue())
        (folder / "valid.npz").write_bytes(bytes(b))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                load_dataset("custom", folder)
                outcomes["loaded"] += 1
            except DataError as e:
                assert "\n" not in str(e) and "pickl" not in str(e), str(e)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes
