"""The two things every reader here shares: SafeLoadError, whose message is one line naming
the file, and opening a file from outside (a regular file within its cap, never blocking)."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from ucrn.errors import one_line


class SafeLoadError(ValueError):
    """A file that cannot or must not be loaded; the message is one line naming the file."""


def _err(msg: str) -> SafeLoadError:
    return SafeLoadError(one_line(msg))


def _label(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} {os.fspath(path)}" if what else os.fspath(path)


def _exc_text(exc: BaseException, limit: int = 200) -> str:
    """``Type: message``, one line and short; never fails (str() of some values can)."""
    try:
        text = one_line(exc)
    except Exception:  # noqa: BLE001 - e.g. str() of an int past the digit limit
        text = ""
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(value: object, limit: int = 60) -> str:
    """A short, safe description of a value read from an untrusted file."""
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
        return text[:limit] + "..." if len(value) > limit else text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if type(value) is tuple and len(value) <= 8 and all(
            type(x) in (int, float, bool, str, bytes, type(None)) for x in value):
        inner = ", ".join(_short(x, 20) for x in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return f"a {type(value).__name__}"

# --------------------------------------------------------------------------------------
# opening files: never block, never follow into something that is not a regular file
# --------------------------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: str | os.PathLike[str], label: str, kind: str,
                  max_bytes: int | None) -> tuple[BinaryIO, int]:
    """Open for reading after checking it is a regular file within the size cap.

    stat() comes first so that a FIFO is refused without opening it (open() on a FIFO blocks
    until a writer appears); O_NONBLOCK and the fstat() after opening cover a file swapped
    for a FIFO in between.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _err(f"{label}: file not found, expected a {kind} file") from None
    except PermissionError:
        raise _err(f"{label}: cannot read: permission denied") from None
    except (OSError, ValueError) as exc:
        raise _err(f"{label}: cannot read: {_exc_text(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _err(f"{label}: is a directory, expected a {kind} file")
    if not stat.S_ISREG(st.st_mode):
        raise _err(f"{label}: is {_file_kind(st.st_mode)}, expected a regular {kind} file")
    _check_size(st.st_size, label, kind, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise _err(f"{label}: cannot read: permission denied") from None
    except OSError as exc:
        raise _err(f"{label}: cannot read: {_exc_text(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _err(f"{label}: is {_file_kind(st.st_mode)}, expected a regular {kind} file")
        _check_size(st.st_size, label, kind, max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: reads never block; plain semantics
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _check_size(size: int, label: str, kind: str, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise _err(f"{label}: is {size} bytes, over the {max_bytes}-byte limit for a {kind} file")


def _read_capped(path: str | os.PathLike[str], label: str, kind: str, max_bytes: int) -> bytes:
    fh, _ = _open_regular(path, label, kind, max_bytes)
    try:
        with fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise _err(f"{label}: cannot read: {_exc_text(exc)}") from None
    _check_size(len(data), label, kind, max_bytes)  # grew after the stat
    return data


def _decode_utf8(data: bytes, label: str, kind: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(f"{label}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                   f"{exc.start}), expected a {kind} file") from None
    return text[1:] if text.startswith("\ufeff") else text
