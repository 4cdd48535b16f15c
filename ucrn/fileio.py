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
import functools
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

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


# ---- storage URIs: one parser, one spelling, one redaction ------------------------------
#
# Why one of each: a URI is parsed by us, by pyarrow (whose curl removes "." and ".." and
# decodes %-escapes) and by boto3 (which sends keys literally). Spellings that the clients
# read differently named the same objects under two lease keys; a secret left anywhere in
# a URI (userinfo, also inside a query value, %-encoded or not) was echoed in error lines.

_STORES = ("s3", "gs", "gcs")  # object stores: the URI's host is a bucket name
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]*")
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")  # RFC 3986 path characters, no '%'
_SECRET_WORDS = {"secret", "token", "password", "passwd", "pwd", "passphrase", "signature",
                 "sig", "credential", "credentials", "authorization", "apikey"}
_SECRET_JOINED = ("accesskey", "secretkey", "apikey", "privatekey", "sessiontoken",
                  "securitytoken", "externalid", "password", "clientsecret")
# an environment variable with one of these last words names or describes a secret (a
# file, a mode, an id), it is not one; *_PATH / *_FILE are read for the secret they hold
_NOT_A_VALUE = {"path", "file", "dir", "mode", "url", "uri", "id", "type", "name", "region",
                "endpoint", "host", "port", "enabled", "enable", "disabled", "disable", "ttl",
                "expiry", "expiration", "timeout", "s"}
_SECRET_FILES = ("~/.ray/auth_token", "~/.aws/credentials")  # where Ray and AWS look unasked


def _enc(ch: str) -> str:
    """`ch` as a regex, also %-encoded (once or more: %3A, %253A)."""
    hexa = f"{ord(ch):02X}"
    return rf"(?:{re.escape(ch)}|%(?:25)*{hexa[0]}[{hexa[1]}{hexa[1].lower()}])"


_COLON, _SLASH, _AT, _EQ, _AMP = (_enc(c) for c in ":/@=&")
_AUTH_END = rf"(?:{_SLASH}|{_enc('?')}|{_enc('#')}|{_enc(' ')}|{_AMP}|[\s\"'<>])"
_USERINFO = re.compile(  # also s3:/ (a URI that went through a path function)
    rf"(?i)(\b[a-z][a-z0-9+.\-]*{_COLON}{_SLASH}+)((?:(?!{_AUTH_END}).)+)({_AT})")
_BARE_USERINFO = re.compile(  # a query value KEY:SECRET@host; /KEY:SECRET@host, 'K:S@host'
    rf"({_EQ})((?:(?!{_AUTH_END}|{_EQ}).)+)({_AT})|(^|{_SLASH}|[\s'\"(<\[])((?:(?!{_AUTH_END})"
    rf".)*{_COLON}(?:(?!{_AUTH_END}).)*)({_AT})")
_VALUE_END = rf"(?:{_AMP}|[\s,;\"'<>#)\]}}]|%(?:25)*(?:20|23|2[cC]|3[bB]))"
_KEY_VALUE = re.compile(
    rf"(?P<pre>^|[?&\s,;{{(\[]|%(?:25)*(?:26|3[fF]|2[cC]|20))(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)"
    rf"(?P<sep>{_EQ})(?P<val>(?:(?!{_VALUE_END}).)+)")
_QUOTED = re.compile(r"""(?P<pre>(?P<q>["'])(?P<key>[A-Za-z][A-Za-z0-9_.\-]*)(?P=q)\s*:\s*"""
                     r"""(?P<q2>["']))(?P<val>(?:\\.|(?!(?P=q2)).)*)""")
_HEADER = re.compile(r"(?im)(?P<pre>\b(?:proxy-)?authorization\s*:\s*|\bx-amz-security-token"
                     r"\s*:\s*|\bcookie\s*:\s*)(?P<val>[^\r\n]+)")


