"""An outside tester's cases for `--executor auto` and the split data/safeload rooms: what a
new user or a hand-edited search.json does to the flags, `--resume` and `--retrain`, and
what the import-cycle checker of tests/test_layout.py sees. None starts Ray."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from search.driver import main
from search.flags import Flags, parse_flags
from tests.test_layout import _components, _imports, _shortest_cycle
from ucrn.errors import UsageError

# ---- the import-cycle checker on throwaway modules ---------------------------------------


def _graph_of(files: dict[str, str], tmp_path: Path) -> dict[str, dict[str, int]]:
    """Write `files` (path under tmp_path -> text) and read their imports as the layout test
    does (nothing is imported)."""
    modules: dict[str, Path] = {}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = list(Path(rel).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return {n: {t: ln for t, ln in _imports(n, p, modules) if t != n} for n, p in modules.items()}


def test_cycle_through_a_parent_packages_init_is_found(tmp_path: Path) -> None:
    """`from ucrn.data.dataset import X` in ucrn/train.py runs ucrn/data/__init__.py first;
    when that imports a submodule which imports ucrn.train back, `import ucrn.train` fails
    (ImportError: partially initialised module). The checker missed it: it did not count
    the parent package's __init__ of an imported submodule."""
    graph = _graph_of({
        "ucrn/__init__.py": "",
        "ucrn/data/__init__.py": "from ucrn.data.dataset import MultData\n"
                                 "from ucrn.data.load import load\n",
        "ucrn/data/dataset.py": "class MultData: ...\n",
        "ucrn/data/load.py": "from ucrn.train import fit\n",
        "ucrn/train.py": "from ucrn.data.dataset import MultData\n\ndef fit(): ...\n",
    }, tmp_path)
    comps = _components(graph)
    assert comps == [["ucrn.data", "ucrn.data.load", "ucrn.train"]]
    assert _shortest_cycle(graph, comps[0]) == ["ucrn.data", "ucrn.data.load", "ucrn.train",
                                                "ucrn.data"]


def test_own_parent_package_is_no_edge(tmp_path: Path) -> None:
    """A submodule importing a sibling does not import its own package again (it ran
    first): the package's __init__ re-exporting its submodules stays no cycle."""
    graph = _graph_of({
        "ucrn/__init__.py": "",
        "ucrn/data/__init__.py": "from ucrn.data.load import load\n",
        "ucrn/data/dataset.py": "",
        "ucrn/data/load.py": "from ucrn.data.dataset import x\nimport ucrn.data.dataset\n",
    }, tmp_path)
    assert _components(graph) == []
    assert set(graph["ucrn.data.load"]) == {"ucrn.data.dataset"}


def test_type_checking_imports_close_no_cycle_but_their_else_does(tmp_path: Path) -> None:
    """An import under `if TYPE_CHECKING:` never runs (the usual way to name a type without
    a cycle), so it is no edge; its `else:` runs, and a cycle through a lazy import inside a
    function is still one."""
    base = {"search/__init__.py": "",
            "search/a.py": "import search.b\n"}
    only_types = _graph_of({**base, "search/b.py": (
        "from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n"
        "    from search.a import A\nif typing.TYPE_CHECKING:\n    import search.a\n")},
        tmp_path / "1")
    assert _components(only_types) == []
    with_else = _graph_of({**base, "search/b.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n"
        "    from search.a import A\n")}, tmp_path / "2")
    assert _components(with_else) == [["search.a", "search.b"]]
    lazy = _graph_of({**base, "search/b.py": (
        "def f():\n    if True:\n        from .a import g\n    return g\n")}, tmp_path / "3")
    assert _components(lazy) == [["search.a", "search.b"]]


def test_import_module_with_a_literal_name_is_an_import(tmp_path: Path) -> None:
    """importlib.import_module("search.a") (or __import__) inside a function imports the
    module as surely as an import statement; `from ..ucrn import x` outside the packages
    and computed names are left alone."""
    graph = _graph_of({
        "search/__init__.py": "",
        "search/a.py": "import search.b\n",
        "search/b.py": "import importlib\n\ndef f(name):\n"
                       "    importlib.import_module(name)\n"
                       "    from ..ucrn import nothing\n"
                       "    return importlib.import_module('search.a')\n",
        "search/c.py": "def g():\n    return __import__('search.a')\n",
    }, tmp_path)
    assert _components(graph) == [["search.a", "search.b"]]
    assert set(graph["search.c"]) == {"search.a"}


# ---- flags, search.json and --resume -----------------------------------------------------


def _saved(executor: str = "train", **flags) -> dict:
    """search.json's flags as a search writes them (an old `train` default, by default)."""
    fl, _ = parse_flags(["--executor", "train"])
    return {**fl.saved(), "executor": executor, **flags}


@pytest.mark.parametrize("key,value", [("executor", "spark"), ("executor", "AUTO"),
                                       ("scheduler", "hyperband"), ("search_alg", "grid")])
def test_resumed_choice_out_of_range_names_the_file_key(key, value) -> None:
    """A saved value no search writes is one line naming search.json and the key, not
    '--executor spark: expected ...' about a flag the user never typed."""
    fl, given = parse_flags(["--resume"])
    with pytest.raises(UsageError) as e:
        fl.resumed_from(_saved(**{key: value}), "S/search.json", given)
    assert str(e.value).startswith(f"S/search.json: flags.{key}={value!r}: expected one of")


