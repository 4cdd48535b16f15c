"""Hardened readers for every file this project takes from outside: data pickles, JSON and YAML
configs, torch checkpoints.

Why this module exists:
- the MulT data pickles come from third-party mirrors. A pickle is a program, and even numpy's
  own reconstruction functions are unsafe on crafted input: a dtype given a forged state can
  hold an object field, or a field past its item size, and numpy then fills the array from
  raw bytes (segfault, heap read). So :func:`load_pickle` runs the pure-Python unpickler with
  its own table of opcodes and hands numpy nothing it did not check: dtypes are rebuilt from a
  validated type code, arrays from byte strings of exactly the size their shape claims;
- a small file must not be able to claim a huge result: reads are checked against the bytes
  left in the file before anything is allocated, arrays must be backed by bytes the file holds
  (their total is capped by the file size), and the result is measured as the tree its
  consumers will walk (shared references counted each time) before it is returned;
- config files and checkpoints get the same care: no hanging on a FIFO, size caps, nesting
  caps, no YAML aliases, ``torch.load(weights_only=True)`` only.

Every refusal is a :class:`SafeLoadError` (a ``ValueError``) whose message is ONE line that
starts with the file (and, when given, the flag or role it came from) and says what was
expected. numpy is the only import at module level: yaml and torch are imported on use.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import stat
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ucrn.errors import one_line

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_ITEMS",
    "MAX_JSON_BYTES",
    "MAX_NESTING",
    "MAX_YAML_BYTES",
    "SafeLoadError",
    "load_checkpoint",
    "load_json",
    "load_pickle",
    "load_yaml",
]

MAX_JSON_BYTES = 16 << 20  # configs and search results are KBs
MAX_YAML_BYTES = 1 << 20  # a search space is a page of text
MAX_CHECKPOINT_BYTES = 4 << 30  # UCRN bundles are MBs; the cap only stops absurd files
MAX_NESTING = 64  # JSON/YAML containers; real configs are 2-4 deep
MAX_ITEMS = 10_000_000  # pickle opcodes run, and items in the result as consumers walk it
PICKLE_MAX_DEPTH = 64  # a MulT pickle is dict -> dict -> array
PICKLE_SLACK_BYTES = 1 << 20  # arrays may total the file size plus this
_BIG_READ = 1 << 20  # byte strings this large are read into a bytearray: arrays then share it
_MAX_NDIM = 32
_MAX_INT_DIGITS = 4300  # CPython's default int/str conversion limit


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


# --------------------------------------------------------------------------------------
# pickles: the restricted, budgeted unpickler
# --------------------------------------------------------------------------------------


class _Reader:
    """The file as the unpickler reads it: a read can ask for no more than the bytes left.

    The pure-Python unpickler allocates what a length prefix claims (``bytearray(n)``, or a
    ``read(n)`` that allocates n); checking n against the bytes left first keeps a 100-byte
    file from claiming a terabyte. Large reads come back as a bytearray so that the array
    built from them can use the memory in place (writable, no second copy).
    """

    def __init__(self, fh: BinaryIO, size: int, label: str) -> None:
        self._fh, self._left, self._size, self._label = fh, size, size, label

    def read(self, n: int) -> bytes | bytearray:
        if n < 0 or n > self._left:
            raise _err(f"{self._label}: not a readable pickle (truncated or corrupt?): at "
                       f"offset {self._size - self._left} it reads {n} bytes but only "
                       f"{self._left} remain")
        if n < _BIG_READ:
            data = self._fh.read(n)
        else:
            data = bytearray(n)
            view, got = memoryview(data), 0
            while got < n:
                k = self._fh.readinto(view[got:])
                if not k:
                    break
                got += k
            view.release()
            if got < n:
                del data[got:]
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._fh.readline()
        self._left -= len(line)
        return line


class _Global:
    """What find_class hands out: an allowed name bound to OUR checking function."""

    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Callable[..., Any] | None) -> None:
        self.name, self.fn = name, fn


class _DtypeProxy:
    """``numpy.dtype(code, align, copy)`` under construction: numpy sees only the checked code."""

    __slots__ = ("built", "kind", "order", "size")

    def __init__(self, kind: str, size: int, order: str) -> None:
        self.kind, self.size, self.order, self.built = kind, size, order, False

    @property
    def itemsize(self) -> int:
        return self.size * 4 if self.kind == "U" else self.size

    @property
    def orderless(self) -> bool:
        """numpy writes '|' (no byte order) for these: one-byte items, S and O."""
        return self.kind in "SOb" or (self.kind in "iuf" and self.size == 1)

    def dtype(self) -> np.dtype:
        code = "O" if self.kind == "O" else f"{self.kind}{self.size}"
        if self.orderless:
            return np.dtype(code)
        return np.dtype((self.order if self.order in ("<", ">") else "=") + code)


class _ArrayProxy:
    """``_reconstruct(ndarray, (0,), 'b')`` waiting for its BUILD: the array is made from the
    checked state, never an uninitialized buffer that numpy's _reconstruct would return."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "O": (8,)}
