"""How good are the learned word embeddings? purity@k on word groups, accuracy on word analogies.

The measures are :mod:`minibert.explore.evaluation`'s, the same as ``lightning evaluate``: purity@k
(for every group word in the vocabulary, the share of its k nearest words by cosine
similarity over the whole vocabulary, special tokens and the word itself excluded, that
belong to its own group, averaged over the group words) and 3CosAdd analogy accuracy per
section, with coverage (questions in word2vec's format; ``benchmarks/analogies.fr.txt`` by
default). ``--word2vec`` scores gensim's word2vec trained on the same sentences: the first
30,000 of ``--corpus`` (base.yaml's, ``europarl-v7-fr``, downloaded into ``data/`` on first use).

    python benchmarks/embedding_quality.py --ckpt_path checkpoints/last.ckpt
    python benchmarks/embedding_quality.py --word2vec      # the yardstick (needs gensim: pip install -e ".[bench]")
    python benchmarks/embedding_quality.py --word2vec --skip-gram   # word2vec's skip-gram instead of CBOW

The categories file (``benchmarks/categories.demo.tsv`` by default) has one group a line,
``name<TAB>word word ...``; lines starting with ``#`` are comments.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from minibert.errors import MinibertError
from minibert.explore.evaluation import (
    AnalogySection,
    analogy_lines,
    analogy_scores,
    group_of,
    purity_at_k,
    purity_line,
    read_analogies,
    read_groups,
)
from minibert.machinery.download import EUROPARL_V7_FR, corpus_file

DEFAULT_CATEGORIES = "benchmarks/categories.demo.tsv"
DEFAULT_CORPUS = EUROPARL_V7_FR  # base.yaml's corpus
DEFAULT_ANALOGIES = "benchmarks/analogies.fr.txt"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # where base.yaml keeps the download


def checkpoint_embeddings(ckpt_path: str, source: str) -> tuple[Tensor, list[str], int]:
    """A checkpoint's (V, D) embeddings, its V words, and how many of them (the first) are special tokens."""
    from minibert.explore.checkpoint import load_checkpoint
    from minibert.explore.embeddings import embedding_matrix

    model, vocab = load_checkpoint(ckpt_path)
    return embedding_matrix(model.encoder, source).detach(), vocab.itos, vocab.num_specials


def word2vec_embeddings(
    corpus: str, max_sentences: int, seed: int, skip_gram: bool = False
) -> tuple[Tensor, list[str], int]:
    """CBOW (or skip-gram), 128 dimensions, window 5, 5 epochs, every word kept: gensim's usual recipe.

    gensim seeds each word's vector with Python's string hash, randomised per process
    (and its worker threads race), so two runs differ even with the same ``seed``.
    """
    from gensim.models import Word2Vec

    from minibert.tokenizer import tokenize

    with open(corpus_file(corpus, DATA_DIR), encoding="utf-8") as file:
        sentences = [tokenize(line) for _, line in zip(range(max_sentences), file)]
    started = time.perf_counter()
    w2v = Word2Vec(sentences, vector_size=128, window=5, min_count=1, sg=int(skip_gram), epochs=5, seed=seed)
    print(
        f"word2vec ({'skip-gram' if skip_gram else 'CBOW'}): {len(sentences)} sentences, {len(w2v.wv)} words, trained in {time.perf_counter() - started:.1f} s"
    )
    return torch.from_numpy(w2v.wv.vectors.copy()), list(w2v.wv.index_to_key), 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt_path", help="a minibert checkpoint (its vocabulary is inside)")
    what.add_argument("--word2vec", action="store_true", help="train the gensim word2vec yardstick instead")
    parser.add_argument("--skip-gram", action="store_true", help="word2vec's skip-gram (sg=1), not CBOW")
    parser.add_argument(
        "--source",
        choices=("input", "output"),
        default="input",
        help="the input embeddings or the head's rows",
    )
    parser.add_argument("--categories", default=DEFAULT_CATEGORIES, help="word groups for purity@k")
    parser.add_argument(
        "--analogies", default=DEFAULT_ANALOGIES, help="analogy questions in word2vec's format; '' for none"
    )
    parser.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help="word2vec's training text, one sentence a line (europarl-v7-fr: downloaded into data/)",
    )
    parser.add_argument("--max_sentences", type=int, default=30_000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="word2vec runs (seeds seed, seed+1, ...): its figures vary from run to run",
    )
    args = parser.parse_args(argv)

    try:
        groups = group_of(read_groups(args.categories))
        sections = read_analogies(args.analogies) if args.analogies else []
        checkpoint = checkpoint_embeddings(args.ckpt_path, args.source) if args.ckpt_path else None
    except MinibertError as error:
        raise SystemExit(f"error: {error}") from None
    if checkpoint is not None:
        vectors, words, excluded = checkpoint
        report(
            f"{args.ckpt_path} ({args.source} embeddings)", vectors, words, groups, sections, args.k, excluded
        )
        return
    scores = []
    for run in range(args.repeats):
        vectors, words, excluded = word2vec_embeddings(
            args.corpus, args.max_sentences, args.seed + run, args.skip_gram
        )
        scores.append(report("word2vec", vectors, words, groups, sections, args.k, excluded))
    if len(scores) > 1:
        for name, values in zip((f"purity@{args.k}", "analogy accuracy"), zip(*scores)):
            print(
                f"word2vec over {len(values)} runs: mean {name} = {sum(values) / len(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"
            )


def report(
    name: str,
    vectors: Tensor,
    words: Sequence[str],
    groups: dict[str, str],
    sections: Sequence[AnalogySection],
    k: int,
    excluded: int = 0,
) -> tuple[float, float]:
    """Print purity@k and the analogy table; return purity@k and the accuracy over all covered questions."""
    purity, found = purity_at_k(vectors, words, groups, k, excluded)
    print(f"{name}: {purity_line(purity, found, groups, len(words), k)}")
    if not sections:
        return purity, float("nan")
    scores = analogy_scores(vectors, words, sections, excluded)
    print("\n".join(analogy_lines(scores)))
    return purity, scores[-1].accuracy


if __name__ == "__main__":
    main()
