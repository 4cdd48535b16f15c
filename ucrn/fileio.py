"""Writing files so that a reader never sees half of one: write to a hidden temporary name
in the same folder, then rename over the target (atomic on one file system).

One helper for every file the project writes: run folders, checkpoints, predictions, the
results store (through a pyarrow file system, which may be remote), synthetic data. A
failure (full disk, signal) removes the temporary file and leaves the old target as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Writer = Callable[[IO[bytes]], None]


def atomic_write(path: str | os.PathLike, write: Writer | bytes, fs: Any = None) -> None:
    """Write `path` whole or not at all. `write` gets a binary stream (or is the bytes);
    `fs` is a pyarrow FileSystem for URIs (None: the local disk)."""
    fill: Writer = (lambda f: f.write(write)) if isinstance(write, bytes) else write
    if fs is not None:
        _atomic_write_fs(str(path), fill, fs)
        return
    target = Path(path)
    _replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as f:  # no fsync: readers and crashed processes are the
            fill(f)                     # concern, not power loss; rename is what they see
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        io = _os_error_in(e)  # writers such as torch.save wrap a full disk in their own error
        if io is not None:  # named by the file meant, not the temporary one
            raise OSError(io.errno, io.strerror, str(target)) from e
        raise


def _new_file_mode() -> int:
    """What open() would give a new file: 0666 less the process umask (read without
    changing it where Linux says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _replaceable(target: Path) -> None:
    """Only a regular file is ever replaced: not a link (whose target the user meant), a
    device such as /dev/null, a folder or a FIFO."""
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise OSError(errno.EEXIST, "exists and is not a regular file (a link, folder or "
                      "device); refusing to replace it", str(target))


def check_output(path: str | os.PathLike, flag: str, inputs: tuple = ()) -> Path:
    """A file name the user gave for output: one line (ValueError) if it names a folder, a
    link or device, or one of the command's own input files."""
    text, p = str(path), Path(path)
    if text.endswith(("/", os.sep)) or p.is_dir():
        raise ValueError(f"{flag} {text}: names a folder; expected a file name")
    try:
        _replaceable(p)
    except OSError as e:
        raise ValueError(f"{flag} {text}: {e.strerror}") from None
    for inp in inputs:
        if p.exists() and Path(inp).exists() and os.path.samefile(p, inp):
            raise ValueError(f"{flag} {text}: is the input file {inp}; choose another name")
    return p


def _os_error_in(e: BaseException) -> OSError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _atomic_write_fs(path: str, fill: Writer, fs: Any) -> None:
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.{os.getpid()}.tmp"  # dot-files are invisible to dataset readers
    try:
        with fs.open_output_stream(tmp) as f:
            fill(f)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:  # noqa: BLE001 - already gone, or the store itself failed
            pass
        raise


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line; if the write fails (full disk), the file is cut back to what it
    was, so it never ends in half a line."""
    data = line.rstrip("\n").encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            os.ftruncate(fd, size)
            raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        os.close(fd)


def check_name(name: str, flag: str) -> str:
    """A run or search name becomes one folder: refuse what would escape or vanish."""
    bad = (not name or name in (".", "..") or any(c in name for c in "/\\\0")
           or not name.isprintable() or name != name.strip() or len(name) > 200)
    if bad:
        raise ValueError(f"{flag} {name!r}: expected a plain folder name (letters, digits, "
                         f"'-', '_', '.'; no '/', not empty, not '.' or '..')")
    return name


def json_bytes(obj: Any) -> bytes:
    """Indented JSON (NaN allowed: metrics may be NaN); numpy scalars and tuples as plain."""
    return (json.dumps(obj, indent=2, default=_plain, allow_nan=True) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any, fs: Any = None) -> None:
    atomic_write(path, json_bytes(obj), fs)


def _plain(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
