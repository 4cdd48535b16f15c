"""What kind each searched parameter is: the search's own space says; values only guess.

Why: a `uniform` dropout whose values span a decade looks log-scaled, and `choice`
heads look like an integer range, when inferred from values. search.json's `space`
(name -> fixed value or {kind: args}, see search/spaces/default.yaml) is what the search
sampled from, so it decides the Optuna distribution, the best-region table and the plot
axes. search.json may be old, edited or broken: every entry is checked, and what cannot
be used is named in a note and inferred from the values instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from search.schema import SPACE_KINDS

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ParamKind:
    name: str
    numeric: bool
    log: bool = False
    integer: bool = False
    choices: tuple = ()
    bounds: tuple[float, float] | None = None  # the space's range of a numeric parameter
    source: str = "values"  # "space" (search.json) or "values" (inferred)


def py(v: Any) -> Any:
    """numpy scalars -> plain Python (Optuna's distributions accept only those)."""
    return v.item() if isinstance(v, np.generic) else v


def parse_space(meta: Any) -> tuple[dict[str, ParamKind], list[str]]:
    """The searched parameters' kinds from search.json's content, and notes on what was
    unusable. Fixed values (not searched) are skipped."""
    inferred = "parameter kinds are inferred from values"
    if not isinstance(meta, dict):
        return {}, [f"search.json is not a JSON object: {inferred}"]
    space = meta.get("space")
    if not isinstance(space, dict):
        return {}, [f"search.json has no space mapping: {inferred}"]
    kinds, notes = {}, []
    for name, entry in space.items():
        if not isinstance(entry, dict):
            continue  # a fixed value
        kind = _entry_kind(str(name), entry)
        if kind is None:
            notes.append(f"search.json: space entry {name!r} is not one of "
                         f"{{{', '.join(SPACE_KINDS)}}}: [...] ({_short(entry)}): "
                         f"its kind is inferred from values")
        else:
            kinds[str(name)] = kind
    return kinds, notes


def _short(x: Any) -> str:
    text = " ".join(repr(x).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_kind(name: str, entry: dict) -> ParamKind | None:
    if len(entry) != 1:
        return None
    kind, args = next(iter(entry.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args or not all(isinstance(a, _SCALARS)
                                                             for a in args):
            return None
        return ParamKind(name, False, choices=tuple(dict.fromkeys(args)), source="space")
    if kind not in SPACE_KINDS or not isinstance(args, list) or len(args) != 2:
        return None
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
               for a in args):
        return None
    lo, hi = float(args[0]), float(args[1])
    if lo > hi or (kind == "loguniform" and lo <= 0):
        return None
    return ParamKind(name, True, log=kind == "loguniform", integer=kind == "int",
                     bounds=(lo, hi), source="space")


def param_kind(values: pd.Series, name: str, space: dict[str, ParamKind] | None = None
               ) -> ParamKind:
    """The space's kind of `name` when it has one that fits the values; else inferred."""
    spec = (space or {}).get(name)
    v = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
    if spec is not None and not spec.numeric:
        seen = sorted({py(c) for c in v} - set(spec.choices), key=lambda c: (str(type(c)), c))
        return ParamKind(name, False, choices=spec.choices + tuple(seen), source="space")
    if spec is not None and numeric:
        return spec
    return infer_kind(values, name)


def infer_kind(values: pd.Series, name: str) -> ParamKind:
    """Numeric -> int/float (log when all > 0 and spanning more than a decade); else
    categorical. Only for parameters the space does not describe."""
    v = values.dropna()
    if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
        x = v.astype(float)
        # int columns with nulls arrive as float: whole numbers plus a gap mean int
        integer = pd.api.types.is_integer_dtype(v) or bool(
            np.all(np.mod(x, 1) == 0) and values.isna().any())
        log = bool(len(x) and (x > 0).all() and x.max() / x.min() > 10)
        return ParamKind(name, True, log=log, integer=integer)
    choices = tuple(sorted({py(c) for c in v}, key=lambda c: (str(type(c)), c)))
    return ParamKind(name, False, choices=choices)


def kind_text(kind: ParamKind) -> str:
    """int, float, float (log) or categorical, as the best-region table shows it."""
    if not kind.numeric:
        return "categorical"
    return ("int" if kind.integer else "float") + (" (log)" if kind.log else "")
