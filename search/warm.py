"""--warm-start STORAGE/NAME[,...]: a new search that starts from earlier searches' trials.

Why: a search on MOSEI after one on MOSI, or a wider space after a narrow one, need not
start blind. Finished trials (completed, or stopped by ASHA) whose configuration the new
space could have drawn, and whose fixed settings match, are handed to the sampler:
- on the same data (search.json's data identity matches), as already evaluated points
  with their value of the new search's metric: TPE starts with them and runs none again;
- on other data (or data the old search did not record), their values are not this
  search's values: the best few are re-run first instead, as the first trials.
Configurations that do not fit are skipped, each with a note saying why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from search.results import ResultsStore, TrialBook

RERUN_BEST = 3  # trials re-run first when the data differ
# settings besides the space that make it another model: compared with this search's flags
# (the data may differ: MOSEI after MOSI; then the best trials are re-run, not trusted)
COMPARED = ("modalities",)


@dataclass(frozen=True)
class WarmStart:
    sources: tuple[str, ...] = ()
    points: tuple[dict[str, Any], ...] = ()  # searched parameters only, as the sampler takes
    rewards: tuple[float, ...] | None = None  # None: the points are re-run, not evaluated
    notes: tuple[str, ...] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        """What search.json keeps of it."""
        return {"from": list(self.sources), "mode": "evaluated" if self.rewards else "rerun",
                "points": len(self.points), "notes": list(self.notes)}


def _fits(row: dict[str, Any], spec: dict[str, Any], base: dict[str, Any]) -> str | None:
    """None if the new search could have run this trial; else why not."""
    for name, entry in spec.items():
        value = row.get(name)
        if not isinstance(entry, dict):
            if value != entry:
                return f"{name}={value!r}, fixed at {entry!r} here"
            continue
        kind, args = next(iter(entry.items()))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"no value of {name}"
        if kind == "choice":
            if value not in args:
                return f"{name}={value!r} is not one of {args}"
        elif not args[0] <= value <= args[1] or (kind == "int" and value != int(value)):
            return f"{name}={value!r} is outside {kind} [{args[0]}, {args[1]}]"
    for name in COMPARED:
        if name in base and name in row and row[name] != base[name]:
            return f"{name}={row[name]!r}, {base[name]!r} here"
    return None


def warm_start(sources: str | None, spec: dict[str, Any], base: dict[str, Any], metric: str,
               mode: str, data_id: dict[str, Any] | None) -> WarmStart:
    if not sources:
        return WarmStart()
    names = tuple(s.strip() for s in sources.split(",") if s.strip())
    searched = [k for k, v in spec.items() if isinstance(v, dict)]
    found: list[tuple[float, dict[str, Any]]] = []
    notes: list[str] = []
    same_data = True
    for src in names:
        store = ResultsStore(src)
        meta = store.read_json("search.json", missing_ok=True)
        if not isinstance(meta, dict) or not store.exists("trials.parquet"):
            raise ValueError(f"--warm-start {src}: not a search folder (no search.json or "
                             f"trials.parquet)")
        if meta.get("data") != data_id:
            same_data = False
            notes.append(f"{src}: other data (or none recorded): its best trials are re-run")
        book = TrialBook(store, "", metric, mode, "")
        notes += book.load()
        for tid, row in sorted(book.trials.items()):
            value = row.get(metric)
            if row.get("status") not in ("completed", "stopped"):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                notes.append(f"{src} trial {tid}: no {metric} recorded: skipped")
                continue
            why = _fits(row, spec, base)
            if why is not None:
                notes.append(f"{src} trial {tid} does not fit this space ({why}): skipped")
                continue
            found.append((float(value), {k: _plain(row[k]) for k in searched}))
    found.sort(key=lambda p: p[0] if mode == "min" else -p[0])
    unique: dict[str, tuple[float, dict[str, Any]]] = {}
    for value, point in found:  # one entry per configuration, its best value
        unique.setdefault(repr(sorted(point.items())), (value, point))
    best = list(unique.values())
    if same_data:
        return WarmStart(names, tuple(p for _, p in best), tuple(v for v, _ in best),
                         tuple(notes))
    return WarmStart(names, tuple(p for _, p in best[:RERUN_BEST]), None, tuple(notes))


def _plain(v: Any) -> Any:
    """Parquet values as the sampler's plain Python values."""
    return v.item() if hasattr(v, "item") else v
