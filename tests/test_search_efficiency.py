"""The search-efficiency study in its small mode: what must hold, not which method wins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_study_every_method_finishes_within_the_budget(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks.search_efficiency", "--out",
                          str(tmp_path), "--small"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "search_efficiency.json").read_text())
    runs = [r for r in doc["runs"] if r["part"] == "methods"]
    from benchmarks.search_efficiency import METHODS

    assert sorted(r["method"] for r in runs) == sorted(METHODS)
    budget, c = doc["budget"], doc["concurrency"]
    for r in runs:
        assert r["each_trial_once"] and r["each_epoch_once"], r["method"]
        # equal compute: the budget, overshot by at most one epoch per concurrent trial
        assert budget <= r["epochs"] <= budget + c - 1, (r["method"], r["epochs"])
        assert len(r["curve_mae"]) == r["epochs"]
        assert r["picked_test_mae"] > 0
    assert (tmp_path / "search_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "### methods" in (tmp_path / "search_efficiency.md").read_text()
    # the tables again from the saved runs, without a search
    again = tmp_path / "again"
    from benchmarks.search_efficiency import main

    assert main(["--out", str(again), "--from", str(tmp_path / "search_efficiency.json")]) == 0
    assert (again / "search_efficiency.md").read_text() == (
        tmp_path / "search_efficiency.md").read_text()
