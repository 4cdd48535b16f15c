"""A real S3 API on loopback for the object-storage tests: moto's standalone server, and a
TCP proxy in front of it that a test can kill (the store "going down" mid-write) and start
again while moto keeps its objects. Both run in their own sessions, stopped by pid."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MOTO = str(Path(sys.executable).with_name("moto_server"))


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Server:
    """A process in its own session; stop() ends exactly that session."""

    def __init__(self, argv: list[str], log: Path, port: int, env: dict | None = None):
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        try:
            wait_port(port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        from benchmarks.processes import kill_session

        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def moto(port: int, log: Path, strict: bool = False) -> Server:
    """moto's S3 server; `strict` checks credentials (and knows none: every request is
    refused, as a store refuses a wrong key)."""
    import os

    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if strict else None
    return Server([MOTO, "-H", "127.0.0.1", "-p", str(port)], log, port, env=env)


def proxy(port: int, target: int, log: Path) -> Server:
    return Server([sys.executable, __file__, str(port), str(target)], log, port)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(port: int, target: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        client, _ = srv.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
