"""The GPU check's own logic, on a CPU: what it decides from nvidia-smi, pytest's report,
the profiler and the Parquet files, and the session script that runs it on a lent GPU.

None of this measures a GPU; it makes sure that what the check reports from one cannot
pass on a machine that never used the GPU, count device time twice, overstate packing
or call an expected failure a pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.autograd import DeviceType

from benchmarks import train_speed as ts
from benchmarks.gpu_check import (
    SDPA_CASES,
    correctness_verdict,
    gpu_mismatch,
    mark_xpasses,
    packing_summary,
    parse_junit,
    pick_sdpa_backend,
    sdpa_record,
    search_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
H100 = "NVIDIA H100 80GB HBM3"


def _check(out: Path, *args: str, path: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _path_without_nvidia_smi() -> str:
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / "nvidia-smi").exists())


# ---- the CPU mode ------------------------------------------------------------------------

@pytest.mark.skipif(CUDA, reason="checks the CPU mode; a CUDA machine runs the full check")
@pytest.mark.slow
def test_gpu_check_cpu_mode(tmp_path):
    """`python -m benchmarks.gpu_check --quick` on a CPU: every step is reported, those
    that need CUDA as skipped with the reason, and the exit code is 0; the profile of
    CPU ops counts no device time."""
    out = tmp_path / "gpu"
    res = _check(out, "--quick", path=_path_without_nvidia_smi(), timeout=240)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    doc = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == ["environment", "correctness", "speed", "packing", "asha16"]
    assert doc["finished"] and doc["exit_code"] == 0
    for s in steps.values():
        assert s["status"] in ("passed", "skipped"), s
        if s["status"] == "skipped":
            assert s["reason"], s
    assert steps["environment"]["status"] == "passed"
    assert steps["environment"]["details"]["cuda_graphs_default"] is False
    tests = steps["correctness"]["details"]["tests"]
    assert steps["correctness"]["status"] == "skipped" and len(tests) >= 5
    assert all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests)
    assert steps["speed"]["status"] == "passed"
    assert {r["shape"] for r in steps["speed"]["details"]["rows"]} == {"mosei", "mosi"}
    prof = steps["speed"]["details"]["profile"]["variants"]["default"]
    assert prof["top"] and prof["device_ms_per_step"] == 0 and "top_cpu" not in prof
    for name in ("packing", "asha16"):
        assert steps[name]["status"] == "skipped" and "needs CUDA" in steps[name]["reason"]
    summary = (out / "summary.md").read_text()
    assert "needs CUDA" in summary and "| packing |" in summary and "| CPU op |" in summary
    assert len(list(out.iterdir())) <= 6  # a device run returns at most 8 files


# ---- A. a GPU that torch cannot use ------------------------------------------------------

@pytest.mark.skipif(CUDA, reason="the stand-in shows a GPU torch cannot use; here it can")
@pytest.mark.slow
def test_gpu_listed_but_unusable_fails_the_check(tmp_path):
    """A stand-in nvidia-smi that lists an H100: with this CPU build of torch the check
    exits 1 with one line naming the GPU and the CPU build, instead of passing in CPU
    mode; without nvidia-smi the same call passes, records SDPA as not applicable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"""#!{sys.executable}
import sys
fields = {{"name": "{H100}", "memory.total": "81559 MiB", "driver_version": "535.104.05",
          "compute_mode": "Default"}}
if "-L" in sys.argv:
    print("GPU 0: {H100} (UUID: GPU-00000000-0000-0000-0000-000000000000)")
for a in sys.argv:
    if a.startswith("--query-gpu="):
        print(", ".join(fields[f] for f in a.split("=", 1)[1].split(",")))
""")
    smi.chmod(0o755)
    clean = _path_without_nvidia_smi()

    res = _check(tmp_path / "gpu", "--only", "environment",
                 path=f"{bin_dir}{os.pathsep}{clean}")
    line = (f"nvidia-smi lists 1 GPU ({H100}) but torch {torch.__version__} cannot use "
            "CUDA: a CPU build of torch")
    assert res.returncode == 1, (res.stdout[-2000:], res.stderr[-2000:])
    assert line in res.stdout
    doc = json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())
    env = doc["steps"][0]
    assert (env["name"], env["status"], env["error"]) == ("environment", "failed", line)
    assert env["details"]["nvidia_smi_gpus"] == [H100]
    assert env["details"]["driver"] == "535.104.05"
    assert doc["exit_code"] == 1
    assert line in (tmp_path / "gpu" / "summary.md").read_text()

    res = _check(tmp_path / "cpu", "--only", "environment", path=clean)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    doc = json.loads((tmp_path / "cpu" / "gpu_check.json").read_text())
    env = doc["steps"][0]
    assert env["status"] == "passed" and env["details"]["nvidia_smi_gpus"] == []
    assert env["details"]["sdpa"] == {"applicable": False, "note": "not applicable (no CUDA)"}
    assert "SDPA backends: not applicable (no CUDA)" in (tmp_path / "cpu" / "summary.md").read_text()
    assert [s["status"] for s in doc["steps"][1:]] == ["skipped"] * 4