def test_resume_executor_auto_means_the_searchs_own_workers() -> None:
    """`--resume --executor auto` on a DDP search (workers 2, train) is what auto means
    there: accepted. It was refused as '--executor tune', auto resolved with this command
    line's default of one worker. On a one-worker `train` search (the old default) the
    refusal names what was typed."""
    fl, given = parse_flags(["--resume", "--executor", "auto"])
    ddp = fl.resumed_from(_saved("train", workers_per_trial=2), "S", given)
    assert (ddp.executor, ddp.workers_per_trial) == ("train", 2)
    with pytest.raises(UsageError) as e:
        fl.resumed_from(_saved("train"), "S", given)
    assert str(e.value).startswith("--executor auto (tune for 1 worker(s) per trial): a "
                                   "resumed search keeps its own (train)")


def test_saved_auto_resolves_with_the_saved_workers() -> None:
    fl, given = parse_flags(["--resume"])
    assert fl.resumed_from(_saved("auto", workers_per_trial=2), "S", given).executor == "train"
    assert fl.resumed_from(_saved("auto"), "S", given).executor == "tune"
    assert "_asked_executor" not in asdict(fl) and "_asked_executor" not in fl.saved()


def _search_folder(tmp_path: Path, flags: dict, trainable: str | None = "train_trial") -> Path:
    """A results folder as an interrupted search leaves it: search.json, and (trainable
    given) Tune's state naming that trainable; nothing is loaded from tuner.pkl here."""
    folder = tmp_path / "st" / "s"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"flags": {**flags, "name": "s"},
                                                    "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    if trainable is not None:
        (folder / "tuner.pkl").write_bytes(b"")
        state = {"trial_data": [[json.dumps({"trainable_name": trainable, "trial_id": "t1"}),
                                 "{}"]], "runner_data": {}, "stats": {}}
        (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    return folder


@pytest.mark.parametrize("edit", ["auto", "tune", None])
def test_resume_with_another_executor_than_tunes_state_is_one_line(tmp_path, capsys,
                                                                    edit) -> None:
    """search.json edited to executor auto / tune, or without the key, over Tune's state of
    a `train` search: Tune's error was cut to 200 characters and told the user to start a
    new search; now one line names search.json, both executors and the fix."""
    flags = _saved("train")
    if edit is None:
        del flags["executor"]
    else:
        flags["executor"] = edit
    _search_folder(tmp_path, flags)
    code = main(["--resume", "--storage", str(tmp_path / "st"), "--name", "s"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "search.json flags.executor" in err[0]
    assert "ran its trials with executor train" in err[0]
    assert "set flags.executor to 'train' there" in err[0]


def test_saved_flags_failing_a_check_name_the_file(tmp_path, capsys) -> None:
    """A saved combination no search writes (workers 2 with executor tune) names the file;
    a bad value given on this command line still names the flag."""
    _search_folder(tmp_path, _saved("tune", workers_per_trial=2), trainable=None)
    base = ["--resume", "--storage", str(tmp_path / "st"), "--name", "s"]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "s/search.json: the saved flags fail a check " \
        "(--workers-per-trial > 1 needs --executor train" in err
    assert main([*base, "--cpus-per-trial", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --cpus-per-trial 0.0: expected a number " \
                                              ">= 0.01"


def test_empty_executor_is_shown(capsys, tmp_path) -> None:
    assert main(["--executor", "", "--storage", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --executor '': expected auto, train or tune"


def test_retrain_keeps_an_explicit_executor(tmp_path, capsys) -> None:
    """`--retrain ... --executor tune --workers-per-trial 2` ran silently as DDP on Ray
    Train (the explicit flag overridden); a search refuses the same flags: so does it."""
    code = main(["--retrain", str(tmp_path / "nope"), "--executor", "tune",
                 "--workers-per-trial", "2"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("error: --workers-per-trial > 1 needs "
                                               "--executor train (DDP runs on Ray Train)")
    fl, _ = parse_flags(["--retrain", "x", "--workers-per-trial", "2"])
    assert fl.executor == "train"  # auto, DDP: Ray Train


def test_flags_equal_whatever_was_asked() -> None:
    """The asked executor is no field: Flags built from auto and from its resolution are
    equal, and search.json holds the resolution."""
    a, _ = parse_flags(["--executor", "auto"])
    t, _ = parse_flags(["--executor", "tune"])
    assert a == t and a.saved()["executor"] == "tune"
    assert Flags(workers_per_trial=3).executor == "train"


@pytest.mark.parametrize("args,why", [
    (["--workers-per-trial", "2"], "--workers-per-trial 2 (DDP, which --executor auto runs on "
                                   "Ray Train)"),
    (["--executor", "train"], "--executor train")])
def test_small_cpu_share_on_ray_train_names_what_was_typed(args, why, tmp_path, capsys) -> None:
    """`--cpus-per-trial 0.05 --workers-per-trial 2` was refused as '--executor train
    needs > 0.1', a flag the user never typed (auto chose Ray Train)."""
    assert main(["--cpus-per-trial", "0.05", *args, "--storage", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --cpus-per-trial 0.05: {why} needs "
                                               "> 0.1 (0.1 CPU is kept for the trial's driver)")


def test_an_unreadable_tune_state_skips_the_executor_check(tmp_path, monkeypatch) -> None:
    """The executor check reads Tune's experiment state as JSON under the results store's
    16 MB cap; a larger state (a search of thousands of trials) or a damaged one must not
    block a resume it could not judge: the check steps aside and Tune decides."""
    from search import driver
    from search.results import ResultsStore

    folder = _search_folder(tmp_path, _saved("train"))
    state = next(folder.glob("experiment_state-*.json"))
    state.write_text("{ not json")
    fl = Flags(executor="tune")
    assert driver._same_executor(fl, _saved("tune"), ResultsStore(folder)) is None
    state.write_text(json.dumps({"trial_data": []}))
    monkeypatch.setattr(ResultsStore, "MAX_JSON_BYTES", 4)  # over the cap
    assert driver._same_executor(fl, _saved("tune"), ResultsStore(folder)) is None
