"""How well the sentence splitter agrees with the release's own sentence splitting.

The lines of ``europarl30k.fr.txt`` were cut from the same raw sessions by the release's
tools (and then aligned with English, which drops or merges a few), so the share of our
sentences that appear verbatim among those lines measures the splitter:

    python benchmarks/sentence_split.py [RAW_DIR] [LINES_FILE]

The last line printed is ``verbatim=<fraction>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minibert.corpus import read_sentences

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "europarl"


def verbatim_fraction(raw: Path, lines_file: Path) -> tuple[float, list[str]]:
    """The share of the sentences read from ``raw`` that are lines of ``lines_file``, and the misses."""
    reference = set(read_sentences(lines_file))
    sentences = list(read_sentences(raw))
    misses = [s for s in sentences if s not in reference]
    return 1 - len(misses) / len(sentences), misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "raw", nargs="?", type=Path, default=SHARED / "raw" / "fr", help="raw session file or directory"
    )
    parser.add_argument(
        "lines",
        nargs="?",
        type=Path,
        default=SHARED / "europarl30k.fr.txt",
        help="sentence-per-line reference",
    )
    parser.add_argument(
        "--show", type=int, default=0, help="print this many sentences that are not reference lines"
    )
    args = parser.parse_args()
    fraction, misses = verbatim_fraction(args.raw, args.lines)
    for sentence in misses[: args.show]:
        print("miss:", sentence)
    print(f"sentences={round(len(misses) / (1 - fraction)) if fraction < 1 else 'all'} misses={len(misses)}")
    print(f"verbatim={fraction:.4f}")


if __name__ == "__main__":
    main()
