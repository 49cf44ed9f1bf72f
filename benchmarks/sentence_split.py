"""How well the sentence splitter agrees with the release's own sentence splitting.

The lines of ``europarl-v7.fr-en.fr`` were cut from the raw session files (``txt/fr/`` of the
release's ``europarl.tgz``) by the release's tools, and then aligned with English, which drops
or merges a few; so the share of our sentences that appear verbatim among those lines
measures the splitter:

    python benchmarks/sentence_split.py RAW_DIR [LINES_FILE]

LINES_FILE is ``europarl-v7-fr`` by default: base.yaml's corpus, downloaded into ``data/``.

The last line printed is ``verbatim=<fraction>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minibert.corpus import read_sentences
from minibert.machinery.download import EUROPARL_V7_FR, corpus_file

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # where base.yaml keeps the download


def verbatim_fraction(raw: Path, lines_file: Path) -> tuple[float, list[str]]:
    """The share of the sentences read from ``raw`` that are lines of ``lines_file``, and the misses."""
    reference = set(read_sentences(lines_file))
    sentences = list(read_sentences(raw))
    misses = [s for s in sentences if s not in reference]
    return 1 - len(misses) / len(sentences), misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="raw session file or directory")
    parser.add_argument(
        "lines",
        nargs="?",
        default=EUROPARL_V7_FR,
        help="sentence-per-line reference (europarl-v7-fr: downloaded)",
    )
    parser.add_argument(
        "--show", type=int, default=0, help="print this many sentences that are not reference lines"
    )
    args = parser.parse_args()
    fraction, misses = verbatim_fraction(args.raw, corpus_file(args.lines, DATA_DIR))
    for sentence in misses[: args.show]:
        print("miss:", sentence)
    print(f"sentences={round(len(misses) / (1 - fraction)) if fraction < 1 else 'all'} misses={len(misses)}")
    print(f"verbatim={fraction:.4f}")


if __name__ == "__main__":
    main()
