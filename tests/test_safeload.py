"""Tests for ucrn.safeload: the damage cases of the security review, a seeded fuzz of the pickle
opcode stream, and the refusals of the JSON/YAML/checkpoint loaders.

Loads that crashed the process before the fix (segfault, 48 GB allocations) run in a child
process with an address-space limit, so a regression fails a test with a message instead of
killing pytest.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import os
import pickle
import pickletools
import random
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ucrn import data as D
from ucrn import safeload as S
from ucrn.safeload import SafeLoadError

ROOT = Path(__file__).resolve().parents[1]
CHILD_MEMORY = 2 << 30  # RLIMIT_AS of the child processes

# numpy's reconstruction functions, found the way numpy 1.x and 2.x both pickle them
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.float32(0).__reduce__()[0]


class _R:
    """Pickles as ``fn(*args)`` then BUILD ``state``: how crafted files are written."""

    def __init__(self, *rv: object) -> None:
        self.rv = rv

    def __reduce__(self):  # noqa: ANN204
        return self.rv


def _dtype(code: str, state: tuple) -> _R:
    """A numpy dtype with a forged __setstate__ state."""
    return _R(np.dtype, (code, False, True), state)


def _array(dtype: object, shape: tuple, data: object) -> _R:
    """A numpy array as numpy pickles it: _reconstruct, then BUILD (version, shape, dtype,
    is_fortran, data)."""
    return _R(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


def _mult(**train: object) -> dict:
    """A tiny MulT-format dict; keyword arguments replace keys of the train split."""
    rng = np.random.default_rng(0)

    def split() -> dict:
        return {
            "text": rng.standard_normal((2, 3, 4)).astype(np.float32),
            "audio": rng.standard_normal((2, 3, 2)).astype(np.float32),
            "vision": rng.standard_normal((2, 3, 2)).astype(np.float32),
            "labels": np.zeros((2, 1, 1), np.float32),
            "id": np.array([[b"vid0", b"0", b"1"], [b"vid1", b"1", b"2"]], dtype=object),
        }

    raw = {s: split() for s in D.SPLITS}
    raw["train"].update(train)
    return raw


# ------------------------------------------------------------------ crafted damage cases

_PLAIN_F4 = (3, "<", None, None, None, -1, -1, 0)
_O_NO_FLAGS = _dtype("O8", (3, "|", None, None, None, -1, -1, 0))  # object, "no refs" flags
_HUGE = (1000, 3_000_000, 4)  # 12e9 float32 = 48 GB


def _nesting() -> object:
    level0 = [0.0] * 1000
    level1 = [level0] * 1000  # pickled as 1000 references to one list
    return [[level1] * 1000] * 2  # 2e9 floats when walked


def _codec_chain() -> object:
    blob: object = b"A"
    for _ in range(36):  # hex doubles the size each time: 64 GB
        blob = _R(codecs.encode, (blob, "hex"))
    return blob


def _cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def _hash_bomb() -> bytes:
    """{((0, 0), (0, 0))...: 1} nested 80 times: tuples do not cache their hash, so inserting
    the key takes 2**80 steps (written as opcodes: the dict cannot even be built here)."""
    key = b"K\x00" + b"2\x86" * 80  # push 0; 80 x (DUP, TUPLE2)
    return b"\x80\x02}" + key + b"K\x01s."


def _shared_buffer() -> list:
    blob = bytes(64 << 10)  # one 64 KB string under 100k arrays: 6.5 GB from a 2 MB file
    dt = _dtype("f4", _PLAIN_F4)
    return [_array(dt, (16 << 10,), blob) for _ in range(100_000)]


def _claim_bytes8() -> bytes:
    """A 30-byte file whose BINBYTES8 claims a terabyte."""
    return b"\x80\x04" + b"\x8e" + struct.pack("<Q", 1 << 40) + b"tiny" + b"."


def _build_on_array() -> bytes:
    """A MulT file whose 'id' is numpy's own _frombuffer result, then given a forged object
    state by a BUILD spliced in after it (the ids would be read from raw pointers)."""
    # float32: the dtype is already in the memo (the features), so the first REDUCE after
    # the _frombuffer global is its own
    marker = _R(_FROMBUFFER, (b"A" * 16, np.dtype(np.float32), (4,), "C"))
    blob = pickle.dumps(_mult(id=marker), protocol=3)
    state = pickletools.optimize(pickle.dumps((1, (2,), _O_NO_FLAGS, False, b"A" * 16),
                                              protocol=3))
    state = _strip(state)[:-1]  # no PROTO, no STOP, no memo use left after optimize()
    ops = list(pickletools.genops(blob))
    at = next(i for i, (op, arg, _) in enumerate(ops)
              if op.name == "GLOBAL" and str(arg).endswith("_frombuffer"))
    reduce_end = next(ops[i + 1][2] for i in range(at, len(ops)) if ops[i][0].name == "REDUCE")
    return blob[:reduce_end] + state + b"b" + blob[reduce_end:]


def _strip(blob: bytes) -> bytes:
    """The opcode stream without PROTO and FRAME, so it can be spliced into another."""
    out = bytearray()
    ops = list(pickletools.genops(blob))
    for i, (op, _arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(blob)
        if op.name not in ("PROTO", "FRAME"):
            out += blob[pos:end]
    return bytes(out)


# (name, the file: raw bytes, or the train keys a MulT dict gets, or a function making either;
#  words its one-line error must hold)
DAMAGE: list[tuple[str, object, tuple[str, ...]]] = [
    ("object-field", {"id": _array(_dtype("V16", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)},
                                                  16, 1, 0)), (2,), b"A" * 32)},
     ("structured",)),
    ("object-field-forged-on-f8", {"id": _array(_dtype("f8", (3, "<", None, ("a",),
                                                            {"a": (np.dtype("O"), 0)}, 8, 8, 0)),
                                                (2,), b"A" * 16)},
     ("structured numpy dtype (fields/names)",)),
    ("field-offset-past-itemsize", {"id": _array(_dtype("i8", (3, "<", None, ("a",),
                                                             {"a": (np.dtype("S64"), 8)}, 8, 8,
                                                             0)), (2,), b"A" * 16)},
     ("structured",)),
    ("structured-dtype", {"text": _array(_dtype("V4", (3, "|", None, ("a",),
                                                      {"a": (np.dtype("<f4"), 0)}, 4, 1, 16)),
                                         (2, 3, 4), bytes(96))},
     ("structured",)),
    ("subarray-dtype", {"text": _array(_dtype("f4", (3, "<", (np.dtype("f4"), (2,)), None, None,
                                                    -1, -1, 0)), (2, 3, 4), bytes(96))},
     ("subarray",)),
    ("custom-itemsize", {"text": _array(_dtype("f4", (3, "<", None, None, None, 4096, 1, 0)),
                                        (2, 3, 4), bytes(96))},
     ("custom item size",)),
    ("object-array-from-raw-bytes", {"id": _array(_O_NO_FLAGS, (2,), b"A" * 16)},
     ("object array", "never raw bytes")),
    ("object-array-via-frombuffer", {"id": _R(_FROMBUFFER, (b"A" * 16, _O_NO_FLAGS, (2,), "C"))},
     ("object array from raw bytes",)),
    ("object-scalar-from-raw-bytes", {"labels": _R(_SCALAR, (_O_NO_FLAGS, b"A" * 8))},
     ("numpy scalar of object dtype",)),
    ("object-items-not-scalars", {"id": _array(_dtype("O8", (3, "|", None, None, None, -1, -1,
                                                            63)), (1,), [[1, 2]])},
     ("item that is a list",)),
    ("48GB-zero-strides-ndarray", {"text": _R(np.ndarray, (_HUGE, np.dtype("f4"), b"abcd", 0,
                                                           (0, 0, 0)))},
     ("calls numpy.ndarray",)),
    ("48GB-reconstruct-uninitialized", {"text": _R(_RECONSTRUCT, (np.ndarray, _HUGE, b"f"))},
     ("_reconstruct",)),
    ("48GB-reconstruct-state", {"text": _array(_dtype("f4", _PLAIN_F4), _HUGE, b"abcd")},
     ("needs 48000000000 bytes", "carries 4")),
    ("48GB-frombuffer", {"text": _R(_FROMBUFFER, (b"abcd", np.dtype("f4"), _HUGE, "C"))},
     ("needs 48000000000 bytes", "carries 4")),
    ("arrays-share-one-buffer", lambda: {"text": _shared_buffer()},
     ("more than the file can back",)),
    ("array-referenced-many-times", {"text": [np.zeros(16 << 10, np.float32)] * 100_000},
     ("shared references", "more than the file can back")),
    ("billion-items-nesting", {"text": _nesting()}, ("expand to more than", "shared references")),
    ("reference-cycle", {"text": _cycle()}, ("contains itself",)),
    ("tuple-hash-bomb", _hash_bomb(), ("dict key",)),
    ("codecs-encode-chain", {"text": _codec_chain()}, ("_codecs.encode", "latin1")),
    ("bool-array-not-0-1", {"labels": _array(_dtype("b1", (3, "|", None, None, None, -1, -1, 0)),
                                             (2, 1, 1), b"\x02\x00")},
     ("bool",)),
    ("bytes8-claims-a-terabyte", _claim_bytes8(), ("reads 1099511627776 bytes",)),
    ("build-on-a-real-array", _build_on_array, ("sets the state of a ndarray",)),
]

_DAMAGE_CHILD = """
import json, sys
from ucrn.data import DataError, load_mult_pickle
for path in sys.argv[1:]:
    print(json.dumps({"start": path}), flush=True)
    try:
        load_mult_pickle(path)
        res = {"path": path, "loaded": True}
    except DataError as exc:
        res = {"path": path, "error": str(exc), "cls": type(exc) is DataError}
    except BaseException as exc:
        res = {"path": path, "other": type(exc).__name__ + ": " + str(exc)[:300]}
    print(json.dumps(res), flush=True)
