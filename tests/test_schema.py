"""The results schema (search/schema.py) is the one place for names and types: the real
writer's files have exactly its types, docs/results.md lists exactly its columns, and no
config field can take a declared column's name (as the config's `mjs` once did)."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search import schema
from search.results import RETRAIN, ResultsStore, TrialBook
from search.space import KINDS
from search.trial import write_robustness
from ucrn.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PY_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
TYPE_NAMES = {pa.bool_(): "bool", pa.int64(): "int64", pa.float64(): "float64",
              pa.string(): "string"}


def config_types() -> dict[str, pa.DataType]:
    """The rule, applied independently of the writer: typed by the default's Python type."""
    return {f.name: PY_TYPES[type(f.default) if f.default is not None else str]
            for f in fields(TrainConfig)}


def _metrics(base: float) -> dict[str, float]:
    return {"loss": base, "MAE": base, "Corr": 1 - base, "Has0_acc_2": 0.7}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Two trials and two re-training seeds, through TrialBook and ResultsStore as the
    driver uses them."""
    root = tmp_path_factory.mktemp("schema") / "s"
    store = ResultsStore(root)
    book = TrialBook(store, "s", "MAE", "min", "tune")
    for i, tid in enumerate(("t_00000", "t_00001")):
        config = TrainConfig(num_epochs=2, lr=1e-3 * (i + 1), mjs_variant="jsd").to_dict()
        for epoch in (1, 2):
            book.add_result(tid, config, {
                "epoch": epoch, "train_loss": 0.9, "mjs": 0.01 * epoch, "current_lr": 1e-3,
                "seconds": 1.5, "node_id": "n1", "node": "host", "samples_per_s": 100.0,
                "peak_gpu_mem_mb": None, "checkpoint": f"/c/{tid}/{epoch}",
                "wall_seconds": 3.0 * epoch, "ended_at": 1.7e9 + epoch,
                **_metrics(0.8 - 0.1 * epoch)})
        book.finish(tid, config, "errored" if i else None, "RuntimeError: x" if i else None)
    base = {k: v for k, v in TrainConfig(num_epochs=2).to_dict().items() if k != "seed"}
    for seed in (1111, 1112):  # as search/driver.py's run_retrain builds its rows
        fin = {**_metrics(0.7), **{f"test_{k}": v for k, v in _metrics(0.75).items()}}
        row = {"search": str(root), "trial_id": "best", "retrain_trial": f"r_{seed}", **fin,
               "best_epoch": 2, "checkpoint": f"/c/r/{seed}.pt", **base, "seed": seed}
        store.write_rows(RETRAIN, f"seed_{seed}", [row])
        rows = [{"split": "test", "condition": c, "modality": m, "level": lv, "repeat": 0,
                 "n": 128, **_metrics(0.8)}
                for c, m, lv in (("clean", "", 0.0), ("missing", "l", 0.0), ("noise", "a", 0.5))]
        write_robustness(store, str(root), "best", {**base, "seed": seed}, rows)
    return root


@pytest.mark.parametrize("file", list(schema.FILES))
def test_written_types_are_the_schema(written, file):
    files = sorted((written / file).glob("*.parquet"))
    assert files, file
    want = config_types()
    for f in files:
        table_schema = pq.read_schema(f)
        names = set(table_schema.names)
        assert set(schema.FILE_COLUMNS[file]) <= names, (f, set(schema.FILE_COLUMNS[file]) - names)
        assert set(want) <= names, (f, set(want) - names)  # every config field, by its name
        for field in table_schema:
            if field.name in want:
                assert field.type == want[field.name], (f.name, field.name, field.type)
            else:
                assert field.name in schema.file_columns(file), (file, field.name)
                assert field.type == schema.declared_type(field.name), (file, field.name)
    table = pq.read_table(written / file)
    if file == schema.EPOCHS:
        assert table.schema.field("mjs").type == pa.float64()
        assert sorted(table.column("mjs").to_pylist()) == [0.01, 0.01, 0.02, 0.02]
        assert set(table.column("mjs_variant").to_pylist()) == {"jsd"}


def test_config_fields_cannot_collide_with_declared_columns():
    schema.check_config_fields(f.name for f in fields(TrainConfig))  # today's config passes
    for clash in ("mjs", "MAE", "test_loss", "status", "retrain_trial"):
        with pytest.raises(schema.SchemaError, match=rf"field\(s\) {clash} collide"):
            schema.check_config_fields(["lr", clash, "heads"], "TrainConfig")


def test_the_writer_refuses_a_colliding_config_at_import(monkeypatch):
    """Loading search/results.py with a config that has a field `mjs` fails, before any
    row is written."""
    @dataclass
    class OldConfig:
        lr: float = 1e-3
        mjs: str = "jsd"

    fake = types.ModuleType("ucrn.config")
    fake.TrainConfig = OldConfig
    monkeypatch.setitem(sys.modules, "ucrn.config", fake)
    spec = importlib.util.spec_from_file_location("results_with_old_config",
                                                  ROOT / "search" / "results.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(schema.SchemaError, match="ucrn.config.TrainConfig: field\\(s\\) mjs"):
        spec.loader.exec_module(module)


def test_undeclared_column_is_refused(tmp_path):
    with pytest.raises(schema.SchemaError, match="'new_thing'"):
        ResultsStore(tmp_path).write_rows(schema.TRIALS, "x", [{"trial_id": "x",
                                                                "new_thing": 1.0}])


def test_schema_is_consistent():
    assert not set(schema.COLUMNS) & set(schema.METRICS + schema.TEST_METRICS)
    used = {c for cols in schema.FILE_COLUMNS.values() for c in cols}
    assert used == set(schema.COLUMNS)  # every declared column is in some file
    assert set(schema.FILE_COLUMNS) == set(schema.FILE_GROUPS) == set(schema.FILES)
    assert "retrain_trial" in schema.file_columns(schema.RETRAIN)
    assert set(schema.FAILED) <= set(schema.STATUSES)
    assert schema.SPACE_KINDS == KINDS  # search.json's space is what search/space.py reads


def test_the_values_a_reader_accepts_are_the_writers():
    """check_results refuses other values of these columns: they must be every value the
    code writes (declared here without torch, so kept equal by this test)."""
    from search.driver import TRAINABLE_EXECUTOR
    from ucrn.conditions import CONDITIONS
    from ucrn.data import SPLITS

    assert schema.VALUES["condition"] == CONDITIONS and schema.VALUES["split"] == SPLITS
    assert set(schema.VALUES["executor"]) == set(TRAINABLE_EXECUTOR.values())
    assert set(schema.REQUIRED) == set(schema.FILES)
    for file, names in schema.REQUIRED.items():
        assert all(n in schema.file_columns(file) or n in config_types() for n in names)


def test_what_the_writer_writes_passes_the_readers_check(written):
    """The one check every reader applies finds nothing wrong with the writer's files."""
    from search.results import CONFIG_TYPES

    read = {f: dict(zip((p.stem for p in sorted((written / f).glob("*.parquet"))),
                        (pq.read_table(p) for p in sorted((written / f).glob("*.parquet")))))
            for f in schema.FILES}
    for config in (CONFIG_TYPES, None):  # as the driver reads, and as analyze.py does
        checked = schema.check_results(read, lambda f, k: f"{f}/{k}", "MAE", "min", config)
        assert checked.warnings == [] and checked.notes == [] and not checked.rebuilt
        assert {f: set(t) for f, t in checked.tables.items()} == {
            f: set(t) for f, t in read.items()}


