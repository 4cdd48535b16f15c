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
    code = (
        "import ray\n"
        "from search.cluster import start_ray\n"
        "start_ray(None, 1, None)\n"
        "print('URL', ray._private.worker.global_worker.node.address_info['webui_url'])\n"
        "ray.shutdown()\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    url = [ln for ln in res.stdout.splitlines() if ln.startswith("URL ")]
    assert url, res.stdout[-2000:] + res.stderr[-2000:]
    assert url[0].split()[1].startswith("127.0.0.1:"), url
