"""Stopping exactly the processes one started: by process session, found through /proc.

A Ray node or a search started with `start_new_session=True` keeps everything it spawns
(GCS, raylet, dashboard, workers) in that session, so ending the session's processes stops
exactly those: never by name, never `ray stop` (which ends every Ray process on the
machine). Used by the tests' Ray nodes and by the GPU check's searches.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3] = session id, [0] = state
            pids.append(int(entry))
    return pids


def kill_session(sid: int, grace: float = 8.0) -> None:
    """SIGTERM the session's processes, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.2)
        if not session_pids(sid):
            return