def test_gpu_mismatch_says_which():
    """The CUDA-build case cannot be made on a CPU build: the line is checked directly."""
    smi = {"path": "/usr/bin/nvidia-smi", "gpus": [H100, H100], "driver": "535.104.05",
           "error": None}
    assert gpu_mismatch(smi, "2.13.0+cu130", "13.0", False, None) == (
        f"nvidia-smi lists 2 GPUs ({H100}, ...) but torch 2.13.0+cu130 built for CUDA 13.0 "
        "reports is_available() False: driver 535.104.05 too old?")
    assert "CUDA_VISIBLE_DEVICES=''" in gpu_mismatch(smi, "2.13.0+cu130", "13.0", False, "")
    assert gpu_mismatch(smi, "2.13.0+cu130", "13.0", True, None) is None
    assert gpu_mismatch({**smi, "gpus": []}, "2.13.0+cpu", None, False, None) is None
    assert gpu_mismatch({**smi, "path": None, "gpus": []}, "2.13.0+cpu", None, False, None) is None
    broken = {**smi, "gpus": [], "error": "nvidia-smi -L exit code 9: NVIDIA-SMI has failed"}
    assert "is the NVIDIA driver loaded?" in gpu_mismatch(broken, "2.13.0+cpu", None, False, None)


# ---- B. device time counted once ---------------------------------------------------------

def _evt(key: str, device: DeviceType, self_dev: float, self_cpu: float,
         count: int = 4) -> SimpleNamespace:
    return SimpleNamespace(key=key, count=count, device_type=device, is_legacy=False,
                           is_user_annotation=False, self_device_time_total=self_dev,
                           self_cpu_time_total=self_cpu)


