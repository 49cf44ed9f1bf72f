"""Reading Europarl: sentence-per-line files (plain or ``.gz``) and raw session files.

Raw session files (``ep-YY-MM-DD.txt``) hold tag lines (``<CHAPTER ID=..>``,
``<SPEAKER ...>``, ``<P>``) and paragraphs of several sentences a line. Tag lines are
dropped, chapter titles are kept as sentences, and paragraphs are cut into sentences
by :func:`split_sentences`.
"""

from __future__ import annotations

import codecs
import gzip
import itertools
import logging
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from minibert.errors import MinibertError
from minibert.tokenizer import compose

log = logging.getLogger(__name__)

_TAG_RE = re.compile(r"^<(CHAPTER|SPEAKER|P)\b[^<>]*>\s*$")

# A candidate end of sentence: . ! or ? (possibly closed by quotes or a bracket, French
# « guillemets » with their spaces included), then white space, then a capital letter or an
# opening quote. Numbers (``1.5``) never match: no space follows their point.
_BOUNDARY_RE = re.compile(r"[.!?](?:\s*[\"»)])*\s+(?=[«\"(]?\s*[A-ZÀ-ÖØ-Þ])")
# Words after which a full stop does not end a sentence: titles and common abbreviations.
ABBREVIATIONS = frozenset(
    {
        "M",
        "MM",
        "Mme",
        "Mmes",
        "Mlle",
        "Mlles",
        "Dr",
        "Me",
        "Mgr",
        "St",
        "etc",
        "cf",
        "p",
        "n",
        "no",
        "art",
        "vol",
        "env",
    }
)
_LAST_WORD_RE = re.compile(r"(\w+)\.$")


