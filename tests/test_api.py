"""search.run / search.load / search.retrain (search/api.py): the command line's flags as
keywords, its errors as exceptions (never sys.exit), its results as DataFrames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import run_search
import search
from search.api import flags_argv
from ucrn.errors import DataError, RunFailed, UsageError

ROOT = Path(__file__).resolve().parents[1]


def cli_error(capsys, argv: list[str]) -> str:
    """The one line run_search.py prints for `argv` (exit code 2)."""
    assert run_search.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0].removeprefix("error: ")


def sorted_frame(df: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    return df[columns].sort_values(keys).reset_index(drop=True)


def assert_tables_are_the_files(result: search.SearchResult) -> None:
    """Each table holds what pandas reads from its Parquet folder (row order aside)."""
    for table, keys in (("trials", ["trial_id"]), ("epochs", ["trial_id", "epoch"]),
                        ("retrain", ["seed"])):
        got = getattr(result, table)
        files = Path(result.path) / f"{table}.parquet"
        if not files.exists():
            assert got.empty, table
            continue
        want = pd.read_parquet(files)
        assert set(got.columns) == set(want.columns), table
        pd.testing.assert_frame_equal(sorted_frame(got, keys, list(want.columns)),
                                      sorted_frame(want, keys, list(want.columns)))


# ---- keywords and errors ------------------------------------------------------------------

def test_import_search_is_cheap():
    code = ("import sys, search; heavy = [m for m in ('torch', 'ray', 'pandas') "
            "if m in sys.modules]; assert not heavy, heavy; search.load; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_unknown_keyword_names_it_and_the_closest_flag():
    with pytest.raises(UsageError) as e:
        search.run(num_sample=3)
    assert str(e.value) == "num_sample: no such flag; did you mean num_samples?"
    with pytest.raises(UsageError, match="^zzz: no such flag"):
        search.run(zzz=1)


def test_keywords_map_to_the_command_line():
    assert flags_argv({"resume": True, "aligned": False, "seeds": [1, 2], "dataset": None,
                       "trial_resources": {"gpu_node": 1}, "storage": Path("/x"),
                       "name": "-odd", "gpus_per_trial": 0.25}) == [
        "--resume", "--seeds=1,2", '--trial-resources={"gpu_node": 1}', "--storage=/x",
        "--name=-odd", "--gpus-per-trial=0.25"]
    with pytest.raises(UsageError, match=r"^resume='yes': expected True or False"):
        flags_argv({"resume": "yes"})


@pytest.mark.parametrize("flags", [
    {"num_samples": 0},
    {"num_samples": "lots"},
    {"cpus_per_trial": -1},
    {"executor": "spark"},
    {"grace_period": 9, "max_epochs": 4},
    {"scheduler": "fifo", "grace_period": 2},
    {"trial_resources": "{bad"},
    {"metric": "R2"},
    {"dataset": "mosi", "data_path": "/nonexistent"},
])
def test_a_bad_value_is_the_command_lines_line(tmp_path, capsys, flags):
    storage = str(tmp_path / "st")
    with pytest.raises(UsageError) as e:
        search.run(storage=storage, **flags)
    assert "\n" not in str(e.value)
    assert str(e.value) == cli_error(capsys, ["--storage", storage, *flags_argv(flags)])
    assert not (tmp_path / "st" / "ucrn-search" / "search.json").exists()


def test_load_of_what_is_not_a_search(tmp_path):
    with pytest.raises(UsageError, match=f"^{tmp_path}/none: no such file or directory$"):
        search.load(tmp_path / "none")
    (tmp_path / "other").mkdir()
    with pytest.raises(UsageError, match=f"^{tmp_path}/other: no trials.parquet/ here"):
        search.load(tmp_path / "other")
    with pytest.raises(UsageError, match=f"--retrain {tmp_path}/other: not a search folder"):
        search.retrain(tmp_path / "other", seeds=[1])


def test_load_reads_the_files(tmp_path):
    from tests.results_fixture import write_fake_retrain, write_fake_search

    folder = write_fake_search(tmp_path, "s")
    write_fake_retrain(tmp_path, "s")
    (folder / "best_config.json").write_text(json.dumps({"lr": 0.001}))
    result = search.load(str(folder))
    assert_tables_are_the_files(result)
    assert result.best_config == {"lr": 0.001} and result.path == str(folder)
    assert result.robustness.empty and result == search.load(folder)
    best = result.best()
    assert best["trial_id"] in result.trials.trial_id.values
    assert repr(result).startswith(f"<SearchResult {folder}: 8 trials") and "\n" not in repr(result)
    page = result._repr_html_()
    assert page.count("<table") == 2 and best["trial_id"] in page and "seeds" in page


def test_load_from_object_storage(bucket, tmp_path):
    """An s3:// search reads as the same folder on disk does (moto's S3: conftest.py)."""
    import boto3

    from tests.results_fixture import write_fake_search

    folder = write_fake_search(tmp_path, "s")
    (folder / "best_config.json").write_text(json.dumps({"lr": 0.001}))
    s3 = boto3.client("s3")
    for f in folder.rglob("*"):
        if f.is_file():
            s3.put_object(Bucket=bucket, Key=f"r/s/{f.relative_to(folder)}", Body=f.read_bytes())
    remote, local = search.load(f"s3://{bucket}/r/s/"), search.load(folder)
    assert remote.path == f"s3://{bucket}/r/s" and remote.best_config == {"lr": 0.001}
    for table, keys in (("trials", ["trial_id"]), ("epochs", ["trial_id", "epoch"])):
        want = getattr(local, table)
        pd.testing.assert_frame_equal(sorted_frame(getattr(remote, table), keys, list(want.columns)),
                                      sorted_frame(want, keys, list(want.columns)))


