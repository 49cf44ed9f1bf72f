"""How good are the word embeddings? Two measures over the whole vocabulary.

- **purity@k** on groups of related words (days, months, countries...): for each group word
  in the vocabulary, the share of its k nearest words by cosine similarity (special tokens
  and the word itself excluded) that belong to its own group, averaged over the group words.
- **analogy accuracy** on questions "a is to b as c is to d" in word2vec's format
  (``: section`` lines, then ``a b c d`` lines), the same as gensim's
  ``KeyedVectors.evaluate_word_analogies``: the answer is the word x closest to b - a + c
  after normalising every vector (3CosAdd: the largest cos(x, b) - cos(x, a) + cos(x, c)), the
  three question words excluded. A question with a word outside the vocabulary is not
  covered: it is counted apart, never as wrong.

In both files, words are lower-cased and composed (NFC), as the tokenizer writes them.

    lightning evaluate --ckpt_path checkpoints/last.ckpt --groups GROUPS.tsv --analogies QUESTIONS.txt
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from minibert.errors import MinibertError
from minibert.explore.neighbours import nearest
from minibert.tokenizer import compose, normalize

# --- the files ----------------------------------------------------------------------------


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, composed (NFC) as the vocabulary is, or a one-line error naming it.

    A byte-order mark is dropped (it would stick to the first word) and every line end is one:
    ``\\n``, ``\\r\\n`` or ``\\r``.
    """
    path = Path(path)
    try:
        return compose(path.read_text(encoding="utf-8-sig")).splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = (
            "it does not exist"
            if isinstance(error, FileNotFoundError)
            else f"{type(error).__name__}: {error}"
        )
        raise MinibertError(f"{what} file {path} cannot be read: {reason}") from None


