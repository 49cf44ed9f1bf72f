"""The reference tokenizer and the vocabulary: order, specials, counts, round trips."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import SAMPLE_CORPUS

from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.module import MiniBert
from minibert.tokenizer import (
    MASK_ID,
    PAD_ID,
    PUNCTUATION,
    SPECIAL_TOKENS,
    UNK_ID,
    Vocabulary,
    tokenize,
    tokenize_lines,
)


def reference_tokenize(text: str) -> list[str]:
    """The reference's definition, written the slow and obvious way."""
    text = text.lower()
    for mark in PUNCTUATION:
        text = text.replace(mark, f" {mark} ")
    return text.split()


TRICKY = [
    "L'Union européenne",
    "aujourd'hui, M. Evans (PPE-DE) a dit : « non ! »",
    "1.5 % et 2,000 euros/an",
    '[a]{b}*c+d&e"f"',
    "Mme Plooij-van Gorsel ?",
    "  espaces\tmultiples   ",
    "ÉTATS-MEMBRES À L'ÉTÉ",
    "",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenize_matches_the_reference(text):
    assert tokenize(text) == reference_tokenize(text)


def test_tokenize_examples():
    assert tokenize("L'Union, c'est (aussi) 1.5 %!") == [
        "l",
        "'",
        "union",
        ",",
        "c",
        "'",
        "est",
        "(",
        "aussi",
        ")",
        "1",
        ".",
        "5",
        "%",
        "!",
    ]
    assert tokenize("M. Plooij-van Gorsel") == ["m", ".", "plooij", "-", "van", "gorsel"]
    assert tokenize("« Oui »") == ["«", "oui", "»"]  # guillemets are not in the reference's list


def test_tokenize_lines_is_tokenize_line_by_line():
    assert tokenize_lines("\n".join(TRICKY)) == [tokenize(t) for t in TRICKY]


def test_vocabulary_order_ties_min_freq_and_specials():
    counts = {"le": 5, "la": 5, "de": 7, "rare": 1, "zèbre": 2, "abeille": 2}
    vocab = Vocabulary.from_counts(counts, vocab_size=7, min_freq=2)
    assert vocab.itos[: len(SPECIAL_TOKENS)] == ["<pad>", "<unk>", "<mask>"]
    assert (vocab.stoi["<pad>"], vocab.stoi["<unk>"], vocab.stoi["<mask>"]) == (PAD_ID, UNK_ID, MASK_ID)
    assert vocab.itos[3:] == ["de", "la", "le", "abeille"]  # by falling count, ties alphabetical, cut at 7
    assert vocab.counts[3:] == [7, 5, 5, 2]
    assert (
        Vocabulary.from_counts(dict(reversed(counts.items())), 7, 2).itos == vocab.itos
    )  # order of counting irrelevant
    assert "rare" not in Vocabulary.from_counts(counts, vocab_size=100, min_freq=2).stoi
    assert vocab.encode(["de", "inconnu"]) == [3, UNK_ID] and vocab.decode([3, 4]) == ["de", "la"]


def test_vocabulary_too_small_for_the_specials():
    with pytest.raises(MinibertError, match=r"data.vocab_size=3 .*at least 4"):
        Vocabulary.from_counts({"a": 1}, vocab_size=3)


def test_vocabulary_save_load_round_trip(tmp_path):
    vocab = Vocabulary.from_counts({"un": 3, "deux": 2, "trois": 1}, vocab_size=10)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert (loaded.itos, loaded.counts) == (vocab.itos, vocab.counts)


def test_vocabulary_travels_inside_a_checkpoint(tmp_path):
    """A checkpoint alone, loaded the safe way, turns words into the same ids."""
    data = EuroparlDataModule(
        corpus=str(SAMPLE_CORPUS), data_dir=str(tmp_path / "data"), vocab_size=80, seq_len=8, batch_size=16
    )
    model = MiniBert(
        vocab_size=data.vocab_len(), seq_len=8, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16
    )
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    checkpoint = torch.load(tmp_path / "tiny.ckpt", weights_only=True)
    rebuilt = Vocabulary.from_dict(checkpoint["vocabulary"])
    assert rebuilt.itos == data.vocab.itos and rebuilt.counts == data.vocab.counts
    assert len(rebuilt) == 80 and rebuilt.encode(["monsieur"]) == data.vocab.encode(["monsieur"]) != [UNK_ID]
