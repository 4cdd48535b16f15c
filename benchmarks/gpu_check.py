"""One script that proves or breaks the CUDA path within minutes of a lent GPU.

GPU time is rare (minutes per session, from a bare machine), so everything that only a GPU
can show runs from one command, in an order that puts the cheapest, most decisive
evidence first, each step timed and recorded as it ends:

1. environment: torch, CUDA, GPU, Ray, CPUs; whether the default config takes the
   whole-step CUDA graph (`ucrn.train.use_cuda_graphs`); which SDPA backend each
   attention shape takes; fails when nvidia-smi lists a GPU that torch cannot use (a CPU
   build, an old driver), and then nothing else runs;
2. correctness: the `gpu`-marked tests of tests/test_gpu.py in a pytest subprocess
   (graph step = eager step in fp32 and bf16, through an LR change and a restore; graphs
   on/off over 3 epochs; the capture fallback; peak GPU memory in a real search; DDP); an
   xfail or xpass fails the step: an expected failure is not a pass;
3. speed: benchmarks/train_speed.py in this process (ours with graphs + bf16, eager bf16,
   eager fp32, against the naive baseline of the same run) and a torch.profiler of a few
   steps of each (top kernels, GPU busy share, a chrome trace);
4. packing: the real search (`run_search.py`) on MOSI-shaped data at 1, 1/2, 1/4 and 1/8
   GPU per trial, both executors, at least 3 epochs each, optionally under NVIDIA MPS:
   samples/s per GPU from the wall clock (first trial's start to last one's end), memory
   per trial, start-up;
5. a 16-trial ASHA search at 1/4 GPU per trial: wall time and complete results.

Without CUDA, steps 1-3 run (tests collected and skipped with the reason, speed in a
tiny form) and 4-5 are skipped, "needs CUDA". DIR gets gpu_check.json (rewritten after
every step, so a killed run keeps what it finished), summary.md, gpu_tests.xml, logs.txt,
profile_trace.json.gz and, after a failure, tracebacks.txt: six files at most, since a
lent machine returns eight. Exit code 0 when every step that ran passed, 1 otherwise.

    python -m benchmarks.gpu_check --out DIR            # ~7 minutes on a GPU, ~1 on a CPU
    python -m benchmarks.gpu_check --out DIR --quick    # fewer settings and epochs
    python -m benchmarks.gpu_check --out DIR --only correctness,packing --budget-s 200
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/gpu_check.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.processes import RayHead, kill_session  # noqa: E402
from ucrn.errors import OneLineParser, run_main  # noqa: E402
from ucrn.fileio import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS: tuple[tuple[str, str], ...] = (
    ("environment", "Environment"),
    ("correctness", "Correctness (pytest -m gpu tests/test_gpu.py)"),
    ("speed", "Speed and profile (benchmarks/train_speed.py)"),
    ("packing", "Packing trials on one GPU (run_search.py)"),
    ("asha16", "16-trial ASHA search on one GPU (run_search.py)"),
)
NEEDS_CUDA = "needs CUDA (torch.cuda.is_available() is False on this machine)"
PACKING_TARGET = 30_000.0  # train samples/s per GPU at the best packing (docs/benchmarks.md)
# packing runs, most telling first: when the budget runs out, the rest are skipped
PACKING_ORDER: tuple[tuple[str, float], ...] = (
    ("tune", 1.0), ("tune", 0.25), ("train", 0.25), ("tune", 0.125), ("train", 1.0),
    ("tune", 0.5), ("train", 0.5), ("train", 0.125))
# a fixed trial: the default model at batch 32 (a space needs one searched key: `lr`
# "searches" one value; a space of fixed values only stops run_search.py after Ray starts)
FIXED_SPACE = "lr: {choice: [0.001]}\nd_model: 30\nheads: 3\nlayers: 5\nbatch_size: 32\n"
FAKE_SPACE = "lr: {choice: [0.001]}\nd_model: 12\nheads: 2\nlayers: 1\nbatch_size: 32\n"
# --fake-gpu's 16-trial search: the same small model, lr searched (the default space's
# models took most of the check's CPU time, and it measures nothing there)
FAKE_ASHA_SPACE = FAKE_SPACE.replace("{choice: [0.001]}", "{loguniform: [1.0e-4, 1.0e-2]}")
# start-up of one search's trials besides compute (s): Ray job, trial process, imports,
# data; `train` adds Ray Train's controller and worker group (docs/benchmarks.md)
STARTUP_GUESS = {"tune": 10.0, "train": 25.0}
MAX_STARTUP_SHARE = 0.2
# epochs of each packing run: the first (CUDA graph capture, warm-up) is slow, and a
# trial's samples_per_s is the median over its epochs, so 3 keep it out of that median
MIN_PACKING_EPOCHS = 3


class Skip(Exception):
    """The step cannot run here; the message is the reason."""


class CheckFailed(Exception):
    """The step ran and a check failed; the message is one line."""


class Interrupted(BaseException):
    """SIGTERM: record the step as interrupted, then stop."""


@dataclass
class StepResult:
    name: str
    title: str
    status: str = "not reached"  # passed | failed | skipped | not reached
    reason: str | None = None  # why it was skipped
    seconds: float = 0.0
    error: str | None = None  # one line, when failed
    traceback_file: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _jsonable(x: Any) -> Any:
    """NaN/inf become null (strict JSON); numpy scalars become numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (TypeError, ValueError):
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


@dataclass
class Ran:
    rc: int | None  # None: timed out (then killed)
    seconds: float
    tail: str
    text: str = ""  # the whole output


