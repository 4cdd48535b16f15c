"""The order the suite runs in, so that its two xdist workers end together.

pytest-xdist's `worksteal` hands the first worker the first half of the collection (by
count) and the second worker the rest; a worker that runs out then takes the second half
of the other's queue. In file order the long tests (searches, signals, the small studies)
are scattered, and one of them started near the end decides the suite's wall time while
the other worker waits. Here each half starts with its share of the long modules
(balanced by their measured seconds, tests/durations.json) and ends with short tests,
which is what stealing then balances. Modules stay whole and in their own order, so a
module's fixtures run once per worker that needs them.

`python -m tests.schedule JUNIT.xml` rewrites tests/durations.json from a run's junit XML
(`pytest --junitxml=JUNIT.xml`); a module it does not list counts SLOW_S per slow test.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

DURATIONS = Path(__file__).with_name("durations.json")
LONG_MODULE_S = 30.0  # a module this long starts a half; shorter ones end them
SLOW_S, FAST_S = 30.0, 0.5  # the guess for a module that durations.json does not list


def _module(item: Any) -> str:
    return item.nodeid.split("::", 1)[0]


def _seconds(module: str, items: list[Any], known: dict[str, float]) -> float:
    if module in known:
        return known[module]
    return sum(SLOW_S if i.get_closest_marker("slow") else FAST_S for i in items)


def order(items: list[Any], known: dict[str, float] | None = None) -> list[Any]:
    """`items` as [long modules of half A, short ones, long modules of half B, short
    ones], with half A exactly the first half by count where the short tests allow it."""
    if known is None:
        try:
            known = {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            known = {}
    modules: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        modules[_module(item)].append(item)
    cost = {m: _seconds(m, its, known) for m, its in modules.items()}
    long = sorted((m for m in modules if cost[m] >= LONG_MODULE_S), key=lambda m: -cost[m])
    halves: list[list[str]] = [[], []]
    load = [0.0, 0.0]
    for m in long:  # longest first, each to the half with less so far
        h = 0 if load[0] <= load[1] else 1
        halves[h].append(m)
        load[h] += cost[m]
    short = [i for m, its in modules.items() if cost[m] < LONG_MODULE_S for i in its]
    head = [i for m in halves[0] for i in modules[m]]
    fill = max(0, len(items) // 2 - len(head))
    return (head + short[:fill] + [i for m in halves[1] for i in modules[m]]
            + short[fill:])


def from_junit(path: Path) -> dict[str, float]:
    """Seconds per test module (setup, call and teardown) from a junit XML."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).iter("testcase"):
        module = case.get("classname", "").split(".")
        while module and not module[-1].startswith("test_"):
            module.pop()  # a test class's name
        if module:
            seconds["/".join(module) + ".py"] += float(case.get("time") or 0)
    return {k: round(v, 1) for k, v in sorted(seconds.items())}


if __name__ == "__main__":
    found = from_junit(Path(sys.argv[1]))
    DURATIONS.write_text(json.dumps(found, indent=1) + "\n")
    print(f"{DURATIONS}: {len(found)} modules, {sum(found.values()):.0f} s in all")
