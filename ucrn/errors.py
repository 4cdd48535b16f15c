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
from typing import Any, NoReturn

from ucrn.fileio import redact


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


def say(kind: str, text: object) -> None:
    """The one printer of `error:` / `warning:` lines: one line, without secrets (redact:
    a URI's userinfo, secret query values, the process's secret values), whatever the text
    came from (a URI, a path, an exception's text)."""
    print(f"{kind}: {redact(one_line(text))}", file=sys.stderr, flush=True)


class _Redacting:
    """A text stream that writes through `redact`: the last line of defence, for what a
    command prints outside `say` (progress lines, notes, a traceback)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacted_output() -> Iterator[None]:
    """sys.stdout and sys.stderr through `redact` inside the block."""
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, _Redacting) else _Redacting(s) for s in old)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old


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


_LAST_STOP: list[int] = []  # the signal behind the last KeyboardInterrupt raised here
# the signals that stop a command cleanly (exit 130, one line, what it wrote kept): Ctrl-C,
# `kill`/a batch system, and a closed terminal (SIGHUP killed a search at its very end,
# before it wrote best_config.json, with no word)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def interrupt(signum: int, frame: object = None) -> NoReturn:
    """A stop signal as KeyboardInterrupt, remembered in case a callback swallows it."""
    _LAST_STOP[:] = [signum]
    raise KeyboardInterrupt


def stop_is_never_lost(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt raised where Python cannot pass it on (a
    weakref callback inside an import, a __del__) is delivered again, to the code that runs
    next; Python would print "Exception ignored" and carry on (a SIGTERM 6 s into a search
    was lost so, and the search ran to its end). So is the SystemExit(SIGTERM) of Ray's own
    handler, in force while ray.init runs (swallowed in an at-fork callback, a SIGTERM
    there was lost and the command ran on, exit 0): a SystemExit raised by the handler in
    force for a stop signal, not one a user's __del__ raises (SystemExit(2), the usage
    code, was taken for a SIGINT). Anything else: Python's own report."""
    exc = unraisable.exc_value
    signalled = (isinstance(exc, SystemExit) and exc.code in STOP_SIGNALS
                 and raised_by_a_stop_handler(unraisable.exc_traceback))
    if signalled:
        _LAST_STOP[:] = [int(exc.code)]
    if (isinstance(exc, KeyboardInterrupt) or signalled) and (
            threading.current_thread() is threading.main_thread()):
        # raised again at the next line of the code the callback interrupted (raised here it
        # would be swallowed again): a one-shot trace function on that code's frames
        def again(frame: Any, event: str, arg: Any) -> Any:
            sys.settrace(None)
            for f in frames:
                f.f_trace = None
            raise KeyboardInterrupt

        frames, f = [], sys._getframe(1)
        while f is not None:
            f.f_trace, f.f_trace_lines = again, True
            frames.append(f)
            f = f.f_back
        sys.settrace(again)
        return
    sys.__unraisablehook__(unraisable)


def raised_by_a_stop_handler(tb: Any) -> bool:
    """Whether the innermost frame of `tb` runs the handler now installed for a stop
    signal (Ray's `sys.exit(signum)` during ray.init)."""
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    for sig in STOP_SIGNALS:
        handler = signal.getsignal(sig)
        handler = getattr(handler, "__func__", handler)
        if getattr(handler, "__code__", None) is tb.tb_frame.f_code:
            return True
    return False


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system's stop, `timeout`, `kill`) and SIGHUP (a closed terminal)
    behave as Ctrl-C: the same clean stop, temporary files removed, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    old = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


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
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])  # now, with the handlers the caller had


@contextmanager
def warning_lines() -> Iterator[None]:
    """Warnings as one `warning:` line each (a command's, or a Python API call's), not
    Python's two lines with the source file."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        yield


def run_main(fn: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's main, turning the project's errors into one line and an exit code
    (and warnings into one `warning:` line each)."""
    args = list(sys.argv[1:] if argv is None else argv)
    with redacted_output():
        try:
            with warning_lines(), sigterm_as_interrupt():
                return fn(args)
        except SystemExit as e:  # --help, or a command that chose its code
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        except (UsageError, ValueError) as e:  # DataError and config errors are ValueErrors
            text = str(e).strip()
            say("error", text.splitlines()[0] if text else type(e).__name__)
            return 2
        except OSError as e:
            say("error", io_error_line(e))
            return 1
        except RunFailed as e:
            say("error", e)
            return 1
        except MemoryError:
            say("error", "out of memory (the data, or what a file claims to hold, does not "
                "fit in this machine's memory)")
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def program(target: str) -> NoReturn:
    """Run the command `target` ("module:function") as a program, with SIGINT/SIGTERM
    handled for its whole life: exit 130 and one line, never death by signal.

    - The imports (seconds: torch, Ray, pandas) run with the signals deferred, so a stop
      then is the usual `interrupted` rather than a traceback from inside an import.
    - One handler is installed first and never replaced by the default: the command's own
      handlers (run_main, GracefulStop, Ray's) are restored to it, not to SIG_DFL.
    - After the command: its exit hooks run under that handler, then the process ends with
      os._exit. The interpreter's own finalisation never runs: CPython resets every
      handler to the default there, and tearing down torch and Ray took seconds, so a
      SIGTERM right after `--retrain` printed its results killed the process (exit 143,
      no message).
    - A signal once the command has ended exits at once: 130 and one line saying that what
      the command wrote is complete (silent when the command itself was the one stopped:
      a burst of signals once gave death by signal and tracebacks from exit hooks)."""
    code = 130
    ended = False  # the command has returned: a signal now leaves at once
    # for the whole process: what is printed outside run_main (a traceback) is redacted too
    sys.stdout, sys.stderr = _Redacting(sys.stdout), _Redacting(sys.stderr)

    def leave(signum: int = 0, frame: object = None) -> NoReturn:
        if signum and code != 130:
            print(f"interrupted: after the command had finished (exit code {code}); what it "
                  f"wrote is complete", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more to say
                pass
        os._exit(130 if signum else code)

    def on_signal(signum: int, frame: object) -> None:
        if not ended:
            interrupt(signum)
        leave(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
    sys.unraisablehook = stop_is_never_lost
    try:
        try:
            with signals_held():
                module, _, name = target.partition(":")
                main = getattr(importlib.import_module(module), name)
            result = main()
            code = result if isinstance(result, int) else (0 if result is None else 1)
        finally:
            ended = True
    except KeyboardInterrupt:  # during the imports, or one more while stopping
        code = 130
        print("interrupted", file=sys.stderr)
    from ucrn.fileio import calls_stuck

    if not calls_stuck():  # a store that never answered: exit without waiting for it
        _exit_hooks()
    leave()


def _exit_hooks() -> None:
    """What the interpreter does on exit before its finalisation: wait for the threads that
    are not daemons, then run the atexit hooks (Ray's, pyarrow's, logging's flush)."""
    import atexit

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    run = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        run()


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    say("warning", message)
