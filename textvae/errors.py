"""The one exception type for errors a user can cause.

The CLI turns a `UserError` into a single line on stderr and exit status 2; anything else is a
bug and keeps its traceback.
"""

import sys


class UserError(Exception):
    """Bad input from the user: config, data, model directory or command-line arguments."""


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving its last checkpoint."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def first_line(error: Exception, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if empty), cut to `limit` characters:
    what a one-line error shows of a library's exception."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def run_script(main, prog: str) -> None:
    """A script's entry point: call `main()`; a `UserError` becomes one line, `prog: message`, on
    stderr and exit status 2, as in the CLI."""
    try:
        main()
    except UserError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(2)