_TYPECODE = re.compile(r"([<>|=]?)([biufOSU])([0-9]{1,9})?")
_OBJECT_ITEM_TYPES = (str, bytes, int, float, bool, type(None))
_KEY_SCALARS = (str, bytes, float, bool, type(None))
_LEAF_TYPES = frozenset({str, bytes, int, float, bool, complex, type(None)})
_CONTAINERS = frozenset({list, tuple, dict, collections.OrderedDict, set, frozenset})
_IN_PROGRESS = object()
_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"}
_NUMPY_CORE = {
    "numpy.core.multiarray": "multiarray",
    "numpy._core.multiarray": "multiarray",
    "numpy.core.numeric": "numeric",
    "numpy._core.numeric": "numeric",
}
# opcodes numpy arrays and plain containers never need; each can run or build other things
_REFUSED_OPCODES = {
    pickle.INST: "INST (instantiates a class)",
    pickle.OBJ: "OBJ (instantiates a class)",
    pickle.NEWOBJ: "NEWOBJ (instantiates a class)",
    pickle.NEWOBJ_EX: "NEWOBJ_EX (instantiates a class)",
    pickle.EXT1: "EXT1 (extension registry)",
    pickle.EXT2: "EXT2 (extension registry)",
    pickle.EXT4: "EXT4 (extension registry)",
    pickle.PERSID: "PERSID (persistent ids)",
    pickle.BINPERSID: "BINPERSID (persistent ids)",
    pickle.NEXT_BUFFER: "NEXT_BUFFER (out-of-band buffers)",
    pickle.READONLY_BUFFER: "READONLY_BUFFER (out-of-band buffers)",
}


def _key_ok(key: object) -> bool:
    """Keys and set items whose hash and comparison cost is linear in their size.

    A tuple of tuples sharing references hashes in exponential time (tuples do not cache their
    hash), and ints of equal value modulo 2**61-1 collide; neither is in a real file.
    """
    t = type(key)
    if t in _KEY_SCALARS:
        return True
    if t is int:
        return -(1 << 60) < key < (1 << 60)  # type: ignore[operator]
    if t is tuple:
        return len(key) <= 32 and all(type(x) is not tuple and _key_ok(x) for x in key)  # type: ignore[arg-type]
    return False