"""


def _child(code: str, *args: str, timeout: float) -> tuple[int | None, str, str]:
    """Run ``code`` in a fresh interpreter whose address space is capped: (returncode, or None
    if it was killed after ``timeout`` seconds; stdout; stderr)."""
    prelude = ("import resource\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:

        def text(x: object) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else str(x or "")

        return None, text(exc.stdout), text(exc.stderr)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def damage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every crafted file loaded by ucrn.data in a child; a crash is recorded for its case and
    the child restarted for the rest."""
    folder = tmp_path_factory.mktemp("damage")
    paths: dict[str, str] = {}
    for name, make, _ in DAMAGE:
        p = folder / f"{name}.pkl"
        content = make() if callable(make) else make
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(pickle.dumps(_mult(**content), protocol=4))  # type: ignore[arg-type]
        paths[str(p)] = name
    results: dict[str, dict] = {}
    todo = list(paths)
    while todo:
        rc, out, err = _child(_DAMAGE_CHILD, *todo, timeout=30)
        started = None
        for line in out.splitlines():
            rec = json.loads(line)
            if "start" in rec:
                started = rec["start"]
            else:
                results[paths[rec["path"]]] = rec
                started = None
        if rc != 0:
            if started is None:
                pytest.fail(f"damage child failed outside a load: rc={rc}\n{err[-2000:]}")
            results[paths[started]] = {"crash": "hung for 30 s" if rc is None else f"rc={rc}",
                                       "stderr": err[-600:]}
        todo = [p for p in todo if paths[p] not in results]
    for p, name in paths.items():
        results[name]["file"] = p
    return results


