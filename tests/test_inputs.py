"""Reliability II, without Ray: inputs that once did damage or ended in a traceback now
give one line naming the culprit and write nothing (docs/reliability.md, second table)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run_search
from search.lock import ResultsLock
from search.results import ResultsStore
from ucrn import cli
from ucrn.config import TrainConfig
from ucrn.data import make_synthetic, write_mult_pickle

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--d_model=8", "--heads=2", "--layers=1", "--threads=1", "--num_epochs=1"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _one_line(capsys, rc: int, code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def _tiny(folder: Path, dataset: str = "mosei_senti", aligned: bool = False) -> Path:
    raw = make_synthetic("tiny", seed=3, n_train=48, n_valid=16, n_test=16)
    name = f"{dataset}_data.pkl" if aligned else f"{dataset}_data_noalign.pkl"
    return write_mult_pickle(raw, folder / name)


# ---- a given --data_path is never ignored ------------------------------------------------

def test_data_path_without_dataset_picks_the_file_and_says_so(tmp_path, capsys):
    f = _tiny(tmp_path / "d")
    rc = cli.main(["train", f"--data_path={tmp_path / 'd'}", *SMALL, "--out", str(tmp_path / "r"),
                   "--name", "x"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"picked {f}" in out and "dataset mosei_senti" in out
    cfg = json.loads((tmp_path / "r/x/config.json").read_text())
    assert cfg["dataset"] == "mosei_senti" and cfg["data_path"] == str(f)
    # the file itself: the dataset from its name
    rc = cli.main(["train", f"--data_path={f}", *SMALL, "--out", str(tmp_path / "r"),
                   "--name", "y"])
    assert rc == 0 and "from the file name" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["two_datasets", "nothing_known", "only_aligned",
                                    "unknown_file_name", "synthetic_dir_without_file"])
def test_ambiguous_or_unknown_data_path_is_one_line(layout, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    extra: list[str] = []
    if layout == "two_datasets":
        _tiny(d, "mosi")
        _tiny(d, "mosei_senti")
        needle = "several datasets here (mosi_data_noalign.pkl, mosei_senti_data_noalign.pkl)"
    elif layout == "nothing_known":
        (d / "features.pkl").write_bytes(b"x")
        needle = "no data file in this folder"
    elif layout == "only_aligned":
        _tiny(d, "mosi", aligned=True)
        needle = "found mosi_data.pkl (use --aligned)"
    elif layout == "unknown_file_name":
        write_mult_pickle(make_synthetic("tiny", seed=1, n_train=8, n_valid=8, n_test=8),
                          d / "mine.pkl")
        d = d / "mine.pkl"
        needle = "cannot tell the dataset from the file name"
    else:
        _tiny(d, "mosi")
        extra = ["--dataset=synthetic"]
        needle = "no file synthetic_data_noalign.pkl found"
    rc = cli.main(["train", f"--data_path={d}", *extra, *SMALL, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()
    st = tmp_path / "st"
    rc = run_search.main(["--data-path", str(d), *[e.replace("_", "-") for e in extra],
                          "--storage", str(st)])
    assert needle in _one_line(capsys, rc)
    assert _files(st) == []


# ---- seeds --------------------------------------------------------------------------------

@pytest.mark.parametrize(("seeds", "needle"), [
    ("7,7", "expected distinct seeds ([7] repeated"),
    ("1,-2", "seed -2 is out of range: expected 0..9223372036854775807"),
    (f"{2**64}", f"seed {2**64} is out of range"),
    ("a,b", "expected comma-separated integers"),
])
def test_bad_seeds_are_one_line_and_nothing_written(seeds, needle, tmp_path, capsys):
    rc = cli.main(["train", *SMALL, "--seeds", seeds, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_diverging_seeds_are_recorded_and_the_others_still_run(tmp_path, capsys):
    """Every seed diverges in epoch 1 here: each still runs, summary.json says so."""
    rc = cli.main(["train", *SMALL, "--lr=1e12", "--optim=SGD", "--clip=0", "--seeds", "3,4",
                   "--out", str(tmp_path), "--name", "div"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "seed 3: diverged in epoch 1" in out and "seed 4: diverged in epoch 1" in out
    summary = json.loads((tmp_path / "div/summary.json").read_text())
    assert summary["seeds"] == [3, 4] and summary["diverged_seeds"] == [3, 4]
    assert summary["summarized_seeds"] == [] and summary["test"] == {}
    for s in (3, 4):
        final = json.loads((tmp_path / f"div/seed_{s}/final.json").read_text())
        assert final["status"] == "diverged" and final["checkpoint"] is None


def test_summary_covers_finished_seeds_only():
    from ucrn.train import FitResult

    ok = [FitResult({}, "completed", 2, {"MAE": v}, {"MAE": v + 0.1}) for v in (0.5, 0.7)]
    bad = FitResult({}, "diverged", 0, {}, {})
    s = cli.summarize([(1, ok[0]), (2, bad), (3, ok[1])], [1, 2, 3, 4])
    assert s["summarized_seeds"] == [1, 3] and s["diverged_seeds"] == [2]
    assert s["not_run_seeds"] == [4]
    assert s["test"]["MAE"]["mean"] == pytest.approx(0.7)


# ---- flags and config files ---------------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--device", "foo"], "device='foo': expected auto, cpu, cuda or cuda:N"),
    (["--seed", str(2**64)], f"seed={2**64}: expected an integer in 0.."),
    (["--threads", "100000"], "threads=100000: this machine has"),
    (["--weight_decay", "Infinity"], "weight_decay=inf: expected a finite number"),
    (["--name", ""], "--name '': expected a plain folder name"),
    (["--name", "a/b"], "--name 'a/b'"),
    (["--name", ".."], "--name '..'"),
])
def test_bad_flag_values_are_one_line_before_any_folder(args, needle, tmp_path, capsys):
    rc = cli.main(["train", *SMALL, *args, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("content", "needle"), [
    ("null", "expected a JSON object (mapping) at the top level, got null"),
    ("[1, 2]", "expected a JSON object (mapping) at the top level, got a JSON array"),
    ("", "empty"),
    ("{\"lr\": ", "not valid JSON"),
    ("NULLS", "lr=null: expected a value of type float"),
])
def test_broken_config_files_are_one_line(content, needle, tmp_path, capsys):
    f = tmp_path / "best.json"
    if content == "NULLS":
        content = json.dumps({**TrainConfig().to_dict(), "lr": None})
    f.write_text(content)
    rc = cli.main(["train", "--config", str(f), "--out", str(tmp_path / "r")])
    line = _one_line(capsys, rc)
    assert needle in line and str(f) in line, line
    assert not (tmp_path / "r").exists()


def test_old_config_with_mjs_key_still_trains(tmp_path, capsys):
    old = TrainConfig(d_model=8, heads=2, layers=1, threads=1, num_epochs=1).to_dict()
    old["mjs"] = old.pop("mjs_variant")
    (tmp_path / "old.json").write_text(json.dumps(old))
    rc = cli.main(["train", "--config", str(tmp_path / "old.json"), "--out", str(tmp_path / "r"),
                   "--name", "o"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: " in err and "'mjs' is now called 'mjs_variant'" in err
    assert json.loads((tmp_path / "r/o/config.json").read_text())["mjs_variant"] == "jsd"


# ---- checkpoints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    assert cli.main(["train", *SMALL, "--out", str(tmp), "--name", "p"]) == 0
    return tmp / "p"


def _predict(*args) -> int:
    return cli.main(["predict", *map(str, args)])


def test_fifo_checkpoint_is_refused_without_hanging(run_dir, tmp_path):
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "ucrn", "predict", "--checkpoint", str(fifo),
                          "--out", str(tmp_path / "p.parquet")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and time.time() - t0 < 60
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "FIFO" in lines[0] and str(fifo) in lines[0], lines
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize(("change", "needle"), [
    ({"d_model": 10**6, "heads": 1}, "does not fit its 'model_config'"),
    ({"input_dims": [10**9, 8, 10]}, "does not fit its 'model_config'"),
    ({"layers": 10**9}, "layers=1000000000 but the state_dict has only"),
    ({"heads": None}, "bad 'model_config'"),
])
def test_crafted_model_config_is_refused_before_allocating(change, needle, run_dir, tmp_path,
                                                           capsys):
    bundle = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    bundle["model_config"].update(change)
    torch.save(bundle, tmp_path / "big.pt")
    t0 = time.time()
    rc = _predict("--checkpoint", tmp_path / "big.pt", "--out", tmp_path / "p.parquet")
    assert needle in _one_line(capsys, rc) and time.time() - t0 < 20
    assert not (tmp_path / "p.parquet").exists()


def test_nan_weights_warn_and_give_no_metric(run_dir, tmp_path, capsys):
    bundle = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    first = next(k for k, v in bundle["state_dict"].items() if v.is_floating_point())
    bundle["state_dict"][first] = torch.full_like(bundle["state_dict"][first], math.nan)
    torch.save(bundle, tmp_path / "nan.pt")
    rc = _predict("--checkpoint", tmp_path / "nan.pt", "--out", tmp_path / "p.parquet")
    cap = capsys.readouterr()
    assert rc == 0
    warnings = [ln for ln in cap.err.splitlines() if ln.startswith("warning: ")]
    assert any("NaN or infinite" in w for w in warnings), cap.err
    meta = json.loads(__import__("pyarrow.parquet").parquet.read_schema(
        tmp_path / "p.parquet").metadata[b"ucrn_predict"])
    assert all(math.isnan(v) for v in meta["metrics"].values())
    assert "Has0_acc_2 nan" in cap.out


def test_predict_bad_device_is_one_line(run_dir, tmp_path, capsys):
    rc = _predict("--checkpoint", run_dir / "checkpoint.pt", "--device", "foo")
    assert "--device: device='foo'" in _one_line(capsys, rc)


# ---- search spaces: every value a sampler can draw ------------------------------------------

@pytest.mark.parametrize(("space", "needle"), [
    ("d_model: {int: [30, 96]}\n", "a trial could draw d_model=31, which the trainer refuses: "
                                   "heads=3 does not divide d_model=31"),
    ("layers: {uniform: [1, 3]}\n", "uniform draws fractional numbers but layers is int"),
    ("lr: null\n", "lr=null"),
    ("lr: {loguniform: null}\n", "loguniform needs [low, high] numbers"),
    ("heads: {choice: [1, 2]}\nd_model: {choice: [8, 9]}\n", "heads=2, d_model=9"),
    ("d_model: {int: [1, 20000]}\n", "more than 10000 values to check"),
    ("a: &a [1, 1]\nb: *a\n", "anchor/alias"),
    ("positional: sinusoidal\nd_model: {choice: [3, 6]}\nheads: 1\n", "needs d_model >= 4"),
])
def test_space_values_a_trial_could_draw_are_checked(space, needle, tmp_path, capsys):
    f = tmp_path / "space.yaml"
    f.write_text(space)
    rc = run_search.main(["--space", str(f), "--storage", str(tmp_path / "st")])
    line = _one_line(capsys, rc)
    assert needle in line and str(f) in line, line
    assert _files(tmp_path / "st") == []


def test_space_checks_against_the_flags(tmp_path, capsys):
    """heads 4 divides d_model 8 but not the crossmodal width of two modalities? It does;
    with --modalities la and d_model 6, heads 4 fails through the flags' base."""
    f = tmp_path / "space.yaml"
    f.write_text("heads: {choice: [2, 4]}\nd_model: 6\n")
    rc = run_search.main(["--space", str(f), "--modalities", "la", "--storage",
                          str(tmp_path / "st")])
    assert "heads=4 does not divide d_model=6" in _one_line(capsys, rc)


