"""Analyze finished (or running) searches from their Parquet files alone.

    python analyze.py STORAGE/NAME [STORAGE/OTHER ...] [--top K] [--metric NAME]
                      [--format table|csv|json|md] [--out DIR] [--no-report]
                      [--importance ped-anova|fanova]

Why a separate entry point: the results of a search must be readable on a laptop without
Ray, torch or a cluster, trusting only the files search/schema.py declares. The analysis
itself is the package search/analysis/ (its command line: search/analysis/command.py); this
is the entry point, which imports it with SIGINT/SIGTERM deferred (ucrn.errors.program).
Exit codes: 0 ok, 1 the report could not be written, 2 nothing usable / bad arguments.
"""

from collections.abc import Sequence

from ucrn.errors import program


def main(argv: Sequence[str] | None = None) -> int:
    from search.analysis.command import main as command_main

    return command_main(argv)


if __name__ == "__main__":
    program("search.analysis.command:main")
