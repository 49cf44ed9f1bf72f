"""How the command line ends on a problem: one clear line, never a traceback.

- :class:`MinibertError`: a problem with the user's input, printed as ``error: ...`` (exit code 2);
- :func:`escape_what_cannot_be_printed`: a terminal that cannot show ``é`` gets ``\\xe9``;
- :func:`stop_quietly_on_closed_pipe`: ``minibert neighbors ... | head -1`` ends as Unix tools do.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn


class MinibertError(Exception):
    """A problem with the user's input (a file, an option, a word): the message says which and what to do.

    Args:
        message: the ``error:`` line.
        hint: at most one more line, printed after it (``see: minibert fit --help``).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def escape_what_cannot_be_printed() -> None:
    """Print a character the terminal's encoding lacks as an escape (``\\xe9``), rather than fail.

    With ``LANG=C`` and an ASCII terminal, or ``PYTHONIOENCODING=ascii``, Python's stdout
    refuses ``é``: every French word would end the command with a traceback. stderr already
    escapes; stdout now does the same, and a UTF-8 terminal sees no difference.
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a replaced stream (a notebook's) may not have it
            stream.reconfigure(errors="backslashreplace")


def stop_quietly_on_closed_pipe() -> NoReturn:
    """End the command when what reads its output has gone (``| head -1``): no traceback, exit code 141.

    Unix tools are ended by SIGPIPE there, which shells report as 128 + 13 = 141; Python
    ignores that signal and raises BrokenPipeError instead. stdout is pointed at /dev/null
    first: Python flushes it again on exit, which would fail once more and say so.
    """
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's capture): nothing to flush
        pass
    sys.exit(128 + signal.SIGPIPE)
