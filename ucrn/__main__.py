"""`python -m ucrn ...` and the `ucrn` command: see ucrn.cli."""

from collections.abc import Callable

from ucrn.errors import program


def _load() -> Callable[[], int]:
    from ucrn.cli import main as cli_main

    return cli_main


def main() -> None:
    program(_load)


if __name__ == "__main__":
    main()