def test_interrupt_and_failures_are_exceptions(monkeypatch, tmp_path):
    """The command line's exit 130 is KeyboardInterrupt, exit 1 RunFailed, a data error
    (exit 2) a UsageError: never SystemExit."""
    import search.driver

    outcomes = [SystemExit(130), DataError("train.npz: bad\nmore"), 1]

    def fake_main(argv, fail_if):
        out = outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    monkeypatch.setattr(search.driver, "_main", fake_main)
    with pytest.raises(KeyboardInterrupt, match=f"results so far are in {tmp_path}/ucrn-search"):
        search.run(storage=str(tmp_path))
    with pytest.raises(UsageError, match=r"^train.npz: bad$"):
        search.run(storage=str(tmp_path))
    with pytest.raises(RunFailed):
        search.run(storage=str(tmp_path))


def test_a_ray_of_the_callers_own_is_one_line(monkeypatch, tmp_path):
    """A search starts and stops its own Ray: one already initialised would be shut down."""
    import types

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    with pytest.raises(UsageError, match="^Ray is already initialised in this process"):
        search.run(storage=str(tmp_path))


def test_graceful_stop_outside_the_main_thread():
    """search.run from a thread: no signal handlers (only the main thread may set them)."""
    from search.cluster import GracefulStop

    errors: list[BaseException] = []

    def body() -> None:
        try:
            with GracefulStop("resume", "here", lambda: None) as stop:
                stop.tune_started()
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert not errors


# ---- end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_run_load_retrain(ray_head, tmp_path, capsys):
    space = tmp_path / "space.yaml"  # small models: what the API returns is the point here
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nlayers: 1\nd_model: 8\nheads: 2\n")
    result = search.run(storage=str(tmp_path), name="api", num_samples=3, max_epochs=1,
                        max_concurrent=2, address=ray_head, space=str(space))
    out = capsys.readouterr().out
    assert "best trial" in out and "search api: 3 trials" in out  # the terminal's progress
    assert result.path == str(tmp_path / "api")
    assert len(result.trials) == 3 and len(result.epochs) == 3 and result.retrain.empty
    assert_tables_are_the_files(result)
    on_disk = json.loads((tmp_path / "api" / "best_config.json").read_text())
    assert result.best_config == on_disk and on_disk["num_epochs"] == 1
    assert search.load(tmp_path / "api") == result

    with pytest.raises(UsageError, match="--name api: a search already exists"):
        search.run(storage=str(tmp_path), name="api", address=ray_head)

    again = search.retrain(result.path, seeds=[1, 2], address=ray_head, robustness_repeats=0)
    assert sorted(again.retrain.seed) == [1, 2] and again.retrain.test_MAE.notna().all()
    assert_tables_are_the_files(again)
    assert again.trials.equals(result.trials)
    assert "re-trained on seeds [1, 2]" in again._repr_html_()


