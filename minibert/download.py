"""Fetching Europarl v7 French: the release's ``fr-en.tgz``, of which only the French side is kept.

Nothing is ever half-written: the archive is downloaded into a temporary file that is
renamed only once its size matches the server's ``Content-Length``, and the French member
is streamed out of it into another temporary file, renamed when complete. Several
processes (DDP ranks) may do this at once: each writes its own temporary files and the
renames are atomic, so the result is the same whoever finishes first.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from minibert.errors import MinibertError

EUROPARL_V7_FR = "europarl-v7-fr"  # the data.corpus name that triggers the download
EUROPARL_V7_URL = "https://www.statmt.org/europarl/v7/fr-en.tgz"
FRENCH_MEMBER = "europarl-v7.fr-en.fr"
_BLOCK = 1 << 20


def fetch_europarl_fr(data_dir: Path, url: str = EUROPARL_V7_URL) -> Path:
    """The French side of Europarl v7 in ``data_dir``, downloaded and extracted on first use.

    Returns:
        the path of ``europarl-v7.fr-en.fr`` (one sentence a line).
    """
    target = data_dir / FRENCH_MEMBER
    if target.exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(url).name
    if not archive.exists():
        download(url, archive)
    extract_member(archive, FRENCH_MEMBER, target)
    archive.unlink(missing_ok=True)  # 200 MB of English we will never read
    return target


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
    partial = _temporary_beside(target)
    try:
        with response, open(partial, "wb") as out, tqdm(
            total=expected, unit="B", unit_scale=True, desc=f"downloading {target.name}", disable=None
        ) as progress:
            while block := response.read(_BLOCK):
                out.write(block)
                progress.update(len(block))
        size = partial.stat().st_size
        if expected is not None and size != expected:
            raise MinibertError(f"data.corpus: the download of {url} stopped at {size} of {expected} bytes; run again to retry")
        os.replace(partial, target)
    except (OSError, http.client.HTTPException) as error:
        raise MinibertError(f"data.corpus: downloading {url} to {target} failed ({error!r}); run again to retry") from None
    finally:
        partial.unlink(missing_ok=True)


def extract_member(archive: Path, member: str, target: Path) -> None:
    """Stream the one file ``member`` out of the ``.tgz`` ``archive`` into ``target``."""
    partial = _temporary_beside(target)
    try:
        with tarfile.open(archive, mode="r|gz") as tar:  # "|": a stream, read once front to back
            for info in tar:
                if Path(info.name).name == member and info.isfile():
                    with tar.extractfile(info) as source, open(partial, "wb") as out:
                        shutil.copyfileobj(source, out, _BLOCK)
                    os.replace(partial, target)
                    return
        raise MinibertError(f"{archive}: no member {member} in this archive")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise MinibertError(f"{archive}: cannot extract {member} ({error}); delete it and run again") from None
    finally:
        partial.unlink(missing_ok=True)


def _temporary_beside(target: Path) -> Path:
    """A fresh file name in ``target``'s folder (same file system, so the final rename is atomic)."""
    handle, name = tempfile.mkstemp(prefix=target.name + ".part-", dir=target.parent)
    os.close(handle)
    return Path(name)