def test_top_ops_counts_device_time_once():
    """A CPU op's self device time is its kernel's time again (torch's FunctionEvent): the
    total must count each kernel once, so the GPU's busy share stays <= 100 %, and the
    rows list the kernels by device time."""
    events = [_evt("aten::mm", DeviceType.CPU, 300.0, 40.0),
              _evt("sm90_xmma_gemm", DeviceType.CUDA, 300.0, 0.0),
              _evt("aten::add", DeviceType.CPU, 100.0, 30.0),
              _evt("vectorized_elementwise_kernel", DeviceType.CUDA, 100.0, 0.0),
              _evt("Memcpy HtoD", DeviceType.CUDA, 40.0, 0.0),
              _evt("annotation", DeviceType.CUDA, 440.0, 0.0)]
    events[-1].is_user_annotation = True
    prof = SimpleNamespace(key_averages=lambda: events)
    steps, wall_ms = 4, 0.12  # 0.11 ms of kernels in a 0.12 ms step

    rec = ts.top_ops(prof, steps, True, top=10, wall_ms_per_step=wall_ms)
    assert rec["device_ms_per_step"] == pytest.approx(0.44 / steps)
    assert rec["gpu_busy_pct"] == pytest.approx(100 * 0.11 / wall_ms) and rec["gpu_busy_pct"] <= 100
    assert [r["name"] for r in rec["top"]] == ["sm90_xmma_gemm", "vectorized_elementwise_kernel",
                                               "Memcpy HtoD"]
    assert sum(r["device_pct"] for r in rec["top"]) == pytest.approx(100)
    assert [r["name"] for r in rec["top_cpu"]][:2] == ["aten::mm", "aten::add"]
    assert rec["cpu_ms_per_step"] == pytest.approx(0.07 / steps)
    text = ts.profile_text({"steps": steps, "setting": "mosei b32", "variants": {
        "default": {**rec, "wall_ms_per_step": wall_ms, "graph_replaying": True,
                    "amp": "bfloat16"}}})
    assert "GPU busy 92 %" in text and "| `sm90_xmma_gemm` | 1.0 | 0.075 | 68.2 |" in text

    cpu = ts.top_ops(prof, steps, False, top=10)
    assert [r["name"] for r in cpu["top"]] == ["aten::mm", "aten::add"]
    assert "gpu_busy_pct" not in cpu and "top_cpu" not in cpu


# ---- C. packing from the wall clock ------------------------------------------------------

def _write(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "part.parquet")


def test_search_metrics_from_the_wall_clock(tmp_path):
    """Two trials at 300 samples/s each that ran one after the other: the sum of their
    rates says 600 per GPU, the wall clock 300, with a concurrency of 1; the wall-clock
    rate is the headline, so the target and the best are not overstated."""
    n_train, t0 = 300, 1_800_000_000.0
    trials, epochs = [], []
    for i, start in enumerate((t0, t0 + 3.0)):
        tid = f"t{i}"
        trials.append({"trial_id": tid, "status": "completed", "error": None, "epochs_run": 3,
                       "wall_seconds": 3.0, "samples_per_s": 300.0, "peak_gpu_mem_mb": 100.0})
        epochs += [{"trial_id": tid, "epoch": e, "seconds": 1.0, "ended_at": start + e}
                   for e in (1, 2, 3)]
    _write(tmp_path / "trials.parquet", trials)
    _write(tmp_path / "epochs.parquet", epochs)

    m = search_metrics(tmp_path, n_train, wall_s=10.0, gpus=1)
    assert m["per_gpu_samples_s_sum"] == pytest.approx(600.0)
    assert m["per_gpu_samples_s"] == pytest.approx(300.0)  # 1800 samples in 6 s
    assert m["trials_span_s"] == pytest.approx(6.0) and m["concurrency"] == pytest.approx(1.0)
    assert m["per_gpu_samples_s_search"] == pytest.approx(180.0)

    run = {"executor": "tune", "gpus_per_trial": 0.5, "trials": 2, "mps": False,
           "problem": None, **m}
    one = {**run, "gpus_per_trial": 1.0, "trials": 1, "per_gpu_samples_s": 300.0,
           "per_gpu_samples_s_sum": 300.0}
    summary = packing_summary([one, run])
    assert summary["best_per_gpu_samples_s"] == pytest.approx(300.0)
    assert run["speedup_vs_one"] == pytest.approx(1.0)
    assert summary["serialised"] == ["tune 0.5"]


# ---- D. SDPA backend pick ----------------------------------------------------------------

def test_pick_sdpa_backend_follows_priority():
    order = ["flash", "efficient", "math", "cudnn"]

    def raises() -> bool:
        raise RuntimeError("no SDPAParams")

    assert pick_sdpa_backend(order, {"flash": lambda: False, "efficient": lambda: True,
                                     "math": lambda: True, "cudnn": lambda: True}) == "efficient"
    assert pick_sdpa_backend(order, {"flash": raises, "efficient": lambda: False,
                                     "math": lambda: True, "cudnn": lambda: True}) == "math"
    assert pick_sdpa_backend(["cudnn", *order], {"cudnn": lambda: True,
                                                 "math": lambda: True}) == "cudnn"
    assert pick_sdpa_backend(order, {"flash": lambda: False}) is None


