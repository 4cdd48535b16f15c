"""The robustness study runs end to end in its small mode and writes what docs cite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_study_writes_json_table_and_plots(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks.robustness_study", "--out",
                          str(tmp_path), "--small", "--repeats", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "robustness_study.json").read_text())
    assert doc["seeds"] == [1111, 1112] and set(doc["configs"]) == {"default",
                                                                     "modality_dropout 0.3"}
    rows = doc["rows"]
    assert {r["config"] for r in rows} == set(doc["configs"])
    clean = [r for r in rows if r["condition"] == "clean"]
    assert len(clean) == 4  # 2 configs x 2 seeds
    summary = doc["summary"]
    assert any(r["condition"] == "missing" and r["modality"] == "l" for r in summary)
    assert "| config |" in (tmp_path / "robustness_study.md").read_text()
    for png in ("robustness_missing.png", "robustness_noise.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
