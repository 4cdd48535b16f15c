"""A TCP proxy in front of moto's S3 server that a test can kill (the store "going down"
mid-write) and start again on the same port while moto keeps its objects. moto itself and
the process helpers are in benchmarks/processes.py (the storage benchmark uses them too)."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path


def proxy(port: int, target: int, log: Path):
    """The proxy as a Server (benchmarks/processes.py), listening on `port`."""
    from benchmarks.processes import Server  # not at the top: this file also runs alone

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
