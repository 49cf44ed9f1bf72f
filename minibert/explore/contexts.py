"""Words in context: the vector the encoder gives one word in each sentence where it occurs.

A word embedding is one vector per word; a Transformer's hidden state at a word depends on
the whole sentence. Here every occurrence of chosen words in a corpus gets its own vector,
taken at the output of one layer, written as projector files with the sentence beside it:

    lightning contexts --ckpt_path checkpoints/last.ckpt --corpus FILE --words session,vote --layer 2 --out contexts/
    lightning neighbors --ckpt_path checkpoints/last.ckpt --in-context "le [vote] de la commission" --corpus FILE

A sentence longer than the model's ``seq_len`` is cut to the ``seq_len`` tokens around the
word: as many before it as after it, the window pushed back inside the sentence at its ends
(``window``). The metadata shows the cut with ``…``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from minibert.corpus import read_sentences
from minibert.errors import MinibertError
from minibert.explore.internals import record_internals
from minibert.explore.projector import write_projector_files, write_run_config
from minibert.model import Encoder
from minibert.tokenizer import Vocabulary, tokenize

CUT = "…"


@dataclass(frozen=True)
class Occurrence:
    """One place where a word occurs, and the tokens the model reads around it.

    Attributes:
        word: the word.
        tokens: the window of at most ``seq_len`` tokens the model reads.
        index: the word's place in ``tokens`` (from 0).
        sentence_no: the sentence's number in the corpus (from 1; empty lines are not counted).
        position: the word's place in the whole sentence (from 1).
        cut_before, cut_after: whether the window leaves out tokens of the sentence on that side.
    """

    word: str
    tokens: tuple[str, ...]
    index: int
    sentence_no: int = 0
    position: int = 0
    cut_before: bool = False
    cut_after: bool = False

    def marked(self) -> str:
        """The window's text with the word in brackets: ``… le [vote] de la commission``."""
        words = [f"[{t}]" if i == self.index else t for i, t in enumerate(self.tokens)]
        return " ".join([CUT] * self.cut_before + words + [CUT] * self.cut_after)


def window(length: int, position: int, seq_len: int) -> tuple[int, int]:
    """The ``[start, end)`` of the at most ``seq_len`` tokens read for the token at ``position`` (from 0).

    Centred on the token, shifted to stay inside the sentence: a 30-token sentence read by a
    model of seq_len 20 gives tokens 0-19 for the word at 3, 5-24 for the word at 15, 10-29
    for the word at 28.
    """
    start = min(max(position - seq_len // 2, 0), max(length - seq_len, 0))
    return start, min(start + seq_len, length)


def occurrence_at(
    word: str, tokens: Sequence[str], position: int, seq_len: int, sentence_no: int = 0
) -> Occurrence:
    """The occurrence of the token at ``position`` (from 0) of a tokenized sentence."""
    start, end = window(len(tokens), position, seq_len)
    return Occurrence(
        word,
        tuple(tokens[start:end]),
        position - start,
        sentence_no,
        position + 1,
        start > 0,
        end < len(tokens),
    )


def find_occurrences(
    corpus: str | Path, words: Sequence[str], seq_len: int, max_per_word: int
) -> list[Occurrence]:
    """The first ``max_per_word`` occurrences of each of ``words`` in the corpus, in corpus order."""
    sentences = read_corpus(corpus)
    wanted = dict.fromkeys(words, 0)  # word -> occurrences found so far
    found: list[Occurrence] = []
    for number, sentence in enumerate(sentences, start=1):
        tokens = tokenize(sentence)
        for position, token in enumerate(tokens):
            if wanted.get(token, max_per_word) < max_per_word:
                wanted[token] += 1
                found.append(occurrence_at(token, tokens, position, seq_len, number))
        if all(n >= max_per_word for n in wanted.values()):
            break
    missing = [word for word, n in wanted.items() if n == 0]
    if missing:
        raise MinibertError(f"not found in the corpus {corpus}: {' '.join(missing)}")
    return found


def read_corpus(corpus: str | Path) -> Iterable[str]:
    """The corpus's sentences (see :func:`minibert.corpus.read_sentences`), or a one-line error if there are none."""
    path = Path(corpus)
    if not path.exists():
        raise MinibertError(f"corpus {path} does not exist")
    sentences = read_sentences(path)
    first = next(sentences, None)
    if first is None:
        raise MinibertError(f"corpus {path} has no sentences (it is empty or holds only blank lines)")
    return itertools.chain([first], sentences)  # the first sentence, read to see that there is one, put back


def context_vectors(
    encoder: Encoder, vocab: Vocabulary, occurrences: Sequence[Occurrence], layer: int, batch_size: int = 256
) -> Tensor:
    """The hidden state at each occurrence's word, at the output of ``layer`` (0: the input), (N, D).

    Windows of the same length go through the encoder together, so that no padding is
    needed: a window's vector does not depend on what else is in the corpus (up to float
    rounding between batches of other sizes).
    """
    device = next(encoder.parameters()).device
    vectors = torch.empty(len(occurrences), encoder.token_embedding.embedding_dim)  # (N, D)
    order = sorted(range(len(occurrences)), key=lambda i: len(occurrences[i].tokens))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in (part for whole in batches for part in _same_length(whole, occurrences)):
        ids = torch.tensor([vocab.encode(occurrences[i].tokens) for i in batch], device=device)  # (b, T)
        hidden = record_internals(encoder, ids).hidden[layer]  # (b, T, D)
        at_word = torch.tensor([occurrences[i].index for i in batch], device=device)  # (b,)
        vectors[batch] = hidden[torch.arange(len(batch), device=device), at_word].float().cpu()  # (b, D)
    return vectors


def _same_length(batch: list[int], occurrences: Sequence[Occurrence]) -> list[list[int]]:
    """A batch sorted by window length, split where the length changes."""
    parts: list[list[int]] = []
    for i in batch:
        if not parts or len(occurrences[parts[-1][0]].tokens) != len(occurrences[i].tokens):
            parts.append([])
        parts[-1].append(i)
    return parts


def parse_marked(text: str, seq_len: int) -> tuple[str, Occurrence]:
    """The word marked ``[like this]`` in ``text`` and its occurrence there, or a one-line error.

    The brackets are the tokenizer's punctuation, so ``le [vote] de`` reads ``le [ vote ] de``.
    ``…`` is left out, so that a sentence of the metadata can be pasted as it is.
    """
    tokens = [token for token in tokenize(text) if token != CUT]
    marks = [i for i in range(len(tokens) - 2) if tokens[i] == "[" and tokens[i + 2] == "]"]
    if len(marks) != 1:
        raise MinibertError(
            f'mark exactly one word of the text with brackets, as in "le [vote] de la commission"; got {text!r}'
        )
    start = marks[0]
    tokens = tokens[:start] + [tokens[start + 1]] + tokens[start + 3 :]
    if len(tokens) > seq_len:
        raise MinibertError(f"the text has {len(tokens)} tokens; this model reads at most {seq_len}")
    return tokens[start], occurrence_at(tokens[start], tokens, start, seq_len)


def write_context_files(
    out_dir: str | Path, vectors: Tensor, occurrences: Sequence[Occurrence], tensor_name: str
) -> None:
    """Projector files for the occurrences' vectors (N, D), listed for TensorBoard under ``tensor_name``."""
    write_projector_files(
        out_dir,
        vectors,
        [o.word for o in occurrences],
        sentence=[o.marked() for o in occurrences],
        sentence_no=[o.sentence_no for o in occurrences],
        position=[o.position for o in occurrences],
    )
    write_run_config(out_dir, tensor_name)
