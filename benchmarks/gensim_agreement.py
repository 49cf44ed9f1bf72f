"""Does minibert's evaluation agree with gensim's? Analogies and the word2vec export, checked on the same vectors.

1. ``lightning export --format word2vec``'s writer: gensim's ``KeyedVectors.load_word2vec_format``
   reads the file back as the same words and exactly the same float32 vectors.
2. ``lightning evaluate``'s analogies (:func:`minibert.explore.evaluation.analogy_scores`): gensim's
   ``evaluate_word_analogies`` on those vectors counts the same right and covered questions in
   every section.

The vectors are a checkpoint's embeddings, or gensim's word2vec trained on the corpus (the
default: vectors with many right answers, which the quick run's are too few to test on).
Needs gensim: ``pip install -e ".[bench]"``. Exits with 1 on any disagreement.

    python benchmarks/gensim_agreement.py --analogies benchmarks/analogies.fr.txt
    python benchmarks/gensim_agreement.py --ckpt_path checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from embedding_quality import DEFAULT_ANALOGIES, DEFAULT_CORPUS, checkpoint_embeddings, word2vec_embeddings

from minibert.explore.evaluation import analogy_scores, read_analogies
from minibert.explore.word2vec import write_word2vec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt_path", help="a minibert checkpoint; without it, word2vec is trained on --corpus"
    )
    parser.add_argument("--source", choices=("input", "output"), default="input")
    parser.add_argument("--analogies", default=DEFAULT_ANALOGIES, help="questions in word2vec's format")
    parser.add_argument(
        "--corpus", default=DEFAULT_CORPUS, help="word2vec's training text (europarl-v7-fr: downloaded)"
    )
    parser.add_argument("--max_sentences", type=int, default=30_000)
    args = parser.parse_args(argv)
    from gensim.models import KeyedVectors  # the bench extra: imported after --help

    if args.ckpt_path:
        vectors, words, excluded = checkpoint_embeddings(args.ckpt_path, args.source)
    else:
        vectors, words, excluded = word2vec_embeddings(args.corpus, args.max_sentences, seed=0)
    vectors, words = (
        vectors[excluded:],
        words[excluded:],
    )  # special tokens are not words: neither side sees them
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.txt"
        write_word2vec(path, vectors, words)
        loaded = KeyedVectors.load_word2vec_format(str(path), binary=False)
    same_file = loaded.index_to_key == list(words) and np.array_equal(loaded.vectors, vectors.float().numpy())
    print(
        f"word2vec export: {len(words)} words x {vectors.shape[1]}; gensim reads back the same words and vectors: {same_file}"
    )

    ours = analogy_scores(vectors, words, read_analogies(args.analogies))
    _, gensim_sections = loaded.evaluate_word_analogies(
        args.analogies, restrict_vocab=len(words), case_insensitive=True
    )
    theirs = {
        s["section"]: (len(s["correct"]), len(s["correct"]) + len(s["incorrect"])) for s in gensim_sections
    }
    theirs["all"] = theirs.pop("Total accuracy")
    print(f"{'section':<24}{'minibert right/covered':>24}{'gensim right/covered':>24}")
    agree = same_file
    for score in ours:
        mine = (score.correct, score.covered)
        agree &= theirs.get(score.name) == mine
        other = theirs.get(score.name, (-1, -1))
        print(f"{score.name:<24}{f'{mine[0]} / {mine[1]}':>24}{f'{other[0]} / {other[1]}':>24}")
    print("agreement: yes" if agree else "agreement: NO")
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
