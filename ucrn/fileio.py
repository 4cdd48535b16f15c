"""Writing files so that a reader never sees half of one: write to a hidden temporary name
in the same folder, then rename over the target (atomic on one file system).

One helper for every file the project writes: run folders, checkpoints, predictions, the
results store (through a pyarrow file system, which may be remote), synthetic data. A
failure (full disk, signal) removes the temporary file and leaves the old target as it was.

Object stores (s3://...) have no rename (a "move" is a copy and a delete), but a single PUT
of an object is atomic: there the bytes are built in memory and written once, at their
final key, so a failure leaves either the old object or the new one, never half of one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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
        os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as f:  # no fsync: readers and crashed processes are the
            fill(f)                     # concern, not power loss; rename is what they see
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        io = _os_error_in(e)  # writers such as torch.save wrap a full disk in their own error
        if io is not None:  # named by the file meant, not the temporary one
            raise OSError(io.errno, io.strerror, str(target)) from e
        raise


def new_file_mode() -> int:
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
    buf = io.BytesIO()
    fill(buf)  # a failure here writes nothing at all
    folder = path.rsplit("/", 1)[0]
    if fs.type_name != "s3":  # object stores have no folders to make
        fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(path) as f:  # one PUT (or one completed multipart upload)
        f.write(buf.getbuffer())


SECRET_QUERY = ("access_key", "secret_key", "session_token")


def is_uri(text: str) -> bool:
    """A storage URI (s3://, gs://, ...) rather than a local path (file:// is local)."""
    return "://" in text and not text.startswith("file://")


def redact(uri: str) -> str:
    """`uri` without user info or secret query values, for messages."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    query = "&".join(f"{k}={'***' if k in SECRET_QUERY else v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""),
                       parts.path, query, parts.fragment))


def child_uri(uri: str, *names: str) -> str:
    """`uri` with names appended to its path (its query, e.g. endpoint_override, kept)."""
    parts = urlsplit(uri)
    path = "/".join([parts.path.rstrip("/"), *names])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


ANSWER_S = 20.0  # the longest a remote store may take to answer a first request


_STUCK: list[threading.Thread] = []  # calls given up on (answered), maybe still waiting


class NoAnswer(TimeoutError):
    """The store did not answer in time (not a timeout that the store itself reported)."""


def calls_stuck() -> bool:
    """Whether a storage call this process gave up on is still waiting (pyarrow's exit hook
    would wait for it, minutes: ucrn.errors.program then exits without the hooks)."""
    return any(t.is_alive() for t in _STUCK)


def answered(fn: Callable[[], Any], seconds: float | None = None) -> Any:
    """fn() in bounded time: NoAnswer when it has not returned within `seconds` (default
    ANSWER_S).

    Why: on Linux pyarrow's S3 client ignores its request timeout, so a store that accepts
    connections and never answers held a read for about 100 s before failing. The call is
    left to finish in a daemon thread; the caller stops waiting for it."""
    seconds = ANSWER_S if seconds is None else seconds
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            out["error"] = e

    thread = threading.Thread(target=call, name="storage-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _STUCK.append(thread)
        raise NoAnswer(f"the store did not answer within {seconds:.0f} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def open_uri(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a storage URI such as
    s3://BUCKET/PREFIX?endpoint_override=http://host:9000 (or AWS_ENDPOINT_URL set).
    Credentials in the URI are refused: they would be recorded wherever the URI is (search
    settings, logs, error lines); they come from the environment or the instance profile."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    parts = urlsplit(uri)
    if not parts.hostname:
        raise ValueError(f"{redact(uri)}: no bucket; expected {parts.scheme}://BUCKET/PREFIX")
    if "//" in parts.path or "%" in parts.path or parts.fragment:
        raise ValueError(f"{redact(uri)}: expected a plain path (no empty parts, %-escapes or "
                         f"'#')")
    if parts.username or parts.password or any(
            k in SECRET_QUERY for k, _ in parse_qsl(parts.query)):
        raise ValueError(f"{redact(uri)}: credentials in the URI are refused (they would be "
                         f"recorded with it); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         f"(or AWS_PROFILE, or use an instance profile) instead")
    try:  # bounded: pyarrow waits here while another call to the same store hangs
        return answered(lambda: pafs.FileSystem.from_uri(uri))
    except NoAnswer:
        raise
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ValueError(f"{redact(uri)}: not a storage URI that pyarrow can open "
                         f"({' '.join(str(e).split())})") from None


@contextmanager
def local_copy(uri: str, suffix: str = "", max_bytes: int | None = None) -> Iterator[Path]:
    """A file at a URI, copied to a private temporary file for as long as it is needed
    (torch.load and the safe loaders read local regular files only); refused before any
    byte is copied when it is not a file or is larger than `max_bytes`."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    info = answered(lambda: fs.get_file_info(path))
    if info.type != pafs.FileType.File:
        what = "a folder" if info.type == pafs.FileType.Directory else "not there"
        raise OSError(errno.ENOENT, f"{what}; expected a file", redact(uri))
    if max_bytes is not None and (info.size or 0) > max_bytes:
        raise ValueError(f"{redact(uri)}: {info.size} bytes, more than the {max_bytes} a "
                         f"checkpoint may have")
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        yield Path(tmp)
    finally:
        os.unlink(tmp)


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
    bad = (not name or name in (".", "..") or any(c in name for c in "/\\\0%#?")
           or not name.isprintable() or name != name.strip() or len(name) > 200
           or not name.isascii())  # also a key in a URI: no escapes, fragments or queries
    if bad:
        raise ValueError(f"{flag} {name!r}: expected a plain folder name (ASCII letters, "
                         f"digits, '-', '_', '.'; no '/', '%', '#', '?', not empty, not '.' "
                         f"or '..')")
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
