"""analyze.py on fake search results (tests/results_fixture.py): the numbers it prints are
the ones in the Parquet rows, the report folder has readable plots, bad input is one line."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib import image as mpimg
from optuna.distributions import CategoricalDistribution, FloatDistribution

import analyze
from search.analysis.curves import plot_curves
from search.analysis.figure import pyplot
from search.analysis.formatting import fmt
from search.analysis.importance import best_regions, distribution, importance
from search.analysis.kinds import param_kind
from search.analysis.loading import Search, load_searches, varying_params
from search.analysis.param_plots import _axis_scale, _scatter_numeric, plot_parallel, plot_params
from search.analysis.tables import best_per_group, mjs_epochs, ranked
from tests.results_fixture import (
    FAKE_DROPS,
    SPACE,
    make_pre_rename,
    write_fake_retrain,
    write_fake_robustness,
    write_fake_search,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    write_fake_search(root, "s1", n_trials=8, max_epochs=4, modalities="lav", seed=0)
    write_fake_retrain(root, "s1")
    write_fake_search(root, "s2", n_trials=8, max_epochs=4, modalities="la", seed=1)
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = analyze.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def trials(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "trials.parquet")


def csv_board(argv: list[str], capsys) -> pd.DataFrame:
    rc, out, err = run([*argv, "--format", "csv", "--no-report"], capsys)
    assert rc == 0, err
    return pd.read_csv(io.StringIO(out))


def test_leaderboard_sorted_without_diverged_or_errored(storage, capsys):
    t = trials(storage / "s1")
    rankable = t[~t["status"].isin(["diverged", "errored"])]
    board = csv_board([storage / "s1"], capsys)
    assert list(board["trial_id"]) == list(rankable.sort_values("MAE")["trial_id"])
    assert list(board["rank"]) == list(range(1, len(rankable) + 1))
    assert board["MAE"].is_monotonic_increasing
    # the diverged trial's recorded MAE is the lowest of all, and still not "best"
    diverged = t.loc[t["status"] == "diverged"]
    assert diverged["MAE"].iloc[0] < rankable["MAE"].min()
    assert diverged["trial_id"].iloc[0] not in set(board["trial_id"])
    # the searched parameters are shown, constant config columns are not
    assert {"lr", "layers", "heads", "jsd_weight", "batch_size"} <= set(board.columns)
    assert "d_model" not in board.columns and "dataset" not in board.columns

    rc, out, _ = run([storage / "s1", "--no-report", "--top", "3"], capsys)
    assert rc == 0
    counts = t["status"].value_counts()
    assert (f"8 trials: {counts['completed']} completed, {counts['stopped']} stopped, "
            f"1 diverged, 1 errored") in out
    assert "Top 3 trials of s1" in out and "ranked by MAE (min)" in out


def test_metric_override_and_top(storage, capsys):
    board = csv_board([storage / "s1", "--metric", "Corr", "--top", "2"], capsys)
    assert len(board) == 2 and board["Corr"].is_monotonic_decreasing
    t = trials(storage / "s1")
    best = t[~t["status"].isin(["diverged", "errored"])]["Corr"].max()
    assert board["Corr"].iloc[0] == pytest.approx(best)


def test_importance_section_names_the_evaluator(storage, capsys):
    rc, out, _ = run([storage / "s1", "--no-report"], capsys)
    assert rc == 0
    assert "Hyperparameter importance (s1)" in out
    assert "evaluator: optuna PedAnovaImportanceEvaluator" in out
    s = load_searches([str(storage / "s1")], None)[0]
    imp = importance(s)
    assert set(imp.values) == set(s.params) == {"lr", "layers", "heads", "jsd_weight",
                                                "batch_size"}
    assert sum(imp.values.values()) == pytest.approx(1.0)
    regions = best_regions(s, imp).set_index("param")
    assert regions.loc["lr", "kind"] == "float (log)"  # lr spans two decades


def test_importance_degenerate_cases(tmp_path):
    df = trials(write_fake_search(tmp_path, "one", n_trials=8, seed=0))
    single = Search("one", "x", df, None, None, "MAE", "min", ["lr"])
    imp = importance(single)
    assert imp.values == {"lr": pytest.approx(1.0)} and "one searched parameter" in imp.message
    few = Search("few", "x", df.head(1), None, None, "MAE", "min", ["lr", "layers"])
    imp = importance(few)
    assert imp.values == {} and "at least 2 trials" in imp.message
    none = Search("none", "x", df, None, None, "MAE", "min", [])
    assert "nothing to assess" in importance(none).message


def test_categorical_parameter(tmp_path):
    df = trials(write_fake_search(tmp_path, "cat", n_trials=12, seed=2))
    df["optim"] = ["Adam", "AdamW", "SGD"] * 4
    s = Search("cat", "x", df, None, None, "MAE", "min", varying_params(df))
    assert "optim" in s.params
    imp = importance(s)
    assert "optim" in imp.values
    regions = best_regions(s, imp).set_index("param")
    assert regions.loc["optim", "kind"] == "categorical"
    assert "Adam:" in regions.loc["optim", "per choice: mean metric (n)"]
    plot_params([s], tmp_path / "params.png", top=5, imps={"cat": imp})
    plot_parallel([s], tmp_path / "parallel.png", top=5, imps={"cat": imp})
    assert mpimg.imread(tmp_path / "params.png").shape[0] > 100


def test_asha_savings_match_the_rows(storage, capsys):
    t = trials(storage / "s1")
    run_, budget = int(t["epochs_run"].sum()), int(t["num_epochs"].sum())
    assert budget == 8 * 4
    rc, out, _ = run([storage / "s1", "--no-report"], capsys)
    assert rc == 0
    assert f"epochs run: {run_} of {budget} (trials x max epochs) = " \
           f"{100 * run_ / budget:.1f}%; saved {100 - 100 * run_ / budget:.1f}%" in out
    per_rung = t[t["status"] == "stopped"]["epochs_run"].value_counts().sort_index()
    assert set(per_rung.index) == {1, 2}
    expected = ", ".join(f"{k}: {v} trial(s)" for k, v in per_rung.items())
    assert f"stopped at rung (epochs run): {expected}" in out


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)
    assert float(np.std(img)) > 0.01, f"{path} looks blank"


def test_report_folder(storage, tmp_path, capsys):
    out_dir = tmp_path / "rep"
    rc, out, _ = run([storage / "s1", "--out", out_dir], capsys)
    assert rc == 0 and f"report: {out_dir / 'report.md'}" in out
    md = (out_dir / "report.md").read_text()
    for name in ("curves.png", "params.png", "parallel.png"):
        _check_png(out_dir / name)
        assert f"]({name})" in md  # relative links
    assert "| rank | trial_id |" in md and "## Hyperparameter importance (s1)" in md
    assert "## Re-training (s1)" in md


def test_two_searches_one_best_per_group(storage, capsys):
    rc, out, _ = run([storage / "s1", storage / "s2", "--no-report"], capsys)
    assert rc == 0 and "Best configuration per group" in out
    searches = load_searches([str(storage / "s1"), str(storage / "s2")], None)
    groups = best_per_group(searches)
    assert sorted(groups["modalities"]) == ["la", "lav"] and len(groups) == 2
    for name, mods in (("s1", "lav"), ("s2", "la")):
        t = trials(storage / name)
        best = t[~t["status"].isin(["diverged", "errored"])].sort_values("MAE").iloc[0]
        row = groups[groups["modalities"] == mods].iloc[0]
        assert row["trial_id"] == best["trial_id"] and row["value"] == pytest.approx(best["MAE"])
        assert f"lr={fmt(best['lr'], 'lr')}" in row["config"]


def test_machine_formats_parse_back(storage, capsys):
    board = csv_board([storage / "s1", storage / "s2", "--top", "3"], capsys)
    assert len(board) == 6 and set(board["search"]) == {"s1", "s2"}

    rc, out, _ = run([storage / "s1", "--format", "json", "--top", "3", "--no-report"], capsys)
    records = json.loads(out)
    assert rc == 0 and [r["rank"] for r in records] == [1, 2, 3]
    assert records[0]["MAE"] == pytest.approx(board[board["search"] == "s1"]["MAE"].iloc[0])
    assert isinstance(records[0]["best_epoch"], int)

    rc, out, _ = run([storage / "s1", "--format", "md", "--top", "3", "--no-report"], capsys)
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 2 + 3 and all(ln.startswith("|") for ln in lines)
    assert lines[1].startswith("|---")


def test_retrain_mean_and_std(storage, capsys):
    r = pd.read_parquet(storage / "s1" / "retrain.parquet")
    rc, out, _ = run([storage / "s1", "--no-report"], capsys)
    assert rc == 0 and "Re-training (s1)" in out
    for col in ("MAE", "test_MAE", "test_Corr"):
        assert f"{r[col].mean():.4f} ± {r[col].std(ddof=1):.4f}" in out
    assert "over seeds 1111, 1112, 1113, 1114, 1115 (n=5)" in out


def test_running_search_still_has_a_leaderboard(tmp_path, capsys):
    folder = write_fake_search(tmp_path, "live", n_trials=8, running=True)
    board = csv_board([folder], capsys)
    assert "running" in set(board["status"])
    rc, out, _ = run([folder, "--no-report"], capsys)
    assert rc == 0 and "have epochs but no trials row yet" in out
    assert "still running" in out


def test_mixed_schemas_use_the_union(tmp_path, capsys):
    reg = write_fake_search(tmp_path, "reg", seed=3)
    iem = write_fake_search(tmp_path, "iem", seed=4, task="iemocap", dataset="iemocap")
    old = write_fake_search(tmp_path, "old", seed=5)
    for f in (old / "trials.parquet").glob("*.parquet"):  # an older writer's files
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(["search_metric", "search_mode", "num_epochs",
                                           "Corr"]), f)
    rc, out, err = run([reg, iem, old, "--no-report"], capsys)
    assert rc == 0, err
    assert "ranked by loss (min)" in out and "ranked by MAE (min)" in out
    assert "Mean_F1" in out and "most epochs any trial ran" in out  # old: no num_epochs
    board = csv_board([reg, iem, old], capsys)
    assert board.loc[board["search"] == "iem", "MAE"].isna().all()
    assert board.loc[board["search"] == "old", "Corr"].isna().all()
    searches = load_searches([str(reg), str(iem), str(old)], None)
    plot_curves(searches, tmp_path / "curves.png", top=5, imps={})
    _check_png(tmp_path / "curves.png")


def _empty(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _only_epochs(root: Path) -> Path:
    src = write_fake_search(root / "src", "s")
    shutil.copytree(src / "epochs.parquet", root / "ep" / "epochs.parquet")
    return root / "ep"


def _corrupt(root: Path) -> Path:
    """Every trials file unreadable and no epoch rows to rebuild them from (one damaged
    file among good ones is a warning: tests/test_attack_results3.py)."""
    folder = write_fake_search(root, "bad")
    files = sorted((folder / "trials.parquet").glob("*.parquet"))
    for f in files:
        f.write_bytes(os.urandom(600))
    shutil.rmtree(folder / "epochs.parquet")
    return files[0]


@pytest.mark.parametrize("make", [_empty, _only_epochs, _corrupt,
                                  lambda root: root / "does-not-exist"],
                         ids=["empty", "only-epochs", "corrupt", "missing"])
def test_unusable_input_is_one_line_and_exit_2(make, tmp_path, capsys):
    named = make(tmp_path)
    search = named if named.suffix != ".parquet" else named.parents[1]
    rc, out, err = run([search], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0], err
    assert not (search / "report").exists()


def test_subprocess_default_report_location(tmp_path):
    folder = write_fake_search(tmp_path, "sub", seed=7)
    res = subprocess.run([sys.executable, "analyze.py", str(folder), "--top", "3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert "Top 3 trials of sub" in res.stdout and "Traceback" not in res.stderr
    assert (folder / "report" / "report.md").is_file()
    _check_png(folder / "report" / "parallel.png")


# ---- the search's own space decides each parameter's kind ------------------------------

UNIFORM_SPACE = {**SPACE, "out_dropout": {"uniform": [0.0, 0.5]}}


def _kinds(folder: Path) -> tuple[Search, pd.DataFrame]:
    s = load_searches([str(folder)], None)[0]
    return s, best_regions(s, importance(s)).set_index("param")


def test_space_decides_kinds_tables_and_axes(tmp_path):
    folder = write_fake_search(tmp_path, "u", n_trials=12, seed=0, space=UNIFORM_SPACE)
    s, regions = _kinds(folder)
    assert regions["kind"].to_dict() == {"lr": "float (log)", "layers": "int",
                                         "heads": "categorical", "jsd_weight": "float",
                                         "batch_size": "categorical", "out_dropout": "float"}
    assert regions.loc["heads", "all trials"] == "1, 2, 3, 5, 6"  # the space's choices
    heads = param_kind(s.trials["heads"], "heads", s.space)
    assert isinstance(distribution(heads, s.trials["heads"]), CategoricalDistribution)
    drop = param_kind(s.trials["out_dropout"], "out_dropout", s.space)
    dist = distribution(drop, s.trials["out_dropout"])
    assert isinstance(dist, FloatDistribution) and not dist.log
    assert (dist.low, dist.high) == (0.0, 0.5)  # the space's range, not the values'
    lr = param_kind(s.trials["lr"], "lr", s.space)
    fig, axes = pyplot().subplots(1, 2)
    r = ranked(s)
    for ax, kind in zip(axes, (drop, lr)):
        _scatter_numeric(ax, r, kind.name, "MAE", set(), r.head(0), kind)
    assert [ax.get_xscale() for ax in axes] == ["linear", "log"]
    pyplot().close(fig)
    scaled, _ = _axis_scale(r, r, drop)  # parallel coordinates: linear in out_dropout
    x = r["out_dropout"].to_numpy(dtype=float)
    assert np.allclose(scaled, (x - x.min()) / (x.max() - x.min()))

    (folder / "search.json").unlink()  # without the space: today's guess from the values
    s, regions = _kinds(folder)
    assert regions.loc["out_dropout", "kind"] == "float (log)"
    assert regions.loc["heads", "kind"] == "int"
    assert any("no search.json: parameter kinds are inferred" in n for n in s.notes)


@pytest.mark.parametrize("content", [
    "[1, 2]", "", "not json {", "null", '{"space": null}', '{"space": []}',
    '{"space": {"lr": null, "heads": {"choice": null}, "layers": {"int": [5, 1]},'
    ' "batch_size": {"choice": [[16], 32]}, "jsd_weight": {"beta": [1, 2]}},'
    ' "metric": ["MAE"], "mode": null}',
], ids=["list", "empty", "not-json", "null", "space-null", "space-list", "bad-entries"])
def test_malformed_search_json_is_noted_not_fatal(content, tmp_path, capsys):
    folder = write_fake_search(tmp_path, "m", seed=0)
    (folder / "search.json").write_text(content)
    rc, out, err = run([folder, "--out", tmp_path / "rep"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert "note: search.json" in out or "search.json" in out.split("Top ")[0]
    assert "ranked by MAE (min)" in out
    s, regions = _kinds(folder)
    assert regions.loc["lr", "kind"] == "float (log)"  # inferred: spans two decades
    assert any("search.json" in n and "inferred from values" in n for n in s.notes), s.notes


# ---- per-epoch MJS ----------------------------------------------------------------------

def test_mjs_is_float_and_plotted(storage, tmp_path, capsys):
    ep = pq.read_table(storage / "s1" / "epochs.parquet")
    assert ep.schema.field("mjs").type == pa.float64()
    out_dir = tmp_path / "rep"
    rc, out, _ = run([storage / "s1", "--out", out_dir], capsys)
    assert rc == 0 and "Per-epoch MJS (s1)" in out
    assert "per-epoch MJS (mean training value) recorded for" in out
    md = (out_dir / "report.md").read_text()
    assert "](mjs.png)" in md and "## Per-epoch MJS (s1)" in md
    _check_png(out_dir / "mjs.png")
    s = load_searches([str(storage / "s1")], None)[0]
    rows, _ = mjs_epochs(s, top=3)
    assert rows["rank"].nunique() == 3 and (rows["mjs"] > 0).all()


@pytest.mark.parametrize("case", ["pre-rename", "mjs-off"])
def test_no_mjs_values_are_said_not_crashed_on(case, tmp_path, capsys):
    if case == "pre-rename":  # the config string "jsd" in the float column mjs
        folder = make_pre_rename(write_fake_search(tmp_path, "old", seed=0))
        reason = "holds no numbers"
    else:
        folder = write_fake_search(tmp_path, "off", seed=0,
                                   space={**SPACE, "jsd_weight": 0.0})
        reason = "every trial ran with jsd_weight 0"
    rc, out, err = run([folder, "--out", tmp_path / "rep"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert "no per-epoch MJS values: " in out and reason in out
    if case == "pre-rename":
        assert "column 'mjs' holds non-numeric values (e.g. 'jsd')" in out
        assert "renamed mjs_variant" in out
    _check_png(tmp_path / "rep" / "mjs.png")


# ---- no torch needed --------------------------------------------------------------------

@pytest.mark.slow
def test_analysis_runs_without_torch(tmp_path):
    """The analysis imports neither torch nor the training config: torch is blocked
    (import fails) in a fresh interpreter that runs the whole report."""
    folder = write_fake_search(tmp_path, "lap", seed=1)
    write_fake_retrain(tmp_path, "lap")
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "import analyze\n"
            f"rc = analyze.main([{str(folder)!r}, '--out', {str(tmp_path / 'rep')!r}])\n"
            "assert 'ucrn.train' not in sys.modules and 'ray' not in sys.modules\n"
            "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trials of lap (validation metrics)" in res.stdout and "Re-training (lap)" in res.stdout
    for name in ("curves.png", "mjs.png", "params.png", "parallel.png"):
        _check_png(tmp_path / "rep" / name)


def test_robustness_section_means_over_seeds_and_plots(tmp_path, capsys):
    write_fake_search(tmp_path, "r", seed=3)
    write_fake_retrain(tmp_path, "r")
    write_fake_robustness(tmp_path, "r")
    rc, out, err = run([tmp_path / "r", "--out", tmp_path / "rep"], capsys)
    assert rc == 0, err
    assert "Robustness of the re-trained models (r)" in out
    from search.analysis.loading import load_search
    from search.analysis.robustness import robustness_table

    table, line = robustness_table(load_search(str(tmp_path / "r")))
    assert "best: [1111, 1112, 1113]" in line
    for (cond, mod), drop in FAKE_DROPS.items():
        row = table[(table.condition == cond) & (table.modality == mod)].iloc[0]
        assert row["drop"].startswith(f"{drop:+.4f} ± 0.0000"), (cond, mod, row["drop"])
        assert row["seeds"] == 3
    for name in ("robustness_noise.png", "robustness_missing.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert "robustness_missing.png" in (tmp_path / "rep" / "report.md").read_text()


def test_pareto_front_of_mae_and_robust_mae(tmp_path, capsys):
    from search.analysis.robustness import pareto_front

    pts = pd.DataFrame({"trial_id": list("abcde"), "MAE": [0.5, 0.6, 0.55, 0.7, 0.5],
                        "robust_MAE": [0.9, 0.7, 0.95, 0.65, 0.8]})
    assert list(pareto_front(pts, "MAE", "robust_MAE")["trial_id"]) == ["e", "b", "d"]
    folder = write_fake_search(tmp_path, "p", seed=4)
    for f in (folder / "trials.parquet").glob("*.parquet"):
        t = pd.read_parquet(f)
        t["robust_MAE"] = t["MAE"] * 1.5
        t.to_parquet(f)
    rc, out, err = run([folder, "--out", tmp_path / "rep"], capsys)
    assert rc == 0, err
    assert "MAE vs robust_MAE, Pareto front (p)" in out
    assert (tmp_path / "rep" / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)
