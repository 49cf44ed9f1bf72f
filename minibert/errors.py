"""The one exception type that the command line prints as a single clear line."""

from __future__ import annotations


class MinibertError(Exception):
    """A problem with the user's input (a file, an option, a word): the message says which and what to do.

    Args:
        message: the ``error:`` line.
        hint: at most one more line, printed after it (``see: minibert fit --help``).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
