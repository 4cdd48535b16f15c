"""The three data layouts (MulT pickles, MMSA pickles, an .npz folder per split): each
written by `ucrn synth`/`ucrn convert`, told apart by the loader, validated the same way,
trained, searched and re-trained on; CH-SIMS's metrics on hand-made labels."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analyze
import run_search
from ucrn import cli
from ucrn.convert import convert_main, synth_main, to_mmsa
from ucrn.data import (
    NPZ_FILES,
    DataError,
    load_dataset,
    make_synthetic,
    read_npz_split,
    resolve_dataset,
    write_mult_pickle,
)
from ucrn.metrics import SIMS_METRICS, sims_metrics, task_metrics

SMALL = dict(n_train=48, n_valid=16, n_test=16)
TRAIN = ["--num_epochs", "2", "--d_model", "8", "--heads", "2", "--layers", "1",
         "--threads", "1"]


def _mmsa(folder: Path, dataset: str, seed: int = 0) -> Path:
    raw = to_mmsa(make_synthetic("tiny", seed, **SMALL), dataset, seed)
    sub = {"mosi": "MOSI", "mosei_senti": "MOSEI", "sims": "SIMS", "simsv2": "SIMSv2"}[dataset]
    return write_mult_pickle(raw, folder / sub / "Processed" / "unaligned_12.pkl")


def _npz(folder: Path, arrays: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if arrays is None:
        raw = make_synthetic("tiny", 0, **SMALL)
        arrays = {s: {"text": raw[s]["text"], "audio": raw[s]["audio"],
                      "vision": raw[s]["vision"], "labels": raw[s]["labels"].reshape(-1)}
                  for s in raw}
    for split, a in arrays.items():
        np.savez(folder / f"{split}.npz", **a)
    return folder


def _one_line(capsys, rc: int, code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


# ---- CH-SIMS metrics -------------------------------------------------------------------

def test_sims_metrics_on_hand_made_labels():
    # classes: 2 = [-1, 0], (0, 1]; 3 = [-1, -0.1], (-0.1, 0.1], (0.1, 1];
    # 5 = edges -0.7, -0.1, 0.1, 0.7; both sides clipped to [-1, 1] first
    preds = [-1.0, -0.75, -0.1, 0.0, 0.05, 0.1, 0.5, 0.8]
    labels = [-0.8, -0.7, -0.2, 0.2, 0.0, 0.1, 0.6, 1.2]
    m = sims_metrics(preds, labels)
    assert list(m) == list(SIMS_METRICS)
    # 2 classes: preds 0 0 0 0 1 1 1 1, labels 0 0 0 1 0 1 1 1 -> 6 of 8
    assert m["Mult_acc_2"] == pytest.approx(6 / 8)
    # 3 and 5 classes: only the sample (0.0 vs 0.2) differs -> 7 of 8
    assert m["Mult_acc_3"] == pytest.approx(7 / 8) and m["Mult_acc_5"] == pytest.approx(7 / 8)
    clipped = np.clip(labels, -1, 1)
    assert m["MAE"] == pytest.approx(np.mean(np.abs(np.array(preds) - clipped)))
    # weighted F1 of the two classes: class 0 (4 true): tp 3, fp 1, fn 1 -> 0.75; class 1 same
    assert m["F1_score"] == pytest.approx(0.75)
    assert task_metrics("sims", preds, labels) == m
    with pytest.raises(ValueError, match="unknown task"):
        task_metrics("mosei", preds, labels)


# ---- loading each layout ---------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["mosi", "mosei_senti", "sims", "simsv2"])
def test_mmsa_files_load_by_their_keys_and_folder(dataset, tmp_path):
    path = _mmsa(tmp_path, dataset)
    r = resolve_dataset(None, tmp_path / path.parts[-3], False)  # the MOSI/... folder
    assert r.dataset == dataset and r.path == path and "picked" in r.note
    data = load_dataset(dataset, path)
    assert data.format == "mmsa"
    sims = dataset.startswith("sims")
    assert data.task == ("sims" if sims else "regression")
    train = data.splits["train"]
    assert set(train.lengths) == {"audio", "vision"}
    assert (train.lengths["audio"] <= data.seq_lens[1]).all()
    assert set(train.extra_labels) == ({"T", "A", "V"} if sims else set())
    assert np.abs(train.labels).max() <= (1.0 if sims else 3.0)
    assert train.ids[0].endswith("$_$0")
    assert "mmsa format" in data.summary() and "lengths read" in data.summary()


def test_target_picks_a_unimodal_sims_label(tmp_path):
    path = _mmsa(tmp_path, "sims")
    raw = pickle.loads(path.read_bytes())
    data = load_dataset("sims", path, target="A")
    assert np.allclose(data.splits["test"].labels, raw["test"]["regression_labels_A"])
    with pytest.raises(DataError, match="target T: .*no 'regression_labels_T'"):
        load_dataset("mosi", _mmsa(tmp_path / "m", "mosi"), target="T")


def test_npz_folder_loads_as_custom_and_any_member_names_it(tmp_path):
    folder = _npz(tmp_path / "own")
    for given in (folder, folder / "valid.npz"):
        r = resolve_dataset(None, given, False)
        assert (r.dataset, r.path, r.format) == ("custom", folder, "npz")
    data = load_dataset("custom", folder)
    assert data.format == "npz" and data.task == "regression" and data.input_dims == (24, 8, 10)
    # IEMOCAP-style labels as 0/1 per emotion: the task is read off them
    raw = make_synthetic("iemocap_tiny", 0, **SMALL)
    arrays = {s: {m: raw[s][m] for m in ("text", "audio", "vision")} for s in raw}
    for s in raw:
        arrays[s]["labels"] = raw[s]["labels"].argmax(-1)
    assert load_dataset("custom", _npz(tmp_path / "emo", arrays)).task == "iemocap"


def test_convert_round_trips_mmsa_sims_through_npz(tmp_path, capsys):
    path = _mmsa(tmp_path, "sims")
    out = tmp_path / "npz"
    assert convert_main(["--data_path", str(path), "--out", str(out)]) == 0
    a, b = load_dataset("sims", path), load_dataset("sims", out)
    assert b.format == "npz" and b.task == "sims"
    for s in ("train", "valid", "test"):
        x, y = a.splits[s], b.splits[s]
        for m in ("text", "audio", "vision"):
            assert np.array_equal(x.modality(m), y.modality(m))
        assert np.array_equal(x.labels, y.labels) and list(x.ids) == list(y.ids)
        assert all(np.array_equal(x.lengths[k], y.lengths[k]) for k in x.lengths)
        assert all(np.array_equal(x.extra_labels[k], y.extra_labels[k]) for k in "TAV")
    # never over files already there
    assert convert_main(["--data_path", str(path), "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err


def test_synth_writes_every_format(tmp_path, capsys):
    assert synth_main(["--format", "mmsa", "--dataset", "mosei", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "MOSEI/Processed/unaligned_12.pkl").is_file()
    assert synth_main(["--format", "npz", "--out", str(tmp_path / "n")]) == 0
    assert all((tmp_path / "n" / f).is_file() for f in NPZ_FILES)
    assert synth_main(["--format", "mmsa", "--preset", "iemocap_tiny", "--out",
                       str(tmp_path)]) == 2
    assert synth_main(["--format", "mmsa", "--dataset", "iemocap", "--out", str(tmp_path)]) == 2


# ---- bad input: one line naming the file, split and key --------------------------------

def _bad_npz(tmp_path: Path, change) -> Path:
    raw = make_synthetic("tiny", 0, **SMALL)
    arrays = {s: {"text": raw[s]["text"], "audio": raw[s]["audio"],
                  "vision": raw[s]["vision"], "labels": raw[s]["labels"].reshape(-1)}
              for s in raw}
    change(arrays)
    return _npz(tmp_path / "bad", arrays)


NPZ_CASES = {
    "wrong_key": (lambda a: a["valid"].update(lables=a["valid"].pop("labels")),
                  "split 'valid': missing key(s) ['labels']"),
    "ragged_samples": (lambda a: a["train"].update(audio=a["train"]["audio"][:-3]),
                       "split 'train' key 'audio': expected N=48"),
    "ragged_steps": (lambda a: a["test"].update(vision=a["test"]["vision"][:, :5]),
                     "split 'test' key 'vision': expected (T, D) = (14, 10)"),
    "labels_out_of_range": (lambda a: a["train"]["labels"].__setitem__(0, 7.5),
                            "expected sentiment labels in [-3, 3]"),
    "labels_nan": (lambda a: a["train"]["labels"].__setitem__(0, np.nan),
                   "expected finite sentiment labels"),
    "labels_wide": (lambda a: a["train"].update(labels=np.zeros((48, 3), np.float32)),
                    "labels of shape (N,1,1), (N,1) or (N,) expected"),
    "lengths_negative": (lambda a: a["valid"].update(audio_lengths=-np.ones(16, np.int64)),
                         "key 'audio_lengths': expected whole numbers from 0 to"),
    "lengths_wrong_count": (lambda a: a["valid"].update(text_lengths=np.ones(3, np.int64)),
                            "key 'text_lengths': expected 16 sequence lengths"),
    "text_as_strings": (lambda a: a["train"].update(text=np.full((48, 12, 24), "x")),
                        "key 'text': expected a numeric array"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz_is_one_line(case, tmp_path, capsys):
    change, needle = NPZ_CASES[case]
    folder = _bad_npz(tmp_path, change)
    with pytest.raises(DataError, match=None) as e:
        load_dataset("custom", folder)
    assert needle in str(e.value) and "\n" not in str(e.value)
    rc = cli.main(["train", "--data_path", str(folder), *TRAIN, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_pickled_objects_in_an_npz_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = _npz(tmp_path / "own")
    ids = np.empty(16, dtype=object)
    ids[:] = [Boom()] * 16
    with open(folder / "valid.npz", "wb") as fh:  # np.savez pickles object arrays
        np.savez(fh, **dict(np.load(folder / "test.npz")), id=ids)
    with pytest.raises(DataError, match=r"valid.npz key 'id': dtype object refused"):
        load_dataset("custom", folder)
    assert not marker.exists()


def test_crafted_npz_headers_are_refused_before_allocating(tmp_path):
    folder = _npz(tmp_path / "own")
    # a member whose header claims a huge array the file cannot hold
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6, 10)}
    bogus = tmp_path / "bogus.npy"
    with open(bogus, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 16)
    with zipfile.ZipFile(folder / "train.npz", "a") as zf:
        zf.write(bogus, "huge.npy")
    with pytest.raises(DataError, match=r"train.npz key 'huge': claims 40000000000000 bytes"):
        read_npz_split(folder / "train.npz")
    # a structured dtype, and a file that is not a zip at all
    np.savez(folder / "test.npz", text=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    with pytest.raises(DataError, match="test.npz key 'text': dtype .* refused"):
        read_npz_split(folder / "test.npz")
    (folder / "valid.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="valid.npz: not a readable .npz"):
        read_npz_split(folder / "valid.npz")


def test_npz_folder_missing_a_split(tmp_path, capsys):
    folder = _npz(tmp_path / "own")
    (folder / "test.npz").unlink()
    rc = cli.main(["train", "--data_path", str(folder), *TRAIN, "--out", str(tmp_path / "r")])
    assert "test.npz missing" in _one_line(capsys, rc)


MMSA_CASES = {
    "no_regression_labels": (lambda r: r["test"].pop("regression_labels"),
                             "split 'test': missing key(s) ['regression_labels']"),
    "sims_label_out_of_range": (lambda r: r["train"]["regression_labels"].__setitem__(0, 1.5),
                                "expected sentiment labels in [-1, 1] (task sims)"),
    "unimodal_label_nan": (lambda r: r["valid"]["regression_labels_V"].__setitem__(2, np.nan),
                           "key 'regression_labels_V': expected finite"),
    "lengths_ragged": (lambda r: r["train"]["audio_lengths"].pop(),
                       "key 'audio_lengths': expected 48 sequence lengths"),
}


@pytest.mark.parametrize("case", list(MMSA_CASES))
def test_bad_mmsa_is_one_line(case, tmp_path):
    change, needle = MMSA_CASES[case]
    raw = to_mmsa(make_synthetic("tiny", 0, **SMALL), "sims")
    change(raw)
    path = write_mult_pickle(raw, tmp_path / "SIMS" / "unaligned_12.pkl")
    with pytest.raises(DataError) as e:
        load_dataset("sims", path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_a_named_format_must_match_the_file(tmp_path, capsys):
    path = _mmsa(tmp_path, "mosi")
    with pytest.raises(DataError, match="--data_format mult: .* is a mmsa file"):
        load_dataset("mosi", path, data_format="mult")
    with pytest.raises(DataError, match="--data_format npz: .* holds no train.npz"):
        load_dataset("mosi", path, data_format="npz")
    loose = write_mult_pickle(pickle.loads(path.read_bytes()), tmp_path / "elsewhere.pkl")
    rc = cli.main(["train", "--data_path", str(loose), *TRAIN, "--out", str(tmp_path / "r")])
    assert "cannot tell the dataset" in _one_line(capsys, rc)


# ---- training, a search and a re-training on each new layout ---------------------------

@pytest.mark.parametrize("dataset", ["mosi", "mosei_senti", "sims", "simsv2", "custom"])
def test_two_epoch_train(dataset, tmp_path, capsys):
    """Each dataset name, from its folder alone (MMSA's MOSI/..., or the .npz folder)."""
    path = _npz(tmp_path / "own") if dataset == "custom" else _mmsa(tmp_path, dataset).parent.parent
    rc = cli.main(["train", "--data_path", str(path), *TRAIN, "--out", str(tmp_path / "r"),
                   "--name", "x"])
    out = capsys.readouterr().out
    assert rc == 0, out
    final = json.loads((tmp_path / "r/x/final.json").read_text())
    config = json.loads((tmp_path / "r/x/config.json").read_text())
    assert config["dataset"] == dataset
    assert config["data_format"] == ("npz" if dataset == "custom" else "mmsa")
    if dataset.startswith("sims"):
        assert {"Mult_acc_3", "F1_score"} <= set(final["test"]) and "Has0_acc_2" not in final["test"]
    else:
        assert "Has0_acc_2" in final["test"]


@pytest.mark.slow
def test_search_and_retrain_on_mmsa_sims_and_npz(ray_head, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nd_model: 8\nheads: 2\nlayers: 1\n")
    sims = _mmsa(tmp_path / "data", "sims")
    own = _npz(tmp_path / "own")
    for name, path, extra in (("s", tmp_path / "data" / "SIMS", ["--target", "T"]),
                              ("n", own, [])):
        rc = run_search.main(["--address", ray_head, "--storage", str(tmp_path), "--name", name,
                              "--executor", "tune", "--space", str(space), "--data-path",
                              str(path), "--num-samples", "2", "--max-epochs", "1",
                              "--max-concurrent", "1", *extra])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        trials = pd.read_parquet(tmp_path / name / "trials.parquet")
        assert len(trials) == 2 and trials.MAE.notna().all()
        rc = run_search.main(["--retrain", str(tmp_path / name), "--seeds", "3",
                              "--address", ray_head])
        assert rc == 0, capsys.readouterr().out[-3000:]
        rows = pd.read_parquet(tmp_path / name / "retrain.parquet")
        assert rows.test_MAE.notna().all()
        assert analyze.main([str(tmp_path / name), "--out", str(tmp_path / f"report-{name}")]) == 0
        capsys.readouterr()
        if name == "s":
            assert (trials.dataset == "sims").all() and (trials.target == "T").all()
            assert trials.Mult_acc_5.notna().all()
            assert "Has0_acc_2" not in trials or trials.Has0_acc_2.isna().all()
            assert rows.test_Mult_acc_3.notna().all()
            assert str(sims) in set(trials.data_path)
        else:
            assert (trials.dataset == "custom").all() and (trials.data_format == "npz").all()
            assert rows.test_Has0_acc_2.notna().all()


# ---- the attack round on these formats (docs/reliability.md) ---------------------------

def _with(folder: Path, split: str, **arrays) -> None:
    old = dict(np.load(folder / f"{split}.npz"))
    np.savez(folder / f"{split}.npz", **{**old, **arrays})


@pytest.mark.parametrize("value,dtype", [(2**64 - 1, np.uint64), (1e300, np.float64)])
def test_lengths_that_would_wrap_are_refused(value, dtype, tmp_path):
    folder = _npz(tmp_path / "own")
    _with(folder, "train", audio_lengths=np.full(48, value, dtype))
    with pytest.raises(DataError, match="'audio_lengths': expected whole numbers from 0 to"):
        load_dataset("custom", folder)


def test_lengths_beyond_the_steps_are_clipped_and_said(tmp_path):
    folder = _npz(tmp_path / "own")
    _with(folder, "valid", audio_lengths=np.full(16, 999, np.int64))
    with pytest.warns(RuntimeWarning, match="16 length.s. beyond the 16 steps"):
        data = load_dataset("custom", folder)
    assert (data.splits["valid"].lengths["audio"] == 16).all()


def _raw_member(npz: Path, name: str, header: dict, payload: bytes = b"") -> None:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, header)
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr(name, buf.getvalue() + payload)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zero_size_items_duplicates_and_odd_zips_are_one_line(tmp_path):
    folder = _npz(tmp_path / "own")
    _raw_member(folder / "train.npz", "id.npy",
                {"descr": "|S0", "fortran_order": False, "shape": (48, 10**8)})
    with pytest.raises(DataError, match="key 'id': dtype .S0 refused"):
        load_dataset("custom", folder)
    folder = _npz(tmp_path / "dup")
    with zipfile.ZipFile(folder / "valid.npz", "a") as zf, \
            zf.open("labels.npy", "w") as fh:  # a second member of the same name
        np.lib.format.write_array(fh, np.full(16, 2.5, np.float32))
    with pytest.raises(DataError, match="key 'labels': the file holds two arrays"):
        load_dataset("custom", folder)
    folder = _npz(tmp_path / "enc")
    data = bytearray((folder / "test.npz").read_bytes())
    data[data.find(b"PK\x03\x04") + 6] |= 1  # the "encrypted" flag, local and central
    data[data.find(b"PK\x01\x02") + 8] |= 1
    (folder / "test.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match="test.npz: not a readable .npz"):
        load_dataset("custom", folder)


def test_a_zip_bomb_is_refused_before_allocating_and_unused_members_are_not_read(
        tmp_path, monkeypatch):
    folder = _npz(tmp_path / "own")
    # 64 MB of zeros compressed to a few KB: a member nobody uses, then one that is used
    np.savez_compressed(folder / "junk.npz", x=np.zeros(1))
    with zipfile.ZipFile(folder / "train.npz", "a", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("junk.npy", "w") as fh:
        np.lib.format.write_array(fh, np.zeros((16, 2**20), np.float32))
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 8 << 20 >> 12 if name == "SC_AVPHYS_PAGES"
                        else real(name))  # 8 MB free
    data = load_dataset("custom", folder)  # the bomb is not a key the layout reads
    assert len(data.splits["train"]) == 48
    with zipfile.ZipFile(folder / "valid.npz", "a", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("vision_lengths.npy", "w") as fh:
        np.lib.format.write_array(fh, np.zeros(2**24, np.int64))  # 128 MB, a used key
    with pytest.raises(DataError, match="need 0.1 GiB, more than the 0.0 GiB of memory free"):
        load_dataset("custom", folder)


def test_resolution_never_picks_one_of_several_silently(tmp_path, capsys):
    folder = _npz(tmp_path / "own")
    write_mult_pickle(make_synthetic("tiny", 0, **SMALL), folder / "mosi_data_noalign.pkl")
    for dataset in (None, "mosi"):
        with pytest.raises(DataError, match="several datasets here .* pass --data_format npz"):
            resolve_dataset(dataset, folder, False)
    assert resolve_dataset("mosi", folder, False, "npz").format == "npz"
    assert resolve_dataset("mosi", folder, False, "mult").path.name == "mosi_data_noalign.pkl"
    np.savez(folder / "my_features.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="my_features.npz: own features are a folder"):
        resolve_dataset(None, folder / "my_features.npz", False)
    with pytest.raises(DataError, match="--aligned: .* no aligned variant"):
        resolve_dataset(None, folder, True, "npz")
    with pytest.raises(DataError, match="no mmsa data file in this folder .--data_format mmsa"):
        resolve_dataset(None, _npz(tmp_path / "plain"), False, "mmsa")
    # only the file's own folder (or the one above) names an MMSA dataset
    far = tmp_path / "mosei" / "exp" / "feats" / "Processed"
    raw = to_mmsa(make_synthetic("tiny", 0, **SMALL), "sims")
    path = write_mult_pickle(raw, far / "unaligned_12.pkl")
    with pytest.raises(DataError, match="cannot tell the dataset"):
        resolve_dataset(None, path, False)


def test_convert_and_synth_never_write_over_files(tmp_path, capsys, monkeypatch):
    own = _npz(tmp_path / "own")
    before = {f: (own / f).read_bytes() for f in NPZ_FILES}
    assert synth_main(["--format", "npz", "--out", str(own)]) == 2
    assert {f: (own / f).read_bytes() for f in NPZ_FILES} == before
    assert "already exist" in capsys.readouterr().err
    from ucrn.data import write_npz_folder

    data = load_dataset("custom", own)
    out = tmp_path / "out"
    out.mkdir()
    (out / "test.npz").write_bytes(b"mine")  # appeared after a check (a second convert)
    with pytest.raises(DataError, match="test.npz: already exists; nothing was written"):
        write_npz_folder(data, out)
    assert sorted(p.name for p in out.iterdir()) == ["test.npz"]
    assert (out / "test.npz").read_bytes() == b"mine"
    calls = []

    def interrupted_link(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return os_link(src, dst)

    os_link = os.link
    monkeypatch.setattr(os, "link", interrupted_link)
    with pytest.raises(KeyboardInterrupt):
        write_npz_folder(data, tmp_path / "out2")
    assert list((tmp_path / "out2").iterdir()) == []  # all three or none, no temporary left
    monkeypatch.undo()
    assert synth_main(["--format", "npz", "--dataset", "sims", "--out", str(tmp_path / "x")]) == 2
    assert "only with --format mmsa" in capsys.readouterr().err
    assert synth_main(["--out", ""]) == 2 and convert_main(["--out", " "]) == 2


def test_target_on_emotions_and_the_m_label_kept_for_analysis(tmp_path, capsys):
    raw = make_synthetic("iemocap_tiny", 0, **SMALL)
    arrays = {s: {m: raw[s][m] for m in ("text", "audio", "vision")} for s in raw}
    for s in raw:
        arrays[s]["labels"] = raw[s]["labels"].argmax(-1)
        arrays[s]["labels_T"] = np.zeros(len(raw[s]["labels"]), np.float32)
    with pytest.raises(DataError, match="target T: .* task is iemocap"):
        load_dataset("custom", _npz(tmp_path / "emo", arrays), target="T")
    sims = _mmsa(tmp_path, "sims")
    ids = pickle.loads(sims.read_bytes())
    for split in ids.values():  # an id with a lone surrogate: Parquet cannot hold it as is
        split["id"][0] = "clip\ud800"
    write_mult_pickle(ids, sims)
    assert cli.main(["train", "--data_path", str(sims), "--dataset", "sims", "--target", "T",
                     *TRAIN, "--out", str(tmp_path / "r"), "--name", "t"]) == 0
    ckpt = next((tmp_path / "r" / "t").glob("*.pt"))
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "p.parquet")]) == 0, capsys.readouterr().err
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "p.parquet")
    df = table.to_pandas()
    want = load_dataset("sims", sims).splits["test"].labels
    assert np.allclose(df.label_M, want) and np.allclose(df.label, df.label_T)
    assert json.loads(table.schema.metadata[b"ucrn_predict"])["target"] == "T"
    assert df.id[0] == "clip\\ud800"