def test_sdpa_record_runs_every_case():
    """The record's code path (SDPAParams, torch's checks, the dispatcher's choice, each
    backend forced) on the CPU at batch 1: every case in fp32 and bf16, math always runs,
    and its B x h x T x T memory is the scores' size."""
    rec = sdpa_record("cpu", batch=1)
    cases = rec["cases"]
    assert len(cases) == 2 * len(SDPA_CASES) and rec["priority"][0] == "flash"
    assert {(c["case"], c["dtype"]) for c in cases} == {
        (label, dt) for label, *_ in SDPA_CASES for dt in ("float32", "bfloat16")}
    for c in cases:
        assert "params_error" not in c, c
        assert c["runs"]["math"] == "ok" and c["picked"] == "math", c  # CUDA checks: no
        assert c["dispatcher"] in ("flash", "math"), c
        size = 1 * c["heads"] * c["T"] ** 2 * (4 if c["dtype"] == "float32" else 2) / 2**20
        assert c["math_scores_mib"] == round(size, 1)
    default = next(c for c in cases if c["case"] == "default URM audio/vision")
    assert (default["head_dim"], default["heads"], default["is_causal"]) == (10, 3, True)


# ---- E. an expected failure is not a pass ------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite
 name="pytest" errors="0" failures="0" skipped="2" tests="4" time="31.2">
<testcase classname="tests.test_gpu" name="test_cuda_graph_step_matches_eager[off]" time="4.1">
 <system-out>max param diff 2.1e-07</system-out></testcase>
<testcase classname="tests.test_gpu" name="test_ddp_two_workers[one]" time="21.0">
 <skipped type="pytest.xfail" message="two DDP ranks on one GPU: Duplicate GPU detected"/>
</testcase>
<testcase classname="tests.test_gpu" name="test_ddp_two_workers[two]" time="0.0">
 <skipped type="pytest.skip" message="needs 2 GPUs">tests/test_gpu.py:350: needs 2 GPUs</skipped>
