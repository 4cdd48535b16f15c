"""`python -m ucrn ...` and the `ucrn` command: see ucrn.cli."""

from ucrn.errors import program


def main() -> None:
    program("ucrn.cli:main")


if __name__ == "__main__":
    main()