def secret_name(name: str) -> bool:
    """Whether a query key, header or field called `name` holds a secret (access_key,
    X-Amz-Signature, session_token, password, ...)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    joined = "".join(words)
    return bool(_SECRET_WORDS.intersection(words)) or any(s in joined for s in _SECRET_JOINED)


@functools.lru_cache(maxsize=1024)
def _env_kind(name: str) -> str:
    """'value' for a variable that holds a secret, 'file' for one naming a file that does
    (RAY_AUTH_TOKEN_PATH), '' otherwise."""
    if name in ("PWD", "OLDPWD") or not secret_name(name):
        return ""
    last = name.lower().rsplit("_", 1)[-1]
    if last in ("path", "file"):
        return "file"
    return "" if last in _NOT_A_VALUE else "value"


def _file_secrets(path: str) -> list[str]:
    """The secrets a small file holds: its whole text when it is one word (a token file),
    else the values of its secret-named `key = value` lines (~/.aws/credentials)."""
    try:
        p = Path(path).expanduser()
        if not p.is_file() or p.stat().st_size > 1 << 16:
            return []
        text = p.read_text(errors="replace").strip()
    except OSError:
        return []
    if text and not any(c.isspace() for c in text):
        return [text]
    return [m.group(2) for m in re.finditer(r"(?m)^\s*([A-Za-z][\w.\-]*)\s*[=:]\s*(\S+)",
                                            text) if secret_name(m.group(1))]


_SECRETS_CACHE: dict[tuple, tuple[str, ...]] = {}


def secret_values() -> tuple[str, ...]:
    """The secrets this process has (secret environment variables, the files named by
    *_TOKEN_PATH-like variables, Ray's and AWS's default files), with their %-encoded
    forms, longest first. Short values (under 8 characters) are left out: they would blank
    ordinary words."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if _env_kind(k)))
    files = [v for k, v in env if _env_kind(k) == "file"] + [
        f for f in _SECRET_FILES if not (f.endswith("credentials")
                                         and "AWS_SHARED_CREDENTIALS_FILE" in os.environ)]
    stamp = []
    for f in files:
        try:
            st = os.stat(os.path.expanduser(f))
            stamp.append((f, st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((f, 0, 0))
    key = (env, tuple(stamp))
    if key not in _SECRETS_CACHE:
        raw = [v for k, v in env if _env_kind(k) == "value"]
        raw += [s for f in files for s in _file_secrets(f)]
        forms = {f for v in raw if len(v) >= 8 for f in (v, quote(v, safe=""),
                                                          quote_plus(v, safe=""))}
        _SECRETS_CACHE.clear()
        _SECRETS_CACHE[key] = tuple(sorted(forms, key=len, reverse=True))
    return _SECRETS_CACHE[key]


def redact(text: str) -> str:
    """`text` (a URI, a path, a message, an exception's text) without the secrets it may
    carry: userinfo of any URI in it (also nested in a query value, %-encoded or not),
    values of secret-named keys (`secret_key=`, `X-Amz-Signature=`, `"password": "..."`,
    `Authorization:` headers) and this process's secret values (secret_values)."""
    text = str(text)
    for value in secret_values():
        text = text.replace(value, "***")
    text = _USERINFO.sub(r"\1***\3", text)
    text = _BARE_USERINFO.sub(lambda m: f"{m[1]}***{m[3]}" if m[1] is not None
                              else f"{m[4]}***{m[6]}", text)
    text = _KEY_VALUE.sub(lambda m: m.group("pre") + m.group("key") + m.group("sep") + "***"
                          if secret_name(m.group("key")) else m.group(0), text)
    text = _QUOTED.sub(lambda m: m.group("pre") + "***" if secret_name(m.group("key"))
                       else m.group(0), text)
    return _HEADER.sub(lambda m: m.group("pre") + "***", text)


def is_uri(text: str) -> bool:
    """A storage URI (s3://, gs://, ...) rather than a local path (file:// is local)."""
    return "://" in text and not text.lower().startswith("file://")


_FILE_URI = re.compile(r"(?i)file:")


def local_path(text: str) -> str:
    """A local folder or file given as a path or as a file URI, as a path: `file:///PATH`,
    `file://localhost/PATH` and `file:/PATH` in any case of the scheme, %-decoded (RFC
    8089). Any other text is returned as it is. The one place file URIs are read: a plain
    prefix cut made `FILE:///x`, `file:/x` and `file://localhost/x` folders under the
    working folder, and `file://USER:SECRET@/x` one whose name held the secret. ValueError
    (secrets redacted) for a host, a user or a password, a query or fragment (`?token=`
    became part of a folder's name), a path that is not absolute, or one that is not UTF-8
    or holds NUL once %-decoded."""
    if not _FILE_URI.match(text):
        return text
    rest = text[len("file:"):]
    if "?" in rest or "#" in rest:  # shown without them: a secret may sit anywhere there
        cut = min(i for i in (rest.find("?"), rest.find("#")) if i >= 0)
        raise ValueError(f"{redact(text[:len('file:') + cut])}...: a file URI names a folder "
                         "by its path alone: "
                         "file:///PATH, no ?query or #fragment (write ? and # in a name as "
                         "%3F and %23)")
    if rest.startswith("//"):
        host, slash, rest = rest[2:].partition("/")
        if host.lower() not in ("", "localhost") or not slash:
            raise ValueError(f"{redact(text)}: a file URI names a folder on this machine: "
                             "file:///PATH (no host, user or password)")
        rest = "/" + rest
    if not rest.startswith("/"):
        raise ValueError(f"{redact(text)}: a file URI needs an absolute path: file:///PATH")
    try:
        path = unquote(rest, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{redact(text)}: a file URI's %-encoded path is not UTF-8; expected "
                         "file:///PATH with UTF-8 %-escapes") from None
    if "\0" in path:
        raise ValueError(f"{redact(text)}: a file URI's path holds a NUL character (%00); expected "
                         "file:///PATH") from None
    return path


def local_folder(text: str) -> Path:
    """`local_path`, `~` expanded and links resolved: a local folder's one spelling (its
    lock, its results and what is recorded of it); ValueError as local_path."""
    return Path(local_path(text)).expanduser().resolve()


def _decodings(value: str) -> list[str]:
    """`value` and its %-decodings until they stop changing (nested encodings)."""
    out = [value]
    while len(out) < 5 and (nxt := unquote(out[-1])) != out[-1]:
        out.append(nxt)
    return out


def _has_userinfo(value: str) -> bool:
    """Whether a URI or a query value holds a user or password (`http://KEY:SECRET@host`,
    `KEY:SECRET@host`), in any %-encoding."""
    for text in _decodings(value):
        authority = re.sub(r"(?i)^[a-z][a-z0-9+.\-]*://", "", text.strip())
        if "@" in re.split(r"[/?#]", authority, maxsplit=1)[0]:
            return True
    return False


def _endpoint(value: str, scheme: str | None, where: str) -> None:
    """An S3 endpoint must say how to reach it: http(s)://HOST[:PORT], or HOST[:PORT] with
    `scheme=http|https` (pyarrow's default https against an http store failed with an SSL
    or HeadObject error that named neither the endpoint nor the flag)."""
    if scheme is not None and scheme not in ("http", "https"):
        raise ValueError(f"{where}: scheme={scheme!r}; expected scheme=http or scheme=https")
    url = value if "://" in value else (f"{scheme}://{value}" if scheme else "")
    value = redact(value)  # an endpoint from the environment may carry a user and password
    if not url:
        raise ValueError(f"{where}: the endpoint {value!r} has no scheme; the endpoint must "
                         f"start with http:// or https:// (e.g. http://{value or 'HOST:9000'})")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.username or parts.password:  # the URI's own userinfo is refused likewise
        raise ValueError(f"{where}: the endpoint {value!r} holds a user or password: "
                         f"credentials in an endpoint are refused (they would be recorded "
                         f"with it); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if scheme and "://" in value and parts.scheme.lower() != scheme:
        raise ValueError(f"{where}: the endpoint {value!r} and scheme={scheme} disagree; give "
                         f"one of them")
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"{where}: the endpoint {value!r} must start with http:// or https:// "
                         f"and name only a host and port (http(s)://HOST[:PORT])")


def normalize_uri(uri: str) -> str:
    """The one spelling of a storage URI, for every later use (lease key, object keys,
    messages); ValueError, one line without any secret, for what is refused.

    Normalised, since every client reads them one way: the scheme's case, "." and ".."
    (never above the bucket), trailing slashes, an empty query. Refused, since clients read
    them differently or they hide where the data go: credentials (userinfo, secret-named
    query keys, userinfo inside a query value), '%' (pyarrow decodes it, boto3 does not),
    empty path parts ('a//b' is another key than 'a/b'), a port or capitals in a bucket
    name (pyarrow drops the port), characters outside RFC 3986 paths, a fragment, an
    endpoint without http:// or https://."""
    shown = redact(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    if ("@" in parts.netloc or _has_userinfo(parts.netloc)
            or any(secret_name(k) or _has_userinfo(v) for k, v in query)):
        raise ValueError(f"{shown}: credentials in the URI are refused (they would be recorded "
                         f"with it); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                         f"AWS_PROFILE, or use an instance profile) instead")
    if not parts.netloc:
        raise ValueError(f"{shown}: no bucket; expected {scheme}://BUCKET/PREFIX")
    if scheme in _STORES and not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"{shown}: {parts.netloc!r} is not a bucket name; expected "
                         f"{scheme}://BUCKET/PREFIX with a bucket of lowercase letters, digits, "
                         f"'.', '-' (no port, no user)")
    if parts.fragment or uri.endswith("#"):
        raise ValueError(f"{shown}: expected a plain path (no '#')")
    if "%" in parts.path or not _PATH.fullmatch(parts.path):
        raise ValueError(f"{shown}: expected a plain path (no %-escapes, spaces or other "
                         f"characters that clients read differently)")
    inner = parts.path.strip("/")
    if "//" in inner or (parts.path.startswith("//") and inner):
        raise ValueError(f"{shown}: expected a plain path (no empty parts: 'a//b' names other "
                         f"objects than 'a/b')")
    segments: list[str] = []
    for seg in inner.split("/") if inner else []:
        if seg == "..":
            if not segments:
                raise ValueError(f"{shown}: '..' goes above the bucket; expected "
                                 f"{scheme}://BUCKET/PREFIX")
            segments.pop()
        elif seg != ".":
            segments.append(seg)
    keys = [k for k, _ in query]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{shown}: a query parameter is given twice; give each once")
    if scheme == "s3":
        opts = dict(query)
        if "endpoint_override" in opts:
            _endpoint(opts["endpoint_override"], opts.get("scheme"), shown)
        elif "scheme" in opts and opts["scheme"] not in ("http", "https"):
            raise ValueError(f"{shown}: scheme={opts['scheme']!r}; expected http or https")
    path = "/" + "/".join(segments) if segments else ""
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def display_uri(uri: str) -> str:
    """A URI as messages show it: its one spelling, without secrets."""
    try:
        return redact(normalize_uri(uri))
    except ValueError:
        return redact(uri)


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
    s3://BUCKET/PREFIX?endpoint_override=http://host:9000 (or AWS_ENDPOINT_URL set), in its
    one spelling (normalize_uri: refused URIs, credentials among them, are a ValueError).
    Credentials come from the environment or the instance profile, never from the URI:
    they would be recorded wherever the URI is (search settings, logs, error lines)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    canonical = normalize_uri(uri)
    if urlsplit(canonical).scheme == "s3" and "endpoint_override=" not in canonical:
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(var):
                _endpoint(os.environ[var], None, f"{display_uri(uri)}: {var}")
                break
    try:  # bounded: pyarrow waits here while another call to the same store hangs
        return answered(lambda: pafs.FileSystem.from_uri(canonical))
    except NoAnswer:
        raise
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ValueError(f"{display_uri(uri)}: not a storage URI that pyarrow can open "
                         f"({redact(' '.join(str(e).split()))})") from None


def bounded(fs: Any) -> Any:
    """`fs` (a pyarrow filesystem) with every call, and every read of a file it opens,
    given up after ANSWER_S (NoAnswer); once one call has not answered, every later one
    fails at once. Why: a reading command (analyze.py, predict, --warm-start) makes many
    calls (a listing, each Parquet file, search.json); a store that answered the first and
    then stopped held each of them for about 100 s, and callers that take an unreadable
    file for a damaged one went on to the next."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    class Handler(pafs.FileSystemHandler):
        def __init__(self, inner: Any):
            self.inner, self.stalled = inner, None

        def call(self, fn: Callable[[], Any]) -> Any:
            if self.stalled is not None:
                raise NoAnswer(str(self.stalled))
            try:
                return answered(fn)
            except NoAnswer as e:
                self.stalled = e
                raise

        def __eq__(self, other: object) -> bool:
            return other is self

        def __ne__(self, other: object) -> bool:
            return other is not self

        def get_type_name(self) -> str:
            return f"bounded-{self.inner.type_name}"

        def normalize_path(self, path: str) -> str:
            return self.inner.normalize_path(path)

        def get_file_info(self, paths: list[str]) -> Any:
            return self.call(lambda: self.inner.get_file_info(paths))

        def get_file_info_selector(self, selector: Any) -> Any:
            return self.call(lambda: self.inner.get_file_info(selector))

        def open_input_file(self, path: str) -> Any:
            return pa.PythonFile(_BoundedReader(self.call(
                lambda: self.inner.open_input_file(path)), self.call), mode="r")

        def open_input_stream(self, path: str) -> Any:
            return self.open_input_file(path)

        def _read_only(self, *args: Any) -> Any:
            raise OSError(errno.EROFS, "opened for reading only")

        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
        delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only

    return pafs.PyFileSystem(Handler(fs))


def stalled(fs: Any) -> NoAnswer | None:
    """The call a bounded() filesystem gave up on, if any."""
    return getattr(getattr(fs, "handler", None), "stalled", None)


class _BoundedReader:
    """A file of a bounded() filesystem: each read in bounded time (seek and tell are local)."""

    def __init__(self, f: Any, call: Callable[[Callable[[], Any]], Any]):
        self._f, self._call, self.closed = f, call, False

    def read(self, n: int | None = -1) -> bytes:
        return self._call(lambda: self._f.read() if n is None or n < 0 else self._f.read(n))

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self.closed = True
        self._f.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


@contextmanager
def local_copy(uri: str, suffix: str = "", max_bytes: int | None = None) -> Iterator[Path]:
    """A file at a URI, copied to a private temporary file for as long as it is needed
    (torch.load and the safe loaders read local regular files only); refused before any
    byte is copied when it is not a file or is larger than `max_bytes`. Every call to the
    store is bounded in time (bounded)."""
    import pyarrow.fs as pafs

    raw, path = open_uri(uri)
    fs = bounded(raw)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        what = "a folder" if info.type == pafs.FileType.Directory else "not there"
        raise OSError(errno.ENOENT, f"{what}; expected a file", display_uri(uri))
    if max_bytes is not None and (info.size or 0) > max_bytes:
        raise ValueError(f"{display_uri(uri)}: {info.size} bytes, more than the {max_bytes} a "
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


NAME_MAX_CHARS = 200  # a folder name, with room for suffixes, under NAME_MAX (255 bytes)
NAME_FORBIDDEN = "/\\\0%#?"  # the name is also a key in a URI: no escapes or queries


def name_problem(name: str) -> str | None:
    """What is wrong with a run or search name, as "it ...", in words (None: nothing)."""
    if not name:
        return "is empty"
    if len(name) > NAME_MAX_CHARS:
        return f"is {len(name)} characters long, over the limit of {NAME_MAX_CHARS}"
    if name in (".", ".."):
        return "names the folder itself or its parent"
    if name != name.strip():
        return "starts or ends with whitespace"
    for i, c in enumerate(name):
        if c in NAME_FORBIDDEN:
            return f"holds {c!r} (character {i + 1}), which a folder name or URI key cannot"
        if not c.isprintable() or not c.isascii():
            return f"holds {c!r} (character {i + 1}), not a printable ASCII character"
    return None


def check_name(name: str, flag: str) -> str:
    """A run or search name becomes one folder (and a key in a URI): refuse what would
    escape or vanish, saying which rule the name breaks."""
    why = name_problem(name)
    if why is not None:
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}..."
        raise ValueError(f"{flag} {shown}: expected a plain folder name (ASCII letters, "
                         f"digits, '-', '_', '.'; 1 to {NAME_MAX_CHARS} characters); it {why}")
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
