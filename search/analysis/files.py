"""Reading Parquet dataset folders and JSON files, local or remote, one file at a time.

Why file by file: a bad file is named in the one-line error instead of failing the whole
read, and files written by different versions are combined by column union.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from search.schema import file_key
from ucrn.errors import UsageError, one_line
from ucrn.fileio import (
    NoAnswer,
    answered,
    bounded,
    display_uri,
    is_uri,
    local_path,
    open_uri,
    redact,
)
from ucrn.safeload import load_json
from ucrn.safeload.textfiles import parse_json

MAX_JSON_BYTES = 16 << 20

__all__ = ["AnalyzeError", "file_info", "filesystem", "one_line"]


class AnalyzeError(UsageError):
    """Something the user must fix in the analysis' input: one line, exit code 2."""


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """Local paths and URIs pyarrow understands (s3://, gs://, ...), same code after. A
    URI's every call is bounded in time (ucrn.fileio.bounded): a store that stops
    answering part way (a listing, a Parquet file, search.json) is one line after
    ANSWER_S, not one wait of about 100 s per file."""
    if is_uri(path):
        try:
            fs, root = open_uri(path)  # credentials in the URI: refused
        except ValueError as e:
            raise AnalyzeError(f"cannot open {e}") from None
        except OSError as e:
            raise AnalyzeError(f"{display_uri(path)}: cannot open: {redact(one_line(e))}"
                               ) from None
        return bounded(fs), root
    try:
        local = local_path(path)  # file:///PATH and its other spellings
    except ValueError as e:
        raise AnalyzeError(str(e)) from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def file_info(fs: pafs.FileSystem, path: str, shown: str) -> pafs.FileInfo:
    """Bounded in time: a store that never answers is one line after ANSWER_S seconds."""
    try:
        return answered(lambda: fs.get_file_info(path))
    except Exception as e:  # noqa: BLE001
        raise AnalyzeError(f"{redact(shown)}: cannot access: {redact(one_line(e))}") from None


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Union of columns across files (missing = null); pandas when arrow cannot unify."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def read_files(fs: pafs.FileSystem, path: str, shown: str
               ) -> tuple[dict[str, pa.Table | str], dict[str, float]] | None:
    """Each file of a Parquet dataset folder by its name without .parquet: its table, or
    why it cannot be read (search/schema.py check_results judges both); and each file's
    modification time. None when the folder is absent. A single file (not what the writer
    makes) is split by trial_id, one table per trial, as the writer would have."""
    info = file_info(fs, path, shown)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        try:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except Exception as e:  # noqa: BLE001
            raise AnalyzeError(f"{redact(shown)}: cannot list: {redact(one_line(e))}") from None
        found = [f for f in found if f.type == pafs.FileType.File
                 and f.base_name.endswith(".parquet") and not f.base_name.startswith((".", "_"))]
    tables: dict[str, pa.Table | str] = {}
    mtimes: dict[str, float] = {}
    for f in sorted(found, key=lambda f: f.path):
        key = f.path[len(path):].strip("/").removesuffix(".parquet") or ""
        mtime = f.mtime.timestamp() if f.mtime is not None else 0.0
        try:
            table = pq.read_table(f.path, filesystem=fs)
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, not Parquet, unreadable
            if isinstance(e, NoAnswer):  # not a damaged file: the store stopped answering
                raise AnalyzeError(f"{redact(shown)}: {e}") from None
            tables[key] = f"was unreadable ({type(e).__name__}: {redact(one_line(e))[:120]})"
            mtimes[key] = mtime
            continue
        if key or "trial_id" not in table.column_names:
            tables[key], mtimes[key] = table, mtime
            continue
        for tid in dict.fromkeys(table.column("trial_id").to_pylist()):
            part = table.filter(pc.equal(table.column("trial_id"), tid)) \
                if tid is not None else table.filter(table.column("trial_id").is_null())
            tables[file_key(str(tid))], mtimes[file_key(str(tid))] = part, mtime
    return tables, mtimes


def concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Tables of files written by different versions as one frame (the union of columns)."""
    return _concat(tables) if tables else pd.DataFrame()


def read_dataset(fs: pafs.FileSystem, path: str, shown: str) -> pd.DataFrame | None:
    """A Parquet dataset folder (or single file) as one frame; None when absent.

    Hidden and underscore files (temporary files of the atomic writer, _SUCCESS) are
    skipped.
    """
    info = file_info(fs, path, shown)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        files = [(path, shown)]
    else:
        try:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except Exception as e:  # noqa: BLE001
            raise AnalyzeError(f"{redact(shown)}: cannot list: {redact(one_line(e))}") from None
        files = sorted((f.path, shown + f.path[len(path):]) for f in found
                       if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                       and not f.base_name.startswith((".", "_")))
    tables = []
    for file, file_shown in files:
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, not Parquet, unreadable
            raise AnalyzeError(f"cannot read {redact(file_shown)}: {type(e).__name__}: "
                               f"{redact(one_line(e))}") from None
    return _concat(tables) if tables else pd.DataFrame()


def read_json(fs: pafs.FileSystem, path: str) -> tuple[Any, str | None]:
    """search.json's content (anything JSON), or None and why not. It is optional: the
    Parquet files suffice, the space only makes parameter kinds exact."""
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None, "no search.json"
        if isinstance(fs, pafs.LocalFileSystem):  # a FIFO or /dev/zero must not hang us
            return load_json(path, "search.json", expect=None), None
        if info.type != pafs.FileType.File or (info.size or 0) > MAX_JSON_BYTES:
            return None, "search.json is not a JSON file of a sensible size"
        with fs.open_input_stream(path) as fh:
            return parse_json(fh.read(MAX_JSON_BYTES + 1).decode(), "search.json", None), None
    except NoAnswer as e:  # not a damaged file: the store stopped answering
        raise AnalyzeError(f"{redact(path)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - unreadable or not JSON: noted, not fatal
        return None, f"search.json unreadable ({type(e).__name__})"
