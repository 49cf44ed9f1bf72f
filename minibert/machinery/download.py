"""Fetching Europarl v7 French: the release's ``fr-en.tgz``, of which only the French side is kept.

Nothing is ever half-written: the archive is downloaded into a temporary file that is
renamed only once its size matches the server's ``Content-Length``, and the French member
is streamed out of it into another temporary file, renamed when complete
(:func:`minibert.machinery.files.atomic_write`). Several processes (DDP ranks) may do this at once:
each writes its own temporary files and the renames are atomic, so the result is the same
whoever finishes first. Each file's size is recorded in ``downloads.json`` beside it: one
cut short later (a copy from another node interrupted) is found and fetched again.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write

EUROPARL_V7_FR = "europarl-v7-fr"  # the data.corpus name that triggers the download
EUROPARL_V7_URL = "https://www.statmt.org/europarl/v7/fr-en.tgz"
FRENCH_MEMBER = "europarl-v7.fr-en.fr"
RECORD = "downloads.json"  # the size of every file fetched into the folder, to find one cut short later
_BLOCK = 1 << 20

log = logging.getLogger(__name__)


def fetch_europarl_fr(data_dir: Path, url: str = EUROPARL_V7_URL) -> Path:
    """The French side of Europarl v7 in ``data_dir``, downloaded and extracted on first use.

    Returns:
        the path of ``europarl-v7.fr-en.fr`` (one sentence a line).
    """
    target = data_dir / FRENCH_MEMBER
    if is_whole(target):
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(url).name
    if not is_whole(archive):  # a partial one is replaced, whole or not at all
        download(url, archive)
        record_size(archive)
    extract_member(archive, FRENCH_MEMBER, target)
    record_size(target)
    archive.unlink(missing_ok=True)  # 200 MB of English we will never read
    return target


def corpus_file(corpus: str, data_dir: Path) -> Path:
    """The file a ``--corpus`` option names: ``europarl-v7-fr`` is fetched into ``data_dir`` (once), anything else is a path."""
    return fetch_europarl_fr(data_dir) if corpus == EUROPARL_V7_FR else Path(corpus)


def is_whole(path: Path) -> bool:
    """Whether ``path`` exists with the size recorded when it was fetched (a file without a record is trusted)."""
    if not path.is_file():
        return False
    recorded, size = _records(path.parent).get(path.name), path.stat().st_size
    if recorded is None or recorded == size:
        return True
    log.warning(f"{path} has {size:,} bytes, not the {recorded:,} it had when fetched: fetching it again")
    return False


def record_size(path: Path) -> None:
    """Note ``path``'s size in its folder's record."""
    records = {**_records(path.parent), path.name: path.stat().st_size}
    try:
        with atomic_write(path.parent / RECORD, encoding="utf-8") as file:
            file.write(json.dumps(records, indent=1))
    except OSError as error:
        raise MinibertError(
            f"cannot write {path.parent / RECORD} ({error.strerror}); free some space and run again"
        ) from None


def _records(folder: Path) -> dict[str, int]:
    try:
        records = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: every file is then trusted as it is
        return {}
    return records if isinstance(records, dict) else {}


def download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` with a progress bar; ``target`` appears only when complete."""
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MinibertError(
            f"data.corpus: cannot download {url} ({reason}). Without internet, fetch fr-en.tgz elsewhere and "
            f"pass its French file instead: --data.corpus path/to/{FRENCH_MEMBER} "
            "(any sentence-per-line file, .gz or folder of session files works)"
        ) from None
    expected = int(response.headers.get("Content-Length") or 0) or None
    try:
        with (
            response,
            atomic_write(target, "wb") as out,
            tqdm(
                total=expected, unit="B", unit_scale=True, desc=f"downloading {target.name}", disable=None
            ) as progress,
        ):
            while block := response.read(_BLOCK):
                out.write(block)
                progress.update(len(block))
            if expected is not None and out.tell() != expected:  # raised inside: the partial file is removed
                raise MinibertError(
                    f"data.corpus: the download of {url} stopped at {out.tell()} of {expected} bytes; run again to retry"
                )
    except (OSError, http.client.HTTPException) as error:
        raise MinibertError(
            f"data.corpus: downloading {url} to {target} failed ({error!r}); run again to retry"
        ) from None


def extract_member(archive: Path, member: str, target: Path) -> None:
    """Stream the one file ``member`` out of the ``.tgz`` ``archive`` into ``target``."""
    try:
        with tarfile.open(archive, mode="r|gz") as tar:  # "|": a stream, read once front to back
            for info in tar:
                if Path(info.name).name == member and info.isfile():
                    with tar.extractfile(info) as source, atomic_write(target, "wb") as out:
                        shutil.copyfileobj(source, out, _BLOCK)
                    return
        raise MinibertError(f"{archive}: no member {member} in this archive")
    except (tarfile.TarError, EOFError) as error:
        raise MinibertError(
            f"{archive}: cannot extract {member} ({error}); delete it and run again"
        ) from None
    except OSError as error:  # a damaged gzip stream (BadGzipFile) or a full disk
        raise MinibertError(
            f"{archive}: cannot extract {member} to {target} ({error}); if the disk is full, free some space, else delete the archive; then run again"
        ) from None
