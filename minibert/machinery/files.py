"""Writing a file whole or not at all (checkpoints, projector files, caches, downloads survive a kill or a full
disk mid-write), and output folders checked before any work starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from minibert.errors import MinibertError


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


def check_output_folder(folder: str | Path, what: str) -> None:
    """Refuse a folder that cannot be written into, before any work: in one line that names it.

    The folder need not exist yet; the nearest part of its path that does must be a folder in
    which a file can be created (tried for real: permissions alone do not tell, for root or on
    a read-only disk).

    Args:
        folder: where files will be written.
        what: how the user named it, for the message (``export --out``, ``checkpoint folder``).
    """
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        where = f"{folder} is a file" if existing == folder else f"{folder}: {existing} is a file"
        raise MinibertError(f"{what} {where}, not a folder; move it away or choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise MinibertError(
            f"{what} {folder}: cannot write in {existing} ({error.strerror}); choose another path"
        ) from None


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error``, or None: torch reports a failed write (a full disk) as a RuntimeError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error
