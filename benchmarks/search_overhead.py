"""Ray's overhead in a search: `--executor train` (Ray Train per trial) against `tune`
(the trial body runs in the Tune trial process), on one fixed, cheap search.

Both executors run the same search through `search.driver.main` (this process is the
search's driver): synthetic `tiny` data, a space file whose only "searched" parameter
has one value (every trial is the same tiny model, same seed), ASHA's grace period equal
to the epochs (no trial stopped early), storage in a temporary folder removed at the end.

Per trial, on the driver's clock (hooks in this process only, no project file changed):
- requested: Tune asks Ray for the trial's actor (`TuneController._schedule_trial_actor`);
- running: the trial actor is up (Tune's `on_trial_start`);
- first report: the driver receives the trial's epoch-1 result (`on_trial_result`).
From the trial's own report: `seconds` (epoch 1's train + validation time) and
`wall_seconds` (from the start of the trial body, `search.trial.run_body`, to the end of
epoch 1).

    start-up = first report - requested - epoch 1 seconds
             = actor  (requested -> running: placement group, process, import of the trainable)
             + ray    (running -> first report, less the body's wall: Ray Train's controller
                       and worker group, the data from the object store, checkpoint and report)
             + body   (body wall - epoch seconds: model and optimizer set-up in `ucrn.train`)
    compute  = sum of epoch `seconds` over all trials (epochs.parquet)
    overhead = 1 - compute / (wall x slots), slots = min(--max-concurrent, trials); wall is the
               whole `search.driver.main` call, Ray start (or connect) and shutdown included

A trial whose Tune actor is reused (`reuse_actors`, a process that ran an earlier trial)
starts in milliseconds: the table counts them ("reused") and gives their median start-up
beside that of the trials in a new process. `train` was the default executor until
2026-12; the default (`auto`) now runs one-worker trials as `tune`.

Memory: the proportional set size (PSS) of this process and every process descended from
it (the Ray it started, Ray's workers), sampled every 0.5 s; the peak, and the peak over
the concurrent trials. With `--address` the head's processes are not this search's and
only the driver is counted (the table says so).

`--default-search` also runs the default search (`python run_search.py`: 20 trials of the
default space, ASHA, 4 epochs) once per executor in the same call, and prints its wall
times and their ratio.

    python -m benchmarks.search_overhead                     # 6 trials x 2 epochs, each executor
    python -m benchmarks.search_overhead --small             # 2 trials x 1 epoch (CI)
    python -m benchmarks.search_overhead --default-search --json out.json
    python -m benchmarks.search_overhead --executor tune --address 127.0.0.1:6379 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/search_overhead.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXECUTORS = ("train", "tune")
LABELS = {"train": "train (old default)", "tune": "tune (default)"}
# every trial the same small model; `lr` is "searched" over one value (a space needs one)
SPACE = """\
lr: {choice: [0.001]}
d_model: 12
heads: 2
layers: 1
batch_size: 32
"""
DEFINITIONS = {
    "start-up": "first report received by the driver - trial's actor requested by Tune "
                "- epoch 1's own seconds (train + validation)",
    "actor": "requested -> trial actor running (placement group, process start, trainable import)",
    "ray": "running -> first report, less the trial body's wall time to the end of epoch 1 "
           "(Ray Train controller and workers, data fetch, checkpoint, report transit)",
    "body": "trial body's wall time to the end of epoch 1 - epoch 1 seconds (model set-up)",
    "compute": "sum of epoch seconds over all trials (epochs.parquet)",
    "overhead": "1 - compute / (wall x slots), slots = min(max concurrent trials, trials)",
    "wall": "the whole search.driver.main call, Ray start/connect and shutdown included",
    "loop": "Tune's loop: the driver callback's setup -> experiment end",
}


@dataclass
class TrialTiming:
    """One trial's timestamps (driver clock, s since the epoch) and its epoch-1 report."""

    trial_id: str
    requested: float | None = None
    running: float | None = None
    first_report: float | None = None
    done: float | None = None
    epoch1_seconds: float | None = None
    epoch1_wall: float | None = None
    pid: int | None = None  # the trial actor's process (Tune's `pid` result field)
    process_started: float | None = None  # when that process started (a local Ray only)

    def parts(self) -> dict[str, float] | None:
        """start-up and its parts, or None if the trial never reported."""
        if None in (self.requested, self.running, self.first_report, self.epoch1_seconds):
            return None
        body_wall = self.epoch1_wall if self.epoch1_wall is not None else self.epoch1_seconds
        return {"startup": self.first_report - self.requested - self.epoch1_seconds,
                "actor": self.running - self.requested,
                "ray": self.first_report - self.running - body_wall,
                "body": body_wall - self.epoch1_seconds}


