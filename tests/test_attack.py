"""What an outside attack on the finished reliability work found, each as a test
(docs/reliability.md, "Found by our own attack")."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_search
from search.flags import Flags, check_address
from search.results import ResultsStore, TrialBook
from search.trial import REPLAYED_EPOCH, run_body
from tests.results_fixture import write_fake_search
from ucrn import cli
from ucrn.config import TrainConfig
from ucrn.data import load_dataset, make_synthetic, write_mult_pickle
from ucrn.errors import UsageError
from ucrn.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--d_model=8", "--heads=2", "--layers=1", "--threads=1", "--num_epochs=1"]


def _one_line(capsys, rc: int, code: int = 2) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if not ln.startswith(("warning:", "note:"))]
    assert rc == code and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resumable(folder: Path, data_id: dict | None = None) -> None:
    """A results folder with Tune state, as an interrupted search leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"flags": {"num_samples": 2, "max_epochs": 1},
           "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "layers": 1, "d_model": 8, "heads": 2}}
    if data_id is not None:
        doc["data"] = data_id
    (folder / "search.json").write_text(json.dumps(doc))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")


@pytest.mark.parametrize("how", ["world-writable", "group-shared", "someone-elses"])
def test_tune_state_others_could_write_is_never_unpickled(how, tmp_path, capsys):
    """Tune restores a search from pickles: a folder another user could have written is
    refused before any of it is loaded."""
    s = tmp_path / "s"
    _resumable(s)
    marker = tmp_path / "PWNED"
    (s / "tuner.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    target = s / "tuner.pkl"
    if how == "world-writable":
        target.chmod(0o666)
    elif how == "group-shared":
        os.chown(target, os.getuid(), 65534)  # a group this user is not alone in
        target.chmod(0o664)
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to give a file to another user")
        os.chown(target, 65534, 65534)
    rc = run_search.main(["--storage", str(tmp_path), "--name", "s", "--resume"])
    line = _one_line(capsys, rc)
    assert "tuner.pkl" in line and "pickle data" in line
    assert not marker.exists()


def test_resume_may_change_resources_not_the_search():
    saved = {"num_samples": 8, "cpus_per_trial": 2.0, "space": "a.yaml", "max_epochs": 4}
    now = Flags(cpus_per_trial=1.0, num_samples=8)
    fl = now.resumed_from(saved, "search.json", {"cpus_per_trial", "num_samples"})
    assert fl.cpus_per_trial == 1.0 and fl.num_samples == 8 and fl.max_epochs == 4
    with pytest.raises(UsageError, match="--num-samples 5: a resumed search keeps its own"):
        Flags(num_samples=5).resumed_from(saved, "search.json", {"num_samples"})
    with pytest.raises(UsageError, match="--space b.yaml"):
        Flags(space="b.yaml").resumed_from(saved, "search.json", {"space"})


def test_resume_with_other_data_is_refused(tmp_path, capsys):
    a = make_synthetic("tiny", seed=1, n_train=16, n_valid=8, n_test=8)
    b = make_synthetic("tiny", seed=2, n_train=16, n_valid=8, n_test=8)
    f = tmp_path / "data" / "mosi_data_noalign.pkl"
    write_mult_pickle(a, f)
    ident = load_dataset("mosi", f).identity()
    s = tmp_path / "s"
    _resumable(s, ident)
    doc = json.loads((s / "search.json").read_text())
    doc["flags"].update(dataset="mosi", data_path=str(f))
    (s / "search.json").write_text(json.dumps(doc))
    (s / "experiment_state-2026-01-01_00-00-00.json").unlink()  # no Tune state: no Ray needed
    write_mult_pickle(b, f)  # the file was replaced meanwhile (same shapes)
    rc = run_search.main(["--storage", str(tmp_path), "--name", "s", "--resume"])
    line = _one_line(capsys, rc)
    assert "the data changed since the search began" in line and "labels_sha256" in line


def test_address_auto_naming_a_dead_cluster_is_one_line(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    t0 = time.time()
    with pytest.raises(UsageError, match="--address auto: 127.0.0.1:1 .from RAY_ADDRESS. does "
                                         "not answer"):
        check_address("auto")
    assert time.time() - t0 < 10


@pytest.mark.parametrize(("args", "needle"), [
    (["--cpus-per-trial", "3"], "needs 3 of resource 'CPU' but no node"),
    (["--trial-resources", '{"gpu_node": 1}'], "resource 'gpu_node' but no node"),
    (["--cpus-per-trial", "1e-9"], "--cpus-per-trial 1e-09: expected a number >= 0.01"),
])
def test_trials_no_node_can_host_are_refused(ray_head, tmp_path, capsys, args, needle):
    rc = run_search.main(["--address", ray_head, "--storage", str(tmp_path), "--name", "r",
                          "--executor", "tune", *args])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r" / "trials.parquet").exists()


def test_a_damaged_trial_file_is_rebuilt_not_dropped(tmp_path):
    """A finished trial never reports again: its unreadable file is rebuilt from its
    epoch rows (and said), so the best config stays the best trial's."""
    store = ResultsStore(tmp_path / "s")
    book = TrialBook(store, "s", "MAE", "min", "tune")
    cfg = TrainConfig(num_epochs=2).to_dict()
    for tid, maes in (("good", (0.9, 0.5)), ("worse", (0.9, 0.8))):
        for e, mae in enumerate(maes, 1):
            book.add_result(tid, {**cfg, "lr": 0.001 if tid == "good" else 0.01},
                            {"epoch": e, "MAE": mae, "loss": mae})
        book.finish(tid, {**cfg, "lr": 0.001 if tid == "good" else 0.01})
    (tmp_path / "s" / "trials.parquet" / "good.parquet").write_bytes(os.urandom(300))
    again = TrialBook(store, "s", "MAE", "min", "tune")
    notes = again.load()
    assert len(notes) == 1 and "good.parquet was unreadable" in notes[0]
    assert again.best_trial()["trial_id"] == "good" and again.best_trial()["MAE"] == 0.5
    assert again.trials["good"]["status"] == "completed" and again.trials["good"]["lr"] == 0.001
    assert len(pd.read_parquet(tmp_path / "s" / "trials.parquet")) == 2  # rewritten whole


def test_replayed_reports_do_not_carry_the_schedulers_epoch(tmp_path):
    """After a restart a trial re-sends its history; under `epoch` a restored ASHA would
    judge it again at its first rung (and once stopped trials at epochs like 13)."""
    data = load_dataset("synthetic", None, preset="tiny")
    cfg = TrainConfig(d_model=8, heads=2, layers=1, num_epochs=3, threads=1).to_dict()
    first: list[tuple[dict, str | None]] = []

    def keep(metrics, d):
        if d is not None:
            (tmp_path / "ck").mkdir(exist_ok=True)
            for f in Path(d).iterdir():
                (tmp_path / "ck" / f.name).write_bytes(f.read_bytes())
        first.append((metrics, d))
        if len(first) == 2:
            raise KeyboardInterrupt  # the trial dies after its second epoch

    with pytest.raises(KeyboardInterrupt):
        run_body(cfg, data, keep, None)
    resumed: list[dict] = []
    run_body(cfg, data, lambda m, d: resumed.append(m), str(tmp_path / "ck"))
    replays = [m for m in resumed if m.get("replay")]
    assert [m[REPLAYED_EPOCH] for m in replays] == [1, 2]
    assert all("epoch" not in m for m in replays)
    assert [m["epoch"] for m in resumed if not m.get("replay")] == [3]
    book = TrialBook(ResultsStore(tmp_path / "s"), "s", "MAE", "min", "tune")
    for m in resumed:
        book.add_result("t", cfg, m)
    assert sorted(book.epochs["t"]) == [1, 2, 3] and book.trials["t"]["resumes"] == 1


@pytest.mark.parametrize("kind", ["device", "symlink", "the-checkpoint", "trailing-slash",
                                  "folder"])
def test_predict_out_never_replaces_what_it_should_not(kind, tmp_path, capsys):
    assert cli.main(["train", *SMALL, "--out", str(tmp_path), "--name", "p"]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "p" / "checkpoint.pt"
    before = ckpt.read_bytes()
    if kind == "device":
        out = tmp_path / "null"
        os.mknod(out, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
    elif kind == "symlink":
        out = tmp_path / "link.parquet"
        (tmp_path / "target.txt").write_text("keep me")
        out.symlink_to(tmp_path / "target.txt")
    elif kind == "the-checkpoint":
        out = ckpt
    elif kind == "trailing-slash":
        out = f"{tmp_path / 'new'}/"
    else:
        out = tmp_path / "p"
    rc = cli.main(["predict", "--checkpoint", str(ckpt), "--out", str(out)])
    line = _one_line(capsys, rc)
    assert "--out" in line
    assert ckpt.read_bytes() == before
    if kind == "device":
        assert not Path(out).is_file()
    if kind == "symlink":
        assert Path(out).is_symlink() and (tmp_path / "target.txt").read_text() == "keep me"
    if kind == "trailing-slash":
        assert not (tmp_path / "new").exists()


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    def stopped(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt  # SIGTERM is one too now (ucrn.errors.run_main)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "big.pkl", stopped)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_to_synth_exits_130_and_leaves_nothing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ucrn", "synth", "--preset", "mosi",
                             "--out", str(tmp_path / "d")], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = tmp_path / "d"
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:  # stop it in the middle of writing
        if out.exists() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            break
        time.sleep(0.005)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("synth finished before the signal")
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    leftovers = [p for p in (tmp_path / "d").rglob("*")] if (tmp_path / "d").exists() else []
    assert not [p for p in leftovers if p.name.endswith(".tmp")]


def test_training_that_runs_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """A failure inside torch (out of memory, a numeric error) ends the run with one line,
    final.json `failed` and the traceback in the run folder."""
    import ucrn.cli as ucli

    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "400000000000 bytes.\nmore detail")

    monkeypatch.setattr(ucli, "fit", oom)
    rc = cli.main(["train", *SMALL, "--out", str(tmp_path), "--name", "o"])
    line = _one_line(capsys, rc, code=1)
    assert "training failed: RuntimeError: DefaultCPUAllocator" in line and "error.txt" in line
    final = json.loads((tmp_path / "o" / "final.json").read_text())
    assert final["status"] == "failed" and "can't allocate" in final["error"]
    assert "Traceback" in (tmp_path / "o" / "error.txt").read_text()


@pytest.mark.parametrize(("args", "needle"), [
    (["--lr", "1e39"], "lr=1e+39: expected a finite number (within float32's range"),
    (["--temp_proj", "100000"], "temp_proj=100000: more steps than the longest input sequence"),
])
def test_values_torch_cannot_hold_are_refused_before_the_run(args, needle, tmp_path, capsys):
    rc = cli.main(["train", *SMALL, *args, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_an_older_config_without_newer_fields_still_runs(tmp_path, capsys):
    old = TrainConfig(d_model=8, heads=2, layers=1, threads=1, num_epochs=1).to_dict()
    del old["ff_mult"], old["sqil_reduction"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    rc = cli.main(["train", "--config", str(tmp_path / "old.json"), "--out", str(tmp_path),
                   "--name", "o"])
    err = capsys.readouterr().err
    assert rc == 0 and "predates ff_mult, sqil_reduction: using the defaults" in err


def test_a_full_disk_leaves_no_empty_plot(tmp_path):
    """analyze --out on a disk that fills: one line, exit 1, no empty PNG or temp file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        write_fake_search(tmp_path, "s")
        res = subprocess.run([sys.executable, "analyze.py", str(tmp_path / "s"), "--out",
                              str(disk / "report")], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        files = [(p.name, p.stat().st_size) for p in disk.rglob("*") if p.is_file()]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert res.returncode == 1, res.stdout[-500:] + res.stderr[-500:]
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not [f for f in files if f[1] == 0 or f[0].endswith(".tmp")], files


def test_yaml_exponent_without_a_dot_is_explained(tmp_path, capsys):
    f = tmp_path / "space.yaml"
    f.write_text("lr: {loguniform: [1e-4, 1e-2]}\n")
    rc = run_search.main(["--space", str(f), "--storage", str(tmp_path / "st")])
    assert "YAML reads 1e-4 as text: write 1.0e-4" in _one_line(capsys, rc)


def test_checkpoint_bundle_is_still_loadable_after_the_attack_fixes(tmp_path):
    assert cli.main(["train", *SMALL, "--out", str(tmp_path), "--name", "c"]) == 0
    bundle = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert {"state_dict", "model_config", "config", "epoch"} <= set(bundle)


def test_written_files_have_the_usual_permissions(tmp_path):
    """Results are shared with a group on clusters: a file written whole gets the mode
    open() would give (0666 less the umask), not the temporary file's private 0600."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


# ---- the robustness round (docs/reliability.md) --------------------------------------------

def test_a_seed_resumed_after_its_last_epoch_is_still_kept(tmp_path):
    """A worker that dies after the last epoch is resumed from that epoch's checkpoint: no
    epoch runs, and the selected weights must still be kept (and scored)."""
    from search.trial import run_body

    data = load_dataset("synthetic", None, preset="tiny")
    cfg = TrainConfig(d_model=8, heads=2, layers=1, num_epochs=2, threads=1, seed=3).to_dict()
    ck = tmp_path / "ck"

    def keep_last(metrics, d):
        if d is not None:
            ck.mkdir(exist_ok=True)
            for f in Path(d).iterdir():
                (ck / f.name).write_bytes(f.read_bytes())

    run_body(cfg, data, keep_last, None)
    kept = []

    def save(bundle, trainer, d):
        kept.append((bundle["epoch"], trainer is not None and trainer.model is not None))
        return "somewhere"

    reports = []
    run_body(cfg, data, lambda m, d: reports.append(m), str(ck), save_model=save)
    assert kept and kept[0][1] and reports[-1]["model_checkpoint"] == "somewhere"


def test_robustness_that_cannot_be_written_never_loses_the_seed(tmp_path, capsys):
    from search.settings import TrialSettings
    from search.trial import _model_saver

    data = load_dataset("synthetic", None, preset="tiny")
    cfg = TrainConfig(d_model=8, heads=2, layers=1, num_epochs=1, threads=1, seed=4)
    from ucrn.train import fit

    result = fit(cfg, data)
    (tmp_path / "robustness.parquet").write_text("a file where the folder goes")
    settings = TrialSettings(base={}, workers=1, cpus_per_worker=1, gpus_per_worker=0,
                             extra_resources={}, max_failures=0, train_storage="",
                             results_uri=str(tmp_path), save_models=True, retrain_of="best",
                             robustness_repeats=1)
    mcfg = cfg.model_config(data.input_dims, data.seq_lens, data.output_dim)
    where = _model_saver(settings, cfg.to_dict())({"state_dict": result.model_state,
                                                   "model_config": mcfg.to_dict()},
                                                  result.trainer, data)
    assert Path(where).is_file()
    assert "robustness rows not written" in capsys.readouterr().out


def test_two_retrained_trials_are_never_averaged_together(tmp_path):
    from search.analysis.loading import load_search
    from search.analysis.robustness import robustness_table
    from tests.results_fixture import write_fake_robustness

    write_fake_search(tmp_path, "s")
    write_fake_robustness(tmp_path, "s", trial_id="best")
    write_fake_robustness(tmp_path, "s", trial_id="other", seeds=(1113,), offset=0.4)
    table, line = robustness_table(load_search(str(tmp_path / "s")))
    clean = table[table.condition == "clean"].set_index("trial")["MAE"]
    assert clean["other"].endswith("(1 seed)") and "±" in clean["best"]
    assert float(clean["other"].split()[0]) > float(clean["best"].split()[0]) + 0.3
    assert "best: [1111, 1112, 1113]" in line and "other: [1113]" in line


def test_predict_and_robustness_use_the_data_the_model_was_trained_on(tmp_path, capsys):
    write_mult_pickle(make_synthetic("tiny", seed=5), tmp_path / "d" / "mine.pkl")
    assert cli.main(["train", *SMALL, "--dataset", "synthetic", "--data_path",
                     str(tmp_path / "d" / "mine.pkl"), "--out", str(tmp_path), "--name",
                     "m"]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "m" / "checkpoint.pt"
    assert cli.main(["robustness", "--checkpoint", str(ckpt), "--repeats", "1", "--out",
                     str(tmp_path / "r.parquet")]) == 0
    assert "mine.pkl" in capsys.readouterr().out
    (tmp_path / "d" / "mine.pkl").unlink()
    rc = cli.main(["predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.parquet")])
    assert "mine.pkl, which is gone; pass --data_path" in _one_line(capsys, rc)


def test_constant_training_features_are_said_when_noise_is_scaled_by_them():
    from ucrn.conditions import feature_std

    data = load_dataset("synthetic", None, preset="tiny")
    split = data.splits["train"]
    split.vision[:] = 0.0
    with pytest.warns(RuntimeWarning, match="vision: 10 of 10 features are constant"):
        stds = feature_std(split)
    assert not stds["v"].any() and stds["a"].all()


@pytest.mark.parametrize(("args", "needle"), [
    (["--modalities", "l", "--robust_metrics"], "robust_MAE needs two or more modalities"),
    (["--modalities", "a", "--modality_dropout", "0.5"], "modality_dropout=0.5: needs two"),
    (["--input_noise", "1e30"], "input_noise=1e+30: expected 0 (off) to 100"),
])
def test_robustness_options_that_cannot_mean_anything_are_refused(args, needle, tmp_path,
                                                                  capsys):
    rc = cli.main(["train", *SMALL, *args, "--out", str(tmp_path / "r")])
    assert needle in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_robust_metrics_on_iemocap_data_leave_no_run_folder(tmp_path, capsys):
    write_mult_pickle(make_synthetic("iemocap_tiny", seed=1), tmp_path / "synth.pkl")
    rc = cli.main(["train", *SMALL, "--dataset", "synthetic", "--data_path",
                   str(tmp_path / "synth.pkl"), "--robust_metrics", "--out",
                   str(tmp_path / "r")])
    assert "regression only" in _one_line(capsys, rc)
    assert not (tmp_path / "r").exists()


def test_repeats_are_bounded(tmp_path, capsys):
    rc = run_search.main(["--storage", str(tmp_path), "--robustness-repeats", "1000"])
    assert "--robustness-repeats 1000: expected 0 (none) to 100" in _one_line(capsys, rc)
    rc = cli.main(["robustness", "--checkpoint", "x.pt", "--repeats", "101", "--out",
                   str(tmp_path / "r.parquet")])
    assert "--repeats 101: expected an integer from 1 to 100" in _one_line(capsys, rc)


def test_an_iemocap_search_optimises_a_metric_iemocap_has():
    from search.flags import check_metric_task, resolve_metric

    assert resolve_metric(Flags(dataset="iemocap")) == "loss"
    assert resolve_metric(Flags(preset="iemocap_tiny")) == "loss"
    assert resolve_metric(Flags()) == "MAE"
    with pytest.raises(UsageError, match="--metric MAE: the data's task is iemocap"):
        check_metric_task("MAE", "iemocap")
    with pytest.raises(UsageError, match="--metric Mean_acc: the data's task is regression"):
        check_metric_task("Mean_acc", "regression")
