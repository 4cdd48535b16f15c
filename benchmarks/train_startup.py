"""Where a Ray Train trial's start-up goes: a timeline from Ray's own task events.

One search of one trial (tiny data, one epoch) with `--executor train` runs against a Ray
head started for it (stopped by its pids). Afterwards Ray's state API gives, for every
task and actor of that search, the moments it changed state (requested, waiting for
resources, a worker process leased, running, finished); with the trial's own clocks
(body start, epoch end, from its report) they make the timeline: Tune's trial actor, Ray
Train's controller, the worker group's placement group and process, the worker's set-up
calls (torch.distributed for a world of one), the training function, the report's way
back. `--env KEY=VALUE` reruns it with a Ray setting changed (e.g. the controller's poll
interval, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so each setting's worth is measured.

    python -m benchmarks.train_startup                       # timeline, default settings
    python -m benchmarks.train_startup --env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2
    python -m benchmarks.train_startup --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/train_startup.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.processes import RayHead, kill_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = "lr: {choice: [0.001]}\nd_model: 12\nheads: 2\nlayers: 1\nbatch_size: 32\n"
STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
          "RUNNING", "FINISHED", "FAILED")


def _env(work: Path, extra: dict[str, str]) -> dict[str, str]:
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), **extra}


def run_once(executor: str, extra: dict[str, str], work: Path) -> dict[str, Any]:
    """One search on its own head; returns the timeline rows and the trial's clocks."""
    import pandas as pd

    env = _env(work, extra)
    head = RayHead(env, gpus=0, cpus=2, work=work)
    try:
        (work / "space.yaml").write_text(SPACE)
        cmd = [sys.executable, str(ROOT / "run_search.py"), "--address", head.address,
               "--storage", str(work / "st"), "--name", "s", "--executor", executor,
               "--space", str(work / "space.yaml"), "--num-samples", "1", "--max-epochs", "1",
               "--max-failures", "0"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            kill_session(proc.pid)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"search exited {proc.returncode}: {out[-2000:]}")
        epochs = pd.read_parquet(work / "st" / "s" / "epochs.parquet")
        trials = pd.read_parquet(work / "st" / "s" / "trials.parquet")
        tasks = _tasks(head.address, env)
    finally:
        head.stop()
    row = epochs.iloc[0]
    clocks = {"epoch_end": float(row["ended_at"]), "epoch_seconds": float(row["seconds"]),
              "body_start": float(row["ended_at"]) - float(trials.iloc[0]["wall_seconds"])}
    return {"wall_s": wall, "tasks": tasks, "clocks": clocks}


def _tasks(address: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Every task of the search's job with its state changes (s since the epoch)."""
    script = (
        "import json, ray\n"
        "from ray.util.state import list_jobs, list_tasks\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        "jobs = [j for j in list_jobs(detail=True) if j.get('type') != 'SUBMISSION']\n"
        "mine = ray.get_runtime_context().get_job_id()\n"
        "rows = []\n"
        "for t in list_tasks(detail=True, limit=10000, raise_on_missing_output=False):\n"
        "    if t.job_id == mine:\n"
        "        continue\n"
        "    ev = {e['state']: e['created_ms'] / 1000 for e in (t.events or [])}\n"
        "    rows.append({'name': t.name, 'type': t.type, 'pid': t.worker_pid,\n"
        "                 'actor_id': t.actor_id, 'events': ev})\n"
        "print('TASKS ' + json.dumps(rows))\n")
    time.sleep(2)  # task events reach the GCS in batches (about every second)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("TASKS ")), None)
    if line is None:
        raise RuntimeError(f"reading Ray's task events failed: {res.stderr[-1500:]}")
    return json.loads(line[6:])


def timeline(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows in time order: what, when requested, how long it waited for a worker process,
    how long that took to start running it, how long it ran (s after the trial actor, the
    search's first actor, was requested). Repeated calls of one actor method (Tune's and
    Train's polls) are one row: first request, count, end of the last."""
    tasks = [t for t in run["tasks"] if t["events"]]
    creations = [t for t in tasks if t["type"] == "ACTOR_CREATION_TASK"]
    if not creations:
        raise RuntimeError("no actor among the task events")
    zero = min(min(t["events"].values()) for t in creations)  # the trial actor's request
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        groups.setdefault(f"{t['name']} ({t['type'].replace('_TASK', '').lower()})",
                          []).append(t)
    rows = []
    for what, ts in groups.items():
        first = min(ts, key=lambda t: min(t["events"].values()))
        ev = first["events"]
        start = min(ev.values())
        leased, running = ev.get("SUBMITTED_TO_WORKER"), ev.get("RUNNING")
        ends = [t["events"].get("FINISHED", t["events"].get("FAILED")) for t in ts]
        end = max((e for e in ends if e is not None), default=None)
        rows.append({"what": what + (f" x {len(ts)}" if len(ts) > 1 else ""),
                     "requested": start - zero,
                     "wait_s": (leased - start) if leased else None,
                     "to_running_s": (running - (leased or start)) if running else None,
                     "run_s": (end - running) if end and running and len(ts) == 1 else None,
                     "end": (end - zero) if end else None})
    c = run["clocks"]
    rows.append({"what": "trial body starts (search.trial.run_body)",
                 "requested": c["body_start"] - zero, "wait_s": None, "to_running_s": None,
                 "run_s": None, "end": None})
    rows.append({"what": "epoch 1 (train + validation)",
                 "requested": c["epoch_end"] - c["epoch_seconds"] - zero, "wait_s": None,
                 "to_running_s": None, "run_s": c["epoch_seconds"],
                 "end": c["epoch_end"] - zero})
    return sorted(rows, key=lambda r: r["requested"])


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:7.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'at s':>7} {'wait s':>7} {'start s':>7} {'run s':>7} {'ends s':>7}  what",
           "(at: requested, s after the trial actor was requested; wait: until a worker "
           "process was leased; start: leased -> running; run: running -> finished)"]
    for r in rows:
        out.append(f"{r['requested']:7.2f} {_fmt(r['wait_s'])} {_fmt(r['to_running_s'])} "
                   f"{_fmt(r['run_s'])} {_fmt(r['end'])}  {r['what']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_startup",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--executor", choices=("train", "tune"), default="train")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the Ray head and the search (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="searches to run (median wall)")
    p.add_argument("--json", metavar="OUT", help="write the runs and timelines as JSON")
    ns = p.parse_args(argv)
    extra = {}
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--env {item}: expected KEY=VALUE")
        extra[key] = value
    print(f"load average {os.getloadavg()[0]:.2f} (other work inflates every number); "
          f"--executor {ns.executor}, env {extra or 'default'}", flush=True)
    runs = []
    for i in range(ns.repeat):
        work = Path(tempfile.mkdtemp(prefix="train-startup-"))
        try:
            run = run_once(ns.executor, extra, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        run["timeline"] = timeline(run)
        runs.append(run)
        print(f"\nrun {i + 1}: search wall {run['wall_s']:.1f} s (Ray's start not included: "
              "the head was up)\n" + table(run["timeline"]), flush=True)
    walls = [r["wall_s"] for r in runs]
    print(f"\nmedian search wall over {len(walls)} run(s): {statistics.median(walls):.1f} s")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"executor": ns.executor, "env": extra,
                                             "load_avg": os.getloadavg(), "runs": runs},
                                            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
