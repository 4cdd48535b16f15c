"""Cases from the fifth attack round (2026-12-07): each was damage or an unclear answer."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


RESUME = """
import sys
from search.trial import run_body
from ucrn.config import TrainConfig
from ucrn.data import load_dataset

cfg = TrainConfig(d_model=8, heads=2, layers=1, num_epochs=1, threads=1).to_dict()
try:
    run_body(cfg, load_dataset("synthetic", None, preset="tiny"), lambda m, d: None, sys.argv[1])
except ValueError as e:
    print(e)
"""


@pytest.mark.parametrize("kind", ["fifo", "pickle", "torch-zip", "directory"])
def test_a_trials_resume_state_is_read_by_the_safe_loader(kind, tmp_path):
    """A trial's state.pt, put there by hand: a FIFO hung the trial for good; a malicious
    pickle was refused by torch but the trial's error was torch's boilerplate sentence.
    Now: one line naming the file, at once, and nothing run."""
    ck, marker = tmp_path / "ck", tmp_path / "ran"
    ck.mkdir()
    state = ck / "state.pt"
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "pickle":
        state.write_bytes(pickle.dumps(_Evil(marker)))
    elif kind == "torch-zip":
        with zipfile.ZipFile(state, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
            z.writestr("archive/version", "3\n")
    else:
        state.mkdir()
    r = subprocess.run([sys.executable, "-c", RESUME, str(ck)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 1, (r.stdout, r.stderr[-2000:])
    assert lines[0].startswith(f"resume state {state}:"), lines
    assert not marker.exists()


SECRET = "SEKRIT123"


def _commands(tmp_path: Path, uri: str) -> dict[str, list[str]]:
    return {
        "search": ["run_search", "--storage", uri, "--num-samples", "1"],
        "warm-start": ["run_search", "--storage", str(tmp_path / "r"), "--warm-start",
                       f"{uri}/s", "--num-samples", "1"],
        "retrain": ["run_search", "--retrain", f"{uri}/s"],
        "analyze": ["analyze", f"{uri}/s"],
        "predict": ["ucrn", "predict", "--checkpoint", f"{uri}/c.pt", "--out",
                    str(tmp_path / "p.parquet")],
    }


@pytest.mark.parametrize("command", ["search", "warm-start", "retrain", "analyze", "predict"])
@pytest.mark.parametrize("uri", [f"file://alice:{SECRET}@/tmp/x", f"FILE://alice%3A{SECRET}@/x",
                                 "file://otherhost/tmp/x"])
def test_a_file_uri_with_a_host_or_a_secret_is_refused_in_one_line(command, uri, tmp_path,
                                                                   monkeypatch, capsys):
    """`--storage file://USER:SECRET@/PATH` ran a search into ./USER:SECRET@/PATH, the
    secret in folder names, search.json and Ray's logs. Every command that takes a
    folder or file refuses a file URI naming a host, user or password, in one line
    without the secret, and writes nothing."""
    import analyze
    import run_search
    from ucrn import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()  # the warm-started search's own storage
    argv = _commands(tmp_path, uri)[command]
    main = {"run_search": run_search.main, "analyze": analyze.main,
            "ucrn": cli.main}[argv[0]]
    before = set(tmp_path.rglob("*"))
    rc = main(argv[1:])
    out = capsys.readouterr()
    err = [ln for ln in out.err.strip().splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, out)
    assert "file URI" in err[0] and SECRET not in out.out + out.err
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("spelling", ["file://{p}", "FILE://{p}", "File://localhost{p}",
                                      "file:{p}", "{p}"])
def test_every_spelling_of_a_local_folder_is_that_folder(spelling, tmp_path, monkeypatch):
    """`FILE:///x`, `file:/x` and `file://localhost/x` made folders under the working folder
    (`./FILE:/x`...): each names /x, for a search's storage and its readers alike."""
    from search.analysis.files import filesystem
    from search.flags import check_storage
    from search.results import ResultsStore

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "a b"
    text = spelling.format(p=str(target).replace(" ", "%20") if "file" in spelling.lower()
                           else str(target))
    assert check_storage(text) == str(target) and target.is_dir()
    assert ResultsStore(text).root == str(target)
    assert filesystem(text)[1] == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b"]