def run_process(cmd: list[str], env: dict[str, str], timeout: float, log: Path,
                title: str) -> Ran:
    """Run `cmd` in its own session, output to a temporary file; past `timeout`, SIGTERM
    (run_search.py then saves its state), then kill the session. The output's tail is
    appended to `log` under `title`."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
        rc: int | None
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            rc = None
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        except BaseException:
            kill_session(proc.pid, grace=3)
            raise
        kill_session(proc.pid, grace=3)  # anything it left behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        seconds = time.perf_counter() - t0
        out.seek(0)
        lines = out.read().splitlines()
    tail = "\n".join(lines[-200:])
    with log.open("a") as f:
        state = "timed out" if rc is None else f"exit code {rc}"
        f.write(f"\n===== {title} ({state}, {seconds:.1f} s)\n$ {' '.join(cmd)}\n{tail}\n")
    return Ran(rc, seconds, tail, "\n".join(lines))


# --------------------------------------------------------------------------------------
# environment probes
# --------------------------------------------------------------------------------------


def run_bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`cmd`'s output as text (undecodable bytes replaced), in bounded time: it runs in its
    own process group, killed whole at `timeout` (subprocess.run would kill only `cmd`,
    leaving what it started running), then TimeoutExpired."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def nvidia_smi(timeout: float = 15.0) -> dict[str, Any]:
    """What the driver says, independently of torch: the GPUs `nvidia-smi -L` lists, the
    `--query-gpu` line and the driver version; `error` when nvidia-smi is there but fails."""
    info: dict[str, Any] = {"path": shutil.which("nvidia-smi"), "gpus": [], "query": None,
                            "driver": None, "error": None}
    if info["path"] is None:
        return info
    try:
        listed = run_bounded([info["path"], "-L"], timeout)
        query = run_bounded(
            [info["path"], "--query-gpu=name,memory.total,driver_version,compute_mode",
             "--format=csv,noheader"], timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        info["error"] = f"{type(e).__name__}: {e}"[:300]
        return info
    if listed.returncode != 0:
        out = (listed.stderr.strip() or listed.stdout.strip()).splitlines() or [""]
        info["error"] = f"nvidia-smi -L exit code {listed.returncode}: {out[0][:200]}"
    info["gpus"] = [m[1] for m in (re.match(r"GPU \d+: (.+?)(?: \(UUID: .*\))?$", line.strip())
                                   for line in listed.stdout.splitlines()) if m]
    info["query"] = query.stdout.strip() or query.stderr.strip() or None
    if query.returncode == 0 and query.stdout.strip():
        fields = [f.strip() for f in query.stdout.splitlines()[0].split(",")]
        info["driver"] = fields[2] if len(fields) > 2 else None
    return info


def gpu_mismatch(smi: dict[str, Any], torch_version: str, torch_cuda: str | None,
                 cuda_available: bool, visible: str | None) -> str | None:
    """One line when the machine has a GPU that torch cannot use, else None: without it
    the check would run its CPU mode on a GPU machine and pass, having used no GPU."""
    if cuda_available or smi.get("path") is None:
        return None
    if not smi["gpus"]:
        if smi.get("error"):
            return (f"nvidia-smi is installed but fails ({smi['error']}) and torch "
                    f"{torch_version} cannot use CUDA: is the NVIDIA driver loaded?")
        return None
    n = len(smi["gpus"])
    listed = (f"nvidia-smi lists {n} GPU{'s' if n > 1 else ''} ({smi['gpus'][0]}"
              f"{', ...' if n > 1 else ''})")
    if torch_cuda is None:
        return f"{listed} but torch {torch_version} cannot use CUDA: a CPU build of torch"
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return (f"{listed} but torch {torch_version} sees none: CUDA_VISIBLE_DEVICES="
                f"{visible!r} hides them")
    return (f"{listed} but torch {torch_version} built for CUDA {torch_cuda} reports "
            f"is_available() False: driver {smi.get('driver') or '?'} too old?")


# SDPA backends by torch's names (torch.nn.attention.SDPBackend)
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
SDPA_DEFAULT_PRIORITY = ("flash", "efficient", "math", "cudnn")  # torch 2.13's order
# (label, head dim, heads, T, attention dropout, causal): the default model's URM
# encoders on MOSEI unaligned shapes (ucrn/model.py: is_causal, no attn_mask; audio and
# vision 500 steps, no attention dropout; text 50 steps, dropout 0.1), then head dims the
# flash kernels are built for
SDPA_CASES: tuple[tuple[str, int, int, int, float, bool], ...] = (
    ("default URM audio/vision", 10, 3, 500, 0.0, True),
    ("default URM text", 10, 3, 50, 0.1, True),
    ("head dim 8", 8, 3, 500, 0.0, True),
    ("head dim 16", 16, 3, 500, 0.0, True),
    ("head dim 32", 32, 3, 500, 0.0, True),
)
SDPA_BATCH = 32


def pick_sdpa_backend(priority: list[str] | tuple[str, ...],
                      can_use: dict[str, Callable[[], bool]]) -> str | None:
    """The backend F.scaled_dot_product_attention takes: the first in torch's priority
    order whose check says it can run (a check that raises counts as no)."""
    for name in priority:
        check = can_use.get(name)
        if check is None:
            continue
        try:
            if check():
                return name
        except Exception:  # noqa: BLE001 - a check that cannot run is a no
            continue
    return None


def _sdpa_priority() -> list[str]:
    """torch's current priority order, by our names (its default where it cannot say)."""
    import torch
    from torch.nn.attention import SDPBackend

    by_int = {int(getattr(SDPBackend, v)): k for k, v in SDPA_BACKENDS.items()
              if hasattr(SDPBackend, v)}
    try:
        return [by_int[i] for i in torch._C._get_sdp_priority_order() if i in by_int]
    except (AttributeError, RuntimeError):
        return list(SDPA_DEFAULT_PRIORITY)


def _sdpa_params(q: Any, k: Any, v: Any, dropout: float, causal: bool) -> tuple[Any, str | None]:
    """torch.backends.cuda.SDPAParams, whose arguments changed between releases (enable_gqa
    came in 2.5): the current form, then the older one; (None, error text) if neither."""
    import torch

    errors = []
    for args in ((q, k, v, None, dropout, causal, False), (q, k, v, None, dropout, causal)):
        try:
            return torch.backends.cuda.SDPAParams(*args), None
        except (TypeError, RuntimeError, AttributeError) as e:
            errors.append(f"{len(args)} args: {e}")
    return None, "; ".join(errors)[:300]


def sdpa_record(device: str | None, batch: int = SDPA_BATCH) -> dict[str, Any]:
    """Which SDPA backend each attention shape takes on this GPU, in fp32 and bf16, with
    the model's causal mask: torch's own checks (`can_use_*`, with their reasons), the
    pick they imply, the dispatcher's choice (`torch._fused_sdp_choice`), and which backends
    run forward and backward when forced (`sdpa_kernel`). Math materialises the B x h x
    T x T scores (and keeps the probabilities for backward); the fused kernels keep
    B x h x T. `device` None: not applicable (no CUDA); the tests run it on "cpu"."""
    if device is None:
        return {"applicable": False, "note": "not applicable (no CUDA)"}
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    t0 = time.perf_counter()
    priority = _sdpa_priority()
    checks = {"flash": getattr(torch.backends.cuda, "can_use_flash_attention", None),
              "efficient": getattr(torch.backends.cuda, "can_use_efficient_attention", None),
              "cudnn": getattr(torch.backends.cuda, "can_use_cudnn_attention", None)}
    names = {int(getattr(SDPBackend, v)): k for k, v in SDPA_BACKENDS.items()
             if hasattr(SDPBackend, v)}
    rows = []
    for label, hd, heads, T, dropout, causal in SDPA_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(batch, heads, T, hd, device=device, dtype=dtype,
                                   requires_grad=True) for _ in range(3))
            row: dict[str, Any] = {
                "case": label, "head_dim": hd, "heads": heads, "T": T, "batch": batch,
                "dropout_p": dropout, "is_causal": causal,
                "dtype": str(dtype).replace("torch.", ""),
                "math_scores_mib": round(batch * heads * T * T * q.element_size() / 2**20, 1)}
            params, err = _sdpa_params(q, k, v, dropout, causal)
            can: dict[str, bool] = {"math": True}
            why: dict[str, str] = {}
            if params is None:
                row["params_error"] = err
            for name, fn in checks.items():
                if fn is None or params is None:
                    why[name] = "no check in this torch" if fn is None else "no SDPAParams"
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        can[name] = bool(fn(params, True))
                    except Exception as e:  # noqa: BLE001 - recorded
                        can[name], why[name] = False, f"{type(e).__name__}: {e}"[:200]
                if not can[name] and name not in why:
                    why[name] = " ".join(str(w.message).split(" (Triggered")[0]
                                         for w in caught)[:300] or "no reason given"
            row["can_use"], row["why_not"] = can, why
            row["picked"] = pick_sdpa_backend(
                priority, {n: (lambda n=n, can=can: can.get(n, False)) for n in SDPA_BACKENDS})
            try:
                row["dispatcher"] = names.get(int(torch._fused_sdp_choice(
                    q, k, v, None, dropout, causal)), "other")
            except (AttributeError, RuntimeError, TypeError) as e:
                row["dispatcher"] = f"error: {e}"[:200]
            runs = {}
            for name, enum in SDPA_BACKENDS.items():
                if not hasattr(SDPBackend, enum):
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel([getattr(SDPBackend, enum)]):
                            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout,
                                                                 is_causal=causal)
                            out.float().sum().backward()
                        if q.is_cuda:
                            torch.cuda.synchronize()
                        runs[name] = "ok"
                    except RuntimeError as e:  # refused: its warnings say why
                        said = " ".join(str(w.message).split(" (Triggered")[0] for w in caught)
                        runs[name] = (f"{(str(e).strip().splitlines() or ['error'])[0][:120]}"
                                      f"{' (' + said[:200] + ')' if said else ''}")
            row["runs"] = runs
            rows.append(row)
            del q, k, v, params
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"applicable": True, "device": device, "priority": priority, "cases": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------


