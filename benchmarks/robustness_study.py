"""Does training with modality dropout make UCRN robust to a missing modality? Measured.

    python -m benchmarks.robustness_study --out docs/robustness     # 5 seeds x 2 configs
    python -m benchmarks.robustness_study --out DIR --small         # 2 seeds, 2 epochs (CI)

The default training config against the same config with `modality_dropout` 0.3, on the
project's synthetic data (which puts signal in every modality), each trained on the same
seeds; each seed's selected model is scored on the test split under every robustness
condition (ucrn.robustness). Writes DIR/robustness_study.json (every row, the summary,
the environment), DIR/robustness_study.md (the table) and the analysis' own two
robustness plots, one panel per config. No Ray: one trial is `ucrn.train.fit`.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from search.analysis.formatting import markdown_table
from search.analysis.loading import Search
from search.analysis.robustness import plot_missing, plot_noise, robustness_table
from ucrn.config import TrainConfig
from ucrn.data import load_dataset
from ucrn.errors import OneLineParser, run_main
from ucrn.fileio import atomic_write
from ucrn.robustness import robustness_rows
from ucrn.train import fit

CONFIGS = {"default": {}, "modality_dropout 0.3": {"modality_dropout": 0.3}}
SEEDS = (1111, 1112, 1113, 1114, 1115)  # MMSA's convention


def _keeper(held: list[Any]):
    """An on_epoch hook that keeps the trainer (its model ends with the best weights)."""
    def keep(epoch: int, record: dict[str, Any], trainer: Any) -> None:
        held[:] = [trainer]

    return keep


def run_config(name: str, extra: dict[str, Any], seeds: tuple[int, ...], epochs: int,
               repeats: int, data) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        cfg = TrainConfig(num_epochs=epochs, seed=seed, threads=1, device="cpu", **extra)
        held: list[Any] = []
        result = fit(cfg, data, on_epoch=_keeper(held))
        trainer = held[0]  # fit loads the best epoch's weights back before it returns
        got = robustness_rows(trainer.model, data, ("test",), repeats, seed=seed,
                              device=trainer.device)
        rows += [{"config": name, "seed": seed, "best_epoch": result.best_epoch, **r}
                 for r in got]
        print(f"{name} seed {seed}: best epoch {result.best_epoch}, test MAE "
              f"{result.test['MAE']:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def as_search(name: str, rows: pd.DataFrame) -> Search:
    """The analysis' view of one config's rows, so the report's own plots draw them."""
    return Search(label=name, location="", trials=pd.DataFrame(), epochs=None, retrain=None,
                  robustness=rows.drop(columns=["config"]))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per config, the drop in test MAE (mean ± std over seeds) with each modality and
    pair missing, and under noise 1.0 on all modalities."""
    parts = []
    for name, rows in frame.groupby("config", sort=False):
        table, _ = robustness_table(as_search(name, rows))
        keep = table[(table.condition == "missing")
                     | ((table.condition == "noise") & (table.modality == "all"))
                     | (table.condition == "clean")]
        parts.append(keep.assign(config=name))
    return pd.concat(parts, ignore_index=True)[["config", "condition", "modality", "level",
                                                "MAE", "drop", "seeds"]]


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m benchmarks.robustness_study",
                      description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the JSON, table and plots")
    p.add_argument("--small", action="store_true", help="2 seeds, 2 epochs (CI)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per run (the authors' 40)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of random conditions")
    p.add_argument("--replot", action="store_true",
                   help="redraw the table and plots from OUT/robustness_study.json, no training")
    args = p.parse_args(argv)
    if args.replot:
        from ucrn.safeload import load_json

        doc = load_json(Path(args.out) / "robustness_study.json", "--replot")
        return _report(Path(args.out), pd.DataFrame(doc["rows"]), None)
    seeds, epochs = (SEEDS[:2], 2) if args.small else (SEEDS, args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("synthetic", None, preset="tiny")
    t0 = time.time()
    rows = [r for name, extra in CONFIGS.items()
            for r in run_config(name, extra, seeds, epochs, args.repeats, data)]
    frame = pd.DataFrame(rows)
    doc = {"environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                           "seconds": round(time.time() - t0, 1)},
           "data": data.source, "seeds": list(seeds), "epochs": epochs,
           "repeats": args.repeats, "configs": CONFIGS, "rows": rows}
    return _report(out, frame, doc)


def _report(out: Path, frame: pd.DataFrame, doc: dict[str, Any] | None) -> int:
    """The summary table and the two plots (and the JSON, after a run)."""
    table = summary(frame)
    if doc is not None:
        doc["summary"] = table.to_dict("records")
        atomic_write(out / "robustness_study.json",
                     json.dumps(doc, indent=1, default=str).encode())
    md = markdown_table(table)
    atomic_write(out / "robustness_study.md", (md + "\n").encode())
    searches = [as_search(name, g) for name, g in frame.groupby("config", sort=False)]
    plot_missing(searches, out / "robustness_missing.png", top=0, imps={})
    plot_noise(searches, out / "robustness_noise.png", top=0, imps={})
    print(md)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