@dataclass
class Run:
    """One search's measurements."""

    executor: str
    trials: int
    epochs: int
    slots: int
    wall_s: float
    loop_s: float
    compute_s: float
    epochs_run: int
    startup_s: list[float]
    parts_median_s: dict[str, float]
    overhead: float
    reused: int  # trials that ran in an earlier trial's process (Tune's reused actors)
    fresh_startup_median_s: float  # median start-up of the trials in a new process
    reused_startup_median_s: float  # and of those in a reused process (NaN: none)
    pss_peak_gib: float  # the search's processes together, at the peak
    pss_processes: int  # how many processes that peak counted
    pss_scope: str  # "driver and the Ray it started", or "driver only" (--address)
    prestarted: int = 0  # trials in a new process that Ray had started before it was asked
    timings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pss_per_trial_gib(self) -> float:
        return self.pss_peak_gib / self.slots


class PssSampler:
    """Samples the PSS of this process and its descendants every `every` seconds in a
    thread; `peak` is the largest total seen, with its process count."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self.processes = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from benchmarks.processes import pss_bytes, tree_pids

        while not self._stop.is_set():
            pids = tree_pids(os.getpid())
            total = pss_bytes(pids)
            if total > self.peak:
                self.peak, self.processes = total, len(pids)
            self._stop.wait(self.every)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def instrumented(log: dict[str, TrialTiming], loop: dict[str, float],
                 local: bool = True) -> Iterator[None]:
    """Hook the driver in this process: Tune's actor request and a timing subclass of the
    search's own callback. Undone on exit."""
    from ray.tune.execution.tune_controller import TuneController

    import search.driver as drv
    from benchmarks.processes import start_time

    def timing(trial_id: str) -> TrialTiming:
        return log.setdefault(trial_id, TrialTiming(trial_id))

    orig_schedule = TuneController._schedule_trial_actor
    orig_make = drv.make_recorder

    def schedule(self, trial):
        t = timing(trial.trial_id)
        if t.requested is None:  # a retried trial keeps its first request
            t.requested = time.time()
        return orig_schedule(self, trial)

    def make_recorder(*args: Any, **kwargs: Any):
        base = type(orig_make(*args, **kwargs))

        class Timed(base):  # type: ignore[misc, valid-type]
            def setup(self, **info: Any) -> None:
                loop["start"] = time.time()
                super().setup(**info)

            def on_trial_start(self, iteration, trials, trial, **info):
                timing(trial.trial_id).running = time.time()
                super().on_trial_start(iteration, trials, trial, **info)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                t = timing(trial.trial_id)
                if (t.first_report is None and not result.get("replay")
                        and not result.get("final") and "seconds" in result):
                    t.first_report = time.time()  # before the callback writes Parquet
                    t.epoch1_seconds = float(result["seconds"])
                    t.pid = result.get("pid")
                    if t.pid is not None and local:  # a pid of this machine
                        t.process_started = start_time(int(t.pid))
                    if result.get("wall_seconds") is not None:
                        t.epoch1_wall = float(result["wall_seconds"])
                super().on_trial_result(iteration, trials, trial, result, **info)

            def on_trial_complete(self, iteration, trials, trial, **info):
                timing(trial.trial_id).done = time.time()
                super().on_trial_complete(iteration, trials, trial, **info)

            def on_experiment_end(self, trials, **info):
                loop["end"] = time.time()
                super().on_experiment_end(trials, **info)

        return Timed()

    TuneController._schedule_trial_actor = schedule
    drv.make_recorder = make_recorder
    try:
        yield
    finally:
        TuneController._schedule_trial_actor = orig_schedule
        drv.make_recorder = orig_make


