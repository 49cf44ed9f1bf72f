"""How well do the learned word embeddings group related words? purity@k on word categories.

For every category word that is in the vocabulary, take its k nearest words by cosine
similarity over the whole vocabulary (special tokens and the word itself excluded) and
count the share of them that belong to the word's own category; purity@k is the mean of
that share over all category words.

    python benchmarks/embedding_quality.py --ckpt_path checkpoints/last.ckpt
    python benchmarks/embedding_quality.py --word2vec      # the yardstick (needs gensim: pip install -e ".[bench]")

The categories file has one group a line, ``name<TAB>word word ...``; lines starting with
``#`` are comments.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_CATEGORIES = "../shared/data/categories.dev.tsv"
DEFAULT_CORPUS = "../shared/data/europarl/europarl30k.fr.txt"


def read_categories(path: str | Path) -> dict[str, str]:
    """Map every member word to the name of its group."""
    groups: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, members = line.partition("\t")
        if not sep or not members.split():
            raise SystemExit(f"error: {path}:{number}: expected 'name<TAB>word word ...'")
        groups.update((word, name) for word in members.split())
    return groups


def purity_at_k(vectors: Tensor, words: Sequence[str], groups: dict[str, str], k: int = 5, excluded: int = 0) -> tuple[float, int]:
    """Mean share of same-group words among each category word's k nearest neighbours.

    Args:
        vectors: (V, D) one vector a word.
        words: the V words, in the rows' order.
        groups: word -> group name (words outside the vocabulary are ignored).
        k: neighbours per word.
        excluded: the first ``excluded`` rows (special tokens) are never neighbours.

    Returns:
        ``(purity, number of category words found in the vocabulary)``.
    """
    index = {word: i for i, word in enumerate(words)}
    found = [w for w in groups if w in index and index[w] >= excluded]
    if not found:
        return float("nan"), 0
    unit = torch.nn.functional.normalize(vectors.detach().float(), dim=-1)  # (V, D)
    queries = torch.tensor([index[w] for w in found])  # (Q,)
    similarity = unit[queries] @ unit.T  # (Q, V)
    similarity[:, :excluded] = -float("inf")
    similarity[torch.arange(len(found)), queries] = -float("inf")  # a word is not its own neighbour
    neighbours = similarity.topk(k, dim=-1).indices  # (Q, k)
    shares = [sum(groups.get(words[j]) == groups[w] for j in row.tolist()) / k for w, row in zip(found, neighbours)]
    return sum(shares) / len(shares), len(found)


def checkpoint_embeddings(ckpt_path: str, source: str) -> tuple[Tensor, list[str], int]:
    from minibert.module import MiniBert
    from minibert.projector import embedding_matrix

    model = MiniBert.load_from_checkpoint(ckpt_path, map_location="cpu")
    if model.vocab is None:
        raise SystemExit(f"error: {ckpt_path} holds no vocabulary")
    return embedding_matrix(model.encoder, source), model.vocab.itos, model.vocab.num_specials


def word2vec_embeddings(corpus: str, max_sentences: int, seed: int) -> tuple[Tensor, list[str], int]:
    """CBOW, 128 dimensions, window 5, 5 epochs, every word kept: gensim's usual recipe.

    gensim seeds each word's vector with Python's string hash, randomised per process
    (and its worker threads race), so two runs differ even with the same ``seed``.
    """
    from gensim.models import Word2Vec

    from minibert.tokenizer import tokenize

    with open(corpus, encoding="utf-8") as file:
        sentences = [tokenize(line) for _, line in zip(range(max_sentences), file)]
    started = time.perf_counter()
    w2v = Word2Vec(sentences, vector_size=128, window=5, min_count=1, sg=0, epochs=5, seed=seed)
    print(f"word2vec: {len(sentences)} sentences, {len(w2v.wv)} words, trained in {time.perf_counter() - started:.1f} s")
    return torch.from_numpy(w2v.wv.vectors.copy()), list(w2v.wv.index_to_key), 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt_path", help="a minibert checkpoint (its vocabulary is inside)")
    what.add_argument("--word2vec", action="store_true", help="train the gensim word2vec yardstick instead")
    parser.add_argument("--source", choices=("input", "output"), default="input", help="the input embeddings or the head's rows")
    parser.add_argument("--categories", default=DEFAULT_CATEGORIES)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="word2vec's training text, one sentence a line")
    parser.add_argument("--max_sentences", type=int, default=30_000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="word2vec runs (seeds seed, seed+1, ...): its purity varies from run to run")
    args = parser.parse_args(argv)

    groups = read_categories(args.categories)
    if args.ckpt_path:
        vectors, words, excluded = checkpoint_embeddings(args.ckpt_path, args.source)
        report(f"{args.ckpt_path} ({args.source} embeddings)", vectors, words, groups, args.k, excluded)
        return
    scores = []
    for run in range(args.repeats):
        vectors, words, excluded = word2vec_embeddings(args.corpus, args.max_sentences, args.seed + run)
        scores.append(report("word2vec", vectors, words, groups, args.k, excluded))
    if len(scores) > 1:
        print(f"word2vec over {len(scores)} runs: mean purity@{args.k} = {sum(scores) / len(scores):.3f} (min {min(scores):.3f}, max {max(scores):.3f})")


def report(name: str, vectors: Tensor, words: Sequence[str], groups: dict[str, str], k: int, excluded: int = 0) -> float:
    purity, found = purity_at_k(vectors, words, groups, k, excluded)
    print(f"{name}: purity@{k} = {purity:.3f} over {found} of {len(groups)} category words ({len(words)} words in the vocabulary)")
    return purity


if __name__ == "__main__":
    main()
