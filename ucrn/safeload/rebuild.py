"""What the globals a data pickle may name build, each from checked parts: numpy dtypes,
arrays and scalars (never numpy's own reconstruction), bytes, sets and OrderedDicts."""

from __future__ import annotations

import collections
import re

import numpy as np

from ucrn.safeload.files import _short

# numpy's own reconstruction functions are unsafe on crafted input: a dtype given a forged
# state can hold an object field, or a field past its item size, and numpy then fills the
# array from raw bytes (segfault, heap read). So dtypes are rebuilt here from a validated
# type code, arrays from byte strings of exactly the size their shape claims. The
# unpickler (ucrn/safeload/pickles.py) hands out these methods as the allowed globals.

_BIG_READ = 1 << 20  # byte strings this large are read into a bytearray: arrays then share it
_MAX_NDIM = 32


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
_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"}
_NUMPY_CORE = {
    "numpy.core.multiarray": "multiarray",
    "numpy._core.multiarray": "multiarray",
    "numpy.core.numeric": "numeric",
    "numpy._core.numeric": "numeric",
}


class NumpyRebuild:
    """The checked stand-ins for numpy's reconstruction functions (and a few builtins),
    mixed into the unpickler, which provides _refuse, _charge, _keys, _budget, _buffers
    (bytearrays already under an array) and _ndarray (the numpy.ndarray global)."""

    _budget: int
    _buffers: dict[int, bytearray]
    _ndarray: object

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


def _check_dense(arr: np.ndarray, up: NumpyRebuild) -> None:
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