def run_one(executor: str, ns: argparse.Namespace, work: Path) -> Run:
    """Run the fixed search once with `executor`; raise RuntimeError if it fails."""
    import pandas as pd

    import search.driver as drv

    work.mkdir(parents=True, exist_ok=True)
    space = work / "space.yaml"
    space.write_text(SPACE)
    name = f"overhead-{executor}"
    argv = ["--executor", executor, "--space", str(space), "--storage", str(work / "storage"),
            "--name", name, "--num-samples", str(ns.trials), "--max-epochs", str(ns.epochs),
            "--grace-period", str(ns.epochs), "--max-concurrent", str(ns.max_concurrent),
            "--cpus-per-trial", str(ns.cpus_per_trial), "--seed", str(ns.seed),
            "--max-failures", "0"]
    if ns.address:
        argv += ["--address", ns.address]
    log: dict[str, TrialTiming] = {}
    loop: dict[str, float] = {}
    out = io.StringIO()
    # the driver stops the search cleanly on SIGTERM (and exits 130): a hung search ends
    watchdog = threading.Timer(ns.timeout, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    with instrumented(log, loop, local=not ns.address), contextlib.redirect_stdout(out), PssSampler() as pss:
        t0 = time.time()
        watchdog.start()
        try:
            rc = drv.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        finally:
            watchdog.cancel()
        wall = time.time() - t0
    if rc != 0:
        if wall >= ns.timeout:
            out.write(f"\n(stopped after --timeout {ns.timeout:g} s)")
        raise RuntimeError(f"search with --executor {executor} exited {rc}:\n"
                           + out.getvalue()[-3000:])
    root = work / "storage" / name
    epochs = pd.read_parquet(root / "epochs.parquet")
    compute = float(epochs["seconds"].sum())
    parts = [p for p in (t.parts() for t in log.values()) if p is not None]
    if not parts:
        raise RuntimeError(f"--executor {executor}: no trial reported an epoch")
    slots = min(ns.max_concurrent, ns.trials)
    seen: set[int] = set()
    fresh: list[float] = []  # start-up of trials in a process no trial used before
    reused: list[float] = []  # and in a process an earlier trial used
    prestarted = 0  # trials in a new process that was up before Tune asked for it
    for t in sorted(log.values(), key=lambda t: t.requested or math.inf):
        p = t.parts()
        if p is not None:
            (fresh if t.pid not in seen else reused).append(p["startup"])
        if t.pid not in seen and None not in (t.process_started, t.requested):
            prestarted += t.process_started < t.requested
        if t.pid is not None:
            seen.add(t.pid)
    return Run(
        executor=executor, trials=len(log), epochs=ns.epochs, slots=slots, wall_s=wall,
        loop_s=loop.get("end", math.nan) - loop.get("start", math.nan), compute_s=compute,
        epochs_run=len(epochs), startup_s=[p["startup"] for p in parts],
        parts_median_s={k: statistics.median(p[k] for p in parts) for k in parts[0]},
        overhead=1 - compute / (wall * slots), reused=len(reused),
        fresh_startup_median_s=statistics.median(fresh) if fresh else math.nan,
        reused_startup_median_s=statistics.median(reused) if reused else math.nan,
        pss_peak_gib=pss.peak / 2**30, pss_processes=pss.processes,
        pss_scope="driver only (--address)" if ns.address else "driver and the Ray it started",
        prestarted=prestarted,
        timings=[{**asdict(t), **(t.parts() or {})} for t in log.values()])


def default_search(executor: str, ns: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`python run_search.py` as it comes (20 trials, default space, ASHA, 4 epochs) with
    `--executor executor`: wall time, trials by status, PSS peak."""
    import pandas as pd

    import search.driver as drv

    name = f"default-{executor}"
    argv = ["--executor", executor, "--storage", str(work / "storage"), "--name", name]
    if ns.address:
        argv += ["--address", ns.address]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), PssSampler() as pss:
        t0 = time.time()
        try:
            rc = drv.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        wall = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"the default search with --executor {executor} exited {rc}:\n"
                           + out.getvalue()[-3000:])
    trials = pd.read_parquet(work / "storage" / name / "trials.parquet")
    return {"executor": executor, "wall_s": wall, "trials": len(trials),
            "statuses": {str(k): int(v) for k, v in trials["status"].value_counts().items()},
            "epochs_run": int(trials["epochs_run"].sum()), "pss_peak_gib": pss.peak / 2**30}


def default_table(runs: list[dict[str, Any]]) -> str:
    lines = ["default search (python run_search.py):"]
    for r in runs:
        lines.append(f"  {LABELS.get(r['executor'], r['executor']):<20} wall {r['wall_s']:6.1f} s, "
                     f"{r['trials']} trials {r['statuses']}, {r['epochs_run']} epochs, "
                     f"PSS peak {r['pss_peak_gib']:.2f} GiB")
    by = {r["executor"]: r for r in runs}
    if "train" in by and "tune" in by:
        lines.append(f"  old default / new default: wall {by['train']['wall_s'] / by['tune']['wall_s']:.2f}x")
    return "\n".join(lines)


def table(runs: list[Run]) -> str:
    """The result table and, with both executors, the train/tune ratios."""
    head = ("executor", "trials", "reused", "slots", "wall s", "loop s", "start-up s median", "max",
            "new process", "reused process", "actor", "ray", "body", "compute s", "PSS GiB",
            "per trial", "overhead")
    rows = [head]
    for r in runs:
        m = r.parts_median_s
        rows.append((r.executor, str(r.trials), str(r.reused), str(r.slots), f"{r.wall_s:.1f}", f"{r.loop_s:.1f}",
                     f"{statistics.median(r.startup_s):.2f}", f"{max(r.startup_s):.2f}",
                     f"{r.fresh_startup_median_s:.2f}", f"{r.reused_startup_median_s:.2f}",
                     f"{m['actor']:.2f}", f"{m['ray']:.2f}", f"{m['body']:.2f}",
                     f"{r.compute_s:.2f}", f"{r.pss_peak_gib:.2f}", f"{r.pss_per_trial_gib:.2f}",
                     f"{100 * r.overhead:.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    by = {r.executor: r for r in runs}
    if "train" in by and "tune" in by:
        rt = ratios(by["train"], by["tune"])
        lines.append("train/tune: " + ", ".join(f"{k} {v:.2f}x" for k, v in rt.items()))
    lines.append("(" + ", ".join(f"{k}: {v}" for k, v in LABELS.items()) + "; reused: trials "
                 "run in an earlier trial's process; new/reused process: median start-up of "
                 "each kind; actor, ray, body: medians of the start-up's parts; PSS: peak of "
                 f"{runs[0].pss_scope}, and over the concurrent trials; see --help)")
    return "\n".join(lines)


def ratios(train: Run, tune: Run) -> dict[str, float]:
    return {"wall": train.wall_s / tune.wall_s, "loop": train.loop_s / tune.loop_s,
            "median start-up": statistics.median(train.startup_s)
            / statistics.median(tune.startup_s),
            "start-up in a new process": train.fresh_startup_median_s
            / tune.fresh_startup_median_s}


def environment() -> dict[str, Any]:
    import ray
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host_cpus": os.cpu_count(), "gpus": gpus, "platform": platform.platform(),
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch.__version__}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_overhead",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--executor", choices=(*EXECUTORS, "both"), default="both",
                   help="which executor(s) to measure (default both, train first)")
    p.add_argument("--small", action="store_true", help="CI mode: 2 trials x 1 epoch")
    p.add_argument("--trials", type=int, default=None, help="trials (default 6, --small 2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 2, --small 1)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the trials and of Optuna")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster; default: each search starts its own local Ray")
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds before a search is stopped as hung (default 900)")
    p.add_argument("--json", metavar="OUT", help="write environment, definitions and runs as JSON")
    p.add_argument("--default-search", action="store_true",
                   help="also run the default search (20 trials) once per executor and print "
                        "the wall times' ratio (minutes: the old default takes about 3)")
    ns = p.parse_args(argv)
    ns.trials = ns.trials if ns.trials is not None else (2 if ns.small else 6)
    ns.epochs = ns.epochs if ns.epochs is not None else (1 if ns.small else 2)
    if ns.trials < 1 or ns.epochs < 1 or ns.max_concurrent < 1:
        p.error("--trials, --epochs and --max-concurrent must be >= 1")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    executors = list(EXECUTORS) if ns.executor == "both" else [ns.executor]
    env = environment()
    print(f"search overhead: {ns.trials} trials x {ns.epochs} epoch(s), "
          f"{min(ns.max_concurrent, ns.trials)} at a time, {ns.cpus_per_trial:g} CPU each; "
          f"Ray {env['ray']} {'at ' + ns.address if ns.address else '(local, started per search)'}"
          f"; {env['host_cpus']} CPUs, {env['gpus']} GPUs, load average {env['load_avg_1_5_15'][0]}"
          " (other work on the machine inflates every number)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="search-overhead-"))
    runs: list[Run] = []
    defaults: list[dict[str, Any]] = []
    try:
        for ex in executors:
            print(f"running --executor {ex} ...", flush=True)
            runs.append(run_one(ex, ns, work / ex))
        if ns.default_search:
            for ex in executors:
                print(f"running the default search with --executor {ex} ...", flush=True)
                defaults.append(default_search(ex, ns, work / f"default-{ex}"))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(runs))
    if defaults:
        print(default_table(defaults))
    if ns.json:
        by = {r.executor: r for r in runs}
        doc = {"environment": env, "settings": {k: v for k, v in vars(ns).items() if k != "json"},
               "command": "python -m benchmarks.search_overhead " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               "space": SPACE, "definitions": DEFINITIONS, "runs": [{**asdict(r), "pss_per_trial_gib": r.pss_per_trial_gib} for r in runs],
               "ratios_train_over_tune": ratios(by["train"], by["tune"])
               if len(by) == 2 else None,
               "default_search": defaults}
        Path(ns.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {ns.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