@pytest.mark.parametrize("name,needles", [(n, w) for n, _, w in DAMAGE], ids=[n for n, *_ in DAMAGE])
def test_damage_refused_one_line(damage: dict[str, dict], name: str,
                                 needles: tuple[str, ...]) -> None:
    rec = damage[name]
    assert "crash" not in rec, f"{name}: the child died ({rec.get('crash')}; a segfault is " \
                               f"rc=-11): {rec.get('stderr')}"
    assert "other" not in rec, f"{name}: not a DataError: {rec['other']}"
    assert "loaded" not in rec, f"{name}: the crafted file loaded"
    msg = rec["error"]
    assert rec["cls"], "the error must be ucrn.data.DataError itself"
    assert "\n" not in msg and msg.startswith(rec["file"]), msg
    assert "refused to load" in msg or "not a readable pickle" in msg, msg
    for needle in needles:
        assert needle in msg, msg


# ------------------------------------------------------------------ legitimate files


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        assert type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        assert b.size == 0 or b.flags.writeable
        return
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)  # type: ignore[arg-type]
        for k in a:
            _assert_same(a[k], b[k])  # type: ignore[index]
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            _assert_same(x, y)
    else:
        assert a == b, (a, b)


def _everything() -> dict:
    raw = _mult()
    raw["extra"] = {
        "big": np.arange(300_000, dtype="<f8").reshape(1000, 300),  # > 1 MiB: read in place
        "fortran": np.asfortranarray(np.arange(24, dtype=">i4").reshape(2, 3, 4)),
        "transposed": np.arange(24, dtype="f4").reshape(2, 3, 4).transpose(1, 0, 2),
        "strided": np.arange(12, dtype="u2").reshape(3, 4)[:, ::2],
        "bytes": np.array([b"ab", b"c"]), "str": np.array(["x", "yz"]),
        "bool": np.array([True, False]), "half": np.arange(4, dtype="f2"),
        "empty": np.zeros((0, 5), np.float32),
        "objF": np.asfortranarray(np.array([[b"a", 1], [2.5, None]], dtype=object)),
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.str_("ab")],
        "odict": collections.OrderedDict(a=1, b=[1, 2]),
        "misc": (1, "a", None, b"", 2.5), "set": {1, 2}, "frozen": frozenset({"a"}),
    }
    return raw


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_every_protocol_round_trips(tmp_path: Path, proto: int) -> None:
    raw = _everything()
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=proto))
    got = S.load_pickle(path)
    _assert_same(raw, got)
    assert got["extra"]["big"].flags.writeable and got["extra"]["fortran"].flags.f_contiguous
    if proto <= 3:  # numpy 1.x names (GLOBAL is text up to protocol 3)
        path.write_bytes(path.read_bytes().replace(b"numpy._core", b"numpy.core"))
        _assert_same(raw, S.load_pickle(path))


