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
import zlib
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import pyarrow.fs as pafs

from search.results import ResultsStore, TrialBook
from ucrn.config import TrainConfig
from ucrn.fileio import answered, bounded, display_uri, is_uri, local_path, redact, stalled

RERUN_BEST = 3  # trials re-run first when the data differ
# Settings that do not make a trial another experiment: where and how it ran, and the data
# (other data are handled as such: the best trials are re-run, their values not trusted).
# Every other setting the new space does not search must be equal for a trial to fit.
NOT_COMPARED = {"seed", "device", "threads", "dataset", "data_path", "data_format", "aligned",
                "preset", "data_seed", "target", "select_metric", "eval_batch_size",
                "cuda_graphs", "compile", "amp", "robust_metrics"}


@dataclass(frozen=True)
class WarmStart:
    sources: tuple[str, ...] = ()
    points: tuple[dict[str, Any], ...] = ()  # searched parameters only, as the sampler takes
    rewards: tuple[float, ...] | None = None  # None: the points are re-run, not evaluated
    notes: tuple[str, ...] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        """What search.json keeps of it."""
        return {"from": list(self.sources),
                "mode": "evaluated" if self.rewards is not None else "rerun",
                "points": len(self.points), "notes": list(self.notes)}

    def sampler_seed(self, seed: int) -> int:
        """The sampler's seed: the search's, moved by the sources' names, so that a search
        warm-started from one with the same --seed does not draw that search's own random
        start-up proposals again (which it has already evaluated)."""
        if not self.sources:
            return seed
        return (seed + zlib.crc32("\n".join(self.sources).encode())) % 2**32


def _fits(row: dict[str, Any], spec: dict[str, Any], base: dict[str, Any],
          compare_settings: bool) -> str | None:
    """None if the new search could have run this trial; else why not. Its unsearched
    settings matter only where its value is taken as this search's (`compare_settings`):
    a re-run (other data) runs with this search's settings anyway."""
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
    if not compare_settings:
        return None
    here = {**{f.name: f.default for f in fields(TrainConfig)}, **base}
    for name, value in here.items():
        if name in spec or name in NOT_COMPARED or name not in row:
            continue
        theirs = _plain(row[name])
        if theirs != value and not (isinstance(theirs, float) and isinstance(value, float)
                                    and math.isclose(theirs, value, rel_tol=1e-9)):
            return f"{name}={theirs!r}, {value!r} here"
    return None


def warm_start(sources: str | None, spec: dict[str, Any], base: dict[str, Any], metric: str,
               mode: str, data_id: dict[str, Any] | None) -> WarmStart:
    if not sources:
        return WarmStart()
    names = tuple(dict.fromkeys(s.strip() for s in sources.split(",") if s.strip()))
    if not names:
        raise ValueError(f"--warm-start {sources!r}: expected earlier searches, "
                         f"STORAGE/NAME[,STORAGE/NAME...]")
    searched = [k for k, v in spec.items() if isinstance(v, dict)]
    found: list[tuple[float, dict[str, Any]]] = []
    notes: list[str] = []
    same_data = True
    for src in names:
        if not is_uri(src):
            try:
                local_path(src)  # a file URI it refuses: its own line, no secret in it
            except ValueError as e:
                raise ValueError(f"--warm-start {e}") from None
        shown = display_uri(src) if is_uri(src) else redact(src)
        try:
            store = ResultsStore(src)
            if not store.is_local:  # every call bounded: a store may stop answering
                store.fs = bounded(store.fs)
            info = answered(partial(store.fs.get_file_info, store.path("trials.parquet")))
            is_dir = info.type == pafs.FileType.Directory
            meta = store.read_json("search.json", missing_ok=True)
        except (OSError, ValueError) as e:
            why = redact(" ".join(str(e).split())).removeprefix(f"{shown}: ")
            raise ValueError(f"--warm-start {shown}: {why[:300]}") from None
        if not isinstance(meta, dict) or not is_dir:
            raise ValueError(f"--warm-start {shown}: not a search folder (no search.json or "
                             f"trials.parquet/)")
        this_same = meta.get("data") == data_id
        if not this_same:
            same_data = False
            notes.append(f"{shown}: other data (or none recorded): its best trials are re-run")
        book = TrialBook(store, "", metric, mode, "", read_only=True)  # never writes there
        try:
            notes += book.load()
        except (OSError, ValueError) as e:  # a listing the store never answered, ...
            raise ValueError(f"--warm-start {shown}: {redact(' '.join(str(e).split()))}"
                             ) from None
        if (stuck := stalled(store.fs)) is not None:  # not damaged files: no answer
            raise ValueError(f"--warm-start {shown}: {stuck}")
        usable = len(found)
        for tid, row in sorted(book.trials.items()):
            if row.get("status") not in ("completed", "stopped"):
                continue
            if tid in book.epochs:  # this search's metric at its own best epoch
                best = book._best_row(book._epoch_rows(tid))
                row = {**row, metric: (best or {}).get(metric, row.get(metric))}
            value = row.get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                notes.append(f"{shown} trial {tid}: no {metric} recorded: skipped")
                continue
            why = _fits(row, spec, base, compare_settings=this_same)
            if why is not None:
                notes.append(f"{shown} trial {tid} does not fit this space ({why}): skipped")
                continue
            found.append((float(value), {k: _plain(row[k]) for k in searched}))
        if len(found) == usable:
            notes.append(f"{shown}: no finished trial fits this search: nothing taken from it")
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
