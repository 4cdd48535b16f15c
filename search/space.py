"""Search spaces: a small YAML file -> a validated Ray Tune param space.

Validation happens before Ray starts, so a typo in a space file costs a second, not a
cluster start-up. Every value a sampler can draw must be one the trainer accepts: each
choice and each integer of an `int` range is checked, a `uniform`/`loguniform` range at
both ends (every rule on one float setting is an interval, so its ends decide), and every
pair of settings' values together (the trainer's cross-setting rules, such as heads
dividing d_model, involve two settings at a time), all on top of the run's fixed flags.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from ucrn.config import TrainConfig, field_type

DEFAULT_SPACE = Path(__file__).parent / "spaces" / "default.yaml"
KINDS = ("loguniform", "uniform", "int", "choice")
# set by run_search.py from its own flags, never searched
NOT_SEARCHABLE = {"dataset", "data_path", "data_format", "aligned", "target", "preset",
                  "data_seed", "device", "threads", "num_epochs", "seed"}
MAX_INT_VALUES = 10_000  # an int range wider than this cannot be checked value by value
MAX_CHECKS = 200_000  # (about 20 s); a space needing more pairs is refused, not half-checked


class SpaceError(ValueError):
    """A bad search space file; the message is one line naming the file and key."""


def load_space(path: str | Path | None = None, base: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Read and validate a space file against the run's fixed settings `base`;
    returns {name: fixed value or {kind: args}}."""
    from ucrn.safeload import load_yaml

    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        spec = load_yaml(path, "--space")
    except ValueError as e:
        raise SpaceError(str(e)) from None
    if not isinstance(spec, dict) or not spec:
        raise SpaceError(f"--space {path}: expected a mapping of parameter names to ranges")
    validate_space(spec, f"--space {path}", base or {})
    return spec


def validate_space(spec: dict[str, Any], where: str, base: dict[str, Any]) -> None:
    known = {f.name: f for f in fields(TrainConfig)}
    for name, entry in spec.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpaceError(f"{where}: unknown parameter {name!r}{hint}: the trainer has no "
                             f"such setting")
        if name in NOT_SEARCHABLE:
            raise SpaceError(f"{where}: {name!r} is set by run_search.py flags, not searched")
        if isinstance(entry, dict):
            _check_range(name, entry, where, field_type(known[name]))
    _check_values(spec, where, base)


def _check_range(name: str, entry: dict[str, Any], where: str, kind: type) -> None:
    if len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise SpaceError(f"{where}: {name}: expected one of {{{', '.join(KINDS)}}}: [...], "
                         f"got {entry}")
    dist, args = next(iter(entry.items()))
    if dist == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {name}: choice needs a non-empty list of values")
        return
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        hint = ""
        if isinstance(args, list) and any(isinstance(a, str) and _numeric(a) for a in args):
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
        raise SpaceError(f"{where}: {name}: {dist} needs [low, high] numbers, got {args!r}{hint}")
    if dist in ("uniform", "loguniform") and kind is not float:
        raise SpaceError(f"{where}: {name}: {dist} draws fractional numbers but {name} is "
                         f"{kind.__name__}; use int: [low, high] or choice: [...]")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise SpaceError(f"{where}: {name}: {dist} range low={low} > high={high}")
    if dist == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {name}: loguniform needs positive bounds, got low={low}")
    if dist == "int":
        if int(low) != low or int(high) != high:
            raise SpaceError(f"{where}: {name}: int needs integer bounds, got [{low}, {high}]")
        if high - low + 1 > MAX_INT_VALUES:
            raise SpaceError(f"{where}: {name}: int range [{low}, {high}] has more than "
                             f"{MAX_INT_VALUES} values to check; narrow it or use choice")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def values(entry: Any) -> list[Any]:
    """Every value a sampler can draw from an entry (a continuous range: its two ends)."""
    if not isinstance(entry, dict):
        return [entry]
    dist, args = next(iter(entry.items()))
    if dist == "choice":
        return list(args)
    if dist == "int":
        return list(range(int(args[0]), int(args[1]) + 1))
    return list(args)


def _check_values(spec: dict[str, Any], where: str, base: dict[str, Any]) -> None:
    """Each value alone, then each pair of settings' values, on top of `base`."""
    options = {name: values(entry) for name, entry in spec.items()}
    first = {name: vals[0] for name, vals in options.items()}
    checks = sum(len(v) for v in options.values()) + sum(
        len(options[a]) * len(options[b]) for a, b in itertools.combinations(options, 2))
    if checks > MAX_CHECKS:
        widest = sorted(options, key=lambda n: -len(options[n]))[:2]
        raise SpaceError(f"{where}: {checks} value combinations to check (more than "
                         f"{MAX_CHECKS}); narrow the widest ranges: {', '.join(widest)}")
    for name, vals in options.items():
        for value in vals:
            _check_config({**base, **first, name: value}, where, {name: value})
    for a, b in itertools.combinations(options, 2):
        for va, vb in itertools.product(options[a], options[b]):
            _check_config({**base, **first, a: va, b: vb}, where, {a: va, b: vb})


def _check_config(config: dict[str, Any], where: str, drawn: dict[str, Any]) -> None:
    try:
        TrainConfig.from_dict(config, where="")
    except ValueError as e:
        reason = str(e).removeprefix(": ")
        shown = ", ".join(f"{k}={v!r}" for k, v in drawn.items())
        raise SpaceError(f"{where}: a trial could draw {shown}, which the trainer refuses: "
                         f"{reason}") from None


def first_value(entry: Any) -> Any:
    """One valid value of a parameter (for checking a whole config before Ray starts)."""
    return values(entry)[0]


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
        dist, args = next(iter(entry.items()))
        if dist == "loguniform":
            out[name] = tune.loguniform(float(args[0]), float(args[1]))
        elif dist == "uniform":
            out[name] = tune.uniform(float(args[0]), float(args[1]))
        elif dist == "int":
            out[name] = tune.randint(int(args[0]), int(args[1]) + 1)  # tune's high is exclusive
        else:
            out[name] = tune.choice(list(args))
    return out
