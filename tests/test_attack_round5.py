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