def split_sentences(paragraph: str) -> list[str]:
    """Cut one paragraph of French into sentences.

    ``M. Evans``, ``Mme Plooij-van Gorsel``, ``etc. Et``, single initials (``J. Smith``)
    and numbers (``1.5``) do not end a sentence, nor does a ``.``, ``!`` or ``?`` inside
    a quotation that is still open (``« Pourquoi ? Parce que. »``).
    """
    sentences, start = [], 0
    for boundary in _BOUNDARY_RE.finditer(paragraph):
        candidate = paragraph[start : boundary.end()].rstrip()
        if _ends_with_abbreviation(candidate) or _inside_quote(candidate):
            continue
        sentences.append(candidate)
        start = boundary.end()
    rest = paragraph[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _ends_with_abbreviation(candidate: str) -> bool:
    last = _LAST_WORD_RE.search(candidate)
    if last is None:
        return False
    word = last.group(1)
    return word in ABBREVIATIONS or (len(word) == 1 and word.isupper())  # a single initial: J. Smith


def _inside_quote(candidate: str) -> bool:
    """Whether a quotation opened in ``candidate`` is still open at its end.

    Straight quotes open and close alternately; French guillemets are counted as pairs.
    """
    return candidate.count('"') % 2 == 1 or candidate.count("«") > candidate.count("»")


def read_sentences(source: str | Path) -> Iterator[str]:
    """Yield the sentences of ``source`` in order, skipping empty lines.

    ``source`` is a sentence-per-line text file (plain or ``.gz``), a raw Europarl
    session file (recognised by a first line that is a session tag), or a directory of
    session files (``*.txt``, read in file-name order, like the release's ``txt/fr/`` folder).
    Lines may end with ``\\n``, ``\\r\\n`` or ``\\r`` alone (old Mac files); a UTF-8 byte-order
    mark is dropped, and the text is composed (NFC, :func:`minibert.tokenizer.compose`).

    >>> from minibert.corpus import read_sentences
    >>> sentences = list(read_sentences("tests/data/sample.fr.txt"))  # doctest: +SKIP

    Raises:
        MinibertError: the path is missing, a directory holds no session file, a tag line
            is broken, the file is UTF-16 or one huge line, or a ``.gz`` is truncated. Bytes
            that are not UTF-8 are replaced and reported in one warning (count of lines,
            first line number).
    """
    path = Path(source)
    if not path.exists():
        raise MinibertError(
            f"corpus not found: {path} (data.corpus must be a text file, a .gz file or a directory)"
        )
    if path.is_dir():
        yield from _read_session_dir(path)
        return
    lines = _read_lines(path)
    first = next(((n, line) for n, line in lines if line.strip()), None)
    if first is None:
        return
    if _TAG_START_RE.match(first[1].lstrip()):
        yield from _session_sentences(path, itertools.chain([first], lines))
        return
    second = next(((n, line) for n, line in lines if line.strip()), None)
    if second is None and len(first[1]) > LONGEST_SENTENCE:
        # Its line breaks were lost, or are of a kind not read here: as one sentence, the
        # corpus would fail later with advice that cannot help (raise val_fraction).
        raise MinibertError(
            f"{path} is one line of {len(first[1]):,} characters, not one sentence a line: "
            "put each sentence on a line of its own (or give raw Europarl session files)"
        )
    for _, line in itertools.chain([first], [second] if second else [], lines):
        if line.strip():
            yield line.strip()


# A file of one line longer than this is not one sentence a line: Europarl's longest sentence,
# in its first 500,000 lines, has 1,495 characters.
LONGEST_SENTENCE = 5_000
# A line that starts like a session tag makes a file a session file (a broken tag is then
# reported); a sentence may start with "<" too ("<mask> ...", "< 5 %").
_TAG_START_RE = re.compile(r"<(CHAPTER|SPEAKER|P)\b")


def _read_session_dir(directory: Path) -> Iterator[str]:
    files = sorted(p for p in directory.rglob("*.txt") if p.is_file())
    if not files:
        raise MinibertError(f"no Europarl session files (*.txt) in directory {directory}")
    for file in files:
        yield from _session_sentences(file, _read_lines(file))


def _session_sentences(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[str]:
    for number, line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("<"):
            if not _TAG_RE.match(line):
                raise MinibertError(
                    f"{path}:{number}: broken session tag line {line[:60]!r} "
                    "(expected <CHAPTER ID=..>, <SPEAKER ...> or <P>, closed by '>')"
                )
            continue
        yield from split_sentences(line)


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file as composed str, with line endings and a byte-order mark removed.

    Bytes that are not UTF-8 are replaced (and counted, with the first line number, in a
    warning) rather than stopping a long run; a binary, UTF-16 or truncated file is an error.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    number, bad_lines, first_bad = 0, 0, 0
    try:
        with opener(path, "rb") as file:
            for raw in file:
                if number == 0 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise MinibertError(
                        f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
                    )
                if b"\x00" in raw:
                    raise MinibertError(
                        f"{path}:{number + 1}: this looks like a binary file, not text (a NUL byte)"
                    )
                # \r alone ends a line too: files from old Macs have no \n at all.
                for piece in raw.rstrip(b"\r\n").split(b"\r"):
                    number += 1
                    try:
                        line = piece.decode("utf-8")
                    except UnicodeDecodeError:
                        line = piece.decode("utf-8", errors="replace")
                        bad_lines += 1
                        first_bad = first_bad or number
                    # A byte-order mark (U+FEFF) starts files saved by Windows' Notepad, and
                    # lines where such files were joined: it is no part of the first word.
                    yield number, compose(line.removeprefix("\ufeff"))
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise MinibertError(f"{path}: the gzip file is truncated or damaged ({error})") from None
    except OSError as error:
        raise MinibertError(f"{path}: cannot read: {error}") from None
    finally:
        # Also when the reader stops early (max_sentences): the lines read so far are reported.
        if bad_lines:
            log.warning(
                "%s: %d line(s) are not valid UTF-8 (first: line %d); the bad bytes were replaced by U+FFFD",
                path,
                bad_lines,
                first_bad,
            )
