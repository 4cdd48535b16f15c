"""`python -m ucrn train`: the authors' command line, run folders, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ucrn import cli
from ucrn.data import make_synthetic, write_mult_pickle
from ucrn.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--d_model=12", "--num_heads=2", "--nlevels=1", "--threads=1"]


def ucrn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ucrn", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=_env())


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def mosei_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mosei")
    raw = make_synthetic("tiny", seed=3)
    write_mult_pickle(raw, d / "mosei_senti_data_noalign.pkl")
    return d


@pytest.mark.slow
def test_authors_command_verbatim(mosei_dir, tmp_path, monkeypatch):
    cmd = ["train", "--model=UCRN", "--lonly", "--aonly", "--vonly", "--name=NAME",
           "--dataset=mosei_senti", f"--data_path={mosei_dir}", "--batch_size=32", "--seed=1234",
           "--num_epochs=1", "--when=20", "--optim=Adam", "--jsd", "--lr=0.001"]
    res = ucrn(*cmd, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "NAME"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"] == "mosei_senti" and cfg["modalities"] == "lav" and cfg["jsd_weight"] == 1.0
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "completed" and final["best_epoch"] == 1
    assert "MAE" in final["valid"] and "MAE" in final["test"]
    assert len((run / "epochs.jsonl").read_text().splitlines()) == 1
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert "state_dict" in ckpt and ckpt["model_config"]["input_dims"] == [24, 8, 10] or \
        tuple(ckpt["model_config"]["input_dims"]) == (24, 8, 10)
    assert "epoch   1/1" in res.stdout
    # a second run with the same name never overwrites the first (in this process: the
    # command line was checked above, and a new one costs seconds of imports)
    monkeypatch.chdir(tmp_path)
    assert cli.main(cmd) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.slow
def test_config_file_and_seeds(tmp_path):
    cfg = TrainConfig(d_model=12, heads=2, layers=1, num_epochs=1, threads=1, seed=5).to_dict()
    (tmp_path / "best.json").write_text(json.dumps(cfg))
    res = ucrn("train", "--config", "best.json", "--seeds", "1,2", "--name", "s", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "runs/s/summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    finals = [json.loads((tmp_path / f"runs/s/seed_{s}/final.json").read_text()) for s in (1, 2)]
    mean = (finals[0]["test"]["MAE"] + finals[1]["test"]["MAE"]) / 2
    assert summary["test"]["MAE"]["mean"] == pytest.approx(mean)
    assert "mean ± std over 2 of 2 seeds [1, 2]" in res.stdout
    assert summary["summarized_seeds"] == [1, 2] and summary["diverged_seeds"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset=mosi", "--data_path=/nonexistent/dir"], "/nonexistent/dir"),
        (["--dataset=mosi", "--data_path=."], "mosi_data_noalign.pkl"),
        (["--dataset=imdb"], "imdb"),
        (["--optim=Adagrad"], "optim='Adagrad'"),
        (["--num_heads=7"], "heads=7 does not divide d_model=30"),
        (["--bogus=1"], "--bogus"),
        (["--lr=fast"], "--lr"),
        (["--config=missing.json"], "missing.json"),
        (["--model=MulT"], "--model=MulT"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    """In this process (the same `run_main` path as the command); the first case also as
    the real command, in a new process."""
    monkeypatch.chdir(tmp_path)
    if needle == "/nonexistent/dir":
        res = ucrn("train", *args, cwd=tmp_path)
        rc, err = res.returncode, res.stderr
    else:
        rc, err = cli.main(["train", *args]), capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"lr": 0.001}', "incomplete, missing"),
        ('["lr"]', "expected a JSON object"),
        ('{"lr": "fast"}', "lr='fast'"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path, monkeypatch, capsys, content, needle):
    (tmp_path / "best.json").write_text(content)
    if content.startswith('{"lr": "fast"'):
        full = TrainConfig().to_dict()
        full["lr"] = "fast"
        (tmp_path / "best.json").write_text(json.dumps(full))
    monkeypatch.chdir(tmp_path)
    rc, err = cli.main(["train", "--config", "best.json"]), capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "best.json" in lines[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_synth_writes_a_loadable_file(tmp_path):
    res = ucrn("synth", "--preset", "tiny", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    files = list((tmp_path / "d").glob("*.pkl"))
    assert len(files) == 1
    res = ucrn("train", "--dataset=synthetic", f"--data_path={files[0]}", "--num_epochs=1", *SMALL,
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
