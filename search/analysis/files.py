"""Reading Parquet dataset folders and JSON files, local or remote, one file at a time.

Why file by file: a bad file is named in the one-line error instead of failing the whole
read, and files written by different versions are combined by column union.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ucrn.errors import UsageError, one_line
from ucrn.fileio import answered, open_uri, redact
from ucrn.safeload import load_json

MAX_JSON_BYTES = 16 << 20

__all__ = ["AnalyzeError", "file_info", "filesystem", "one_line"]


class AnalyzeError(UsageError):
    """Something the user must fix in the analysis' input: one line, exit code 2."""


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """Local paths and URIs pyarrow understands (s3://, gs://, ...), same code after."""
    if "://" in path:
        try:
            return open_uri(path)  # credentials in the URI: refused
        except ValueError as e:
            raise AnalyzeError(f"cannot open {e}") from None
        except OSError as e:
            raise AnalyzeError(f"{redact(path)}: cannot open: {one_line(e)}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def file_info(fs: pafs.FileSystem, path: str, shown: str) -> pafs.FileInfo:
    """Bounded in time: a store that never answers is one line after ANSWER_S seconds."""
    try:
        return answered(lambda: fs.get_file_info(path))
    except Exception as e:  # noqa: BLE001
        raise AnalyzeError(f"{redact(shown)}: cannot access: {one_line(e)}") from None


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Union of columns across files (missing = null); pandas when arrow cannot unify."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


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
            raise AnalyzeError(f"{shown}: cannot list: {one_line(e)}") from None
        files = sorted((f.path, shown + f.path[len(path):]) for f in found
                       if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                       and not f.base_name.startswith((".", "_")))
    tables = []
    for file, file_shown in files:
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, not Parquet, unreadable
            raise AnalyzeError(f"cannot read {file_shown}: {type(e).__name__}: "
                               f"{one_line(e)}") from None
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
            return json.loads(fh.read(MAX_JSON_BYTES + 1).decode()), None
    except Exception as e:  # noqa: BLE001 - unreadable or not JSON: noted, not fatal
        return None, f"search.json unreadable ({type(e).__name__})"
