"""Writing a file whole or not at all: checkpoints and projector files survive a kill mid-write."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends, flush it to the disk and rename it over ``path``.

    Readers see the old file or the new one, never a part: a rename within one directory is
    atomic. If the block raises (or the process is interrupted), the temporary file is removed
    and ``path`` is left as it was; a kill leaves at most a hidden ``.NAME.PID.tmp`` beside it.
    The file is created like any other, with the usual permissions (``tempfile.mkstemp``
    would make it private, 0600).

    Args:
        path: the file to write.
        mode: ``"w"`` for text, ``"wb"`` for bytes.
        open_args: passed on to :func:`open` (``encoding``, ``newline``).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
