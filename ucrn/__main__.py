"""`python -m ucrn ...`: see ucrn.cli."""

import sys

from ucrn.cli import main

if __name__ == "__main__":
    sys.exit(main())
