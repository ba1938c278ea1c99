"""`python -m textvae ARGS` is `textvae ARGS`."""

import sys

from textvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
