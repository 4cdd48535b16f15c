"""The report: sections of text and tables, rendered as text, markdown or a leaderboard.

Why sections: the terminal output and report.md say the same things in the same order;
only the rendering differs. report.md is written to a temporary name and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from search.analysis.formatting import markdown_table, text_table
from search.analysis.importance import Importance, best_regions
from search.analysis.loading import Search
from search.analysis.plots import PLOTS
from search.analysis.robustness import robustness_table, trade_off
from search.analysis.tables import (
    asha_savings,
    asha_text,
    best_per_group,
    leaderboard,
    mjs_epochs,
    retrain_tables,
    status_counts,
)
from ucrn.fileio import atomic_write

FORMATS = ("table", "csv", "json", "md")


@dataclass
class Section:
    """A titled list of paragraphs (str) and tables (DataFrame): rendered as text or md."""

    title: str
    blocks: list[str | pd.DataFrame] = field(default_factory=list)


def _importance_section(s: Search, imp: Importance) -> Section:
    blocks: list[str | pd.DataFrame] = [f"evaluator: optuna {imp.evaluator}, {imp.n_trials} "
                                        f"trials; objective {s.metric} ({s.mode})"]
    if imp.message:
        blocks.append(f"note: {imp.message}")
    blocks.append("best region: where the top quarter of ranked trials lies (numeric), "
                  "mean metric per choice, best first (categorical)")
    if s.params:
        blocks.append(best_regions(s, imp))
    return Section(f"Hyperparameter importance ({s.label})", blocks)


def build_sections(searches: list[Search], top: int,
                   imps: dict[str, Importance]) -> list[Section]:
    sections = []
    for s in searches:
        sections.append(Section(f"Search {s.label}", [
            f"location: {s.location}",
            f"{status_counts(s)}; ranked by {s.metric} ({s.mode}); diverged and errored "
            f"trials are never ranked",
            *(f"note: {n}" for n in s.notes)]))
        board = leaderboard(s, top).drop(columns="search")
        sections.append(Section(f"Top {min(top, len(board))} trials of {s.label} "
                                f"(validation metrics)", [board]))
        sections.append(_importance_section(s, imps[s.label]))
        sections.append(Section(f"Early stopping ({s.label})", asha_text(asha_savings(s))))
        sections.append(Section(f"Per-epoch MJS ({s.label})", [mjs_epochs(s, top)[1]]))
        if s.retrain is not None:
            per_seed, summary, seeds = retrain_tables(s)
            sections.append(Section(f"Re-training ({s.label})", [
                per_seed, f"mean ± std (sample std, ddof=1) over seeds "
                f"{', '.join(map(str, seeds))} (n={len(seeds)}):", summary]))
        if s.robustness is not None:
            table, line = robustness_table(s)
            sections.append(Section(f"Robustness of the re-trained models ({s.label})",
                                    [line, table]))
        front = trade_off(s)
        if not front.empty:
            cols = [c for c in ("trial_id", "MAE", "robust_MAE", *s.params) if c in front]
            sections.append(Section(f"MAE vs robust_MAE, Pareto front ({s.label})", [
                f"{len(front)} trials recorded both; {int(front['pareto'].sum())} on the front "
                f"(no other trial is better on both):",
                front[front["pareto"]].sort_values("MAE")[cols].reset_index(drop=True)]))
    if len(searches) > 1:
        sections.append(Section("Best configuration per group (dataset, aligned, modalities)",
                                [best_per_group(searches)]))
    return sections


def render_text(sections: list[Section]) -> str:
    out = []
    for sec in sections:
        out += [sec.title, "=" * len(sec.title)]
        out += [text_table(b) if isinstance(b, pd.DataFrame) else b for b in sec.blocks]
        out.append("")
    return "\n".join(out)


def render_markdown(sections: list[Section], images: list[tuple[str, str]],
                    searches: list[Search]) -> str:
    out = [f"# Search report: {', '.join(s.label for s in searches)}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            out += [markdown_table(b) if isinstance(b, pd.DataFrame) else b, ""]
    if images:
        out += ["## Plots", ""]
        out += [f"### {title}\n\n![{title}]({name})\n" for name, title in images]
    return "\n".join(out)


def machine_output(searches: list[Search], top: int, fmt: str) -> str:
    """The leaderboard alone, as csv, json or a markdown table."""
    board = pd.concat([leaderboard(s, top) for s in searches], ignore_index=True)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=1, double_precision=15) + "\n"
    return markdown_table(board) + "\n"


def write_report(searches: list[Search], sections: list[Section], out: Path, top: int,
                 imps: dict[str, Importance]) -> Path:
    """Every plot of the registry, then report.md linking them (relative links)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, plot in PLOTS.items():
        plot.draw(searches, out / name, top=top, imps=imps)
    md = out / "report.md"
    atomic_write(md, render_markdown(sections, [(n, p.title) for n, p in PLOTS.items()],
                                     searches).encode())
    return md
