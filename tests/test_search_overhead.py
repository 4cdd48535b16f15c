"""The search-overhead benchmark end to end (`--small`) against the session's Ray head."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_benchmark_prints_startup_per_executor(ray_head, ray_env, tmp_path):
    """Both executors (about a minute in all on 2 cores): a table row each with numeric
    start-up values, the train/tune ratio line, and the same numbers in --json."""
    out_json = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_overhead", "--small", "--executor", "both",
         "--address", ray_head, "--cpus-per-trial", "0.5", "--json", str(out_json)],
        cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("executor"))
    assert "start-up s median" in lines[header] and "overhead" in lines[header]
    rows = {ln.split()[0]: ln.split() for ln in lines[header + 2:header + 4]}
    assert set(rows) == {"train", "tune"}
    for cells in rows.values():
        trials, reused, slots, wall, loop, median, worst = cells[1:8]
        # the second trial may start in the first one's process (Tune reuses actors) when
        # its own process is slower to start than the first trial's one epoch
        assert int(trials) == 2 and int(slots) == 2 and 0 <= int(reused) <= 1
        assert 0 < float(median) <= float(worst) < float(wall)
        assert 0 < float(loop) <= float(wall)
        assert cells[-1].endswith("%")
    assert any(ln.startswith("train/tune: wall ") for ln in lines)

    doc = json.loads(out_json.read_text())
    runs = {r["executor"]: r for r in doc["runs"]}
    for r in runs.values():
        assert r["epochs_run"] == 2 and len(r["startup_s"]) == 2
        assert all(math.isfinite(s) and s > 0 for s in r["startup_s"])
        assert 0 < r["compute_s"] < r["wall_s"] and 0 < r["overhead"] < 1
        parts = r["parts_median_s"]
        assert set(parts) == {"startup", "actor", "ray", "body"} and parts["actor"] > 0
    # a Ray Train trial starts its own controller and worker processes: slower to start
    assert runs["train"]["parts_median_s"]["ray"] > runs["tune"]["parts_median_s"]["ray"]
    assert doc["environment"]["ray"] and doc["ratios_train_over_tune"]["wall"] > 0


CENSUS = """
import sys
from ray.air._internal import usage
from ray.tune import Callback
census = usage.tag_callbacks
from search.cluster import skip_callback_census
skip_callback_census()
usage.tag_callbacks([Callback()])
print("skipped:", sorted(m for m in ("mlflow", "wandb") if m in sys.modules))
census([Callback()])
print("census:", sorted(m for m in ("mlflow", "wandb") if m in sys.modules))
"""


def test_a_search_start_does_not_import_the_tracker_packages():
    """Tune's callback census for Ray's usage statistics imports mlflow and wandb where
    they are installed (1.6 to 3 s of CPU at every search's start); a search skips it.
    The census itself runs after, to show what is skipped where the packages are
    installed."""
    import importlib.util

    res = subprocess.run([sys.executable, "-c", CENSUS], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = dict(ln.split(": ", 1) for ln in res.stdout.splitlines() if ": " in ln)
    assert lines["skipped"] == "[]"
    installed = [m for m in ("mlflow", "wandb") if importlib.util.find_spec(m)]
    assert lines["census"] == str(installed)
