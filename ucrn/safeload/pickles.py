"""The restricted, budgeted unpickler for data pickles from third-party mirrors (MulT's,
MMSA's): numpy arrays and plain containers only, and no file can claim more than it holds."""

from __future__ import annotations

import collections
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ucrn.errors import one_line
from ucrn.safeload.files import SafeLoadError, _err, _exc_text, _label, _open_regular, _short
from ucrn.safeload.rebuild import (
    _BIG_READ,
    _NUMPY_CORE,
    NumpyRebuild,
    _ArrayProxy,
    _DtypeProxy,
)

# A pickle is a program. load_pickle runs the pure-Python unpickler with its own table of
# opcodes and hands numpy nothing it did not check (ucrn/safeload/rebuild.py). A small
# file must not claim a huge result: reads are checked against the bytes left in the file
# before anything is allocated, arrays must be backed by bytes the file holds (their total
# is capped by the file size), and the result is measured as the tree its consumers will
# walk (shared references counted each time) before it is returned.

MAX_ITEMS = 10_000_000  # pickle opcodes run, and items in the result as consumers walk it
PICKLE_MAX_DEPTH = 64  # a MulT pickle is dict -> dict -> array
PICKLE_SLACK_BYTES = 1 << 20  # arrays may total the file size plus this


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


_KEY_SCALARS = (str, bytes, float, bool, type(None))
_LEAF_TYPES = frozenset({str, bytes, int, float, bool, complex, type(None)})
_CONTAINERS = frozenset({list, tuple, dict, collections.OrderedDict, set, frozenset})
_IN_PROGRESS = object()

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


class _Unpickler(NumpyRebuild, pickle._Unpickler):  # pure-Python base: its opcodes replaceable
    """Admits numpy arrays (plain dtypes only), numpy scalars and plain containers.

    find_class runs when the pickle names a global, before it can be called, so a malicious
    file is refused before any of its code runs; the globals it admits are this class's own
    checking functions (NumpyRebuild's), never numpy's. REDUCE may call only those; BUILD may
    only finish a dtype or array they started; APPEND/SETITEM work on plain lists/dicts
    only. Each opcode counts against ``max_items`` (so does each object-array item when the
    result is measured), each non-object array's bytes against ``budget``.
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
