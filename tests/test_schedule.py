"""The suite's order (tests/schedule.py): both xdist halves start long and end short."""

from pathlib import Path

from tests.schedule import LONG_MODULE_S, from_junit, order


class Item:
    def __init__(self, nodeid: str, slow: bool = False):
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None

    def __repr__(self) -> str:
        return self.nodeid


def _items(sizes: dict[str, int]) -> list[Item]:
    return [Item(f"tests/{m}.py::t{i}") for m, n in sizes.items() for i in range(n)]


def _module(item: Item) -> str:
    return item.nodeid.split("::")[0].removeprefix("tests/").removesuffix(".py")


def test_each_half_starts_with_long_modules_balanced_and_ends_short():
    sizes = {"a": 40, "big1": 3, "b": 30, "big2": 2, "c": 50, "big3": 4, "big4": 1}
    known = {f"tests/{m}.py": s for m, s in
             {"a": 10, "big1": 300, "b": 5, "big2": 200, "c": 20, "big3": 120, "big4": 90}.items()}
    items = _items(sizes)
    got = order(items, known)
    assert sorted(map(id, got)) == sorted(map(id, items))  # each test exactly once
    half = len(got) // 2
    first, second = got[:half], got[half:]
    mods = [_module(i) for i in got]
    # the first half starts with its long modules, the second half too, short ones last
    assert mods[0] == "big1" and _module(second[0]).startswith("big")
    long_first = {_module(i) for i in first if _module(i).startswith("big")}
    long_second = {_module(i) for i in second if _module(i).startswith("big")}
    assert long_first | long_second == {"big1", "big2", "big3", "big4"}
    assert not long_first & long_second
    load = [sum(known[f"tests/{m}.py"] for m in s) for s in (long_first, long_second)]
    assert abs(load[0] - load[1]) <= 90  # longest first, each to the lighter half
    assert not _module(first[-1]).startswith("big") and not _module(got[-1]).startswith("big")
    # a long module's tests stay together and in their order
    for m in ("big1", "big3"):
        at = [k for k, x in enumerate(mods) if x == m]
        assert at == list(range(at[0], at[0] + sizes[m]))
        assert [got[k].nodeid for k in at] == [f"tests/{m}.py::t{i}" for i in range(sizes[m])]


def test_unknown_modules_are_guessed_from_their_slow_marks():
    items = [Item("tests/new.py::s1", slow=True), Item("tests/new.py::s2", slow=True)]
    items += [Item(f"tests/quick.py::t{i}") for i in range(20)]
    got = order(items, {})
    assert got[0].nodeid == "tests/new.py::s1"  # 2 slow tests: a long module
    assert 2 * 30.0 >= LONG_MODULE_S and len(got) == 22
    assert order([], {}) == []


def test_durations_from_a_junit_xml(tmp_path: Path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_api" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_api" name="test_b[x]" time="2.0"/>'
        '<testcase classname="tests.test_gpu.TestCapture" name="test_c" time="3.0"/>'
        '</testsuite></testsuites>')
    assert from_junit(xml) == {"tests/test_api.py": 3.5, "tests/test_gpu.py": 3.0}