# ---- attack round on issue 26 -------------------------------------------------------------

@pytest.mark.parametrize("flags", [
    {"name": b"bytes"},  # str(b"x") is "b'x'": once a search named b'bytes'
    {"seeds": [[1, 2], 3]},  # once flattened to 1,2,3
    {"seeds": {1, 2}},  # a set has no order
    {"tracker": True},  # once --tracker True
    {"num_samples": True},
    {"storage": object()},
])
def test_a_value_no_flag_takes_is_refused_naming_the_keyword(tmp_path, flags):
    key = next(iter(flags))
    with pytest.raises(UsageError, match=f"^{key}=") as e:
        search.run(**({"storage": str(tmp_path)} | flags))
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_load_takes_file_uris_and_names_a_bad_path(tmp_path):
    """search.load('file:///...') once said 'no bucket'; search.retrain('file:///...')
    re-trained, then failed the same way reading the results back."""
    from tests.results_fixture import write_fake_search

    folder = write_fake_search(tmp_path, "s")
    want = search.load(folder)
    for spelling in (f"file://{folder}", f"FILE://{folder}", os.fsencode(folder)):
        assert search.load(spelling) == want
    for bad in (3, None, "", "  ", ["a"]):
        with pytest.raises(UsageError, match=r"^search\.load\(.*\): expected a search folder"):
            search.load(bad)
    with pytest.raises(UsageError, match=r"^search\.retrain\(None\): expected a search folder"):
        search.retrain(None, seeds=[1])


@pytest.mark.parametrize("content", ["{garbage", "[1, 2]", '"text"'])
def test_a_damaged_best_config_is_a_warning_not_an_unfinished_search(tmp_path, capsys,
                                                                      content):
    """A best_config.json that is not a JSON object: once `{}` without a word (the notebook
    then said "the search has not finished"), or, for a list, no results at all."""
    from tests.results_fixture import write_fake_search

    folder = write_fake_search(tmp_path, "s")
    (folder / "best_config.json").write_text(content)
    result = search.load(folder)
    assert result.best_config == {} and len(result.trials) == 8
    (line,) = [w for w in result.warnings if "best_config.json" in w]
    assert line.startswith(f"{folder}/best_config.json: ") and "best_config is {}" in line
    assert f"warning: {line}" in capsys.readouterr().err
    assert line in result._repr_html_()


def test_ctrl_c_while_torch_is_importing_leaves_the_process_usable(tmp_path):
    """Ctrl-C in a notebook while the first search.run imports torch once left torch half
    initialised in sys.modules: every later call failed ('partially initialized module
    torch') or the kernel crashed. The signal (sent here from inside torch's own import)
    is held until the imports finish, then raised; the next call works."""
    code = f"""
import os, signal, sys
import search
from ucrn.errors import UsageError

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch.nn":  # inside torch/__init__.py: torch is half initialised
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
try:
    search.run(storage={str(tmp_path)!r}, num_samples=0)
except KeyboardInterrupt as e:
    assert "nothing ran" in str(e), e
else:
    raise AssertionError("no KeyboardInterrupt")
try:
    search.run(storage={str(tmp_path)!r}, num_samples=0)
except UsageError as e:
    assert str(e) == "--num-samples 0: expected an integer >= 1", e
print("usable")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "usable", res.stderr[-3000:]