class _Unpickler(pickle._Unpickler):  # the pure-Python one: its opcode table can be replaced
    """Admits numpy arrays (plain dtypes only), numpy scalars and plain containers.

    find_class runs when the pickle names a global, before it can be called, so a malicious
    file is refused before any of its code runs; the globals it admits are this class's own
    checking functions, never numpy's. REDUCE may call only those; BUILD may only finish a
    dtype or array they started; APPEND/SETITEM work on plain lists/dicts only. Each opcode
    counts against ``max_items`` (so does each object-array item when the result is
    measured), each non-object array's bytes against ``budget``.
    """

    def __init__(self, reader: _Reader, label: str, budget: int, max_items: int) -> None:
        # latin1: numpy arrays pickled under Python 2 carry their data as str
        super().__init__(reader, encoding="latin1")
        self._label, self._budget, self._max_items = label, budget, max_items
        self._ops = 0
        self._bytes = 0
        self._buffers: dict[int, bytearray] = {}  # bytearrays already under an array
        ndarray = _Global("numpy.ndarray", None)
        self._globals: dict[tuple[str, str], _Global] = {
            ("numpy", "ndarray"): ndarray,
            ("numpy", "dtype"): _Global("numpy.dtype", self._g_dtype),
            ("_codecs", "encode"): _Global("_codecs.encode", self._g_encode),
            ("collections", "OrderedDict"): _Global("collections.OrderedDict", self._g_odict),
            ("builtins", "bytes"): _Global("builtins.bytes", self._g_bytes),
            ("__builtin__", "bytes"): _Global("builtins.bytes", self._g_bytes),
        }
        for module in ("builtins", "__builtin__"):  # protocols 0-3 pickle sets this way
            self._globals[(module, "set")] = _Global("builtins.set", self._g_set)
            self._globals[(module, "frozenset")] = _Global("builtins.frozenset",
                                                                     self._g_frozenset)
        for module, sub in _NUMPY_CORE.items():
            if sub == "multiarray":
                self._globals[(module, "_reconstruct")] = _Global(
                    "numpy multiarray._reconstruct", self._g_reconstruct)
                self._globals[(module, "scalar")] = _Global("numpy multiarray.scalar",
                                                            self._g_scalar)
            else:
                self._globals[(module, "_frombuffer")] = _Global("numpy numeric._frombuffer",
                                                                 self._g_frombuffer)
        self._ndarray = ndarray
        base = dict(pickle._Unpickler.dispatch)
        for code, why in _REFUSED_OPCODES.items():
            base[code[0]] = self._refuser(why)
        for code, fn in ((pickle.REDUCE, _Unpickler._op_reduce),
                         (pickle.BUILD, _Unpickler._op_build),
                         (pickle.APPEND, _Unpickler._op_append),
                         (pickle.APPENDS, _Unpickler._op_appends),
                         (pickle.SETITEM, _Unpickler._op_setitem),
                         (pickle.SETITEMS, _Unpickler._op_setitems),
                         (pickle.DICT, _Unpickler._op_dict),
                         (pickle.ADDITEMS, _Unpickler._op_additems),
                         (pickle.FROZENSET, _Unpickler._op_frozenset),
                         (pickle.BYTEARRAY8, _Unpickler._op_bytearray8)):
            base[code[0]] = fn
        self.dispatch = {code: self._counted(fn) for code, fn in base.items()}

    # ---- bookkeeping -----------------------------------------------------------------

    def _refuse(self, what: str) -> SafeLoadError:
        return _err(f"{self._label}: refused to load: {what}")

    def _counted(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def op(unpickler: Any) -> None:
            self._ops += 1
            if self._ops > self._max_items:
                raise self._refuse(f"more than {self._max_items} pickle operations; a data "
                                   f"file needs far fewer (raise max_items if it is genuine)")
            fn(unpickler)

        return op

    def _refuser(self, why: str) -> Callable[[Any], None]:
        def op(unpickler: Any) -> None:
            raise self._refuse(f"the pickle uses opcode {why}; only numpy arrays and plain "
                               f"containers are allowed")

        return op

    def _charge(self, nbytes: int, what: str) -> None:
        self._bytes += nbytes
        if self._bytes > self._budget:
            raise self._refuse(f"{what} would bring the arrays to {self._bytes} bytes, more "
                               f"than the file can back (at most {self._budget} bytes)")

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise self._refuse(f"the pickle names global '{one_line(module)[:100]}."
                               f"{one_line(name)[:100]}'; only numpy arrays and plain "
                               f"containers are allowed")
        return found

    # ---- opcodes -----------------------------------------------------------------------

    def _op_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if type(func) is not _Global or func.fn is None:
            name = func.name if type(func) is _Global else f"a {type(func).__name__}"
            raise self._refuse(f"the pickle calls {name}; only numpy's array, dtype and "
                               f"scalar reconstruction may be called")
        if type(args) is not tuple:
            raise self._refuse(f"{func.name} called with {_short(args)} instead of a tuple")
        stack[-1] = func.fn(*args)

    def _op_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if type(inst) is _DtypeProxy:
            self._dtype_state(inst, state)
        elif type(inst) is _ArrayProxy:
            stack[-1] = self._array_state(inst, state)
        else:
            raise self._refuse(f"the pickle sets the state of a {type(inst).__name__}; only a "
                               f"numpy dtype or array under construction takes state")

    def _list(self) -> list:
        target = self.stack[-1]
        if type(target) is not list:
            raise self._refuse(f"the pickle appends to a {type(target).__name__}; only lists "
                               f"take items")
        return target

    def _op_append(self) -> None:
        value = self.stack.pop()
        self._list().append(value)

    def _op_appends(self) -> None:
        items = self.pop_mark()
        self._list().extend(items)

    def _keys(self, keys: Any) -> None:
        for key in keys:
            if not _key_ok(key):
                raise self._refuse(f"a dict key or set item that is {_short(key)}; only "
                                   f"strings, bytes, numbers and flat tuples of them are allowed")

    def _dict(self) -> dict:
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict):
            raise self._refuse(f"the pickle sets items on a {type(target).__name__}; only "
                               f"dicts take items")
        return target

    def _op_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._dict()
        self._keys((key,))
        target[key] = value

    def _op_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict()
        if len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS with an odd number of items")
        self._keys(items[::2])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _op_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("DICT with an odd number of items")
        self._keys(items[::2])
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def _op_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise self._refuse(f"the pickle adds items to a {type(target).__name__}; only sets "
                               f"take them")
        self._keys(items)
        target.update(items)

    def _op_frozenset(self) -> None:
        items = self.pop_mark()
        self._keys(items)
        self.append(frozenset(items))

    def _op_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        self.append(data if type(data) is bytearray else bytearray(data))

    # ---- checked stand-ins for numpy's reconstruction functions -----------------------

    def _g_dtype(self, code: object, align: object = False, copy: object = True) -> _DtypeProxy:
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or len(code) > 16:
            raise self._refuse(f"numpy.dtype({_short(code)}); only type codes such as 'f4' "
                               f"are allowed")
        m = _TYPECODE.fullmatch(code)
        kind, size = (m.group(2), int(m.group(3) or 0)) if m else ("", 0)
        if kind == "O" and size == 0:
            size = 8
        ok = bool(m) and (size >= 1 if kind in "SU" else size in _NUMERIC_SIZES.get(kind, ()))
        if not ok:
            structured = "a structured (void) " if code.lstrip("<>|=").startswith("V") else ""
            raise self._refuse(f"{structured}numpy dtype {_short(code)}; only plain numeric "
                               f"(bool, int, uint, float), bytes/str (S, U) and object dtypes "
                               f"are allowed")
        if type(align) not in (bool, int) or align or type(copy) not in (bool, int):
            raise self._refuse(f"numpy dtype {code!r} with align={_short(align)}, "
                               f"copy={_short(copy)}")
        if kind in "SU" and size * (4 if kind == "U" else 1) > self._budget:
            raise self._refuse(f"numpy dtype {code!r}: items larger than the file")
        return _DtypeProxy(kind, size, m.group(1) if m else "")

    def _dtype_state(self, proxy: _DtypeProxy, state: object) -> None:
        """numpy's dtype state is (version, byteorder, subarray, names, fields, elsize,
        alignment, flags[, metadata]); only the byte order is taken from it, and only when
        the rest says "a plain dtype"."""
        if proxy.built:
            raise self._refuse("a numpy dtype given its state twice")
        if type(state) is not tuple or len(state) not in (8, 9):
            raise self._refuse(f"a numpy dtype state that is {_short(state)} of "
                               f"{len(state) if isinstance(state, tuple) else '?'} items, "
                               f"not numpy's 8-tuple")
        version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        metadata = len(state) == 9 and state[8] is not None
        if type(version) is not int or version not in (3, 4) or metadata:
            extra = " with metadata (datetime/user dtypes)" if metadata else ""
            raise self._refuse(f"a numpy dtype state of version {_short(version)}{extra}; "
                               f"only plain dtypes are allowed")
        if names is not None or fields is not None:
            raise self._refuse("a structured numpy dtype (fields/names); only plain numeric, "
                               "bytes/str and object dtypes are allowed")
        if subarray is not None:
            raise self._refuse("a numpy dtype with a subarray shape; only plain numeric, "
                               "bytes/str and object dtypes are allowed")
        if type(order) is not str or order not in (("|", "=") if proxy.orderless
                                                   else ("<", ">", "=")):
            raise self._refuse(f"numpy dtype byte order {_short(order)} for kind "
                               f"{proxy.kind!r}{proxy.size}")
        good = type(elsize) is int and type(alignment) is int
        if good and proxy.kind in "SU":
            natural = 4 if proxy.kind == "U" else 1
            good = elsize == proxy.itemsize and alignment in (-1, natural)
        elif good:
            good = elsize == -1 and alignment == -1
        if not good:
            raise self._refuse(f"a numpy dtype with a custom item size or alignment "
                               f"({_short(elsize)}, {_short(alignment)}) for "
                               f"{proxy.kind}{proxy.size}")
        if type(flags) is not int or not 0 <= flags < 1 << 16:
            raise self._refuse(f"numpy dtype flags {_short(flags)}")
        proxy.order, proxy.built = order, True

    def _dtype_of(self, value: object, where: str) -> np.dtype:
        if type(value) is not _DtypeProxy:
            raise self._refuse(f"{where}: dtype is {_short(value)}, not a numpy dtype")
        return value.dtype()

    def _shape(self, value: object, dtype: np.dtype, where: str) -> tuple[int, int]:
        """(elements, bytes) of a checked shape; refuses before anything is allocated."""
        if type(value) is not tuple or len(value) > _MAX_NDIM:
            raise self._refuse(f"{where}: shape {_short(value)} is not a tuple of at most "
                               f"{_MAX_NDIM} sizes")
        count = 1
        for dim in value:
            if type(dim) is not int or dim < 0:
                raise self._refuse(f"{where}: shape has a size {_short(dim)}")
            if dim.bit_length() > 64:
                raise self._refuse(f"{where}: shape has a size of {dim.bit_length()} bits")
            count *= dim
        return count, count * dtype.itemsize

    def _raw(self, raw: object, where: str) -> bytes | bytearray:
        if type(raw) in (bytes, bytearray):
            return raw  # type: ignore[return-value]
        if type(raw) is str:  # Python 2 str, decoded as latin1 by this unpickler
            try:
                return bytearray(raw, "latin1")
            except UnicodeEncodeError:
                raise self._refuse(f"{where}: array data is text beyond latin1") from None
        raise self._refuse(f"{where}: array data is {_short(raw)}, not bytes")

    def _from_bytes(self, buf: bytes | bytearray, dtype: np.dtype, shape: tuple,
                    order: str, where: str) -> np.ndarray:
        """An array over exactly the bytes the file carried, in a contiguous layout."""
        count, nbytes = self._shape(shape, dtype, where)
        if len(buf) != nbytes:
            raise self._refuse(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but "
                               f"the file carries {len(buf)}")
        self._charge(nbytes, where)
        if count == 0:
            return np.empty(shape, dtype=dtype, order="F" if order == "F" else "C")
        if type(buf) is not bytearray or id(buf) in self._buffers:
            buf = bytearray(buf)  # writable, and not shared with another array
        self._buffers[id(buf)] = buf
        flat = np.frombuffer(buf, dtype=dtype)
        if dtype.kind == "b" and int(np.frombuffer(buf, dtype=np.uint8).max()) > 1:
            raise self._refuse(f"{where}: a bool array holding bytes other than 0 and 1")
        return flat.reshape(shape, order="F" if order == "F" else "C")

    def _g_reconstruct(self, subtype: object, shape: object, typecode: object) -> _ArrayProxy:
        if subtype is not self._ndarray:
            raise self._refuse(f"_reconstruct of {_short(subtype)}; only numpy.ndarray is "
                               f"allowed")
        if (type(shape) is not tuple or any(type(d) is not int or d != 0 for d in shape)
                or len(shape) > 1 or type(typecode) not in (str, bytes) or len(typecode) > 8):
            raise self._refuse(f"_reconstruct({_short(shape)}, {_short(typecode)}); numpy "
                               f"writes ((0,), 'b') and sends the data with the state")
        return _ArrayProxy()

    def _array_state(self, proxy: _ArrayProxy, state: object) -> np.ndarray:
        """numpy's ndarray state is ([version,] shape, dtype, is_fortran, data): data is the
        raw bytes, or for object arrays the list of items."""
        where = "numpy array state"
        if proxy.array is not None:
            raise self._refuse("a numpy array given its state twice")
        if type(state) is not tuple or len(state) not in (4, 5):
            raise self._refuse(f"{where} that is {_short(state)}, not numpy's 5-tuple")
        if len(state) == 5:
            if type(state[0]) is not int or state[0] not in (0, 1):
                raise self._refuse(f"{where} of version {_short(state[0])}")
            state = state[1:]
        shape, dtv, fortran, raw = state
        dtype = self._dtype_of(dtv, where)
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise self._refuse(f"{where}: is_fortran is {_short(fortran)}")
        if dtype.kind == "O":
            arr = self._object_array(shape, raw, bool(fortran), dtype)
        else:
            arr = self._from_bytes(self._raw(raw, where), dtype, shape,
                                   "F" if fortran else "C", where)
        _check_dense(arr, self)
        proxy.array = arr
        return arr

    def _object_array(self, shape: object, raw: object, fortran: bool,
                      dtype: np.dtype) -> np.ndarray:
        where = "numpy object array"
        if type(raw) is not list:
            raise self._refuse(f"{where} whose data is {_short(raw)}; numpy pickles object "
                               f"arrays as a list of items, never raw bytes")
        count, _ = self._shape(shape, dtype, where)
        if len(raw) != count:
            raise self._refuse(f"{where}: shape {shape} has {count} items but the list has "
                               f"{len(raw)}")
        # no byte charge: the items are objects the file built, each counted as an operation
        items = list(raw)
        for i, x in enumerate(items):
            if type(x) is bytearray:
                items[i] = bytes(x)
            elif type(x) not in _OBJECT_ITEM_TYPES:
                raise self._refuse(f"{where}: an item that is {_short(x)}; only strings, "
                                   f"bytes and numbers are allowed")
        flat = np.empty(count, dtype=object)
        flat[:] = items
        arr = flat.reshape(shape)
        return np.asfortranarray(arr) if fortran else arr

    def _g_frombuffer(self, buf: object, dtype: object, shape: object, order: object,
                      axis_order: object = None) -> np.ndarray:
        where = "numpy _frombuffer"
        dt = self._dtype_of(dtype, where)
        if dt.kind == "O":
            raise self._refuse(f"{where}: an object array from raw bytes; numpy pickles "
                               f"object arrays as a list of items")
        if type(buf) not in (bytes, bytearray):
            raise self._refuse(f"{where}: data is {_short(buf)}, not bytes")
        if type(order) is not str or order not in ("C", "F", "K"):
            raise self._refuse(f"{where}: order {_short(order)}")
        perm: tuple | None = None
        if order == "K" and axis_order is not None:
            ndim = len(shape) if type(shape) is tuple else -1
            if (type(axis_order) is not tuple or not all(type(a) is int for a in axis_order)
                    or sorted(axis_order) != list(range(ndim))):
                raise self._refuse(f"{where}: axis order {_short(axis_order)} is not a "
                                   f"permutation of the {ndim} axes")
            perm = axis_order
        elif axis_order is not None:
            raise self._refuse(f"{where}: axis order given with order {order!r}")
        arr = self._from_bytes(buf, dt, shape, "F" if order == "F" else "C",  # type: ignore[arg-type]
                               where)
        if perm is not None:
            arr = arr.transpose(perm)
        _check_dense(arr, self)
        return arr

    def _g_scalar(self, dtype: object, obj: object = None) -> np.generic:
        where = "numpy scalar"
        dt = self._dtype_of(dtype, where)
        if dt.kind == "O":
            raise self._refuse(f"{where} of object dtype")
        data = self._raw(obj, where)
        if len(data) != dt.itemsize:
            raise self._refuse(f"{where} of {dt} needs {dt.itemsize} bytes, got {len(data)}")
        if dt.kind == "b" and bytes(data) not in (b"\x00", b"\x01"):
            raise self._refuse(f"{where}: a bool that is neither 0 nor 1")
        self._charge(dt.itemsize, where)
        return np.frombuffer(bytes(data), dtype=dt)[0]

    def _g_encode(self, obj: object, encoding: object = "utf-8",
                  errors: object = "strict") -> bytes | bytearray:
        """Protocol-2 pickles carry bytes as ``_codecs.encode(text, 'latin1')``; any other
        codec (hex, base64, zlib...) or input can expand, or be chained to blow up memory."""
        if (type(obj) is not str or type(encoding) is not str or type(errors) is not str
                or encoding.lower() not in _LATIN1 or errors != "strict"):
            raise self._refuse(f"_codecs.encode({_short(obj)}, {_short(encoding)}); only "
                               f"text to bytes with latin1 is allowed")
        try:
            return bytearray(obj, "latin1") if len(obj) >= _BIG_READ else obj.encode("latin1")
        except UnicodeEncodeError:
            raise self._refuse("_codecs.encode of text beyond latin1") from None

    def _g_odict(self, items: object = ()) -> collections.OrderedDict:
        if type(items) not in (tuple, list) or not all(
                type(p) in (tuple, list) and len(p) == 2 for p in items):  # type: ignore[union-attr]
            raise self._refuse(f"collections.OrderedDict({_short(items)})")
        self._keys(p[0] for p in items)  # type: ignore[union-attr]
        return collections.OrderedDict((p[0], p[1]) for p in items)  # type: ignore[union-attr]

    def _g_set(self, items: object = ()) -> set:
        if type(items) not in (list, tuple):
            raise self._refuse(f"set({_short(items)}); only a list of items is allowed")
        self._keys(items)
        return set(items)

    def _g_frozenset(self, items: object = ()) -> frozenset:
        return frozenset(self._g_set(items))

    def _g_bytes(self, *args: object) -> bytes:
        if args:
            raise self._refuse(f"bytes() with arguments ({_short(args[0])}...); only bytes() "
                               f"is allowed")
        return b""

    # ---- the result ------------------------------------------------------------------

    def measure(self, obj: object, memo: dict[int, Any], depth: int = 0) -> tuple[int, int]:
        """(items, array bytes) of ``obj`` walked as a tree, shared references counted each
        time they are reached, as a consumer walking the result would; work stays linear
        in the distinct containers because each is measured once."""
        t = type(obj)
        if t in _LEAF_TYPES or t is bytearray or t is _DtypeProxy:
            return 1, 0
        if t is _ArrayProxy:
            if obj.array is None:  # type: ignore[union-attr]
                raise self._refuse("a numpy array without its data (no state was given)")
            obj, t = obj.array, np.ndarray  # type: ignore[union-attr]
        if t is np.ndarray:  # object arrays count their items, the others their bytes
            if obj.dtype.kind == "O":  # type: ignore[union-attr]
                return 1 + obj.size, 0  # type: ignore[union-attr]
            return 1, obj.nbytes  # type: ignore[union-attr]
        if isinstance(obj, np.generic):
            return 1, 0
        if t not in _CONTAINERS:
            name = obj.name if t is _Global else t.__name__  # type: ignore[union-attr]
            raise self._refuse(f"a result that holds {name}; only numpy arrays, numbers, "
                               f"strings and plain containers are allowed")
        seen = memo.get(id(obj))
        if seen is _IN_PROGRESS:
            raise self._refuse(f"a {t.__name__} that contains itself (a reference cycle)")
        if seen is not None:
            return seen
        if depth >= PICKLE_MAX_DEPTH:
            raise self._refuse(f"containers nested more than {PICKLE_MAX_DEPTH} deep")
        memo[id(obj)] = _IN_PROGRESS
        children = (x for kv in obj.items() for x in kv) if t in (dict, collections.OrderedDict) \
            else obj  # type: ignore[union-attr]
        items, nbytes = 1, 0
        for child in children:  # type: ignore[union-attr]
            i, b = self.measure(child, memo, depth + 1)
            items, nbytes = items + i, nbytes + b
            if items > self._max_items:
                raise self._refuse(f"nested containers that expand to more than "
                                   f"{self._max_items} items (shared references)")
            if nbytes > self._budget:
                raise self._refuse(f"arrays reached {nbytes} bytes through shared references, "
                                   f"more than the file can back (at most {self._budget} bytes)")
        memo[id(obj)] = (items, nbytes)
        return items, nbytes

    def finish(self, obj: object, done: dict[int, Any]) -> Any:
        """Swap in the real arrays/dtypes for the stand-ins, bytes for large bytearrays."""
        t = type(obj)
        if t is _ArrayProxy:
            return obj.array  # type: ignore[union-attr]
        if t is _DtypeProxy:
            return obj.dtype()  # type: ignore[union-attr]
        if t is bytearray:
            return bytes(obj)  # type: ignore[arg-type]
        if t not in (list, tuple, dict, collections.OrderedDict):
            return obj  # leaves, arrays, sets of hashable scalars
        key = id(obj)
        if key in done:
            return done[key]
        done[key] = obj
        if t is list:
            for i, x in enumerate(obj):  # type: ignore[arg-type]
                y = self.finish(x, done)
                if y is not x:
                    obj[i] = y  # type: ignore[index]
        elif t is tuple:
            new = tuple(self.finish(x, done) for x in obj)  # type: ignore[union-attr]
            if any(a is not b for a, b in zip(new, obj)):  # type: ignore[call-overload]
                done[key] = new
                return new
        else:
            changed = [(k, y) for k, v in obj.items()  # type: ignore[union-attr]
                       if (y := self.finish(v, done)) is not v]
            for k, y in changed:
                obj[k] = y  # type: ignore[index]
        return obj