def test_python2_style_latin1_strings(tmp_path: Path) -> None:
    """Python 2 pickles carry array data and ids as str (decoded latin1 by the loader)."""
    data = np.arange(6, dtype="<f4").reshape(2, 3)
    dt = _dtype("f4", _PLAIN_F4)
    obj = {"x": _array(dt, (2, 3), data.tobytes().decode("latin1")),
           "id": _array(_dtype("O8", (3, "|", None, None, None, -1, -1, 63)), (2,), ["a", "b"])}
    path = tmp_path / "py2.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    got = S.load_pickle(path)
    np.testing.assert_array_equal(got["x"], data)
    assert got["x"].flags.writeable and got["id"].tolist() == ["a", "b"]


def test_refusal_is_data_error_through_ucrn_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(_mult(text=_R(np.ndarray, ((4,), np.dtype("f4")))), protocol=4))
    with pytest.raises(D.DataError, match="refused to load") as ei:
        D.load_mult_pickle(path)
    assert type(ei.value) is D.DataError and str(path) in str(ei.value)
    with pytest.raises(SafeLoadError):
        S.load_pickle(path)


def test_check_dense_refuses_zero_and_negative_strides() -> None:
    with open(os.devnull, "rb") as fh:
        up = S._Unpickler(S._Reader(fh, 0, "X"), "X", 1 << 20, 100)
    base = np.zeros(4, np.float32)
    S._check_dense(base.reshape(2, 2).T, up)  # an axis permutation: fine
    for bad in (np.lib.stride_tricks.as_strided(base, (1000,), (0,)), base[::-1], base[::2]):
        with pytest.raises(SafeLoadError, match="strides"):
            S._check_dense(bad, up)


# ------------------------------------------------------------------ the fuzz


_PALETTE = [b"b", b"R", b"a", b"e", b"s", b"u", b"2", b"0", b"1", b"(", b"]", b"}", b")", b"t",
            b".", b"\x81", b"\x85", b"\x86", b"\x87", b"\x94", b"\x90", b"\x91", b"N",
            b"\x88", b"\x89", b"K\x00", b"K\x07", b"J\xff\xff\xff\x7f", b"h\x00", b"h\x05",
            b"i", b"\x8f", b"\x92", b"\x97", b"\x98", b"c"]
_GLOBALS = [("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"), ("collections", "OrderedDict"), ("builtins", "bytes"),
            ("builtins", "set"), ("__builtin__", "frozenset"), ("builtins", "eval")]
_INT_ARGS = {"BININT1": "<B", "BININT2": "<H", "BININT": "<i", "BINPUT": "<B", "BINGET": "<B",
             "LONG_BINPUT": "<I", "LONG_BINGET": "<I", "SHORT_BINBYTES": "<B",
             "SHORT_BINUNICODE": "<B", "SHORT_BINSTRING": "<B", "BINBYTES": "<I",
             "BINUNICODE": "<I", "BINSTRING": "<i", "BINBYTES8": "<Q", "BINUNICODE8": "<Q",
             "BYTEARRAY8": "<Q", "FRAME": "<Q", "LONG1": "<B", "PROTO": "<B"}
_INTERESTING = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, -(2**31), 2**32 - 1, 2**32,
                12_000_000_000, 2**63 - 1, 2**64 - 1, 2**200]


def _encode_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _u(s: str) -> bytes:
    e = s.encode()
    return b"\x8c" + bytes([len(e)]) + e


