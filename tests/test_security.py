"""Security: no unrestricted unpickling, dashboard on loopback, no secrets in results."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("ucrn", "search") for p in (ROOT / d).rglob("*.py")] + [
    ROOT / "run_search.py", ROOT / "analyze.py"]


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            yield (base.id if isinstance(base, ast.Name) else ""), node.func.attr, node


def test_no_plain_pickle_or_torch_load():
    """Every torch.load passes weights_only=True; pickle.load/loads appear nowhere (the
    MulT loader uses its restricted Unpickler subclass instead)."""
    offenders = []
    for path in SOURCES:
        for base, attr, node in _calls(path):
            if base == "pickle" and attr in ("load", "loads"):
                offenders.append(f"{path.name}:{node.lineno} pickle.{attr}")
            if base == "torch" and attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    offenders.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
    assert not offenders, offenders


@pytest.mark.slow
def test_local_ray_dashboard_binds_loopback(tmp_path):
    """A local Ray of a search: its dashboard on loopback only; the trials' environment
    (threads) reaches Tune's trial actors by inheritance while the driver's own environment
    is left as it was; and a trial actor takes a worker process Ray started with the node
    (Tune's runtime_env copy would make it wait for a new one: seconds per trial)."""
    code = (
        "import os, time, ray\n"
        "from ray.tune.execution.class_cache import _ActorClassCache\n"
        "from benchmarks.processes import start_time\n"
        "from search.cluster import start_ray\n"
        "start_ray(None, 1, None)\n"
        "print('URL', ray._private.worker.global_worker.node.address_info['webui_url'])\n"
        "print('DRIVER', os.environ.get('OMP_NUM_THREADS'))\n"
        "class Trial:\n"
        "    def info(self):\n"
        "        return os.getpid(), os.environ.get('OMP_NUM_THREADS')\n"
        "time.sleep(3)\n"
        "asked = time.time()\n"
        "actor = _ActorClassCache().get(Trial).options(num_cpus=1).remote()\n"
        "pid, threads = ray.get(actor.info.remote())\n"
        "print('ACTOR', threads, start_time(pid) < asked)\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**env, "PYTHONPATH": str(ROOT)})
    out = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines() if ln[:1].isupper()}
    assert "ACTOR" in out, res.stdout[-2000:] + res.stderr[-2000:]
    assert out["URL"][0].startswith("127.0.0.1:"), out
    assert out["DRIVER"] == ["None"] and out["ACTOR"] == ["1", "True"], out


def test_tunes_copy_of_the_environment_only_for_a_cluster(monkeypatch):
    """Local Ray: Tune puts no runtime_env in trial actors (their processes inherit the
    values, returned here); connected to a cluster, Tune's copy is back as Tune made it,
    credentials still left out (they would be logged in plain text)."""
    class_cache = pytest.importorskip("ray.tune.execution.class_cache")
    from search.cluster import CREDENTIAL_VARS, tune_actor_env

    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-logs")
    try:
        inherited = tune_actor_env(local=True)
        assert class_cache.DEFAULT_ENV_VARS == {} and not class_cache.ENV_VARS_TO_PROPAGATE
        assert inherited["PL_DISABLE_FORK"] == "1" and inherited["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
        assert not set(inherited) & set(CREDENTIAL_VARS)
    finally:
        assert tune_actor_env(local=False) == {}
    assert class_cache.DEFAULT_ENV_VARS == {"PL_DISABLE_FORK": "1"}
    assert "RAY_CHDIR_TO_TRIAL_DIR" in class_cache.ENV_VARS_TO_PROPAGATE
    assert not class_cache.ENV_VARS_TO_PROPAGATE & set(CREDENTIAL_VARS)
