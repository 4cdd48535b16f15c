"""Our own attack round on the Reliability III work (docs/reliability.md): stops that were
lost or wordless, credentials in the endpoint variable, ids that disguise themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(extra: Path | None = None) -> dict[str, str]:
    paths = [str(ROOT)] + ([str(extra)] if extra else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    """Read the child's stdout until `marker` appears."""
    end = time.time() + timeout
    while time.time() < end:
        line = proc.stdout.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"ended before {marker!r}: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"no {marker!r} within {timeout} s")


@pytest.mark.parametrize("sig, handler", [
    (signal.SIGTERM, ""), (signal.SIGINT, ""),
    # Ray's own, in force while ray.init runs: SystemExit(15) swallowed in an at-fork
    # callback let a command run on to exit 0 (once in a suite run)
    (signal.SIGTERM, "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(s))")],
    ids=["SIGTERM", "SIGINT", "SIGTERM-ray-handler"])
def test_a_stop_swallowed_by_a_callback_is_delivered_again(tmp_path, sig, handler):
    """A signal whose KeyboardInterrupt (or SystemExit) lands in a __del__ (or an import's
    weakref callback, an at-fork hook): Python reports "Exception ignored" and carries on; a
    command stops anyway, exit 130, one line, without that report."""
    (tmp_path / "slowdel.py").write_text(
        "import signal, sys, time\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        print('in-del', flush=True)\n"
        "        time.sleep(4)\n"
        "def main():\n"
        f"    {handler or 'pass'}\n"
        "    s = Slow()\n"
        "    del s\n"
        "    print('after', flush=True)\n"
        "    return 0\n")
    proc = subprocess.Popen([sys.executable, "-c", "from ucrn.errors import program; "
                             "program('slowdel:main')"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until(proc, "in-del")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "after" not in out, (proc.returncode, out, err)
    assert err.strip() == "interrupted" and "Exception ignored" not in err, err


@pytest.mark.slow
def test_sigterm_while_ray_starts_is_the_usual_stop(tmp_path):
    """Ray's own SIGTERM handler, in force during ray.init, exited 15 without a word."""
    code = ("from ucrn.errors import program\n"
            "program('starter:main')\n")
    (tmp_path / "starter.py").write_text(
        "def main():\n"
        "    from search.cluster import start_ray\n"
        "    from ucrn.errors import run_main\n"
        "    def go(argv):\n"
        "        print('starting', flush=True)\n"
        "        start_ray(None, 1, None)\n"
        "        print('started', flush=True)\n"
        "        import time; time.sleep(30)\n"
        "        return 0\n"
        "    return run_main(go, [])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _until(proc, "starting")
        time.sleep(1.5)  # inside ray.init (it takes several seconds)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, out, err[-2000:])
    assert "interrupted" in err.splitlines()[-1:], err[-2000:]


def test_credentials_in_the_endpoint_variable_are_refused_naming_it(bucket, s3, capsys,
                                                                     monkeypatch):
    """A user and password inside AWS_ENDPOINT_URL: curl failed to resolve the user as a
    host after 23 s; now one line naming the variable, the secret not in it."""
    import run_search

    secret = "EpSecret777xyz"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://usr:{secret}@127.0.0.1:{s3}")
    rc = run_search.main(["--storage", f"s3://{bucket}/e"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "AWS_ENDPOINT_URL" in err[0], err
    assert "credentials in an endpoint are refused" in err[0] and secret not in err[0]