def test_recorder_never_dies_on_a_config_the_trainer_refuses():
    from search.progress import make_recorder

    rec = make_recorder("/tmp/unused", "s", "MAE", "min", "tune", {"d_model": 30}, 1)

    class Trial:
        config = {"heads": 7}

    merged = rec.config_of(Trial())
    assert merged == {"d_model": 30, "heads": 7}


# ---- run_search flags and damaged search files --------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--name", ""], "--name '': expected a plain folder name"),
    (["--name", "../x"], "--name '../x'"),
    (["--name", ".."], "--name '..'"),
    (["--seed", "-1"], "--seed -1: expected an integer in 0..2**63-1"),
    (["--reduction-factor", "nan"], "--reduction-factor nan"),
    (["--trial-resources", '{"x": Infinity}'], "positive numbers"),
    (["--dataset", "imdb"], "--dataset imdb: expected one of"),
])
def test_search_flags_one_line_nothing_written(args, needle, tmp_path, capsys):
    rc = run_search.main(["--storage", str(tmp_path / "st"), *args])
    assert needle in _one_line(capsys, rc)
    assert _files(tmp_path / "st") == []


@pytest.mark.parametrize(("content", "needle"), [
    ("[1]", "expected a JSON object (mapping) at the top level, got a JSON array"),
    ("", "empty"),
    ("{", "not valid JSON"),
    ('{"flags": null}', "'flags' is not an object"),
    ('{"flags": {"num_samples": null}}', "flags.num_samples=null"),
    ('{"flags": {"max_epochs": "4"}}', "flags.max_epochs='4': expected a value of type int"),
    ('{"space": {}}', "is damaged (expected an object with 'flags')"),
    ('{"flags": {}}', "'space' is not a mapping of parameters"),
    ('{"flags": {}, "space": {"lr": {"loguniform": [0, 1]}}}', "loguniform needs positive"),
])
def test_damaged_search_json_on_resume_is_one_line(content, needle, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "search.json").write_text(content)
    before = _files(tmp_path)
    rc = run_search.main(["--storage", str(tmp_path), "--name", "s", "--resume"])
    line = _one_line(capsys, rc)
    assert needle in line, line
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("content", "needle"), [
    ("[1]", "expected a JSON object"),
    ("null", "at the top level, got null"),
    ("{}", "incomplete, missing dataset, data_path"),
    ("NULLS", "lr=null"),
])
def test_damaged_best_config_on_retrain_is_one_line(content, needle, tmp_path, capsys):
    d = tmp_path / "s"
    d.mkdir()
    if content == "NULLS":
        content = json.dumps({**TrainConfig().to_dict(), "lr": None})
    (d / "best_config.json").write_text(content)
    rc = run_search.main(["--retrain", str(d), "--seeds", "1"])
    assert needle in _one_line(capsys, rc)
    assert sorted(p.name for p in d.iterdir()) == ["best_config.json"]


