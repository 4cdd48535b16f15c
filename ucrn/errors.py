"""One-line errors for every command of the project (`ucrn ...`, run_search.py, analyze.py).

A user who typed a wrong flag or pointed at a wrong file gets one line that names it,
exit code 2; an I/O failure (disk full, permissions) gets one line and exit code 1;
Ctrl-C gets 130. Never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn


class UsageError(Exception):
    """A bad flag, file or value: one line for the user, exit code 2."""


class DataError(ValueError):
    """Bad input data; the message is ONE line naming file, split and key and what was
    expected (raised by ucrn.data, where the validator lives)."""


class RunFailed(Exception):
    """A run that started and then failed (out of memory, a numeric error): one line that
    says where the details are, exit code 1."""


def one_line(x: object) -> str:
    return " ".join(str(x).split())


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def io_error_line(e: OSError) -> str:
    """An OSError as one line; a full disk says so plainly."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}: nothing partial was kept; free space and rerun"
    return one_line(f"{e.strerror or e}{':' + where if where else ''}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system's stop, `timeout`, `kill`) behaves as Ctrl-C: the same clean
    stop, temporary files removed, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside the block are acted on right after it, so that
    what the block writes and what it records change together.

    Deferred by a Python handler, not by blocking the signals: a signal blocked in the main
    thread goes to another thread, and CPython then sets its flag without waking the main
    thread's evaluation loop, so the stop could wait indefinitely (seen in CI)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])  # now, with the handlers the caller had


def run_main(fn: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's main, turning the project's errors into one line and an exit code
    (and warnings into one `warning:` line each)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings(), sigterm_as_interrupt():
            warnings.showwarning = _warning_line
            return fn(args)
    except SystemExit as e:  # --help, or a command that chose its code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (UsageError, ValueError) as e:  # DataError and config errors are ValueErrors
        text = str(e).strip()
        print(f"error: {one_line(text.splitlines()[0]) if text else type(e).__name__}",
              file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {io_error_line(e)}", file=sys.stderr)
        return 1
    except RunFailed as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (the data, or what a file claims to hold, does not fit "
              "in this machine's memory)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def program(target: str) -> NoReturn:
    """Run the command `target` ("module:function") as a program: it is imported (seconds:
    torch, Ray, pandas) with SIGINT/SIGTERM deferred, so a stop during the imports is the usual `interrupted` and
    exit 130 rather than a traceback from inside an import; a signal after the command has
    ended exits at once with the command's code (a burst of them once turned exit 130 into
    death by signal, with tracebacks from exit hooks)."""
    code = 130

    def leave(signum: int = 0, frame: object = None) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        with sigterm_as_interrupt():
            with signals_held():
                module, _, name = target.partition(":")
                main = getattr(importlib.import_module(module), name)
            code = main()
    except KeyboardInterrupt:  # during the imports, or one more while stopping
        print("interrupted", file=sys.stderr)
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, leave)
    from ucrn.fileio import calls_stuck

    if calls_stuck():  # a store that never answered: exit without waiting for it
        leave()
    sys.exit(code)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)
