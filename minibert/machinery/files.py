"""Writing a file whole or not at all (checkpoints, projector files, caches, downloads survive a kill or a full
disk mid-write), removing what a killed process left half-written, and output folders checked before any work starts."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from minibert.errors import MinibertError

log = logging.getLogger(__name__)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends, flush it to the disk and rename it over ``path``.

    Readers see the old file or the new one, never a part: a rename within one directory is
    atomic. If the block raises (or the process is interrupted), the temporary file is removed
    and ``path`` is left as it was; a kill leaves at most a hidden ``.NAME.PID@HOST.tmp`` beside
    it, which :func:`remove_stale_temporaries` removes once that process is gone.
    The file is created like any other, with the usual permissions (``tempfile.mkstemp``
    would make it private, 0600).

    Args:
        path: the file to write.
        mode: ``"w"`` for text, ``"wb"`` for bytes.
        open_args: passed on to :func:`open` (``encoding``, ``newline``).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{owner()}.tmp")
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


# --- what a killed process left behind ------------------------------------------------------

# A temporary file or folder names the process writing it, PID@HOST, so that another process can tell
# whether it is still at work: .NAME.PID@HOST.tmp (atomic_write), NAME.tmp-PID@HOST-XXXX (a cache being
# built), NAME.damaged-PID@HOST (a damaged cache being deleted). Older versions wrote .NAME.PID.tmp,
# NAME.tmp-XXXX (no owner: removed once nothing in it changed for UNOWNED_AFTER seconds) and NAME.damaged-PID.
_HOST = r"(?:@(?P<host>[A-Za-z0-9-]+))"
TEMPORARY = [
    re.compile(rf"^\..+\.(?P<pid>\d+){_HOST}?\.tmp$"),
    re.compile(rf"^.+\.tmp-(?:(?P<pid>\d+){_HOST}-)?[A-Za-z0-9_]+$"),
    re.compile(rf"^.+\.damaged-(?P<pid>\d+){_HOST}?$"),
]
UNOWNED_AFTER = 600


def host() -> str:
    """This machine's short name, as temporary names carry it (letters, digits and dashes only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def owner() -> str:
    """``PID@HOST``: who writes a temporary file."""
    return f"{os.getpid()}@{host()}"


def is_running(pid: int) -> bool:
    """Whether a process of this machine has this id (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path) -> bool:
    """Whether ``path`` is a temporary file or folder whose writer is gone: its process no longer runs on this machine."""
    match = next((m for pattern in TEMPORARY if (m := pattern.match(path.name))), None)
    if match is None:
        return False
    if match["pid"] is None:  # an older version's cache folder: left alone while anything in it changes
        newest = max((p.stat().st_mtime for p in [path, *path.rglob("*")]), default=0)
        return time.time() - newest > UNOWNED_AFTER
    return (match["host"] or host()) == host() and not is_running(int(match["pid"]))


def remove_stale_temporaries(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` that a killed process left (see :func:`is_stale`).

    A temporary of a process at work (of this run, another run, another machine sharing the disk)
    is never touched. Returns what was removed, and says it in one line.
    """
    folder, removed = Path(folder), []
    walk = os.walk(folder) if recursive else [next(os.walk(folder), (str(folder), [], []))]
    for parent, dirs, files in walk:
        for name in [*dirs, *files]:
            path = Path(parent) / name
            if not is_stale(path):
                continue
            if name in dirs and not path.is_symlink():
                dirs.remove(name)  # not walked into: it goes whole
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        names = ", ".join(str(path) for path in removed[:3]) + (", ..." if len(removed) > 3 else "")
        log.info(f"removed {len(removed)} temporary file(s) left by a stopped process: {names}")
    return removed
