"""Attacks on the GPU path that a CPU can run: batches gathered from host memory (odd
indices, buffers that do not fit, splits that do not hold together), compile and a batch of
one row, resuming checkpoints from other devices or hand-edited ones, GPU memory across a
resume and odd NVML answers, and the GPU check and its session script under hostile
input (a garbage or hanging nvidia-smi, SIGTERM at the wrong moment, environment values
that bash would evaluate)."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ucrn.batches import HostSplit
from ucrn.data import Split, load_dataset
from ucrn.gpumem import GpuMemory
from ucrn.train import TrainConfig, Trainer, fit, own_cuda_rng

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(device="cpu", threads=1, d_model=8, heads=2, layers=1)
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", None, preset="tiny", seed=0)


@pytest.fixture(scope="module")
def host(tiny):
    return HostSplit.from_split(tiny.splits["train"], "lav", tiny.task, torch.device("cpu"))


def _split(tiny, **changed) -> Split:
    s = tiny.splits["train"]
    fields = dict(text=s.text, audio=s.audio, vision=s.vision, labels=s.labels, ids=s.ids)
    return Split(**{**fields, **changed})


# ---- HostSplit ----------------------------------------------------------------------------


def test_batch_into_refuses_buffers_that_do_not_fit(host):
    """A graph's input buffers that are not exactly the batch's: before, a missing vision
    buffer was skipped (the replay read last step's vision rows) and a float64 buffer was
    cast into silently; a None buffer was an AttributeError. Now one line each."""
    idx = torch.arange(4)
    (t, a, v), y = host.batch(idx)
    cases = {
        "2 input buffers; expected 3": ((t.clone(), a.clone()), y.clone()),
        "the audio buffer is None": ((t.clone(), None, v.clone()), y.clone()),
        "the text buffer is float64": ((t.double(), a.clone(), v.clone()), y.clone()),
        r"the labels buffer is float32 \(1, 1\)": ((t.clone(), a.clone(), v.clone()),
                                                torch.zeros(1, 1)),
        r"the text buffer is float32 \(4, 12, 24\); expected float32 \(3, 12, 24\)":
            ((t.clone(), a.clone(), v.clone()), y.clone()),
    }
    for msg, static in cases.items():
        rows = torch.arange(3) if "(3, 12" in msg else idx
        with pytest.raises(ValueError, match=msg) as err:
            host.batch_into(rows, static)
        assert "\n" not in str(err.value)
    static = (tuple(torch.zeros_like(x) for x in (t, a, v)), torch.zeros_like(y))
    host.batch_into(torch.tensor([7, 1, 7, 0]), static)  # duplicates: the rows, in order
    assert torch.equal(static[0][2], host.inputs[2][[7, 1, 7, 0]])


def test_bad_row_indices_are_one_clear_line(tiny, host):
    """Out-of-range rows name the range and the split's size (before: torch's "index out
    of range in self"); indices of another type or shape say what is expected (before:
    AttributeError for a list, torch's dtype error for bool masks)."""
    for bad in ([512], [-1], [3, 600]):
        with pytest.raises(IndexError, match=r"out of range for a split of 512 rows "
                                             r"\(expected indices in 0\.\.511\)"):
            host.batch(torch.tensor(bad))
    empty = HostSplit.from_split(_split(tiny, **{k: getattr(tiny.splits["train"], k)[:0] for k
                                                 in ("text", "audio", "vision", "labels", "ids")}),
                                 "lav", tiny.task, torch.device("cpu"))
    with pytest.raises(IndexError, match="split has no rows"):
        empty.batch(torch.tensor([0]))
    for bad in ([1, 2], np.array([1, 2]), torch.tensor([True, False]), torch.tensor([1.0]),
                torch.tensor([[1, 2]])):
        with pytest.raises(TypeError, match="expected a 1-D int64 or int32 tensor"):
            host.batch(bad)
    (_, _, _), y = host.batch(torch.tensor([5, 0], dtype=torch.int32))
    assert torch.equal(y, host.labels[[5, 0]])


def test_from_split_checks_that_the_split_holds_together(tiny):
    """Labels of another length or with two values per sample (regression) were flattened
    into a label column of the wrong length: batches paired rows with other rows' labels.
    A float64 modality failed later, inside the model. A reversed (negative-stride) view,
    which torch cannot share, is copied and gives the right rows."""
    s = tiny.splits["train"]
    with pytest.raises(ValueError, match=r"labels: shape \(512, 2\); expected one value"):
        HostSplit.from_split(_split(tiny, labels=np.stack([s.labels, s.labels], 1)), "lav",
                             tiny.task, torch.device("cpu"))
    with pytest.raises(ValueError, match="text: float32 of shape .*N = 511"):
        HostSplit.from_split(_split(tiny, labels=s.labels[:-1]), "lav", tiny.task, "cpu")
    with pytest.raises(ValueError, match="audio: float64"):
        HostSplit.from_split(_split(tiny, audio=s.audio.astype(np.float64)), "lav",
                             tiny.task, "cpu")
    rev = HostSplit.from_split(_split(tiny, text=s.text[::-1]), "lav", tiny.task, "cpu")
    (t, _, _), _ = rev.batch(torch.tensor([0]))
    np.testing.assert_array_equal(t[0].numpy(), s.text[-1])


def test_rows_are_views_on_the_cpu(host):
    """Evaluation never copies a split on the CPU: rows() are views of the host data."""
    (t, a, v), y = host.rows(10, 20)
    for got, full in zip((t, a, v, y), (*host.inputs, host.labels)):
        assert got.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()


# ---- compile: a last batch of one row ------------------------------------------------------


@pytest.mark.slow
def test_compile_does_not_recompile_for_a_one_row_batch(tiny):
    """512 rows at batch 511 leave a last batch of 1, a size dynamo always specialises:
    maybe_mark_dynamic did not help and every compiled trial compiled twice (inductor on
    this CPU: 90+ s more). That batch now runs eagerly; batch_size 1 still compiles."""
    torch._dynamo.reset()
    graphs: list[int] = []

    def counting(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    try:
        tr = Trainer(TrainConfig(**SMALL, batch_size=511, compile="default",
                                 cuda_graphs="off"), tiny, compile_backend=counting)
        for _ in range(2):
            loss, _ = tr.train_epoch()
            assert math.isfinite(loss)
        assert len(graphs) == 1, f"{len(graphs)} compilations"
        graphs.clear()
        one = Trainer(TrainConfig(**SMALL, batch_size=1, compile="default",
                                  cuda_graphs="off"), tiny, compile_backend=counting)
        one._train_step(torch.tensor([0]))
        assert len(graphs) == 1  # every batch has one row: compiled once, for that size
    finally:
        torch._dynamo.reset()


# ---- resume ------------------------------------------------------------------------------


def _checkpoint(tiny, **cfg):
    tr = Trainer(TrainConfig(**SMALL, num_epochs=2, **cfg), tiny)
    tr.train_epoch()
    tr.epoch = 1
    return tr.checkpoint()


def test_a_gpu_checkpoint_resumes_on_the_cpu_with_the_same_numbers(tiny):
    """A GPU trial with CUDA graphs saves its optimizer as capturable; torch's
    load_state_dict took that flag, so resuming on a CPU (a search resumed with
    --gpus-per-trial 0) failed with an AssertionError, and an eager checkpoint resumed on
    a GPU turned the graph capture off. The trainer keeps its own flags."""
    ckpt = _checkpoint(tiny)
    want = fit(TrainConfig(**SMALL, num_epochs=2), tiny,
               resume=copy.deepcopy(ckpt)).history[-1]["train_loss"]
    gpu = copy.deepcopy(ckpt)
    for g in gpu["optimizer"]["param_groups"]:
        g["capturable"] = True
    got = fit(TrainConfig(**SMALL, num_epochs=2), tiny, resume=gpu)
    assert got.history[-1]["train_loss"] == want
    assert got.trainer.opt.param_groups[0]["capturable"] is False


def test_cuda_rng_of_a_hand_edited_checkpoint_is_one_line(tiny):
    """Old checkpoints (a list per GPU), ones without the key and CPU ones resume; a
    string, a list of strings or a float tensor under `cuda_rng` were ignored or failed in
    torch.cuda.set_rng_state: now one line naming the key, on any device."""
    assert own_cuda_rng([torch.zeros(8, dtype=torch.uint8)], 0) is not None
    assert own_cuda_rng(None, 0) is None and own_cuda_rng([], 0) is None
    for bad in ("garbage", ["x"], torch.zeros(3), [torch.zeros(2, 2, dtype=torch.uint8)]):
        with pytest.raises(ValueError, match="checkpoint key 'cuda_rng'"):
            own_cuda_rng(bad, 0)
    ckpt = _checkpoint(tiny)
    for edit, ok in (({"cuda_rng": [torch.zeros(16, dtype=torch.uint8)]}, True),
                     ({"cuda_rng": "x"}, False), ({"gpu_memory": "x"}, False)):
        c = {**copy.deepcopy(ckpt), **edit}
        if ok:
            fit(TrainConfig(**SMALL, num_epochs=2), tiny, resume=c)
        else:
            with pytest.raises(ValueError, match="checkpoint key '(cuda_rng|gpu_memory)'"):
                fit(TrainConfig(**SMALL, num_epochs=2), tiny, resume=c)
    missing = copy.deepcopy(ckpt)
    del missing["cuda_rng"], missing["gpu_memory"]
    fit(TrainConfig(**SMALL, num_epochs=2), tiny, resume=missing)


class _FakeCuda:
    def __init__(self, allocated=100, reserved=200):
        self.allocated, self.reserved = allocated, reserved

    def _get_nvml_device_index(self, device):
        return 0

    def empty_cache(self):
        pass

    def reset_peak_memory_stats(self, device):
        pass

    def max_memory_allocated(self, device):
        return self.allocated * 2**20

    def max_memory_reserved(self, device):
        return self.reserved * 2**20


def _pynvml(monkeypatch, procs):
    mod = types.ModuleType("pynvml")
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetHandleByIndex = lambda i: object()
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: procs
    monkeypatch.setitem(sys.modules, "pynvml", mod)


def test_gpu_memory_peaks_survive_a_resume(monkeypatch):
    """A resumed trial's Trainer resets the peaks: trials.parquet then kept the resumed
    run's (lower) peak for the trial. The checkpoint carries the peaks; read() reports at
    least those, and the process peak where NVML cannot say now."""
    _pynvml(monkeypatch, [])
    mem = GpuMemory(torch.device("cuda", 0), cuda=_FakeCuda(allocated=100, reserved=200))
    mem.carry({"peak_gpu_mem_mb": 300.0, "peak_gpu_reserved_mb": 150.0,
               "gpu_process_mb": 900.0})
    assert mem.read() == {"peak_gpu_mem_mb": 300.0, "peak_gpu_reserved_mb": 200.0,
                          "gpu_process_mb": 900.0}
    mem.carry(None)  # a checkpoint from before: nothing to carry
    for bad in ("x", {"peak_gpu_mem_mb": "1"}, {"other": 1.0}):
        with pytest.raises(ValueError, match="checkpoint key 'gpu_memory'"):
            mem.carry(bad)
    assert math.isnan(GpuMemory(torch.device("cpu")).read()["peak_gpu_mem_mb"])


@pytest.mark.parametrize("procs", [None, [object()], "own -1", "own 2**64-1", "own '12'"])
def test_odd_nvml_answers_are_unknown_not_a_failed_trial(monkeypatch, procs):
    """An NVML binding that answers None or objects without pid (a stand-in pynvml)
    raised out of read(), which fails the trial's report; a negative, string or 'not
    available' (2**64 - 1) byte count went into trials.parquet as a number."""
    if isinstance(procs, str):
        used = eval(procs.split(" ", 1)[1])  # noqa: S307 - the test's own literals
        procs = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=used)]
    _pynvml(monkeypatch, procs)
    got = GpuMemory(torch.device("cuda", 0), cuda=_FakeCuda()).read()
    assert math.isnan(got["gpu_process_mb"]) and got["peak_gpu_mem_mb"] == 100.0


