"""Search spaces: a small YAML file -> a validated Ray Tune param space.

Validation happens before Ray starts, so a typo in a space file costs a second, not a
cluster start-up: unknown keys, bad ranges and heads that cannot divide d_model are
reported in one line that names the file and the key.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ucrn.train import TrainConfig

DEFAULT_SPACE = Path(__file__).parent / "spaces" / "default.yaml"
KINDS = ("loguniform", "uniform", "int", "choice")
# set by run_search.py from its own flags, never searched
NOT_SEARCHABLE = {"dataset", "data_path", "aligned", "preset", "data_seed", "device", "threads",
                  "num_epochs", "seed"}


class SpaceError(ValueError):
    """A bad search space file; the message is one line naming the file and key."""


def load_space(path: str | Path | None = None) -> dict[str, Any]:
    """Read and validate a space file; returns {name: fixed value or {kind: args}}."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpaceError(f"--space {path}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpaceError(f"--space {path}: cannot read ({type(e).__name__})") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SpaceError(f"--space {path}: malformed YAML{at}") from None
    if not isinstance(spec, dict) or not spec:
        raise SpaceError(f"--space {path}: expected a mapping of parameter names to ranges")
    validate_space(spec, str(path))
    return spec


def validate_space(spec: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(TrainConfig)}
    for name, entry in spec.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpaceError(f"{where}: unknown parameter {name!r}{hint}: the trainer has no such setting")
        if name in NOT_SEARCHABLE:
            raise SpaceError(f"{where}: {name!r} is set by run_search.py flags, not searched")
        if isinstance(entry, dict):
            _check_range(name, entry, where)
    _check_each_value(spec, where)


def _check_range(name: str, entry: dict[str, Any], where: str) -> None:
    if len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise SpaceError(f"{where}: {name}: expected one of {{{', '.join(KINDS)}}}: [...], got {entry}")
    kind, args = next(iter(entry.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {name}: choice needs a non-empty list of values")
        return
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise SpaceError(f"{where}: {name}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise SpaceError(f"{where}: {name}: {kind} range low={low} > high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {name}: loguniform needs positive bounds, got low={low}")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise SpaceError(f"{where}: {name}: int needs integer bounds, got [{low}, {high}]")


def _values(entry: Any) -> list[Any]:
    """Representative values of a parameter: all choices, or the ends of a range."""
    if not isinstance(entry, dict):
        return [entry]
    kind, args = next(iter(entry.items()))
    if kind == "choice":
        return list(args)
    if kind == "int":
        return list(range(int(args[0]), int(args[1]) + 1)) if args[1] - args[0] <= 64 else list(args)
    return list(args)


def _check_each_value(spec: dict[str, Any], where: str) -> None:
    """Every value must be one the trainer accepts; heads must divide every d_model."""
    for name, entry in spec.items():
        for value in _values(entry):
            try:
                TrainConfig.from_dict({name: value}, where=where)
            except ValueError as e:
                if "does not divide" not in str(e):
                    raise SpaceError(f"{where}: {name}: value {value!r} is invalid: "
                                     f"{str(e).split(': ', 1)[-1]}") from None
    heads = _values(spec.get("heads", TrainConfig.heads))
    d_models = _values(spec.get("d_model", TrainConfig.d_model))
    for h, d in itertools.product(heads, d_models):
        if isinstance(h, int) and isinstance(d, int) and h > 0 and d % h:
            raise SpaceError(f"{where}: heads={h} does not divide d_model={d}: "
                             f"choose heads from {[x for x in range(1, d + 1) if d % x == 0]}")


def first_value(entry: Any) -> Any:
    """One valid value of a parameter (for checking a whole config before Ray starts)."""
    return _values(entry)[0]


def searched(spec: dict[str, Any]) -> list[str]:
    """Names of the parameters that vary (not fixed values)."""
    return [k for k, v in spec.items() if isinstance(v, dict)]


def to_tune(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ray Tune param space (imports Ray lazily: validation needs no Ray)."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict):
            out[name] = entry
            continue
        kind, args = next(iter(entry.items()))
        if kind == "loguniform":
            out[name] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "uniform":
            out[name] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "int":
            out[name] = tune.randint(int(args[0]), int(args[1]) + 1)  # tune's high is exclusive
        else:
            out[name] = tune.choice(list(args))
    return out
