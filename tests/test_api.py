"""search.run / search.load / search.retrain (search/api.py): the command line's flags as
keywords, its errors as exceptions (never sys.exit), its results as DataFrames."""

from __future__ import annotations

import json
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
    result = search.run(storage=str(tmp_path), name="api", num_samples=3, max_epochs=1,
                        max_concurrent=2, address=ray_head)
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
