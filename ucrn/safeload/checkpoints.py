"""Torch checkpoints (model bundles, resume states) read with torch.load(weights_only=True)
only, from a regular file within the size cap whose zip entries cannot inflate past it."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from typing import Any, BinaryIO

from ucrn.errors import one_line
from ucrn.safeload.files import _err, _exc_text, _label, _open_regular

MAX_CHECKPOINT_BYTES = 4 << 30  # UCRN bundles are MBs; the cap only stops absurd files


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


def _check_zip(fh: BinaryIO, label: str, max_bytes: int) -> bool:
    """torch.save writes a zip; its entries' declared sizes must stay under the cap (a small
    compressed archive could otherwise inflate to any size). Whether it is a zip."""
    try:
        if not zipfile.is_zipfile(fh):
            return False  # the legacy format, or junk: torch.load says which
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
    return True


# opcodes that only pickle protocols 4 and 5 write (FRAME, MEMOIZE, SHORT_BINUNICODE...),
# which torch's weights-only unpickler does not read (torch.save's default protocol is 2)
PROTOCOL_4_OPCODES = set(range(0x8C, 0x99))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *,
                    what: str = "checkpoint",
                    max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """``torch.load(weights_only=True)`` of a regular file within the size cap; the result
    must be a dict (a bundle or a resume state). Every problem is one SafeLoadError line."""
    label = _label(what, path)
    fh, _ = _open_regular(path, label, "checkpoint", max_bytes)
    with fh:
        is_zip = _check_zip(fh, label, max_bytes)
        import torch

        # torch warns about what it finds in junk (e.g. "Detected pickle protocol 167") before
        # it fails: kept back, so that a bad file is the one line below; a load that works
        # passes its warnings on
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                obj = torch.load(fh, weights_only=True, map_location=map_location)
            except MemoryError:
                raise _err(f"{label}: refused: ran out of memory loading the checkpoint") from None
            except Exception as exc:  # noqa: BLE001 - truncated, random bytes, not a torch file
                reason = _torch_reason(exc)
                opcode = re.search(r"Unsupported operand (\d+)", reason)
                if is_zip and opcode and int(opcode.group(1)) in PROTOCOL_4_OPCODES:
                    # torch's own archive, its pickle of a protocol the safe unpickler lacks
                    raise _err(f"{label}: not loadable safely: it uses pickle opcode "
                               f"{opcode.group(1)}, which torch.load(weights_only=True) does "
                               "not read (saved with another pickle_protocol? torch.save's "
                               "default, 2, loads)") from None
                raise _err(f"{label}: not a readable checkpoint (truncated or corrupt?): "
                           f"{type(exc).__name__}: {reason}") from None
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(obj, dict):
        raise _err(f"{label}: expected a dict (a checkpoint bundle), got {type(obj).__name__}")
    return obj