def _check_dense(arr: np.ndarray, up: _Unpickler) -> None:
    """Positive strides that tile the data exactly once (C, F, or an axis permutation of
    them): no zero strides that repeat 4 bytes into 48 GB, no overlap, no gaps."""
    if arr.size == 0:
        return
    expect = arr.itemsize
    for stride, dim in sorted((s, d) for s, d in zip(arr.strides, arr.shape) if d > 1):
        if stride != expect:
            raise up._refuse(f"a numpy array with strides {arr.strides} for shape "
                             f"{arr.shape}; only contiguous layouts are allowed")
        expect *= dim


def load_pickle(path: str | os.PathLike[str], *, what: str = "", max_items: int = MAX_ITEMS,
                max_bytes: int | None = None) -> object:
    """Load a data pickle (MulT format: dicts of numpy arrays) without trusting it.

    Allowed: numpy arrays of plain dtypes (bool, int, uint, float, S, U, and object arrays of
    strings/bytes/numbers), numpy scalars, dicts, OrderedDicts, lists, tuples, sets, str,
    bytes, numbers; pickled by numpy 1.x (``numpy.core``) or 2.x (``numpy._core``), by
    Python 2 or 3, any protocol. Arrays come back writable and contiguous. Everything else,
    and every file that claims more than it holds, is a one-line :class:`SafeLoadError`.
    """
    label = _label(what, path)
    fh, size = _open_regular(path, label, "pickle", max_bytes)
    budget = size + PICKLE_SLACK_BYTES
    try:
        with fh:
            up = _Unpickler(_Reader(fh, size, label), label, budget, max_items)
            obj = up.load()
        up.measure(obj, {})
        return up.finish(obj, {})
    except SafeLoadError:
        raise
    except MemoryError:
        raise _err(f"{label}: refused to load: ran out of memory while unpickling; the file "
                   f"claims more than this machine can hold") from None
    except RecursionError:
        raise _err(f"{label}: refused to load: nested too deeply to unpickle") from None
    except OSError as exc:
        raise _err(f"{label}: cannot read: {_exc_text(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt: EOFError, UnpicklingError, ...
        raise _err(f"{label}: not a readable pickle (truncated or corrupt?): "
                   f"{_exc_text(exc)}") from None


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


class _IntTooLong(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text) - (text[:1] == "-")
    if digits > _MAX_INT_DIGITS:
        raise _IntTooLong(digits)
    return int(text)


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    for t, name in ((dict, "a JSON object"), (list, "a JSON array"), (str, "a string"),
                    ((int, float), "a number")):
        if isinstance(obj, t):
            return name
    return type(obj).__name__


def _expected(expect: type | tuple[type, ...]) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    names = {dict: "a JSON object (mapping)", list: "a JSON array (list)", str: "a string",
             int: "an integer", float: "a number"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _deeper_than(obj: object, limit: int) -> bool:
    """True if lists/dicts nest more than ``limit`` deep; iterative: no recursion to exhaust."""
    todo = [(obj, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        todo.extend((c, depth + 1) for c in children)
    return False


def load_json(path: str | os.PathLike[str], what: str,
              expect: type | tuple[type, ...] | None = dict, *,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_NESTING) -> Any:
    """Read a JSON file (a user's --config, a search's best_config.json/search.json).

    NaN and Infinity are accepted because the project writes them. ``expect`` is the type(s)
    the top level must have (None: anything). Every problem is one SafeLoadError line that
    starts with ``what`` and the path.
    """
    label = _label(what, path)
    text = _decode_utf8(_read_capped(path, label, "JSON", max_bytes), label, "JSON")
    if not text.strip():
        raise _err(f"{label}: is empty, expected "
                   f"{_expected(expect) if expect is not None else 'JSON'}")
    try:
        obj = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise _err(f"{label}: not valid JSON: {exc.msg} at line {exc.lineno} column "
                   f"{exc.colno}") from None
    except RecursionError:
        raise _err(f"{label}: JSON nested too deeply (the limit is {max_depth} levels)") from None
    except _IntTooLong as exc:
        raise _err(f"{label}: JSON holds an integer of {exc.digits} digits (the limit is "
                   f"{_MAX_INT_DIGITS})") from None
    except (ValueError, TypeError) as exc:
        raise _err(f"{label}: not valid JSON: {_exc_text(exc)}") from None
    if _deeper_than(obj, max_depth):
        raise _err(f"{label}: JSON nested too deeply (the limit is {max_depth} levels)")
    if expect is not None and not isinstance(obj, expect):
        raise _err(f"{label}: expected {_expected(expect)} at the top level, got "
                   f"{_json_type(obj)}")
    return obj


# --------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------

_YAML_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                             for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_yaml_loader: type | None = None


def _yaml_loader_class() -> type:
    """A SafeLoader that composes only plain scalars, sequences and mappings (built on first
    use so that importing this module does not import yaml)."""
    global _yaml_loader
    if _yaml_loader is not None:
        return _yaml_loader
    import yaml

    class StrictLoader(yaml.SafeLoader):
        label = ""
        max_depth = MAX_NESTING

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0

        def _refuse(self, what: str, mark: Any) -> SafeLoadError:
            at = f" at line {mark.line + 1}" if mark is not None else ""
            return _err(f"{self.label}: refused{at}: {what}")

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            mark = getattr(event, "start_mark", None)
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise self._refuse(f"YAML anchor/alias {_short(event.anchor)}; anchors and "
                                   f"aliases are not allowed (they can expand exponentially)",
                                   mark)
            tag = getattr(event, "tag", None)
            if tag not in (None, "!") and tag not in _YAML_PLAIN_TAGS:
                raise self._refuse(f"YAML tag {_short(tag)}; only plain strings, numbers, "
                                   f"booleans, null, lists and mappings are allowed", mark)
            self._depth += 1
            if self._depth > self.max_depth:
                raise self._refuse(f"YAML nested more than {self.max_depth} levels deep", mark)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if node.tag not in _YAML_PLAIN_TAGS:
                raise self._refuse(f"a YAML value of type {_short(node.tag.rsplit(':', 1)[-1])} "
                                   f"({_short(getattr(node, 'value', ''))}); only plain "
                                   f"strings, numbers, booleans, null, lists and mappings are "
                                   f"allowed (quote it to make it a string)", mark)
            return node

    _yaml_loader = StrictLoader
    return StrictLoader


def load_yaml(path: str | os.PathLike[str], what: str,
              expect: type | tuple[type, ...] | None = None, *,
              max_bytes: int = MAX_YAML_BYTES, max_depth: int = MAX_NESTING) -> Any:
    """Read a YAML file (the search space) as plain data: no anchors/aliases ("billion
    laughs" expands exponentially when walked), no tags beyond plain scalars, sequences and
    mappings, capped size and nesting. An empty file is None (unless ``expect`` says
    otherwise). Every problem is one SafeLoadError line starting with ``what`` and the path.
    """
    import yaml

    label = _label(what, path)
    text = _decode_utf8(_read_capped(path, label, "YAML", max_bytes), label, "YAML")
    loader = _yaml_loader_class()(text)
    loader.label, loader.max_depth = label, max_depth
    try:
        obj = loader.get_single_data()
    except SafeLoadError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or type(exc).__name__
        raise _err(f"{label}: malformed YAML{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise _err(f"{label}: malformed YAML: {_exc_text(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. an int past 4300 digits
        raise _err(f"{label}: bad YAML value: {_exc_text(exc)}") from None
    finally:
        loader.dispose()
    if expect is not None and not isinstance(obj, expect):
        got = "an empty file" if obj is None else _json_type(obj).replace("JSON ", "YAML ")
        raise _err(f"{label}: expected {_expected(expect).replace('JSON ', 'YAML ')} at the "
                   f"top level, got {got}")
    return obj


# --------------------------------------------------------------------------------------
# torch checkpoints
# --------------------------------------------------------------------------------------


def _torch_reason(exc: BaseException) -> str:
    """The informative part of torch.load's multi-paragraph messages.

    "Weights only load failed" is followed by boilerplate about the weights_only default; the
    reason is after "WeightsUnpickler error:" (torch <= 2.5) or in the paragraphs after the
    first (later versions), before "Check the documentation".
    """
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:
        detail = msg.split("WeightsUnpickler error:", 1)[1]
    elif msg.startswith("Weights only load failed"):
        detail = " ".join(re.split(r"\n\s*\n", msg)[1:]) or msg
    else:
        return one_line(msg).split(". ")[0][:300] or type(exc).__name__
    detail = one_line(detail.split("Check the documentation")[0])
    return f"refused by torch.load(weights_only=True): {detail[:300]}"


def _check_zip(fh: BinaryIO, label: str, max_bytes: int) -> None:
    """torch.save writes a zip; its entries' declared sizes must stay under the cap (a small
    compressed archive could otherwise inflate to any size)."""
    try:
        if not zipfile.is_zipfile(fh):
            return  # the legacy format, or junk: torch.load says which
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _err(f"{label}: not a readable checkpoint (truncated or corrupt?): "
                   f"{_exc_text(exc)}") from None
    finally:
        fh.seek(0)
    if total > max_bytes:
        raise _err(f"{label}: refused: its archive entries expand to {total} bytes, over the "
                   f"{max_bytes}-byte limit for a checkpoint")


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *,
                    what: str = "checkpoint",
                    max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """``torch.load(weights_only=True)`` of a regular file within the size cap; the result
    must be a dict (a bundle or a resume state). Every problem is one SafeLoadError line."""
    label = _label(what, path)
    fh, _ = _open_regular(path, label, "checkpoint", max_bytes)
    with fh:
        _check_zip(fh, label, max_bytes)
        import torch

        try:
            obj = torch.load(fh, weights_only=True, map_location=map_location)
        except MemoryError:
            raise _err(f"{label}: refused: ran out of memory loading the checkpoint") from None
        except Exception as exc:  # noqa: BLE001 - truncated, random bytes, not a torch file
            raise _err(f"{label}: not a readable checkpoint (truncated or corrupt?): "
                       f"{type(exc).__name__}: {_torch_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise _err(f"{label}: expected a dict (a checkpoint bundle), got {type(obj).__name__}")
    return obj

