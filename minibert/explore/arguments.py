"""The options of the inspection commands: one argparse sub-parser a command (``lightning export --help``).

Errors in the options are one line and a hint (:class:`~minibert.machinery.options.OneLineParser`);
what each command then does is in :mod:`minibert.explore.commands`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from minibert.machinery.options import OneLineParser
from minibert.tokenizer import compose, normalize


def build_parser() -> argparse.ArgumentParser:
    """The parser of every inspection command: its name, the options it shares with others, its own."""
    parser = OneLineParser(description="Look into a trained minibert checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    checkpoint, source, layer = shared_options()
    add = commands.add_parser
    export_options(
        add("export", parents=[checkpoint, source], help="projector TSVs and a 2-D map of the embeddings")
    )
    neighbors_options(
        add(
            "neighbors",
            parents=[checkpoint, source, layer],
            help="nearest words by cosine similarity, or nearest occurrences in context",
        )
    )
    fill_mask_options(
        add("fill-mask", parents=[checkpoint], help="the most likely words for each <mask> of a text")
    )
    attention_options(
        add(
            "attention",
            parents=[checkpoint],
            help="attention weights of every layer and head for one sentence",
        )
    )
    contexts_options(
        add(
            "contexts",
            parents=[checkpoint, layer],
            help="a vector for every occurrence of words in a corpus, as projector files",
        )
    )
    evaluate_options(
        add(
            "evaluate",
            parents=[checkpoint, source],
            help="purity@k on word groups, accuracy on word analogies",
        )
    )
    return parser


def shared_options() -> tuple[argparse.ArgumentParser, ...]:
    """Options that several commands take: the checkpoint, which embeddings, which layer."""
    checkpoint = argparse.ArgumentParser(add_help=False)
    checkpoint.add_argument(
        "--ckpt_path",
        required=True,
        type=Path,
        help="the checkpoint file (.ckpt), or 'last': the newest checkpoints/last*.ckpt",
    )
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--source",
        choices=("input", "output"),
        default="input",
        help="input word embeddings, or the output layer's rows (the same matrix when tied)",
    )
    layer = argparse.ArgumentParser(add_help=False)
    layer.add_argument(
        "--layer",
        type=at_least(0),
        help="the vectors at this layer's output (0: the input embeddings); default: the last layer",
    )
    layer.add_argument(
        "--max_per_word",
        type=at_least(1),
        default=100,
        help="occurrences of each word read from the corpus, the first ones",
    )
    return checkpoint, source, layer


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return int(text)

    return parse


def text(argument: str) -> str:
    """An argparse type: a word or sentence of the command line, composed (NFC) as the corpus is.

    Python decodes arguments with the locale's encoding: in a C locale, with Python's UTF-8
    mode turned off, that is ASCII, and an "é" typed in a UTF-8 terminal arrives as two
    escapes (surrogates), which are read back here as the UTF-8 they were. (Paths are left
    as they are: Python opens them with the very bytes given.)
    """
    if any("\udc80" <= character <= "\udcff" for character in argument):
        argument = os.fsencode(argument).decode("utf-8", errors="surrogateescape")
    return compose(argument)


def word(argument: str) -> str:
    """An argparse type: a word as the vocabulary writes it, so "Été" or a decomposed "été" is found."""
    return normalize(text(argument))


def export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--top_k", type=at_least(0), default=3000, help="most frequent words to export; 0 = every word"
    )
    export.add_argument(
        "--out",
        type=Path,
        help="folder for vectors.tsv and metadata.tsv; with --format word2vec, the file to write",
    )
    export.add_argument(
        "--format",
        choices=("projector", "word2vec"),
        default="projector",
        help="projector TSVs, or word2vec's text format (gensim's KeyedVectors.load_word2vec_format)",
    )
    export.add_argument("--png", type=Path, help="also draw a 2-D PCA map of chosen words into this PNG file")
    export.add_argument("--groups", type=Path, help="words to draw, by group: lines 'name<TAB>word word ...'")
    export.add_argument(
        "--png_words",
        type=at_least(2),
        default=100,
        help="without --groups, draw this many most frequent words",
    )


def neighbors_options(neighbors: argparse.ArgumentParser) -> None:
    neighbors.add_argument("words", nargs="*", metavar="WORD", type=word)
    neighbors.add_argument("--k", type=at_least(1), default=10, help="neighbours to show for each word")
    neighbors.add_argument(
        "--in-context",
        dest="in_context",
        type=text,
        metavar="TEXT",
        help='a sentence with one word in brackets, "le [vote] de la commission": its occurrences in --corpus closest in context',
    )
    neighbors.add_argument(
        "--corpus", type=Path, help="with --in-context: the sentences to search, one a line"
    )


def fill_mask_options(fill: argparse.ArgumentParser) -> None:
    fill.add_argument(
        "text",
        type=text,
        help='a sentence with one or more <mask>, e.g. "la <mask> européenne a proposé"',
    )
    fill.add_argument("--k", type=at_least(1), default=5, help="words to show for each <mask>")


def attention_options(attention: argparse.ArgumentParser) -> None:
    attention.add_argument("text", type=text, help='a sentence, e.g. "la commission a voté le rapport ."')
    attention.add_argument(
        "--out", type=Path, help="the picture to write (PNG): layers as rows, heads as columns"
    )
    attention.add_argument(
        "--html", type=Path, help="also write a page where pointing at a token shows where it looks"
    )


def contexts_options(contexts: argparse.ArgumentParser) -> None:
    contexts.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="the sentences to read, one a line (or raw Europarl sessions)",
    )
    contexts.add_argument(
        "--words", required=True, type=text, help="comma-separated words: session,commission,vote"
    )
    contexts.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for vectors.tsv, metadata.tsv and projector_config.pbtxt",
    )


def evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("--groups", type=Path, help="word groups: lines 'name<TAB>word word ...'")
    evaluate.add_argument(
        "--analogies",
        type=Path,
        help="questions in word2vec's format: ': section' lines, then 'a b c d' lines",
    )
    evaluate.add_argument("--k", type=at_least(1), default=5, help="neighbours per word for purity@k")