# ---- one driver per results folder ----------------------------------------------------------

def test_second_driver_is_refused_naming_the_holder(tmp_path, capsys):
    store = ResultsStore(tmp_path / "s")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "search.json").write_text(json.dumps({"flags": {}}))
    (tmp_path / "s" / "best_config.json").write_text(json.dumps(TrainConfig().to_dict()))
    with ResultsLock(store, "search"):
        rc = run_search.main(["--storage", str(tmp_path), "--name", "s", "--resume"])
        line = _one_line(capsys, rc)
        assert f"is in use by another driver: pid {os.getpid()}" in line and "search" in line
        rc = run_search.main(["--retrain", str(tmp_path / "s"), "--seeds", "1"])
        assert "in use by another driver" in _one_line(capsys, rc)
    assert not (tmp_path / "s" / ".lock").exists()


def test_lock_of_a_killed_driver_is_free_again(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
            "from search.lock import ResultsLock; from search.results import ResultsStore;"
            "lock = ResultsLock(ResultsStore(sys.argv[1]), 'search'); lock.acquire();"
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s"), str(ROOT)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"pid {proc.pid}"):
            ResultsLock(ResultsStore(tmp_path / "s"), "search").acquire()
    finally:
        proc.kill()
        proc.wait()
    with ResultsLock(ResultsStore(tmp_path / "s"), "search"):  # the kernel dropped the flock
        pass


def test_a_refused_new_search_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("lr: {loguniform: [0, 1]}\n")
    rc = run_search.main(["--storage", str(tmp_path / "st"), "--name", "n", "--space", str(bad)])
    _one_line(capsys, rc)
    assert not (tmp_path / "st" / "n").exists()


def test_lease_on_object_storage(tmp_path, monkeypatch):
    """URIs get a lease object: a fresh one refuses, an expired one is taken over."""
    import search.lock as L

    monkeypatch.setattr(ResultsStore, "is_local", property(lambda self: False))
    store = ResultsStore(tmp_path / "s")
    first = ResultsLock(store, "search")
    first.acquire()
    with pytest.raises(Exception, match="in use by another driver"):
        ResultsLock(store, "search").acquire()
    lease = json.loads((tmp_path / "s" / L.LEASE_FILE).read_text())
    lease["heartbeat"] -= L.LEASE_S + 1  # the holder died a minute ago
    (tmp_path / "s" / L.LEASE_FILE).write_text(json.dumps(lease))
    second = ResultsLock(store, "search")
    second.acquire()
    assert json.loads((tmp_path / "s" / L.LEASE_FILE).read_text())["token"] != lease["token"]
    second.release()
    assert not (tmp_path / "s" / L.LEASE_FILE).exists()
    first._lease = None  # its lease was taken over; nothing of it is left to release
    first.release()


def test_resume_refuses_a_half_written_tune_state(tmp_path, capsys):
    """Tune's own state files are not written atomically; one cut short by a full disk
    would resume a search that forgot trials."""
    s = tmp_path / "s"
    s.mkdir()
    (s / "search.json").write_text(json.dumps({"flags": {"num_samples": 2},
                                               "space": {"lr": {"choice": [0.001, 0.01]}}}))
    (s / "tuner.pkl").write_bytes(b"\x80\x04N.")
    (s / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')
    rc = run_search.main(["--storage", str(tmp_path), "--name", "s", "--resume"])
    line = _one_line(capsys, rc)
    assert "Tune's saved state" in line and "is damaged" in line and "another --name" in line


def test_a_space_that_searches_nothing_is_one_line(tmp_path, capsys):
    f = tmp_path / "space.yaml"
    f.write_text("lr: 0.001\nlayers: 1\n")
    rc = run_search.main(["--space", str(f), "--storage", str(tmp_path / "st")])
    assert "nothing to search" in _one_line(capsys, rc)
    assert _files(tmp_path / "st") == []


def test_two_runs_with_one_name_never_share_a_folder(tmp_path):
    """mkdir is the claim: two runs started at once under one name get two folders."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: cli.new_run_dir(tmp_path, "same"), range(8)))
    assert len(set(runs)) == 8 and all(r.is_dir() for r in runs)
    assert tmp_path / "same" in runs