# ---- the GPU check -------------------------------------------------------------------------


def _fake_smi(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return folder


def test_nvidia_smi_garbage_and_a_stray_child(tmp_path, monkeypatch):
    """Output that is not UTF-8 crashed the environment step (UnicodeDecodeError); a
    stand-in that hangs in a child process was stopped at the timeout but its child ran
    on. Now the bytes are replaced and the whole process group is killed."""
    from benchmarks import gpu_check

    garbage = _fake_smi(tmp_path / "garbage", "printf 'GPU 0: Tesla \\377\\376 X\\n'\n")
    monkeypatch.setenv("PATH", f"{garbage}{os.pathsep}{os.environ['PATH']}")
    smi = gpu_check.nvidia_smi(timeout=10)
    assert smi["error"] is None and smi["gpus"] == ["Tesla \ufffd\ufffd X"]

    pid_file = tmp_path / "child.pid"
    hang = _fake_smi(tmp_path / "hang", f"sleep 300 &\necho $! > {pid_file}\nwait\n")
    monkeypatch.setenv("PATH", f"{hang}{os.pathsep}{os.environ['PATH']}")
    t0 = time.monotonic()
    smi = gpu_check.nvidia_smi(timeout=1)
    assert time.monotonic() - t0 < 10 and "TimeoutExpired" in smi["error"]
    child = int(pid_file.read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(
                f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("nvidia-smi's child outlived the timeout")


def test_gpu_check_arguments(tmp_path):
    """--out '' was Path('.'): the results went into the current folder (the checkout)."""
    from benchmarks import gpu_check
    from ucrn.errors import UsageError

    for bad in ("", " "):
        with pytest.raises(UsageError, match="--out: .*expected a folder"):
            gpu_check.parse_args(["--out", bad])
    assert gpu_check.parse_args(["--out", str(tmp_path / "o")]).out == tmp_path / "o"
    out = ["--out", str(tmp_path / "o")]
    for bad in ("0.3", "x,1", ",", "nan"):
        with pytest.raises(UsageError, match=f"--packings {bad}: expected some of 1,0.5"):
            gpu_check.parse_args([*out, "--packings", bad])
    assert gpu_check.parse_args([*out, "--packings", "0.25,1"]).packings == [0.25, 1.0]
    assert gpu_check.parse_args([*out, "--quick"]).packings == [1.0, 0.25]
    assert len(gpu_check.parse_args(out).packings) == 4


def test_a_junit_file_cut_off_falls_back_to_the_progress_lines(tmp_path):
    from benchmarks import gpu_check

    xml = tmp_path / "gpu_tests.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite><testcase name="a"')
    assert gpu_check.parse_junit(xml) == []


def test_sigterm_while_the_ray_head_starts_stops_it(tmp_path, monkeypatch):
    """SIGTERM while RayHead waits for Ray to come up raised out of its constructor: the
    check had no head object to stop, and the head's session (GCS, raylet, dashboard)
    ran on after the check exited. RayHead now stops a head whose start is interrupted."""
    from benchmarks import gpu_check, processes

    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def fake_ray_start(argv, **kwargs):  # a stand-in head: a process in its own session
        kwargs.pop("stdout", None), kwargs.pop("stderr", None)
        proc = real_popen(["sleep", "300"], **kwargs)
        started.append(proc)
        return proc

    real_sleep, calls = time.sleep, []

    def interrupted(seconds):  # SIGTERM during the wait for Ray (the first sleep)
        calls.append(seconds)
        if len(calls) == 1:
            raise gpu_check.Interrupted()
        real_sleep(seconds)

    monkeypatch.setattr(processes.subprocess, "Popen", fake_ray_start)
    monkeypatch.setattr(processes.time, "sleep", interrupted)
    try:
        with pytest.raises(gpu_check.Interrupted):
            processes.RayHead(dict(os.environ), 0, 1, tmp_path)
        proc = started[0]
        assert proc.poll() is not None and not processes.session_pids(proc.pid)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_second_sigterm_does_not_cut_the_cleanup_short(tmp_path, monkeypatch):
    """The first SIGTERM raises Interrupted; a second one, while the first one's cleanup
    stops the search and the Ray head and writes the results, raised again out of that
    cleanup. It is now ignored."""
    from benchmarks import gpu_check

    cleaned: list[bool] = []

    def run(self):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a supervisor that sends it twice
            time.sleep(0.2)
            cleaned.append(True)
        return 0

    monkeypatch.setattr(gpu_check.GpuCheck, "run", run)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert gpu_check._main(["--out", str(tmp_path / "o")]) == 1
    finally:
        signal.signal(signal.SIGTERM, before)
    assert cleaned == [True]


def test_train_speed_budget_must_be_a_number():
    from benchmarks import train_speed
    from ucrn.errors import UsageError

    for bad in ("nan", "-1"):  # nan: `elapsed > nan` is never true, the budget never applied
        with pytest.raises(UsageError, match="--budget-s"):
            train_speed.parse_args(["--budget-s", bad])


# ---- the session script --------------------------------------------------------------------


def _session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out"),
                               "GPU_SESSION_PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)


def test_session_numbers_are_checked_before_bash_evaluates_them(tmp_path):
    """bash's arithmetic evaluated a non-number: GPU_SESSION_LIMIT_S='HOME[$(cmd)]' ran
    cmd, and its error line printed the value of the variable named (a secret, if one was
    named). A value that is not a whole number is now one line, before anything runs."""
    flag = tmp_path / "ran"
    for var in ("GPU_SESSION_LIMIT_S", "GPU_SESSION_SLACK_S"):
        for value in (f"HOME[$(touch {flag})]", "300s", "-5", "1e3"):
            run = _session(tmp_path, **{var: value, "GPU_SESSION_DRY_RUN": "plan"})
            assert run.returncode == 2 and not flag.exists(), (var, value, run.stderr)
            assert f"{var}=" in run.stderr and "whole number" in run.stderr
            assert os.environ["HOME"] not in run.stderr and len(run.stderr.splitlines()) == 1
    run = _session(tmp_path, GPU_SESSION_DRY_RUN="1")  # not a dry run: would run it all
    assert run.returncode == 2 and "GPU_SESSION_DRY_RUN=1: expected plan, install" in run.stderr


@pytest.mark.slow
def test_session_never_empties_a_folder_it_did_not_make(tmp_path):
    """GPU_SESSION_SITE named an existing folder: `rm -rf` emptied it before installing.
    Also an OUT that cannot hold the results stops at once instead of running on."""
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "foo-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    site = tmp_path / "mine"
    site.mkdir()
    (site / "precious.txt").write_text("keep")
    run = _session(tmp_path, GPU_SESSION_DRY_RUN="install", GPU_SESSION_WHEELS=str(wheels),
                   GPU_SESSION_SITE=str(site))
    assert run.returncode == 1 and "refusing to empty it" in run.stdout
    assert (site / "precious.txt").read_text() == "keep"
    ours = tmp_path / "ours"  # one the script made: emptied and reused on the next call
    for _ in range(2):
        run = _session(tmp_path, GPU_SESSION_DRY_RUN="install", GPU_SESSION_WHEELS=str(wheels),
                       GPU_SESSION_SITE=str(ours))
        assert run.returncode == 0 and "going on without them" in run.stdout
    afile = tmp_path / "afile"
    afile.write_text("x")
    run = _session(tmp_path, OUT=str(afile), GPU_SESSION_DRY_RUN="install")
    assert run.returncode == 1 and "cannot write the results folder" in run.stderr
