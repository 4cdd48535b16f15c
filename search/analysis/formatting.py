"""Cell text and tables as plain text or markdown: one formatting rule for every output."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

import search.schema as schema


def isnull(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def fmt(v: Any, col: str = "") -> str:
    """Readable cell text: metrics to 4 decimals, integers as integers, small floats in 3 s.f."""
    if isnull(v):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if col in schema.METRICS or col.startswith(schema.TEST_PREFIX) or col == "value":
            return f"{v:.4f}"
        if col == "importance":
            return f"{v:.3f}"
        if v.is_integer() and abs(v) < 1e9:
            return str(int(v))
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4g}"
    return str(v)


def format_frame(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: [fmt(v, str(c)) for v in df[c]] for c in df.columns})


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    f = format_frame(df)
    esc = [[str(x).replace("|", "\\|") for x in row] for row in f.itertuples(index=False)]
    head = "| " + " | ".join(map(str, f.columns)) + " |"
    rule = "|" + "|".join("---" for _ in f.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in esc)])


def text_table(df: pd.DataFrame) -> str:
    return "(none)" if df.empty else format_frame(df).to_string(index=False)