class GpuCheck:
    def __init__(self, ns: argparse.Namespace):
        self.ns = ns
        self.out: Path = ns.out
        self.quick: bool = ns.quick
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + ns.budget_s
        self.started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.steps = [StepResult(n, t) for n, t in STEPS]
        self.logs = self.out / "logs.txt"
        self.tracebacks = self.out / "tracebacks.txt"
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.finished = False
        self.exit_code: int | None = None
        import torch

        self.cuda = torch.cuda.is_available()
        self.fake_gpu = ns.fake_gpu and not self.cuda
        self.unusable_gpu: str | None = None  # set by the environment step
        self.head: RayHead | None = None  # steps 4 and 5 share one while nothing breaks
        self.mosi_b32_samples_s: float | None = None  # from the speed step, for planning
        token = self.work / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token), "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

    # ---- bookkeeping -------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)

    def write(self) -> None:
        """gpu_check.json and summary.md, whole, after every step (and sub-step)."""
        counts = {s: sum(r.status == s for r in self.steps)
                  for s in ("passed", "failed", "skipped", "not reached")}
        doc = {"tool": "python -m benchmarks.gpu_check", "command": sys.argv,
               "mode": "quick" if self.quick else "full", "started": self.started,
               "cuda": self.cuda, "fake_gpu": self.fake_gpu, "budget_s": self.ns.budget_s,
               "elapsed_s": round(self.elapsed(), 1), "finished": self.finished,
               "exit_code": self.exit_code, "counts": counts,
               "steps": [asdict(s) for s in self.steps]}
        atomic_write(self.out / "gpu_check.json",
                     (json.dumps(_jsonable(doc), indent=2) + "\n").encode())
        atomic_write(self.out / "summary.md", self.summary(counts).encode())

    def run(self) -> int:
        # the environment always runs (seconds): each call may be on a fresh machine, and
        # it decides whether the GPU is usable at all
        selected = ["environment", *(self.ns.only or [n for n, _ in STEPS])]
        fns: dict[str, Callable[[StepResult], None]] = {
            "environment": self.step_environment, "correctness": self.step_correctness,
            "speed": self.step_speed, "packing": self.step_packing,
            "asha16": self.step_asha16}
        self.log(f"GPU check -> {self.out} ({'quick' if self.quick else 'full'}, budget "
                 f"{self.ns.budget_s:.0f} s, CUDA {'yes' if self.cuda else 'no'})")
        try:
            for i, res in enumerate(self.steps, 1):
                if res.name not in selected:
                    res.status, res.reason = "skipped", "not selected (--only)"
                    self.write()
                    continue
                if self.unusable_gpu:
                    res.status, res.reason = "skipped", ("not run: the environment step "
                                                         "found a GPU torch cannot use")
                    self.write()
                    continue
                self.log(f"== step {i}/{len(self.steps)}: {res.title}")
                self._run_step(res, fns[res.name])
                line = res.reason or res.error or ""
                self.log(f"== {res.name}: {res.status.upper()} in {res.seconds:.1f} s"
                         + (f": {line}" if line else ""))
        finally:
            self._stop_head()
            failed = any(r.status == "failed" for r in self.steps)
            self.exit_code = 1 if failed else 0
            self.finished = True
            self.write()
            shutil.rmtree(self.work, ignore_errors=True)
        counts = {s: sum(r.status == s for r in self.steps) for s in ("passed", "failed",
                                                                      "skipped")}
        self.log(f"done in {self.elapsed():.0f} s: {counts['passed']} passed, "
                 f"{counts['failed']} failed, {counts['skipped']} skipped; "
                 f"{self.out / 'summary.md'}")
        return self.exit_code

    def _run_step(self, res: StepResult, fn: Callable[[StepResult], None]) -> None:
        t0 = time.perf_counter()
        res.status = "running"
        self.write()
        try:
            fn(res)
            res.status = "passed"
        except Skip as e:
            res.status, res.reason = "skipped", str(e)
        except CheckFailed as e:
            res.status, res.error = "failed", str(e)
        except Interrupted:
            res.status, res.error = "failed", "interrupted (SIGTERM) during this step"
            raise
        except Exception as e:  # noqa: BLE001 - a step's crash must not stop the others
            first = (str(e).strip().splitlines() or [""])[0]
            res.status, res.error = "failed", f"{type(e).__name__}: {first}"[:500]
            with self.tracebacks.open("a") as f:
                f.write(f"===== step {res.name} ({self.elapsed():.0f} s)\n")
                f.write(traceback.format_exc() + "\n")
            res.traceback_file = self.tracebacks.name
        finally:
            res.seconds = round(time.perf_counter() - t0, 1)
            self.write()

    # ---- 1. environment ----------------------------------------------------------------

    def step_environment(self, res: StepResult) -> None:
        import torch

        from ucrn.train import TrainConfig, use_cuda_graphs

        def version(dist: str) -> str | None:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                return None

        d = res.details
        d.update({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if self.cuda else None,
                  "cuda_available": self.cuda,
                  "gpu_count": torch.cuda.device_count() if self.cuda else 0,
                  "ray": version("ray"), "optuna": version("optuna"),
                  "pandas": version("pandas"), "pytest": version("pytest"),
                  "python": platform.python_version(), "platform": platform.platform(),
                  "cpu_count": os.cpu_count(),
                  "loadavg_1m": round(os.getloadavg()[0], 2),
                  "nvidia_smi": shutil.which("nvidia-smi"),
                  "mps_control": shutil.which("nvidia-cuda-mps-control")})
        gpus = []
        for i in range(d["gpu_count"]):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name,
                         "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}",
                         "multiprocessors": p.multi_processor_count})
        d["gpus"] = gpus
        d["bf16_supported"] = bool(self.cuda and torch.cuda.is_bf16_supported())
        device = torch.device("cuda" if self.cuda else "cpu")
        d["cuda_graphs_default"] = use_cuda_graphs(TrainConfig(), device, 1)
        d["amp_default"] = "bf16" if d["bf16_supported"] else "off"
        smi = nvidia_smi()
        d["nvidia_smi_gpus"] = smi["gpus"]
        d["nvidia_smi_query"] = smi["query"]
        d["driver"] = smi["driver"]
        if smi["error"]:
            d["nvidia_smi_error"] = smi["error"]
        try:
            d["sdpa"] = sdpa_record("cuda" if self.cuda else None)
        except Exception as e:  # noqa: BLE001 - a record, not a check: keep the step's verdict
            d["sdpa"] = {"applicable": self.cuda, "error": f"{type(e).__name__}: {e}"[:300]}
            res.notes.append(f"SDPA backend record failed: {d['sdpa']['error']}")
        self.log(f"torch {d['torch']} (CUDA {d['cuda']}), "
                 f"{', '.join(g['name'] + ' ' + str(g['memory_gib']) + ' GiB' for g in gpus) or 'no GPU'}"
                 f", Ray {d['ray']}, {d['cpu_count']} CPUs, CUDA graph for the default config: "
                 f"{d['cuda_graphs_default']}")
        if d["ray"] is None:
            res.notes.append("Ray is not installed: the search tests and steps 4-5 skip")
        self.unusable_gpu = gpu_mismatch(smi, torch.__version__, torch.version.cuda, self.cuda,
                                         os.environ.get("CUDA_VISIBLE_DEVICES"))
        if self.unusable_gpu:
            raise CheckFailed(self.unusable_gpu)
        if not self.cuda:
            res.notes.append("no CUDA device: steps 2-5 run only what a CPU can (see each)")

    # ---- 2. correctness ----------------------------------------------------------------

    def step_correctness(self, res: StepResult) -> None:
        xml = self.out / "gpu_tests.xml"
        xml.unlink(missing_ok=True)
        # -v, not -q: each result is printed as it comes, so a run cut off by its time
        # limit (no junit XML then) still says which tests passed; -n 0: in this process,
        # one after the other (the project's 2 xdist workers cost 2 more start-ups of torch,
        # and print progress lines that _PROGRESS does not read)
        cmd = [sys.executable, "-m", "pytest", "-n", "0", "-m", "gpu", "tests/test_gpu.py", "-v",
               f"--junitxml={xml}", "-o", "junit_logging=system-out", "-p", "no:cacheprovider"]
        timeout = self._cap(200 if self.cuda else 150, keep=120 if self.cuda else 20)
        self.log(f"$ {' '.join(cmd)}  (timeout {timeout:.0f} s)")
        ran = run_process(cmd, self.env, timeout, self.logs, "pytest -m gpu")
        # the junit XML; pytest's progress lines where it is missing or cut off
        tests = (mark_xpasses(parse_junit(xml), ran.text) if xml.exists() else []) or \
            parse_progress(ran.text)
        outcomes = [t["outcome"] for t in tests]
        res.details.update({"pytest_rc": ran.rc, "tests": tests,
                            "counts": {o: outcomes.count(o) for o in sorted(set(outcomes))}})
        for t in tests:
            self.log(f"  {t['outcome']:8} {t['name']} ({t['seconds']:.1f} s)"
                     + (f": {t['message'][:160]}" if t["message"] else ""))
        status, line, notes = correctness_verdict(tests, ran.rc, timeout, ran.tail, self.cuda)
        res.notes += notes
        if status == "failed":
            raise CheckFailed(line)
        if status == "skipped":
            raise Skip(line)

    def _cap(self, cap: float, keep: float) -> float:
        """A step's time limit: at most `cap`, leaving `keep` seconds for the later steps."""
        return max(30.0, min(cap, self.remaining() - keep))

    # ---- 3. speed ----------------------------------------------------------------------

    def step_speed(self, res: StepResult) -> None:
        import torch

        from benchmarks import train_speed as ts

        if self.cuda:
            budget = self._cap(60 if self.quick else 110, keep=200)
            args = ["--device", "cuda", "--shapes", "mosei,mosi",
                    "--batch-sizes", "32" if self.quick else "32,128",
                    "--steps", "10" if self.quick else "20",
                    "--windows", "2" if self.quick else "3",
                    "--profile-steps", "5", "--budget-s", f"{budget:.0f}",
                    "--variants", "default,eager_bf16,eager_fp32"]
        else:  # tiny shapes, a couple of steps, no bf16 (a CPU emulates it, slowly): proves
            # the code path, measures nothing
            args = ["--small", "--device", "cpu", "--batch-sizes", "32", "--steps", "2",
                    "--windows", "1", "--n-valid", "32", "--threads", "1",
                    "--profile-steps", "2", "--variants", "default,eager_fp32"]
        args += ["--profile", str(self.out)]
        self.log("train_speed " + " ".join(args))
        doc = ts.run(ts.parse_args(args), log=lambda m: self.log("  " + m))
        rows: list[ts.Row] = doc["rows"]
        res.details.update(_jsonable(ts.to_json(doc)))
        res.details["table"] = ts.table(rows, doc["memory_method"]) if rows else ""
        res.details["targets_text"] = ts.targets_text(doc["targets"])
        if doc["profile"] is not None:
            res.details["profile_text"] = ts.profile_text(doc["profile"])
        print(res.details["table"] + "\n" + res.details["targets_text"], flush=True)
        mosi = next((r for r in rows if r.shape == "mosi" and r.batch_size == 32), None)
        if mosi is not None and not doc["mode"] == "small":
            self.mosi_b32_samples_s = mosi.ours_samples_s
        missed = [t["target"] for t in doc["targets"] if t["met"] is False]
        if missed:
            res.notes.append("targets missed: " + "; ".join(missed))
        if doc["skipped"]:
            res.notes.append("time budget spent, not measured: " + ", ".join(doc["skipped"]))
        del rows, doc
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()  # the searches' processes need the memory
        if not res.details["rows"]:
            raise CheckFailed("no setting was measured")
        if self.cuda:
            path = res.details["rows"][0]["variants"]["default"]
            if not (path["graph_replaying"] and path["amp"] == "bfloat16"):
                raise CheckFailed(f"the default config did not take the fast path on CUDA "
                                  f"(graph replaying {path['graph_replaying']}, amp "
                                  f"{path['amp']}): a capture fell back to eager?")

    # ---- 4. packing --------------------------------------------------------------------

    def _need_search_machine(self) -> None:
        if not (self.cuda or self.fake_gpu):
            raise Skip(NEEDS_CUDA)
        if importlib.util.find_spec("ray") is None:
            raise Skip("needs Ray, which is not installed here")

    def _ray_head(self) -> RayHead:
        """The local Ray head of steps 4 and 5, started on first use (seconds of device
        time each start and stop)."""
        if self.head is None:
            self.head = RayHead(self.env, self._gpus(), self._cpus(), self.work)
        return self.head

    def _stop_head(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            head.stop()

    def _gpus(self) -> int:
        import torch

        return torch.cuda.device_count() if self.cuda else 1

    def _cpus(self) -> int:
        """The head's CPUs: the machine's; with --fake-gpu at least 16, so that 8 packed
        trials can start together (they are logical CPUs to Ray)."""
        cpus = os.cpu_count() or 1
        return max(cpus, 16) if self.fake_gpu else cpus

    def step_packing(self, res: StepResult) -> None:
        self._need_search_machine()
        from ucrn.data import PRESETS

        preset = "tiny" if self.fake_gpu else "mosi"
        n_train = PRESETS[preset]["n"][0]
        space = self.work / "fixed.yaml"
        space.write_text(FAKE_SPACE if self.fake_gpu else FIXED_SPACE)
        asha_reserve = (60.0 if self.quick else 90.0) * (
            2 if self.ns.asha_executor == "train" else 1)
        budget = self.remaining() - asha_reserve
        order = [c for c in PACKING_ORDER if c[1] in self.ns.packings]
        if self.fake_gpu:  # Ray Train sets up NCCL for a GPU worker: no CPU build has it
            order = [c for c in order if c[0] == "tune"]
        # one trial alone: an epoch is its training samples at the speed step's rate, plus
        # validation (about 15 %) and the report with its checkpoint
        alone = self.mosi_b32_samples_s or 3000.0
        epoch_alone = n_train / alone * 1.15 + 0.3
        d = res.details
        d.update({"preset": preset, "n_train": n_train, "space": space.read_text(),
                  "budget_s": round(budget, 1), "single_trial_samples_s_assumed": alone,
                  "runs": [], "skipped": []})
        if self.fake_gpu:
            res.notes.append("--fake-gpu: a Ray head that advertises 1 GPU, trials train on "
                             "the CPU: checks the machinery, measures nothing")
        head = self._ray_head()
        t_step = time.perf_counter()
        try:
            for i, (executor, frac) in enumerate(order):
                left = budget - (time.perf_counter() - t_step)
                target = STARTUP_GUESS[executor] / MAX_STARTUP_SHARE
                fit = max(1, int(left // 25))
                slot = min(target, left / min(len(order) - i, fit))
                if left < 25:
                    d["skipped"].append(f"{executor} {frac:g}: time budget spent")
                    continue
                k = round(1 / frac)
                epochs = MIN_PACKING_EPOCHS if self.fake_gpu else max(
                    MIN_PACKING_EPOCHS, min(400, int(
                        (slot - STARTUP_GUESS[executor]) / (epoch_alone * k))))
                run = self._packing_run(head, executor, frac, k, epochs, space, preset, n_train,
                                        timeout=min(left, slot * 1.6 + 30))
                d["runs"].append(run)
                self.log(f"  {executor} {frac:g} GPU/trial: " + _run_line(run))
                self.write()
            mps = self._mps(d, space, preset, n_train, budget - (time.perf_counter() - t_step))
        except BaseException:
            self._stop_head()  # the next step starts a clean one
            raise
        d["mps"] = mps
        d["summary"] = packing_summary(d["runs"])
        best = d["summary"].get("best_per_gpu_samples_s")
        if best is not None:
            met = best >= PACKING_TARGET
            d["target"] = {"target": f">= {PACKING_TARGET:,.0f} train samples/s per GPU at the "
                                     "best packing (wall clock)", "value": best,
                           "met": None if self.fake_gpu else met}
            if not met and not self.fake_gpu:
                res.notes.append(f"target missed: {best:,.0f} < {PACKING_TARGET:,.0f} "
                                 "samples/s per GPU")
        if d["skipped"]:
            res.notes.append("not run (budget): " + ", ".join(d["skipped"]))
        broken = [r for r in d["runs"] if r["problem"]]
        if broken:
            self._stop_head()  # a search that broke may have left it in a bad state
            raise CheckFailed("; ".join(f"{r['executor']} {r['gpus_per_trial']:g}: "
                                        f"{r['problem']}" for r in broken))
        if not d["runs"]:
            raise CheckFailed("no packing configuration fitted the time budget")

    def _packing_run(self, head: RayHead, executor: str, frac: float, k: int, epochs: int,
                     space: Path, preset: str, n_train: int, timeout: float,
                     env: dict[str, str] | None = None, tag: str = "") -> dict[str, Any]:
        name = f"pack-{executor}-{frac:g}{tag}".replace(".", "_")
        storage = self.work / "storage"
        cmd = [sys.executable, str(ROOT / "run_search.py"), "--address", head.address,
               "--storage", str(storage), "--name", name, "--preset", preset,
               "--space", str(space), "--num-samples", str(k), "--max-concurrent", str(k),
               "--max-epochs", str(epochs), "--grace-period", str(epochs),
               "--gpus-per-trial", f"{frac:g}", "--cpus-per-trial", "1",
               "--executor", executor, "--max-failures", "0"]
        self.log(f"  {name}: {k} trial(s) x {epochs} epochs (timeout {timeout:.0f} s)")
        ran = run_process(cmd, env or self.env, timeout, self.logs, name)
        run = {"executor": executor, "gpus_per_trial": frac, "trials": k, "epochs": epochs,
               "mps": bool(tag), "rc": ran.rc, "wall_s": round(ran.seconds, 1)}
        run.update(search_metrics(storage / name, n_train, ran.seconds, self._gpus()))
        problems = []
        if ran.rc != 0:
            problems.append("timed out" if ran.rc is None else f"exit code {ran.rc}")
        if run.get("completed", 0) != k:
            problems.append(f"{run.get('completed', 0)} of {k} trials completed "
                            f"{run.get('errors') or ''}".strip())
        elif run.get("per_gpu_samples_s") is None:
            problems.append("no wall-clock rate: trials lack wall_seconds or ended_at")
        run["problem"] = "; ".join(problems) or None
        return run

    def _mps(self, d: dict[str, Any], space: Path, preset: str, n_train: int,
             left: float) -> dict[str, Any]:
        """Processes that share a GPU time-slice unless NVIDIA MPS runs their kernels
        concurrently: with the control daemon available, rerun the most packed `tune`
        configuration under MPS and compare."""
        exe = shutil.which("nvidia-cuda-mps-control")
        info: dict[str, Any] = {"available": exe is not None}
        if exe is None or self.fake_gpu:
            info["note"] = "nvidia-cuda-mps-control not found" if exe is None else "fake GPU"
            return info
        base = max((r for r in d["runs"] if r["executor"] == "tune" and not r["problem"]),
                   key=lambda r: r["trials"], default=None)
        need = (base["wall_s"] + 20) if base else 0
        if base is None or base["trials"] < 2 or left < need + 15:
            info["note"] = ("no packed tune run to compare with" if base is None
                            or base["trials"] < 2 else
                            f"time budget spent (needs ~{need:.0f} s, {left:.0f} s left)")
            return info
        mps_dir = self.out / "mps"
        pipe, logs = mps_dir / "pipe", mps_dir / "log"
        pipe.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
               "CUDA_MPS_LOG_DIRECTORY": str(logs)}
        started = subprocess.run([exe, "-d"], env=env, capture_output=True, text=True,
                                 timeout=30)
        info.update(started=started.returncode == 0,
                    start_output=(started.stdout + started.stderr).strip()[-500:])
        mps_head = None
        try:
            if started.returncode != 0:
                return info
            self._stop_head()  # Ray's workers must start as MPS clients: a head with MPS's env
            mps_head = RayHead(env, self._gpus(), self._cpus(), self.work)
            run = self._packing_run(mps_head, "tune", base["gpus_per_trial"], base["trials"],
                                    base["epochs"], space, preset, n_train,
                                    timeout=min(left - 10, base["wall_s"] * 1.5 + 30), env=env,
                                    tag="-mps")
            servers = subprocess.run([exe], input="get_server_list\n", env=env,
                                     capture_output=True, text=True, timeout=15)
            info["server_list"] = servers.stdout.strip()
            d["runs"].append(run)
            self.log("  under MPS: " + _run_line(run))
            b, m = base.get("per_gpu_samples_s"), run.get("per_gpu_samples_s")
            if b and m:
                info["speedup_vs_without"] = m / b
        finally:
            if mps_head is not None:
                mps_head.stop()
            quit_ = subprocess.run([exe], input="quit\n", env=env, capture_output=True,
                                   text=True, timeout=30)
            info["stopped"] = quit_.returncode == 0
            for f in sorted(logs.glob("*.log")):
                info[f"log_{f.stem}"] = f.read_text(errors="replace")[-1500:]
            shutil.rmtree(mps_dir, ignore_errors=True)  # sockets and logs: kept in the JSON
        return info

    # ---- 5. a 16-trial ASHA search -----------------------------------------------------

    def step_asha16(self, res: StepResult) -> None:
        self._need_search_machine()
        preset = "tiny" if self.fake_gpu else "mosi"
        epochs = 2 if (self.quick or self.fake_gpu) else 4
        executor = self.ns.asha_executor
        timeout = self.remaining() - 10
        if timeout < 30:
            raise Skip(f"time budget spent ({self.remaining():.0f} s left)")
        head = self._ray_head()
        storage = self.work / "storage"
        cmd = [sys.executable, str(ROOT / "run_search.py"), "--address", head.address,
               "--storage", str(storage), "--name", "asha16", "--preset", preset,
               "--num-samples", "16", "--max-epochs", str(epochs), "--gpus-per-trial", "0.25",
               "--cpus-per-trial", "1", "--executor", executor, "--max-failures", "0"]
        if self.fake_gpu:
            space = self.work / "fake_asha.yaml"
            space.write_text(FAKE_ASHA_SPACE)
            cmd += ["--space", str(space)]
        self.log(f"  16 trials x <= {epochs} epochs, 0.25 GPU each, ASHA, executor {executor} "
                 f"(timeout {timeout:.0f} s)")
        try:
            ran = run_process(cmd, self.env, timeout, self.logs, "asha16")
        finally:
            self._stop_head()
        d = res.details
        d.update({"preset": preset, "max_epochs": epochs, "executor": executor,
                  "rc": ran.rc, "wall_s": round(ran.seconds, 1)})
        problems = check_complete(storage / "asha16", 16, epochs, d, gpu_mem=self.cuda)
        self.log(f"  wall {ran.seconds:.0f} s, statuses {d.get('statuses')}")
        if ran.rc != 0:
            problems.insert(0, "timed out" if ran.rc is None else f"exit code {ran.rc}")
        if problems:
            raise CheckFailed("; ".join(problems))

    # ---- summary.md --------------------------------------------------------------------

    def summary(self, counts: dict[str, int]) -> str:
        env = self.steps[0].details
        gpu = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", []))
        head = [f"# GPU check, {self.started}", "",
                f"**{counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['skipped']} skipped, {counts['not reached']} not reached** "
                f"({'finished, exit code ' + str(self.exit_code) if self.finished else 'running'};"
                f" {self.elapsed():.0f} s of a {self.ns.budget_s:.0f} s budget; "
                f"{'quick' if self.quick else 'full'} mode)", "",
                f"Machine: {gpu or 'no GPU'}; torch {env.get('torch', '?')}, CUDA "
                f"{env.get('cuda')}, Ray {env.get('ray')}, {env.get('cpu_count')} CPUs.", ""]
        if self.unusable_gpu:
            head += [f"> **A GPU is here but torch cannot use it:** {self.unusable_gpu}. "
                     "Nothing else ran: nothing in this file measures a GPU.", ""]
        elif not self.cuda:
            head += ["> **No CUDA device here.** Steps that need CUDA were skipped and the speed "
                     "step ran tiny shapes on the CPU: nothing in this file measures a GPU.", ""]
        head += ["| step | status | seconds | reason / error |", "|---|---|---|---|"]
        for s in self.steps:
            why = (s.reason or s.error or "").replace("|", "\\|")
            if s.traceback_file:
                why += f" (traceback: {s.traceback_file})"
            head.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {why} |")
        body: list[str] = []
        for i, s in enumerate(self.steps, 1):
            body += ["", f"## {i}. {s.title}: {s.status}", ""]
            if s.reason:
                body += [f"Skipped: {s.reason}", ""]
            if s.error:
                body += [f"Failed: {s.error}", ""]
            body += [f"- {n}" for n in s.notes] + ([""] if s.notes else [])
            body += getattr(self, f"_md_{s.name}")(s.details)
        return "\n".join(head + body) + "\n"

    @staticmethod
    def _md_environment(d: dict[str, Any]) -> list[str]:
        if not d:
            return []
        lines = ["| | |", "|---|---|"]
        for k, v in d.items():
            if k not in ("gpus", "sdpa"):
                lines.append(f"| {k} | {str(v).replace('|', '/')} |")
        for g in d.get("gpus", []):
            lines.append(f"| GPU {g['index']} | {g['name']}, {g['memory_gib']} GiB, sm "
                         f"{g['capability']}, {g['multiprocessors']} SMs |")
        return lines + GpuCheck._md_sdpa(d.get("sdpa"))

    @staticmethod
    def _md_sdpa(sdpa: dict[str, Any] | None) -> list[str]:
        if not sdpa:
            return []
        if not sdpa.get("cases"):
            return ["", f"SDPA backends: {sdpa.get('note') or sdpa.get('error')}"]
        lines = ["", f"SDPA backends (priority {', '.join(sdpa['priority'])}; batch "
                 f"{sdpa['cases'][0]['batch']}, no attn_mask; recorded in "
                 f"{sdpa.get('seconds', 0):.1f} s):", "",
                 "| case | dtype | head dim | T | picked | dispatcher | can use | runs when "
                 "forced | math B*h*T*T MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sdpa["cases"]:
            can = ", ".join(n for n, ok in r["can_use"].items() if ok)
            runs = ", ".join(n for n, out in r["runs"].items() if out == "ok")
            lines.append(f"| {r['case']} | {r['dtype']} | {r['head_dim']} | {r['T']} | "
                         f"{r['picked']} | {r['dispatcher']} | {can} | {runs} | "
                         f"{r['math_scores_mib']} |")
        return lines + ["", "Why a backend was refused: `why_not` in gpu_check.json. Math "
                            "keeps the B x h x T x T probabilities for backward, per layer."]

    @staticmethod
    def _md_correctness(d: dict[str, Any]) -> list[str]:
        tests = d.get("tests") or []
        if not tests:
            return []
        lines = ["| test | outcome | seconds | message |", "|---|---|---|---|"]
        for t in tests:
            msg = t["message"].replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {msg} |")
        return lines + ["", "Per-step numbers of the graph tests: `system_out` in "
                            "gpu_check.json and gpu_tests.xml."]

    @staticmethod
    def _md_speed(d: dict[str, Any]) -> list[str]:
        if not d.get("table"):
            return []
        return [d["table"], "", "```", d["targets_text"], "```", "",
                d.get("profile_text", "")] + (
            [f"Chrome trace: {d['profile']['trace']} (chrome://tracing or ui.perfetto.dev)"]
            if d.get("profile") and d["profile"].get("trace") else [])

    @staticmethod
    def _md_packing(d: dict[str, Any]) -> list[str]:
        runs = d.get("runs") or []
        if not runs:
            return []
        lines = ["| executor | GPU/trial | MPS | trials x epochs | samples/s per GPU | sum of "
                 "trials' rates | concurrency | with start-up | vs 1 trial | MiB/trial (allocated / "
                 "reserved / process) | "
                 "start-up s (share) | problem |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            share = r.get("startup_share")
            lines.append(
                f"| {r['executor']} | {r['gpus_per_trial']:g} | {'yes' if r['mps'] else 'no'} | "
                f"{r['trials']} x {r['epochs']} | **{_fmt(r.get('per_gpu_samples_s'))}** | "
                f"{_fmt(r.get('per_gpu_samples_s_sum'))} | {_fmt(r.get('concurrency'), 2)} | "
                f"{_fmt(r.get('per_gpu_samples_s_search'))} | "
                f"{_fmt(r.get('speedup_vs_one'), 2)} | {_fmt(r.get('peak_gpu_mem_mb_max'))} / "
                f"{_fmt(r.get('peak_gpu_reserved_mb_max'))} / {_fmt(r.get('gpu_process_mb_max'))} | "
                f"{_fmt(r.get('startup_s'), 1)} "
                f"({_fmt(100 * share if share is not None else None)} %) | "
                f"{r['problem'] or ''} |")
        lines += ["", "samples/s per GPU: every trial's training samples over the wall time "
                  "from the first trial's start to the last one's end (trials.parquet "
                  "`wall_seconds`, epochs.parquet `ended_at`), per GPU: the headline, used "
                  "for the target and the best. sum of trials' rates: trials.parquet "
                  "`samples_per_s` (each trial's median training rate) summed, which assumes "
                  "the trials overlapped for their whole run; concurrency: trial seconds / "
                  "that span (trials running at once, on average). with start-up: the same "
                  "samples over the whole search's wall time. vs 1 trial: against the same "
                  "executor's 1-GPU run (about 1.0 = the trials took turns on the GPU). "
                  "start-up: the search's wall time less the longest trial's epoch time "
                  "(Ray job, trial processes, data, reports)."]
        if d.get("target"):
            t = d["target"]
            lines += ["", f"Target {t['target']}: {_fmt(t['value'])} -> "
                          f"{'n/a' if t['met'] is None else 'met' if t['met'] else 'MISSED'}"]
        if d.get("mps"):
            m = {k: v for k, v in d["mps"].items() if not k.startswith("log_")}
            lines += ["", f"MPS: {json.dumps(_jsonable(m))}"]
        return lines

    @staticmethod
    def _md_asha16(d: dict[str, Any]) -> list[str]:
        if not d:
            return []
        keys = ("executor", "max_epochs", "wall_s", "rc", "trials", "statuses", "epoch_rows",
                "peak_gpu_mem_mb_max")
        return ["| | |", "|---|---|"] + [f"| {k} | {d.get(k)} |" for k in keys if k in d]


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _run_line(run: dict[str, Any]) -> str:
    return (f"{_fmt(run.get('per_gpu_samples_s'))} samples/s per GPU (wall clock), "
            f"{_fmt(run.get('per_gpu_samples_s_sum'))} (sum of trials), concurrency "
            f"{_fmt(run.get('concurrency'), 2)}, peak "
            f"{_fmt(run.get('peak_gpu_mem_mb_max'))} MiB/trial, start-up "
            f"{_fmt(run.get('startup_s'), 1)} s, wall {run['wall_s']:.0f} s"
            + (f"; PROBLEM: {run['problem']}" if run["problem"] else ""))


# --------------------------------------------------------------------------------------
# reading results
# --------------------------------------------------------------------------------------


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """pytest's junit XML -> one dict per test: name, outcome (passed, failed, error,
    skipped, xfailed), seconds, message, system_out."""
    tests = []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:  # pytest killed while writing it: the caller's progress lines
        return []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = child.get("message") or (child.text or "")[:500]
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome = "xfailed" if xfail else "skipped"
                message = child.get("message") or ""
        out = case.find("system-out")
        tests.append({"name": case.get("name", "?"), "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message.strip(),
                      "system_out": (out.text or "")[-4000:] if out is not None else ""})
    return tests


_PROGRESS = re.compile(r"^tests/test_gpu\.py::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def parse_progress(text: str) -> list[dict[str, Any]]:
    """The results pytest -v printed before it was stopped (no junit XML then)."""
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
             "XFAIL": "xfailed", "XPASS": "xpassed"}
    return [{"name": m[1], "outcome": names[m[2]], "seconds": 0.0,
             "message": "(from pytest's progress: the run was cut off)", "system_out": ""}
            for m in (_PROGRESS.match(line) for line in text.splitlines()) if m]


def mark_xpasses(tests: list[dict[str, Any]], progress: str) -> list[dict[str, Any]]:
    """The junit XML reports a non-strict XPASS as passed; pytest -v's progress lines say
    XPASS: those tests become `xpassed`."""
    xpass = {t["name"] for t in parse_progress(progress) if t["outcome"] == "xpassed"}
    return [{**t, "outcome": "xpassed"} if t["name"] in xpass and t["outcome"] == "passed"
            else t for t in tests]


def correctness_verdict(tests: list[dict[str, Any]], rc: int | None, timeout_s: float,
                        tail: str, cuda: bool) -> tuple[str, str | None, list[str]]:
    """The correctness step's outcome from pytest's results: (passed | failed | skipped,
    its one line, notes). An expected failure (xfail) or an unexpected pass (xpass) is
    never a pass: the test does not show that the path works, so the step fails naming
    it. Only a run whose every test was skipped (no CUDA) is skipped."""
    if rc is None:
        return "failed", f"pytest timed out after {timeout_s:.0f} s (output: logs.txt)", []
    if not tests:
        return "failed", (f"pytest exit code {rc} and no test report: "
                          f"{(tail.splitlines() or [''])[-1]}"), []
    outcomes = [t["outcome"] for t in tests]
    bad = [t for t in tests if t["outcome"] in ("failed", "error")]
    if bad or rc != 0:
        names = ", ".join(t["name"] for t in bad) or f"pytest exit code {rc}"
        return "failed", f"{len(bad)} of {len(tests)} gpu tests failed: {names}", []
    odd = [t for t in tests if t["outcome"] in ("xfailed", "xpassed")]
    if odd:
        first = odd[0]
        return "failed", (f"{len(odd)} of {len(tests)} gpu tests not passed but "
                          f"{'/'.join(sorted({t['outcome'] for t in odd}))} (an expected "
                          f"failure is not a pass): {', '.join(t['name'] for t in odd)}: "
                          f"{first['message'][:200]}"), []
    if all(o == "skipped" for o in outcomes):
        why = "; ".join(sorted({t["message"] for t in tests}))
        return "skipped", (f"{'needs CUDA: ' if not cuda else ''}{len(tests)} gpu tests "
                           f"collected, all skipped: {why}"), []
    notes = [f"{t['name']}: skipped: {t['message']}" for t in tests if t["outcome"] == "skipped"]
    return "passed", None, notes


def _read(folder: Path):
    import pandas as pd

    return pd.read_parquet(folder) if folder.exists() else None


def trial_spans(trials, epochs) -> list[tuple[float, float]]:
    """Each trial's (start, end) in Unix seconds: the end is its last report (`ended_at`,
    from trials.parquet where it has the column, else the trial's last epoch row), the
    start that end less the trial's `wall_seconds` (both come from the same report)."""
    if "ended_at" in trials.columns:
        ends = dict(zip(trials["trial_id"], trials["ended_at"].astype(float)))
    else:
        ends = epochs.groupby("trial_id")["ended_at"].max().astype(float).to_dict()
    spans = []
    for tid, wall in zip(trials["trial_id"], trials["wall_seconds"].astype(float)):
        end = ends.get(tid, math.nan)
        if math.isfinite(end) and math.isfinite(wall):
            spans.append((end - wall, end))
    return spans


def search_metrics(uri: Path, n_train: int, wall_s: float, gpus: int) -> dict[str, Any]:
    """Throughput, memory and start-up of one packing search, from its Parquet files.

    The headline, `per_gpu_samples_s`, is from the wall clock: every trial's training
    samples over the time from the first trial's start to the last one's end, so trials
    that took turns or started late count as they ran. `per_gpu_samples_s_sum` (the sum of
    the trials' own rates) assumes they all overlapped for their whole run and is kept
    beside it; `concurrency` (trial seconds / that span) says how far they did."""
    trials, epochs = _read(uri / "trials.parquet"), _read(uri / "epochs.parquet")
    if trials is None or epochs is None or trials.empty:
        return {"completed": 0, "errors": "no trials.parquet"}
    done = trials[trials["status"] == "completed"]
    compute = epochs.groupby("trial_id")["seconds"].sum()
    samples = float(trials["epochs_run"].sum()) * n_train
    longest = float(compute.max()) if len(compute) else math.nan
    errors = [e for e in trials.get("error", []) if isinstance(e, str) and e]
    spans = trial_spans(trials, epochs)
    span = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else math.nan
    ok = len(spans) == len(trials) and span > 0
    return {
        "completed": int(len(done)),
        "errors": "; ".join(sorted(set(errors)))[:500] or None,
        "samples_per_s_per_trial": [float(x) for x in trials["samples_per_s"]],
        "per_gpu_samples_s": samples / span / gpus if ok else None,
        "per_gpu_samples_s_sum": float(trials["samples_per_s"].sum()) / gpus,
        "per_gpu_samples_s_search": samples / wall_s / gpus if wall_s > 0 else None,
        "trials_span_s": round(span, 2) if ok else None,
        "concurrency": sum(e - s for s, e in spans) / span if ok else None,
        "peak_gpu_mem_mb": [float(x) for x in trials["peak_gpu_mem_mb"]],
        "peak_gpu_mem_mb_max": float(trials["peak_gpu_mem_mb"].max()),
        # what packing must fit: the allocator's cache and graph pools, the CUDA context
        **{f"{c}_max": float(trials[c].max()) for c in ("peak_gpu_reserved_mb", "gpu_process_mb")
           if c in trials.columns},
        "trial_compute_s": [round(float(x), 2) for x in compute],
        "trial_body_overhead_s": statistics.median(
            float(w) - float(compute.get(t, 0.0))
            for t, w in zip(trials["trial_id"], trials["wall_seconds"])),
        "startup_s": wall_s - longest if math.isfinite(longest) else None,
        "startup_share": (wall_s - longest) / wall_s if math.isfinite(longest) and wall_s
        else None,
    }


def packing_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-up of packing against the same executor's one-trial run (about 1.0 means the
    trials took turns on the GPU) and the best aggregate rate, both from the wall-clock
    rate (`per_gpu_samples_s`); the best sum of the trials' own rates only beside it."""
    key = "per_gpu_samples_s"
    for r in runs:
        one = next((o for o in runs if o["executor"] == r["executor"] and o["trials"] == 1
                    and not o["mps"] and o.get(key)), None)
        if one and r.get(key):
            r["speedup_vs_one"] = r[key] / one[key]
    ok = [r for r in runs if not r["problem"] and r.get(key)]
    best = max(ok, key=lambda r: r[key], default=None)
    serialised = [f"{r['executor']} {r['gpus_per_trial']:g}" for r in ok
                  if r["trials"] > 1 and r.get("speedup_vs_one") is not None
                  and r["speedup_vs_one"] < 1.15]
    over = [f"{r['executor']} {r['gpus_per_trial']:g}" for r in ok
            if (r.get("startup_share") or 0) > MAX_STARTUP_SHARE]
    return {"best_per_gpu_samples_s": best[key] if best else None,
            "best": f"{best['executor']} {best['gpus_per_trial']:g}" if best else None,
            "best_per_gpu_samples_s_sum": max((r.get("per_gpu_samples_s_sum") or 0 for r in ok),
                                              default=None),
            "serialised": serialised, "startup_over_20pct": over}


def check_complete(uri: Path, n_trials: int, max_epochs: int, d: dict[str, Any],
                   gpu_mem: bool = False) -> list[str]:
    """Each trial once in trials.parquet, status completed or stopped, each (trial, epoch)
    once in epochs.parquet and as many epochs as the trial says it ran; with `gpu_mem`,
    every trial's peak_gpu_mem_mb finite and positive."""
    trials, epochs = _read(uri / "trials.parquet"), _read(uri / "epochs.parquet")
    if trials is None or epochs is None:
        return ["trials.parquet or epochs.parquet missing"]
    problems = []
    statuses = trials["status"].value_counts().to_dict()
    d.update({"trials": int(len(trials)), "statuses": {str(k): int(v) for k, v in
                                                       statuses.items()},
              "epoch_rows": int(len(epochs)),
              "peak_gpu_mem_mb_max": float(trials["peak_gpu_mem_mb"].max())})
    if len(trials) != n_trials or trials["trial_id"].nunique() != n_trials:
        problems.append(f"{len(trials)} rows for {trials['trial_id'].nunique()} trials in "
                        f"trials.parquet, expected {n_trials}")
    odd = set(statuses) - {"completed", "stopped"}
    if odd:
        problems.append(f"statuses {sorted(odd)} ({trials['error'].dropna().unique()[:3]})")
    dup = epochs.duplicated(["trial_id", "epoch"]).sum()
    if dup:
        problems.append(f"{dup} duplicated (trial, epoch) rows in epochs.parquet")
    per = epochs.groupby("trial_id")["epoch"].agg(["count", "max"])
    for tid, ran in zip(trials["trial_id"], trials["epochs_run"]):
        if tid not in per.index or per.loc[tid, "count"] != ran or per.loc[tid, "max"] != ran:
            problems.append(f"trial {tid}: epochs_run {ran} but epochs.parquet has "
                            f"{per.loc[tid].to_dict() if tid in per.index else 'none'}")
            break
    if (epochs["epoch"] > max_epochs).any():
        problems.append(f"epochs beyond --max-epochs {max_epochs}")
    mem = trials["peak_gpu_mem_mb"].astype(float)
    if gpu_mem and not (mem.map(math.isfinite) & (mem > 0)).all():
        problems.append(f"peak_gpu_mem_mb not filled: {mem.tolist()}")
    return problems


# --------------------------------------------------------------------------------------


def _out_folder(text: str) -> Path:
    if not text.strip():  # Path("") is ".": the results would land in the current folder
        raise argparse.ArgumentTypeError(f"{text!r}: expected a folder for the results")
    return Path(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.gpu_check",
                      description=__doc__.splitlines()[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--out", type=_out_folder, required=True,
                   help="folder for the results (created)")
    p.add_argument("--quick", action="store_true",
                   help="fewer settings and epochs: batch 32 only, packing at 1 and 1/4 GPU")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds the whole check may take (default 420, --quick 300); later "
                        "steps shrink or skip to fit")
    p.add_argument("--only", default=None,
                   help=f"comma-separated steps to run, of {', '.join(n for n, _ in STEPS)} "
                        "(environment always runs: seconds, and each call may be a new "
                        "machine)")
    p.add_argument("--asha-executor", choices=("tune", "train"), default="tune",
                   help="executor of the 16-trial search (default tune: start-up fits the "
                        "budget)")
    fractions = sorted({f for _, f in PACKING_ORDER}, reverse=True)
    p.add_argument("--packings", default=None, metavar="LIST",
                   help="comma-separated GPU shares per trial for the packing step, of "
                        f"{','.join(f'{f:g}' for f in fractions)} (default: all; --quick: 1,0.25)")
    p.add_argument("--fake-gpu", action="store_true",
                   help="(development, no CUDA) run steps 4-5 against a Ray head that "
                        "advertises 1 GPU; trials train on the CPU: checks the machinery, "
                        "measures nothing")
    ns = p.parse_args(argv)
    if ns.only is not None:
        names = [s for s in ns.only.split(",") if s]
        bad = [s for s in names if s not in dict(STEPS)]
        if bad or not names:
            p.error(f"--only {ns.only}: expected some of {', '.join(n for n, _ in STEPS)}")
        ns.only = names
    if ns.packings is None:
        ns.packings = [1.0, 0.25] if ns.quick else fractions
    else:
        text = ns.packings
        try:
            ns.packings = [float(f) for f in text.split(",") if f.strip()]
        except ValueError:
            ns.packings = []
        if not ns.packings or not set(ns.packings) <= set(fractions):
            p.error(f"--packings {text}: expected some of "
                    f"{','.join(f'{f:g}' for f in fractions)}")
    if ns.budget_s is None:
        ns.budget_s = 300.0 if ns.quick else 420.0
    if not (ns.budget_s > 0 and math.isfinite(ns.budget_s)):
        p.error(f"--budget-s {ns.budget_s}: expected a positive number of seconds")
    try:
        ns.out.mkdir(parents=True, exist_ok=True)
        probe = ns.out / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        p.error(f"--out {ns.out}: not a writable folder ({e.strerror or e})")
    return ns


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    ns = parse_args(argv)

    interrupted = []

    def on_term(signum: int, frame: Any) -> None:
        # once: a second SIGTERM while the first one's cleanup runs (stopping the search's
        # processes and the Ray head, writing the results) would cut that cleanup short
        if not interrupted:
            interrupted.append(signum)
            raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    check = GpuCheck(ns)
    try:
        return check.run()
    except Interrupted:
        print("gpu_check: interrupted (SIGTERM); results so far in "
              f"{ns.out / 'gpu_check.json'}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
