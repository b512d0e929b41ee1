"""The one exception type for bad input: the CLI prints its message on one line and exits non-zero."""


class HarnessError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback)."""