def _mutate(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of a pickle's opcode stream: (what was done, the new stream)."""
    ops = list(pickletools.genops(blob))
    spans = [(op, arg, pos, ops[i + 1][2] if i + 1 < len(ops) else len(blob))
             for i, (op, arg, pos) in enumerate(ops)]
    b = bytearray(blob)
    kind = rng.choice(["flip", "flips", "truncate", "dup", "drop", "swap", "copy", "insert",
                       "set_int", "int_value", "global"])
    op, arg, pos, end = rng.choice(spans)
    if kind == "flip":
        i = rng.randrange(len(b))
        b[i] ^= rng.randrange(1, 256)
    elif kind == "flips":
        for _ in range(rng.randint(2, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind == "dup":
        b[end:end] = blob[pos:end]
    elif kind == "drop":
        del b[pos:end]
    elif kind == "swap":
        j = rng.randrange(len(spans) - 1)
        (_, _, p1, e1), (_, _, _, e2) = spans[j], spans[j + 1]
        b[p1:e2] = blob[e1:e2] + blob[p1:e1]
    elif kind == "copy":
        _, _, to, _ = rng.choice(spans)
        b[to:to] = blob[pos:end]
    elif kind == "insert":
        b[pos:pos] = rng.choice(_PALETTE)
    elif kind == "set_int" and any(s[0].name in _INT_ARGS for s in spans):
        # a length, memo index, shape number... overwritten in place
        cands = [s for s in spans if s[0].name in _INT_ARGS]
        op, arg, pos, end = rng.choice(cands)
        fmt = _INT_ARGS[op.name]
        size = struct.calcsize(fmt)
        v = rng.choice(_INTERESTING + [int(arg) + 1 if isinstance(arg, int) else 1])
        b[pos + 1:pos + 1 + size] = (v % (1 << (8 * size))).to_bytes(size, "little")
        kind = f"set_int {op.name}={v}"
    elif kind == "int_value" and any(s[0].name in ("BININT1", "BININT2", "BININT", "LONG1",
                                                     "INT", "LONG") for s in spans):
        # an integer (shape, version, ...) re-encoded with a new value
        cands = [s for s in spans
                 if s[0].name in ("BININT1", "BININT2", "BININT", "LONG1", "INT", "LONG")]
        op, arg, pos, end = rng.choice(cands)
        v = rng.choice(_INTERESTING + [-2, 4, 8, 1000])
        b[pos:end] = _encode_int(v) if op.name not in ("INT", "LONG") else f"L{v}\n".encode()
        kind = f"int_value {op.name}={v}"
    elif kind in ("set_int", "int_value"):  # protocol 0 has no binary integers: flip instead
        b[pos] ^= 0x20
    else:  # swap in another global (most allowed ones, one refused)
        cands = [s for s in spans if s[0].name in ("GLOBAL", "STACK_GLOBAL")]
        op, arg, pos, end = rng.choice(cands)
        module, name = rng.choice(_GLOBALS)
        if op.name == "GLOBAL":
            b[pos:end] = f"c{module}\n{name}\n".encode()
        else:  # drop the two names already pushed, push ours
            b[pos:end] = b"00" + _u(module) + _u(name) + b"\x93"
        kind = f"global {module}.{name}"
    return f"{kind} @{pos}", bytes(b)


def _fuzz_bases() -> dict[str, bytes]:
    raw = _mult()
    raw["train"]["extra"] = (np.float32(1.0), collections.OrderedDict(k=b"v"))
    framed = pickle.dumps(raw, protocol=4)
    return {"p0": pickle.dumps(raw, protocol=0), "p2": pickle.dumps(raw, protocol=2),
            "p4": b"\x80\x04" + _strip(framed), "p4framed": framed,
            "p5": b"\x80\x05" + _strip(pickle.dumps(raw, protocol=5))}


def _plain(obj: object, seen: set[int]) -> None:
    """A loaded result holds only real numpy arrays and plain containers (walked as a DAG)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.dtype):
        assert obj.fields is None and obj.kind in "biufSUO", obj
        return
    if type(obj) is np.ndarray:
        assert obj.dtype.fields is None and obj.dtype.kind in "biufSUO", obj.dtype
        assert obj.size == 0 or all(s > 0 for s, d in zip(obj.strides, obj.shape) if d > 1)
        if obj.dtype.kind == "O":
            assert all(type(x) in (str, bytes, int, float, bool, type(None)) for x in obj.flat)
        return
    if isinstance(obj, (np.generic, str, bytes, int, float, type(None))):
        return
    assert type(obj) in (dict, collections.OrderedDict, list, tuple, set, frozenset), type(obj)
    items = [x for kv in obj.items() for x in kv] if isinstance(obj, dict) else obj
    for x in items:  # type: ignore[union-attr]
        _plain(x, seen)


class _Hang(Exception):
    pass


def _fuzz_run(work: str, seed: int, per_base: int) -> None:
    """The fuzz loop (runs in the child): prints a JSON summary; status.txt names the mutation
    in progress, so a crash can be traced to it."""

    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    signal.signal(signal.SIGALRM, alarm)
    rng = random.Random(seed)
    path = Path(work) / "mutant.pkl"
    status = Path(work) / "status.txt"
    counts = collections.Counter()
    failures: list[str] = []
    notes: list[str] = []
    slowest = (0.0, "")
    for base_name, blob in _fuzz_bases().items():
        for i in range(per_base):
            what, mutant = _mutate(blob, rng)
            status.write_text(f"seed={seed} base={base_name} #{i}: {what}")
            path.write_bytes(mutant)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, 5.0)
            try:
                obj = S.load_pickle(path, max_items=200_000)
                _plain(obj, set())
                try:
                    D.from_raw(obj, str(path))
                    counts["loaded_valid"] += 1
                except D.DataError as exc:
                    counts["loaded_invalid"] += 1
                    if "\n" in str(exc):
                        failures.append(f"{base_name} #{i} {what}: multi-line DataError")
                except ValueError as exc:  # the validator's business (ucrn/data/layout.py): reported
                    counts["validator_valueerror"] += 1
                    notes.append(f"{base_name} #{i} {what}: from_raw: {str(exc)[:120]}")
            except SafeLoadError as exc:
                counts["refused"] += 1
                msg = str(exc)
                if "\n" in msg or not msg.startswith(str(path)):
                    failures.append(f"{base_name} #{i} {what}: bad message {msg[:200]!r}")
            except _Hang:
                failures.append(f"{base_name} #{i} {what}: did not finish in 5 s")
            except Exception as exc:  # noqa: BLE001 - the point: report anything else
                failures.append(f"{base_name} #{i} {what}: {type(exc).__name__}: "
                                f"{str(exc)[:200]}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            if dt > slowest[0]:
                slowest = (dt, f"{base_name} #{i} {what}")
    print(json.dumps({"runs": sum(counts.values()) + len(failures), **counts,
                      "failures": failures[:20], "n_failures": len(failures), "notes": notes[:5],
                      "slowest_s": round(slowest[0], 3), "slowest": slowest[1]}))


def test_fuzz_pickle_mutations(tmp_path: Path) -> None:
    """Hundreds of seeded mutations of small valid files (protocols 0, 2, 4, 4 framed, 5): each
    loads or is a one-line refusal; no crash, hang or memory blow-up (the child is capped at
    2 GB and its loop is timed). What loads goes on to from_raw, which must answer with a
    DataError or at least a ValueError (the latter is reported, not failed: ucrn/data/layout.py's
    validator is not this module's)."""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "import test_safeload\n"
            "test_safeload._fuzz_run(sys.argv[1], 20240601, 300)\n")
    t0 = time.perf_counter()
    rc, out, err = _child(code, str(tmp_path), timeout=120)
    took = time.perf_counter() - t0
    status = (tmp_path / "status.txt").read_text() if (tmp_path / "status.txt").exists() else "?"
    died = "hung for 120 s" if rc is None else f"rc={rc}; -11 is a segfault"
    assert rc == 0, f"fuzz child died ({died}) during: {status}\n{err[-2000:]}"
    summary = json.loads(out.strip().splitlines()[-1])
    report = (f"fuzz: {summary['runs']} mutations in {took:.1f}s: "
              f"{summary.get('loaded_valid', 0)} loaded and valid, "
              f"{summary.get('loaded_invalid', 0)} loaded then rejected by from_raw, "
              f"{summary.get('refused', 0)} refused by the loader; slowest "
              f"{summary['slowest_s']}s ({summary['slowest']})")
    if summary.get("validator_valueerror"):
        report += (f"; from_raw raised a plain ValueError (not DataError) "
                   f"{summary['validator_valueerror']} times, e.g. {summary['notes'][0]}")
    print(report)
    assert summary["n_failures"] == 0, report + "\n" + "\n".join(summary["failures"])
    assert summary["runs"] == 1500
    assert summary.get("refused", 0) > 300 and summary.get("loaded_valid", 0) > 100, report


# ------------------------------------------------------------------ every loader: file kinds


@contextlib.contextmanager
def _deadline(seconds: float = 5.0):  # noqa: ANN202
    """Fail instead of blocking forever (open() on a FIFO waits for a writer)."""

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


LOADERS = {
    "pickle": lambda p, **kw: S.load_pickle(p, what="--data_path", **kw),
    "json": lambda p, **kw: S.load_json(p, "--config", **kw),
    "yaml": lambda p, **kw: S.load_yaml(p, "--space", **kw),
    "checkpoint": lambda p, **kw: S.load_checkpoint(p, what="--checkpoint", **kw),
}
PREFIX = {"pickle": "--data_path", "json": "--config", "yaml": "--space",
          "checkpoint": "--checkpoint"}


def _one_line_error(loader: str, path: Path, *needles: str, **kw: object) -> str:
    with _deadline(), pytest.raises(SafeLoadError) as ei:
        LOADERS[loader](path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{PREFIX[loader]} {path}"), msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("loader", list(LOADERS))
def test_fifo_is_refused_without_blocking(tmp_path: Path, loader: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_line_error(loader, fifo, "is a FIFO", "expected a regular")


@pytest.mark.parametrize("loader", list(LOADERS))
def test_directory_missing_and_too_big(tmp_path: Path, loader: str) -> None:
    _one_line_error(loader, tmp_path, "is a directory")
    _one_line_error(loader, tmp_path / "nope", "file not found")
    _one_line_error(loader, tmp_path / "nope" / "deeper", "file not found")
    big = tmp_path / "big"
    big.write_bytes(b" " * 2000)
    _one_line_error(loader, big, "is 2000 bytes, over the 1000-byte limit", max_bytes=1000)


def test_unreadable(tmp_path: Path) -> None:
    """A file without read permission: one line from every loader (as root, which reads any
    file, the loaders run in a child that drops to uid 65534)."""
    p = tmp_path / "secret"
    p.write_bytes(b"{}")
    p.chmod(0)
    code = ("import os, sys, yaml\n"
            "from ucrn import safeload as S\n"  # imported first: nobody cannot read the venv
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "for f in (S.load_pickle, S.load_checkpoint,\n"
            "          lambda p: S.load_json(p, 'x'), lambda p: S.load_yaml(p, 'x')):\n"
            "    try:\n"
            "        f(sys.argv[1])\n"
            "        print('LOADED')\n"
            "    except S.SafeLoadError as exc:\n"
            "        print(exc)\n")
    rc, out, err = _child(code, str(p), timeout=60)
    assert rc == 0, err[-2000:]
    lines = out.splitlines()
    assert len(lines) == 4 and all(str(p) in ln and "permission denied" in ln for ln in lines), out


def test_pickle_truncated_and_junk(tmp_path: Path) -> None:
    blob = pickle.dumps(_mult(), protocol=4)
    for cut in (0, 1, 10, len(blob) // 2, len(blob) - 1):
        p = tmp_path / f"cut{cut}.pkl"
        p.write_bytes(blob[:cut])
        _one_line_error("pickle", p, "not a readable pickle")
    p = tmp_path / "junk.pkl"
    p.write_bytes(b"this is not a pickle at all")
    _one_line_error("pickle", p, "not a readable pickle")


# ------------------------------------------------------------------ JSON


JSON_CASES = [
    ("not-json", '{"a": 1,\n "b": }', "not valid JSON: Expecting value at line 2 column 7"),
    ("not-utf8", b'{"a": "\xff"}', "not UTF-8 text (byte 0xff at offset 7)"),
    ("deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deeper-than-cap", "[" * 65 + "]" * 65, "nested too deeply (the limit is 64 levels)"),
    ("huge-int", '{"a": ' + "9" * 5000 + "}", "integer of 5000 digits"),
    ("list", "[1, 2]", "expected a JSON object (mapping) at the top level, got a JSON array"),
    ("null", "null", "got null"),
    ("empty", "", "is empty, expected a JSON object"),
    ("blank", "  \n", "is empty"),
]


@pytest.mark.parametrize("content,needle", [c[1:] for c in JSON_CASES],
                         ids=[c[0] for c in JSON_CASES])
def test_json_refusals(tmp_path: Path, content: str | bytes, needle: str) -> None:
    p = tmp_path / "cfg.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    _one_line_error("json", p, needle)


def test_json_loads_nan_infinity_and_other_expectations(tmp_path: Path) -> None:
    p = tmp_path / "cfg.json"
    p.write_text('{"lr": NaN, "best": [Infinity, -Infinity, 1, 2.5], "k": "\u00e9"}')
    got = S.load_json(p, "--config")
    assert np.isnan(got["lr"]) and got["best"][:2] == [float("inf"), float("-inf")]
    p.write_text("[1]")
    assert S.load_json(p, "search.json", expect=list) == [1]
    assert S.load_json(p, "search.json", expect=None) == [1]
    p.write_text("\ufeff{}")  # a BOM is accepted
    assert S.load_json(p, "x") == {}


# ------------------------------------------------------------------ YAML


def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"  # 9**9 = 387M strings when walked


YAML_CASES = [
    ("billion-laughs", _laughs(), "refused at line 1: YAML anchor/alias 'l0'"),
    ("alias-only", "a: *x\n", "refused at line 1: YAML anchor/alias 'x'"),
    ("python-tag", "a: !!python/object/apply:os.system ['true']\n", "YAML tag"),
    ("local-tag", "a: !thing 1\n", "YAML tag '!thing'"),
    ("binary", "a: !!binary aGVsbG8=\n", "YAML tag"),
    ("set", "a: !!set {x: null}\n", "YAML tag"),
    ("timestamp", "day: 2024-01-01\n", "a YAML value of type 'timestamp'"),
    ("merge-key", "a:\n  <<: {y: 2}\n", "type 'merge'"),
    ("malformed", "a: [1, 2\nb: 3\n", "malformed YAML at line 2"),
    ("two-documents", "a: 1\n---\nb: 2\n", "malformed YAML at line 2"),
    ("deep", "[" * 200 + "]" * 200, "nested more than 64 levels deep"),
    ("huge-int", "a: " + "9" * 5000 + "\n", "bad YAML value"),
    ("not-utf8", b'a: "\xff"\n', "not UTF-8 text"),
]


@pytest.mark.parametrize("content,needle", [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])
def test_yaml_refusals(tmp_path: Path, content: str | bytes, needle: str) -> None:
    p = tmp_path / "space.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    _one_line_error("yaml", p, needle)


def test_yaml_plain_data_and_the_shipped_spaces(tmp_path: Path) -> None:
    import yaml

    for space in (ROOT / "search" / "spaces").glob("*.yaml"):
        assert S.load_yaml(space, "--space") == yaml.safe_load(space.read_text())
    p = tmp_path / "s.yaml"
    p.write_text("a: {loguniform: [0.0001, 0.01]}\nb: [1, two, true, null, 2.5]\n"
                 "c: !!str 3\n'2024-01-01': x\n")
    assert S.load_yaml(p, "--space", expect=dict) == {
        "a": {"loguniform": [0.0001, 0.01]}, "b": [1, "two", True, None, 2.5], "c": "3",
        "2024-01-01": "x"}
    p.write_text("")
    assert S.load_yaml(p, "--space") is None
    _one_line_error("yaml", p, "expected a YAML object (mapping) at the top level, got an "
                               "empty file", expect=dict)


# ------------------------------------------------------------------ checkpoints


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loads_dicts_only(tmp_path: Path) -> None:
    import torch

    ok = tmp_path / "ok.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, ok)
    got = S.load_checkpoint(ok, map_location=torch.device("cpu"))
    assert got["epoch"] == 3 and torch.equal(got["state_dict"]["w"], torch.ones(2))
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    _one_line_error("checkpoint", lst, "expected a dict (a checkpoint bundle), got list")


def test_checkpoint_corrupt_and_malicious(tmp_path: Path) -> None:
    import torch

    rand = tmp_path / "rand.pt"
    rand.write_bytes(random.Random(0).randbytes(2048))
    _one_line_error("checkpoint", rand, "not a readable checkpoint (truncated or corrupt?)")
    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(100)}, ok)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ok.read_bytes()[:300])
    _one_line_error("checkpoint", cut, "not a readable checkpoint")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _System(marker)}, evil)
    msg = _one_line_error("checkpoint", evil, "refused by torch.load(weights_only=True)")
    assert "system" in msg and "Check the documentation" not in msg, msg
    assert not marker.exists()


def test_checkpoint_zip_bomb_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", bytes(8 << 20))  # 8 MB of zeros, ~8 KB on disk
    assert bomb.stat().st_size < 100_000
    _one_line_error("checkpoint", bomb, "expand to 8388608 bytes, over the 1000000-byte limit",
                    max_bytes=1_000_000)


def test_torch_reason_old_and_new_formats() -> None:
    old = RuntimeError("Weights only load failed. Re-running `torch.load` ... Please file an "
                       "issue: WeightsUnpickler error: Unsupported global: GLOBAL posix.system "
                       "was not an allowed global.\n\nCheck the documentation of torch.load")
    new = RuntimeError("Weights only load failed. In PyTorch 2.6, we changed...\n\n\nTrying to "
                       "load unsupported GLOBAL posix.system whose module posix is blocked.\n\n"
                       "Check the documentation of torch.load to learn more")
    for exc in (old, new):
        reason = S._torch_reason(exc)
        assert reason.startswith("refused by torch.load(weights_only=True): ")
        assert "posix.system" in reason and "Check the documentation" not in reason
    assert S._torch_reason(RuntimeError("PytorchStreamReader failed. More.")) == \
        "PytorchStreamReader failed"


def test_module_imports_numpy_only() -> None:
    code = ("import sys, ucrn.safeload\n"
            "bad = [m for m in ('torch', 'yaml', 'ray') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_stat_first_then_open_nonblocking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FIFO check happens before open(); the open itself is O_NONBLOCK."""
    seen: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, *a: object) -> int:
        seen.append(flags)
        return real_open(path, flags, *a)

    monkeypatch.setattr(S.os, "open", spy)
    p = tmp_path / "c.json"
    p.write_text("{}")
    S.load_json(p, "x")
    assert seen and all(f & os.O_NONBLOCK for f in seen)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    seen.clear()
    with _deadline(), pytest.raises(SafeLoadError):
        S.load_json(fifo, "x")
    assert not seen and stat.S_ISFIFO(os.stat(fifo).st_mode)
