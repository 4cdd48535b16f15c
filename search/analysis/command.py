"""The command line of analyze.py: leaderboard, importance, ASHA savings and plots of
searches, from their Parquet files only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from search.analysis.files import AnalyzeError
from search.analysis.importance import EVALUATORS, importance
from search.analysis.loading import Search, load_searches
from search.analysis.report import (
    FORMATS,
    build_sections,
    machine_output,
    render_text,
    write_report,
)
from ucrn.errors import OneLineParser, one_line, run_main
from ucrn.fileio import is_uri
from ucrn.metrics import metric_mode


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = OneLineParser(prog="analyze.py", description="Leaderboard, importance, ASHA savings and "
                "plots of searches, from their Parquet files only.")
    p.add_argument("searches", nargs="+", metavar="STORAGE/NAME", help="search folder(s)")
    p.add_argument("--top", type=int, default=10, help="trials in the leaderboard (10)")
    p.add_argument("--metric", help="sort by this validation metric instead of the search's")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table: the full report; csv/json/md: the leaderboard only")
    p.add_argument("--out", help="report folder (default STORAGE/NAME/report of the first)")
    p.add_argument("--no-report", action="store_true", help="print only; write no files")
    p.add_argument("--importance", choices=EVALUATORS, default="ped-anova",
                   help="Optuna evaluator: ped-anova (default) or fanova (needs scikit-learn)")
    args = p.parse_args(list(argv))
    if args.top < 1:
        raise AnalyzeError(f"--top {args.top}: expected an integer >= 1")
    if args.metric:
        try:
            metric_mode(args.metric)
        except ValueError as e:
            raise AnalyzeError(f"--metric: {e}") from None
    return args


def default_out(first: Search) -> Path:
    if is_uri(first.location):  # remote storage: write the report here instead
        return Path.cwd() / f"{first.label}-report"
    return Path(first.location) / "report"


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    searches = load_searches(args.searches, args.metric)
    for s in searches:  # files left out or rebuilt (search/schema.py check_results)
        for line in s.warnings:
            print(f"warning: {line}", file=sys.stderr)
    if args.format != "table":
        sys.stdout.write(machine_output(searches, args.top, args.format))
    imps = {s.label: importance(s, args.importance) for s in searches}
    sections = build_sections(searches, args.top, imps)
    if args.format == "table":
        print(render_text(sections))
    if args.no_report:
        return 0
    out = Path(args.out) if args.out else default_out(searches[0])
    try:
        md = write_report(searches, sections, out, args.top, imps)
    except OSError as e:
        print(f"error: cannot write the report to {out}: {one_line(e)}", file=sys.stderr)
        return 1
    if args.format == "table":
        print(f"report: {md}")
    return 0
