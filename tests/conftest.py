"""Shared fixtures: one Ray head for the whole test session, started and stopped by pid."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.raynodes import RayNode, free_port, wait_for_nodes

ROOT = Path(__file__).resolve().parents[1]

# One torch thread in every process of the session (the two test workers, the commands
# and drivers they start, the Ray heads' workers) unless one is set: the suite runs two
# workers on 2 cores, and two-thread torch in each spins on the other's cores (OpenMP's
# busy wait); a test that needs another count sets its own.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Ray 2.60 heads use token authentication by default. The test session makes its own token
# (a fresh machine has no ~/.ray/auth_token, and the user's is left alone) and sets the mode
# here, before any test module imports Ray: Ray reads the client's auth mode once, at import.
_TOKEN_DIR = tempfile.mkdtemp(prefix="ucrn-test-ray-")
_TOKEN = Path(_TOKEN_DIR) / "auth_token"
_TOKEN.write_text(secrets.token_hex(32))
_TOKEN.chmod(0o600)
atexit.register(shutil.rmtree, _TOKEN_DIR, ignore_errors=True)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_TOKEN)

# The object-storage tests' S3 endpoint (moto's server, started on first use by the s3
# fixture), set before Ray's head starts so that its workers reach it too. The secret is
# distinctive: tests grep everything a search writes for it.
S3_PORT = free_port()
S3_SECRET = f"ucrn-test-secret-{secrets.token_hex(8)}"
os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                   "AWS_ACCESS_KEY_ID": "ucrn-test-key", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _sigterm_tears_down(request):
    """A test session stopped with SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C:
    the session fixtures stop the Ray head and the S3 server they started (by pid) instead
    of leaving them running. Set before every test: ray.init in a test replaces it.
    SIGINT is Python's default before every test too: tests that send it expect
    KeyboardInterrupt, and subprocesses inherit an ignored SIGINT. A test that leaves it
    otherwise is named in a warning (one in-process search per worker was seen to)."""
    if signal.getsignal(signal.SIGTERM) is not _sigterm_as_interrupt:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    left = signal.getsignal(signal.SIGINT)
    if left is not signal.default_int_handler:
        import warnings

        warnings.warn(f"{request.node.nodeid} left SIGINT handled by {left!r}", stacklevel=1)


@pytest.fixture(scope="session")
def ray_env(tmp_path_factory) -> dict[str, str]:
    """Environment for Ray processes and drivers of the test session (token auth on,
    as Ray 2.60 does by default for a local head)."""
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    # a driver joining a head gets idle workers started for it, which a job with a
    # runtime_env (every search's) never uses: 1 s of CPU per search on 2 cores
    env["RAY_prestart_worker_first_driver"] = "0"
    # W&B's logging actors (--tracker wandb) run in these processes: never the network
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true",
               WANDB_DISABLE_CODE="true", WANDB_ERROR_REPORTING="false")
    return env


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, ray_env):
    """A 1-CPU Ray head on loopback; yields its address; stopped even if tests fail.

    One CPU: a search on it runs one trial at a time in one trial process, where two CPUs
    gave two (5 s of imports each) for no gain on a machine whose two cores already run
    the suite's two workers (a 6-trial search: 26.8 CPU-s against 48.8, and sooner). A
    test that needs two trials at once asks for 0.5 CPU each."""
    logs = tmp_path_factory.mktemp("ray-head")
    port = free_port()
    node = RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--num-gpus=0", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                    f"--dashboard-port={free_port()}"], ray_env, logs / "head.log")
    address = f"127.0.0.1:{port}"
    try:
        wait_for_nodes(address, 1, ray_env)
        yield address
    finally:
        node.stop(address)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1:S3_PORT for the whole session; yields the port."""
    from benchmarks.processes import moto

    server = moto(S3_PORT, tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield S3_PORT
    finally:
        server.stop()


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket for one test; yields its name."""
    import boto3

    name = f"b{secrets.token_hex(6)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, an order in which the workers end together.

    The work-stealing scheduler gives each worker a contiguous share of the collection and
    lets an idle one take the tail of another's queue, so a slow end-to-end test near the
    end of a share ran alone at the end of the session (80 s with one core idle, once). The
    modules with slow tests are dealt out to the shares (fewest slow tests first, each to
    the share with fewer), slow tests first within a module, and the fast-only modules
    fill each share up to its size: both queues end in fast tests, which the idle worker
    takes over. A module stays in one piece (its fixtures are made once) unless it
    straddles a share's end."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2 or len(items) < 2 * workers:
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(str(item.path), []).append(item)

    def slow(item) -> bool:
        return item.get_closest_marker("slow") is not None

    for group in modules.values():
        group.sort(key=lambda item: not slow(item))  # stable: slow ones first
    n_slow = {m: sum(map(slow, group)) for m, group in modules.items()}
    shares: list[list] = [[] for _ in range(workers)]
    slow_in = [0] * workers
    # modules of one or two slow tests first: those are the longest single tests (a
    # benchmark or a whole cluster each); a queue's last slow tests are the shorter ones
    for m in sorted((m for m in modules if n_slow[m]), key=lambda m: n_slow[m]):
        i = min(range(workers), key=lambda k: (slow_in[k], len(shares[k])))
        shares[i] += modules[m]
        slow_in[i] += n_slow[m]
    fast = [item for m, group in modules.items() if not n_slow[m] for item in group]
    size = len(items) // workers  # share k starts at k * size (the last takes the rest)
    order: list = []
    for k, share in enumerate(shares):
        room = max(0, (size if k < workers - 1 else len(fast)) - len(share))
        order += share + fast[:room]
        fast = fast[room:]
    order += fast
    assert len(order) == len(items)
    items[:] = order