def read_groups(path: str | Path) -> dict[str, list[str]]:
    """Word groups from a file of lines ``name<TAB>word word ...`` (``#`` lines are comments), words lower-cased."""
    groups: dict[str, list[str]] = {}
    for number, line in enumerate(read_lines(path, "groups"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, words = line.partition("\t")
        if not tab or not name.strip() or not words.split():
            raise MinibertError(f"{path}, line {number}: expected 'name<TAB>word word ...', got {line!r}")
        groups.setdefault(name.strip(), []).extend(normalize(word) for word in words.split())
    if not groups:
        raise MinibertError(f"groups file {path} has no group")
    return groups


@dataclass
class AnalogySection:
    """One ``: name`` section of an analogy file: questions (a, b, c, d), "a is to b as c is to d"."""

    name: str
    questions: list[tuple[str, str, str, str]]


def read_analogies(path: str | Path) -> list[AnalogySection]:
    """The sections of an analogy file in word2vec's format (``questions-words.txt``), words lower-cased."""
    sections: list[AnalogySection] = []
    for number, line in enumerate(read_lines(path, "analogies"), start=1):
        if not line.strip():
            continue
        if line.startswith(":"):
            sections.append(AnalogySection(line[1:].strip(), []))
            continue
        words = normalize(line).split()
        if len(words) != 4:
            raise MinibertError(
                f"{path}, line {number}: expected four words 'a b c d' (a is to b as c is to d), got {line!r}"
            )
        if not sections:
            raise MinibertError(f"{path}, line {number}: a question before the first ': section' line")
        sections[-1].questions.append(tuple(words))
    if not any(section.questions for section in sections):
        raise MinibertError(f"analogies file {path} has no question")
    return sections


# --- purity@k ------------------------------------------------------------------------------


def group_of(groups: dict[str, list[str]]) -> dict[str, str]:
    """word -> the name of its group (a word listed in two groups belongs to the last)."""
    return {word: name for name, words in groups.items() for word in words}


def purity_at_k(
    vectors: Tensor, words: Sequence[str], groups: dict[str, str], k: int = 5, excluded: int = 0
) -> tuple[float, int]:
    """Mean share of same-group words among each group word's k nearest neighbours.

    Args:
        vectors: (V, D) one vector a word.
        words: the V words, in the rows' order.
        groups: word -> group name (words outside the vocabulary are ignored).
        k: neighbours per word.
        excluded: the first ``excluded`` rows (special tokens) are never neighbours.

    Returns:
        ``(purity, number of group words found in the vocabulary)``; purity is NaN when none is.
    """
    index = {word: i for i, word in enumerate(words)}
    found = [w for w in groups if w in index and index[w] >= excluded]
    if not found:
        return float("nan"), 0
    ids = torch.tensor([index[w] for w in found])  # (Q,)
    _, neighbours = nearest(vectors[ids], vectors, k, excluded, ids[:, None])  # (Q, k), never the word itself
    shares = [
        sum(groups.get(words[j]) == groups[w] for j in row.tolist()) / k for w, row in zip(found, neighbours)
    ]
    return sum(shares) / len(shares), len(found)


# --- analogies -----------------------------------------------------------------------------


@dataclass
class SectionScore:
    """Analogy results of one section: questions answered right, covered, and in all."""

    name: str
    correct: int
    covered: int
    total: int

    @property
    def accuracy(self) -> float:
        """Share right among the covered questions (NaN when none is covered)."""
        return self.correct / self.covered if self.covered else math.nan

    @property
    def coverage(self) -> float:
        return self.covered / self.total if self.total else math.nan


def answer_3cosadd(unit: Tensor, questions: Tensor, excluded: int = 0) -> Tensor:
    """The answers (Q,) to questions (Q, 3) of word ids a, b, c, over unit-length vectors (V, D).

    The answer maximises cos(x, b) - cos(x, a) + cos(x, c) = x . (b - a + c), x neither a, b, c
    nor one of the first ``excluded`` rows. For unit-length x that is the word nearest to
    b - a + c by cosine similarity: the query's own length scales every score alike.
    """
    a, b, c = questions.unbind(dim=-1)  # 3 x (Q,)
    # The question's own words are never the answer.
    _, answers = nearest(unit[b] - unit[a] + unit[c], unit, 1, excluded, questions)  # (Q, 1)
    return answers[:, 0]


def analogy_scores(
    vectors: Tensor,
    words: Sequence[str],
    sections: Sequence[AnalogySection],
    excluded: int = 0,
    batch_size: int = 512,
) -> list[SectionScore]:
    """3CosAdd results of every section, then a last one, ``all``, that sums them."""
    index = {word: i for i, word in enumerate(words) if i >= excluded}
    unit = F.normalize(vectors.detach().float(), dim=-1)  # (V, D)
    scores = []
    for section in sections:
        covered = [
            [index[w] for w in question]
            for question in section.questions
            if all(w in index for w in question)
        ]
        ids = torch.tensor(covered, dtype=torch.long).view(-1, 4)  # (Q, 4): a, b, c, and the expected d
        parts = ids.split(batch_size)  # scores of at most (batch_size, V) at a time
        correct = sum(
            int((answer_3cosadd(unit, part[:, :3], excluded) == part[:, 3]).sum()) for part in parts
        )
        scores.append(SectionScore(section.name, correct, len(covered), len(section.questions)))
    scores.append(
        SectionScore(
            "all", *(sum(getattr(s, field) for s in scores) for field in ("correct", "covered", "total"))
        )
    )
    return scores


# --- what is shown -------------------------------------------------------------------------


def purity_line(purity: float, found: int, groups: dict[str, str], vocab_size: int, k: int) -> str:
    return f"purity@{k} = {purity:.3f} over {found} of {len(groups)} group words ({vocab_size} words in the vocabulary)"


def analogy_lines(scores: Sequence[SectionScore]) -> list[str]:
    """A table of the sections' accuracy and coverage, the ``all`` line last."""
    width = max(len(s.name) for s in scores)
    lines = [f"{'section':<{width}}  accuracy   right / covered   coverage (of all questions)"]
    for s in scores:
        accuracy = "     -" if math.isnan(s.accuracy) else f"{s.accuracy:6.3f}"
        lines.append(
            f"{s.name:<{width}}  {accuracy}   {s.correct:5d} / {s.covered:<7d}   {s.coverage:6.3f} ({s.covered} of {s.total})"
        )
    return lines
