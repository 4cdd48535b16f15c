"""Memory of a search over a large dataset: how many times the data file's size the search
holds in all (PSS of the driver, the Ray it starts and Ray's workers together).

The data is written once by `ucrn synth` (default: the full-size `mosei` preset, a 6.4 GB
MOSEI-unaligned-shaped MulT pickle) into `--data-dir` and reused by later calls. The search
is `run_search.py` on it, in its own process session: `--trials` tiny-model trials, all at
once, one epoch each. PSS counts a page shared by several processes once in all (the object
store's copy, which every trial maps, included), so the sum over the session's processes is
what the search holds. Sampled every 0.25 s until the search ends or `--seconds` have
passed since the last trial started (the data is fetched and trained on by then); the
search is then stopped by its session (never by name).

    python -m benchmarks.data_memory                          # mosei, 2 trials
    python -m benchmarks.data_memory --preset mosi --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/data_memory.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.processes import kill_session, pss_bytes, session_pids

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
SPACE = "lr: {choice: [0.001]}\nd_model: 8\nheads: 1\nlayers: 1\nbatch_size: 64\n"


def data_file(preset: str, data_dir: Path) -> Path:
    """The preset's MulT pickle in `data_dir`, written by `ucrn synth` when missing."""
    found = sorted(data_dir.glob("*.pkl")) if data_dir.is_dir() else []
    if not found:
        data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "ucrn", "synth", "--preset", preset,
                        "--out", str(data_dir)], check=True, cwd=ROOT)
        found = sorted(data_dir.glob("*.pkl"))
    return found[0]


def measure(data: Path, ns: argparse.Namespace, work: Path, code: Path = ROOT) -> dict[str, Any]:
    space = work / "space.yaml"
    space.write_text(SPACE)
    argv = [sys.executable, "run_search.py", "--data-path", str(data.parent),
            "--space", str(space), "--storage", str(work / "storage"), "--name", "memory",
            "--num-samples", str(ns.trials), "--max-concurrent", str(ns.trials),
            "--max-epochs", "1", "--grace-period", "1", "--cpus-per-trial",
            str(ns.cpus_per_trial), "--seed", "1"]
    log = (work / "search.log").open("w")
    proc = subprocess.Popen(argv, cwd=code, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    samples: list[tuple[float, float]] = []
    lines: dict[str, float] = {}  # each line of the search's output: when it was first seen
    t0, started_all = time.time(), None
    try:
        while proc.poll() is None:
            samples.append((time.time() - t0, pss_bytes(session_pids(proc.pid)) / GIB))
            text = (work / "search.log").read_text(errors="replace")
            for line in text.splitlines():
                lines.setdefault(line[:120], round(samples[-1][0], 2))
            if started_all is None and text.count("] start ") >= ns.trials:
                started_all = time.time()
            if started_all is not None and time.time() - started_all > ns.seconds:
                break
            if time.time() - t0 > ns.timeout:
                break
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the search stops its Ray cleanly
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_session(proc.pid)
        log.close()
    size = data.stat().st_size / GIB
    peak_t, peak = max(samples, key=lambda s: s[1]) if samples else (0.0, float("nan"))
    return {"code": str(code), "file": str(data), "file_gib": size, "peak_pss_gib": peak, "peak_at_s": peak_t,
            "ratio": peak / size, "trials_started": started_all is not None, "lines": lines,
            "spilled": _spilled(proc.pid),
            "samples": samples, "log_tail": (work / "search.log").read_text()[-2000:]}


def _spilled(pid: int) -> list[str]:
    """Ray's own lines on objects written to disk (spilled) in the session the search's
    driver (`pid`) started: the data must fit the object store without spilling."""
    out = []
    for log in Path(tempfile.gettempdir(), "ray").glob(f"session_*_{pid}/logs/raylet.out"):
        out += [ln.split(":info_message:")[-1] for ln in log.read_text(errors="replace")
                .splitlines() if "Spilled" in ln and "state-dump" not in ln]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mosei")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the synthetic file is (written there when missing); default "
                        "a folder per preset under the system's temporary folder")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--cpus-per-trial", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=60.0,
                   help="keep sampling this long after the last trial started")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (e.g. `git worktree add /tmp/old HEAD~3`): its search "
                        "runs first on the same data and the two peaks are compared")
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    data_dir = ns.data_dir or Path(tempfile.gettempdir()) / f"ucrn-bench-{ns.preset}"
    data = data_file(ns.preset, data_dir)
    runs = []
    for code in ([ns.baseline.resolve()] if ns.baseline else []) + [ROOT]:
        with tempfile.TemporaryDirectory(prefix="ucrn-memory-") as tmp:
            runs.append(measure(data, ns, Path(tmp), code))
        r = runs[-1]
        print(f"{r['code']}: data file {r['file_gib']:.2f} GiB; peak PSS of the search "
              f"{r['peak_pss_gib']:.2f} GiB at {r['peak_at_s']:.0f} s = {r['ratio']:.2f}x the "
              f"file" + ("" if r["trials_started"] else " (the trials never all started)")
              + (f"; spilled to disk: {r['spilled'][-1]}" if r["spilled"] else ""), flush=True)
    out: dict[str, Any] = {"runs": runs}
    if ns.baseline:
        out["peak_ratio_new_to_baseline"] = runs[1]["peak_pss_gib"] / runs[0]["peak_pss_gib"]
        print(f"peak PSS, this checkout / baseline: {out['peak_ratio_new_to_baseline']:.2f}")
    out["environment"] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                          "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                          "python": platform.python_version()}
    out["command"] = "python -m benchmarks.data_memory " + " ".join(argv or sys.argv[1:])
    if ns.json:
        ns.json.write_text(json.dumps(out, indent=1))
    return 0 if all(r["trials_started"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