# ---- docs/results.md lists exactly the schema ------------------------------------------

def _doc() -> str:
    return (ROOT / "docs" / "results.md").read_text()


def _table_after(text: str, heading: str) -> list[list[str]]:
    """Body rows (cells) of the first markdown table after `heading`."""
    rest = text.split(heading + "\n", 1)[1]
    lines = [ln for ln in rest.split("\n## ")[0].split("\n### ")[0].splitlines()
             if ln.startswith("|")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[2:]]


@pytest.mark.parametrize("file", list(schema.FILES))
def test_docs_list_exactly_the_schema_columns(file):
    documented, groups = {}, []
    for first, typ, meaning in _table_after(_doc(), f"### {file}"):
        names = re.findall(r"`([^`]+)`", first)
        assert meaning, (file, first)
        if not names:
            assert first in schema.GROUPS, f"{file}: unknown group row {first!r}"
            groups.append(first)
            if first != schema.CONFIG_GROUP:
                assert typ == TYPE_NAMES[schema.METRIC_TYPE], (file, first, typ)
            continue
        for name in names:
            assert name not in documented, f"{file}: {name} listed twice"
            documented[name] = typ
    declared = schema.FILE_COLUMNS[file]
    assert set(declared) - set(documented) == set(), f"{file}: missing from docs"
    assert set(documented) - set(declared) == set(), f"{file}: not in search/schema.py"
    for name, typ in documented.items():
        assert typ == TYPE_NAMES[schema.COLUMNS[name].type], (file, name, typ)
    assert sorted(groups) == sorted(schema.FILE_GROUPS[file])


def test_docs_list_exactly_the_metrics_statuses_and_files():
    text = _doc()
    listed = text.split("**Metric columns** (float64):", 1)[1].split(" (the names of", 1)[0]
    assert re.findall(r"`([^`]+)`", listed) == list(schema.METRICS)
    rows = _table_after(text, "**Statuses** (`status` of trials.parquet):")
    assert [re.findall(r"`([^`]+)`", row[0])[0] for row in rows] == list(schema.STATUSES)
    files = re.findall(r"`STORAGE/NAME/([a-z_]+\.parquet)/`", text)
    assert set(files) == set(schema.FILES)


def test_resuming_a_pre_rename_search_rewrites_it_typed(written, tmp_path):
    """A search written before `mjs` became `mjs_variant` has the config string in the
    float column `mjs`; a resumed book rewrites such a trial with the schema's types."""
    import shutil

    root = tmp_path / "old"
    shutil.copytree(written, root)
    f = root / schema.EPOCHS / "t_00000.parquet"
    table = pq.read_table(f).drop_columns(["mjs", "mjs_variant"])
    pq.write_table(table.append_column("mjs", pa.array(["jsd"] * len(table))), f)
    book = TrialBook(ResultsStore(root), "s", "MAE", "min", "tune")
    book.load()
    config = TrainConfig(num_epochs=3).to_dict()
    book.add_result("t_00000", config, {"epoch": 3, "mjs": 0.03, **_metrics(0.5)})
    rewritten = pq.read_table(f)
    assert rewritten.schema.field("mjs").type == pa.float64()
    assert rewritten.column("mjs").to_pylist() == [None, None, 0.03]
