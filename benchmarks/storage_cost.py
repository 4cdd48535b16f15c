"""What results on object storage cost: the same search with `--storage` a local folder
and an S3 bucket (moto's S3 server on loopback, started here and stopped by its pid), and
the cost of the Parquet writes themselves, measured in one run.

    python -m benchmarks.storage_cost                      # the default search, both ways
    python -m benchmarks.storage_cost --num-samples 4      # shorter

Loopback has no network latency: a real bucket adds its round trips (tens of ms per
request in a region) to every write; docs/cluster.md says what that means per trial.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import _free_port, kill_session, moto  # noqa: E402
from search.results import ResultsStore  # noqa: E402
from ucrn.errors import OneLineParser, run_main  # noqa: E402


def search(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Wall seconds of one run_search.py (its own local Ray, started and stopped)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), *argv], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=1800)
    finally:
        kill_session(proc.pid)
    if rc != 0:
        raise RuntimeError(f"run_search.py exited {rc}; see {log}")
    return time.perf_counter() - t


def write_cost(src: ResultsStore, dst: ResultsStore, repeats: int) -> dict[str, float]:
    """Every trial's summary row and epoch rows written again to `dst`, as the search's
    recorder writes them at each report of a trial: its two objects (trials.parquet/ID,
    epochs.parquet/ID), each rewritten whole. A trial costs this once per epoch."""
    trials = src.read_rows("trials.parquet")
    epochs = src.read_rows("epochs.parquet")
    writes, t = 0, time.perf_counter()
    for _ in range(repeats):
        for key, rows in trials.items():
            dst.write_rows("trials.parquet", key, rows)
            dst.write_rows("epochs.parquet", key, epochs.get(key, rows))
            writes += 2
    total = time.perf_counter() - t
    return {"writes": writes, "ms_per_write": 1000 * total / writes,
            "ms_per_report": 1000 * total / (repeats * max(1, len(trials)))}


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m benchmarks.storage_cost", description=__doc__.split(
        "\n")[0])
    p.add_argument("--num-samples", type=int, default=None, help="trials (the default's)")
    p.add_argument("--executor", default=None, help="train or tune (the default's)")
    p.add_argument("--repeats", type=int, default=5, help="rounds of the write measurement")
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="storage-cost-"))
    port = _free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "PYTHONPATH": str(ROOT)}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    server = moto(port, work / "moto.log")
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        extra = [*(["--num-samples", str(a.num_samples)] if a.num_samples else []),
                 *(["--executor", a.executor] if a.executor else [])]
        wall = {}
        for where, storage in (("local", str(work / "results")), ("s3", "s3://bench/results")):
            wall[where] = search(["--storage", storage, "--name", "s", *extra], env,
                                 work / f"{where}.log")
            print(f"search, storage {where}: {wall[where]:.1f} s", flush=True)
        src = ResultsStore(work / "results" / "s")
        cost = {where: write_cost(src, ResultsStore(dst), a.repeats)
                for where, dst in (("local", work / "copy"), ("s3", "s3://bench/copy"))}
    finally:
        server.stop()
    doc = {"flags": extra, "wall_s": wall, "s3_over_local": wall["s3"] / wall["local"],
           "write_cost": cost}
    for where, c in cost.items():
        print(f"writes, storage {where}: {c['ms_per_write']:.1f} ms per Parquet object, "
              f"{c['ms_per_report']:.1f} ms per trial report ({c['writes']} writes)")
    print(f"whole search on S3 / local: {doc['s3_over_local']:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