</testcase>
<testcase classname="tests.test_gpu" name="test_peak_gpu_mem_in_search" time="6.1"/>
</testsuite></testsuites>"""


def test_xfail_fails_the_correctness_step(tmp_path):
    xml = tmp_path / "gpu_tests.xml"
    xml.write_text(JUNIT)
    tests = parse_junit(xml)
    assert [t["outcome"] for t in tests] == ["passed", "xfailed", "skipped", "passed"]

    status, line, _ = correctness_verdict(tests, 0, 200, "", cuda=True)
    assert status == "failed"
    assert line == ("1 of 4 gpu tests not passed but xfailed (an expected failure is not a "
                    "pass): test_ddp_two_workers[one]: two DDP ranks on one GPU: Duplicate "
                    "GPU detected")

    # without it the step passes, the two-GPU case noted as skipped
    rest = [t for t in tests if t["outcome"] != "xfailed"]
    status, line, notes = correctness_verdict(rest, 0, 200, "", cuda=True)
    assert (status, line) == ("passed", None)
    assert notes == ["test_ddp_two_workers[two]: skipped: needs 2 GPUs"]

    # an unexpected pass shows only in pytest -v's progress (junit reports it as passed)
    progress = "tests/test_gpu.py::test_peak_gpu_mem_in_search XPASS (flaky)    [100%]\n"
    status, line, _ = correctness_verdict(mark_xpasses(rest, progress), 0, 200, "", cuda=True)
    assert status == "failed" and "xpassed" in line and "test_peak_gpu_mem_in_search" in line

    skipped = [{**t, "outcome": "skipped", "message": "needs CUDA"} for t in tests]
    assert correctness_verdict(skipped, 0, 150, "", cuda=False)[:2] == (
        "skipped", "needs CUDA: 4 gpu tests collected, all skipped: needs CUDA")
    assert correctness_verdict(tests, None, 200, "", cuda=True)[0] == "failed"


# ---- F. steps 4-5 against a Ray head that advertises a GPU -------------------------------

@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="--fake-gpu is for machines without CUDA")
def test_fake_gpu_packing_and_asha16(tmp_path):
    """The check's search machinery end to end on the CPU (tiny preset, --quick): both
    steps pass, every packing run has its wall-clock rate, asha16 records each of its
    16 trials once. Ray's processes are stopped by their session (benchmarks/processes.py)."""
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    # one packing (4 trials on the GPU): a second one, 1 trial alone, compares speeds that
    # a fake GPU does not have, for a trial process's start-up more
    res = _check(tmp_path, "--fake-gpu", "--quick", "--only", "packing,asha16",
                 "--packings", "0.25", "--budget-s", "280", timeout=420)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    steps = {s["name"]: s for s in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert steps["packing"]["status"] == "passed", steps["packing"]
    assert steps["asha16"]["status"] == "passed", steps["asha16"]
    runs = steps["packing"]["details"]["runs"]
    assert [(r["executor"], r["gpus_per_trial"], r["trials"]) for r in runs] == [
        ("tune", 0.25, 4)]
    for r in runs:
        assert r["epochs"] >= 3 and r["completed"] == r["trials"] and not r["problem"], r
        assert r["per_gpu_samples_s"] > 0 and r["trials_span_s"] > 0, r
    asha = steps["asha16"]["details"]
    assert asha["trials"] == 16 and sum(asha["statuses"].values()) == 16
    assert set(asha["statuses"]) <= {"completed", "stopped"}
    print(f"fake-gpu packing + asha16: {wall:.0f} s")


# ---- G. the session script ---------------------------------------------------------------

def _lzma_wheel(folder: Path, name: str = "ucrnprobe", version: str = "1.0") -> Path:
    """A tiny pure-Python wheel, LZMA-compressed as `gpu_session.sh --wheels` writes them."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out"), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_plan_and_offline_install(tmp_path):
    """The script parses; its plan names pip's offline --target install, never a venv;
    the install mode installs a carried LZMA wheel with no index, makes it importable
    and gives the check what is left of the limit."""
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_session.sh")]).returncode == 0
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _lzma_wheel(wheels)
    (wheels / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"")
    plan = _session(tmp_path, GPU_SESSION_DRY_RUN="plan", GPU_SESSION_WHEELS=str(wheels),
                    GPU_SESSION_PYTHON=sys.executable)
    assert plan.returncode == 0, plan.stderr
    assert "-m pip install -q --no-index --no-deps --no-compile --target" in plan.stdout
    assert "2 wheels" in plan.stdout and "compiled for: cp312" in plan.stdout
    ours = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert ("WARNING" in plan.stdout) == (ours != "cp312")
    assert "-m venv" not in plan.stdout and not (tmp_path / "out").exists()

    (wheels / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl").unlink()
    site = tmp_path / "site"
    run = _session(tmp_path, GPU_SESSION_DRY_RUN="install", GPU_SESSION_WHEELS=str(wheels),
                   GPU_SESSION_PYTHON=sys.executable, GPU_SESSION_SITE=str(site),
                   GPU_SESSION_LIMIT_S="240", GPU_SESSION_SLACK_S="45",
                   PIP_INDEX_URL="http://127.0.0.1:9/simple")
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    assert "installed 1 wheels in" in run.stdout
    assert (site / "ucrnprobe" / "__init__.py").exists()
    budget = int(run.stdout.split("the check gets ")[1].split()[0])
    assert 150 <= budget <= 195
    assert "dry run (install): not running the check" in run.stdout
    assert (tmp_path / "out" / "gpu_session.log").exists()
