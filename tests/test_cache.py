"""The encoded corpus: what it holds, when it is rebuilt, and that it is never half-written."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_CORPUS

import minibert.encode
import minibert.machinery.cache
from minibert.data import EuroparlDataModule
from minibert.encode import EncodingSettings, build_cache, split_mask
from minibert.machinery.cache import cache_problem, load_split
from minibert.tokenizer import UNK_ID, Vocabulary, tokenize

SETTINGS = EncodingSettings(vocab_size=60, min_freq=1, max_sentences=None, val_fraction=0.2, seed=3)


@pytest.fixture
def count_tokenizations(monkeypatch) -> list[int]:
    """Count the sentences that go through the tokenizer."""
    calls: list[int] = []
    real = minibert.encode.tokenize_lines

    def counting(text: str) -> list[list[str]]:
        lines = real(text)
        calls.append(len(lines))
        return lines

    monkeypatch.setattr(minibert.encode, "tokenize_lines", counting)
    return calls


def build(corpus: Path, data_dir: Path, settings: EncodingSettings = SETTINGS) -> Path:
    """Build (if missing) the cache of corpus under data_dir/cache/, as a run does; its folder."""
    data = EuroparlDataModule(corpus=str(corpus), data_dir=str(data_dir), **asdict(settings))
    data.prepare_data()
    return data.cache_dir


def numbered_corpus(path: Path, n: int) -> list[str]:
    """Sentences whose words say which sentence they come from (``motN`` appears in sentence N only)."""
    sentences = [f"Le mot{i} est ici." for i in range(n)]
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return sentences


def test_cache_holds_both_splits_and_the_training_vocabulary(tmp_path):
    sentences = numbered_corpus(tmp_path / "c.txt", 50)
    cache_dir = build(tmp_path / "c.txt", tmp_path / "cache")
    is_val = split_mask(50, SETTINGS.val_fraction, SETTINGS.seed)
    assert is_val.sum() == 10
    vocab = Vocabulary.load(cache_dir / "vocab.json")
    for split, chosen in (("train", ~is_val), ("val", is_val)):
        tokens, offsets = load_split(cache_dir, split)
        assert tokens.dtype == np.int32 and offsets.dtype == np.int64
        expected = [tokenize(s) for s, keep in zip(sentences, chosen) if keep]
        got = [vocab.decode(tokens[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])]
        if split == "train":
            assert got == expected
        else:  # validation words are not in the vocabulary: only the shared ones survive
            assert got == [["le", "<unk>", "est", "ici", "."]] * 10
    # The vocabulary is counted on the training sentences only, and saved with the counts.
    saved = json.loads((cache_dir / "vocab.json").read_text(encoding="utf-8"))
    assert dict(zip(saved["words"], saved["counts"]))["le"] == 40
    assert {f"mot{i}" for i in np.flatnonzero(is_val)}.isdisjoint(vocab.stoi)
    assert {f"mot{i}" for i in np.flatnonzero(~is_val)} <= set(vocab.stoi)


def test_split_is_deterministic_and_follows_the_seed():
    assert (split_mask(1000, 0.05, 0) == split_mask(1000, 0.05, 0)).all()
    assert (split_mask(1000, 0.05, 0) != split_mask(1000, 0.05, 1)).any()
    assert split_mask(1000, 0.05, 0).sum() == 50


def test_max_sentences_keeps_the_first(tmp_path):
    numbered_corpus(tmp_path / "c.txt", 50)
    settings = EncodingSettings(100, 1, max_sentences=5, val_fraction=0.0, seed=0)
    tokens, offsets = load_split(build(tmp_path / "c.txt", tmp_path / "cache", settings), "train")
    vocab = Vocabulary.load(build(tmp_path / "c.txt", tmp_path / "cache", settings) / "vocab.json")
    assert len(offsets) == 6 and vocab.decode(tokens[offsets[4] : offsets[5]].tolist()) == [
        "le",
        "mot4",
        "est",
        "ici",
        ".",
    ]


def test_second_run_does_not_tokenize_again(tmp_path, count_tokenizations):
    first = build(SAMPLE_CORPUS, tmp_path)
    assert sum(count_tokenizations) > 0
    count_tokenizations.clear()
    assert build(SAMPLE_CORPUS, tmp_path) == first
    assert count_tokenizations == []


@pytest.mark.parametrize("change", ["vocab_size", "min_freq", "max_sentences", "val_fraction", "seed"])
def test_changed_setting_rebuilds(tmp_path, count_tokenizations, change):
    first = build(SAMPLE_CORPUS, tmp_path)
    count_tokenizations.clear()
    changed = EncodingSettings(
        **{
            **SETTINGS.__dict__,
            change: {"vocab_size": 70, "min_freq": 2, "max_sentences": 100, "val_fraction": 0.3, "seed": 4}[
                change
            ],
        }
    )
    assert build(SAMPLE_CORPUS, tmp_path, changed) != first
    assert sum(count_tokenizations) > 0


def test_changed_file_rebuilds(tmp_path, count_tokenizations):
    corpus = tmp_path / "c.txt"
    numbered_corpus(corpus, 20)
    first = build(corpus, tmp_path / "cache")
    count_tokenizations.clear()
    with corpus.open("a", encoding="utf-8") as file:
        file.write("Une phrase de plus.\n")
    second = build(corpus, tmp_path / "cache")
    assert second != first and sum(count_tokenizations) > 0
    assert len(load_split(second, "train")[1]) + len(load_split(second, "val")[1]) - 2 == 21


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    saved = []

    def interrupted_save(file, array):
        saved.append(file)
        if len(saved) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        np.lib.format.write_array(file, np.asanyarray(array))

    monkeypatch.setattr(minibert.machinery.cache.np, "save", interrupted_save)
    cache_dir = tmp_path / "cache" / "key"
    with pytest.raises(KeyboardInterrupt):
        build_cache(SAMPLE_CORPUS, SETTINGS, cache_dir)
    assert len(saved) == 2
    assert list((tmp_path / "cache").iterdir()) == []  # no final directory, no temporary one


def test_losing_the_race_keeps_the_winners_cache(tmp_path):
    """A second builder that finishes after the first one keeps the first's complete cache."""
    cache_dir = tmp_path / "key"
    build_cache(SAMPLE_CORPUS, SETTINGS, cache_dir)
    before = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    build_cache(SAMPLE_CORPUS, SETTINGS, cache_dir)  # as if it had started before the first renamed
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def _build_in_child(cache_dir: str) -> None:
    build_cache(SAMPLE_CORPUS, SETTINGS, Path(cache_dir))


def test_concurrent_builders_in_processes(tmp_path):
    cache_dir = tmp_path / "key"
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_build_in_child, args=(str(cache_dir),)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
    reference = tmp_path / "reference"
    build_cache(SAMPLE_CORPUS, SETTINGS, reference)
    for name in os.listdir(reference):
        if name.endswith(".npy"):
            assert (np.load(reference / name) == np.load(cache_dir / name)).all()
    assert Vocabulary.load(cache_dir / "vocab.json").itos == Vocabulary.load(reference / "vocab.json").itos


def test_unknown_words_are_unk_in_training_too(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a a a b b c\n" * 4 + "a\n", encoding="utf-8")
    settings = EncodingSettings(vocab_size=5, min_freq=1, max_sentences=None, val_fraction=0.0, seed=0)
    tokens, _ = load_split(build(corpus, tmp_path / "cache", settings), "train")
    assert tokens[:6].tolist() == [3, 3, 3, 4, 4, UNK_ID]


# Each way a cache file gets damaged (a copy cut short, a hand edit, a file lost), and the file it names.
DAMAGES = {
    "tokens cut short": (lambda path: path.write_bytes(path.read_bytes()[:200]), "train_tokens.npy"),
    "vocabulary not JSON": (lambda path: path.write_text("{not json", encoding="utf-8"), "vocab.json"),
    "offsets missing": (lambda path: path.unlink(), "val_offsets.npy"),
    "record not JSON": (lambda path: path.write_text("{", encoding="utf-8"), "settings.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_found_when_opened_and_built_again(tmp_path, caplog, damage):
    def data_module() -> EuroparlDataModule:
        return EuroparlDataModule(
            corpus=str(SAMPLE_CORPUS), data_dir=str(tmp_path), vocab_size=60, val_fraction=0.2
        )

    good = data_module()
    good.setup("fit")
    words, cache = good.vocab.itos, good.cache_dir
    tokens = np.array(good.datasets["train"].tokens)
    spoil, name = DAMAGES[damage]
    spoil(cache / name)
    assert name in cache_problem(cache)

    again = data_module()
    again.setup("fit")
    assert again.vocab.itos == words
    assert (np.asarray(again.datasets["train"].tokens) == tokens).all()
    assert cache_problem(cache) is None
    warned = [m for m in caplog.messages if "damaged" in m]
    assert (
        len(warned) == 1
        and warned[0].startswith(f"the cache {cache} is damaged ({cache / name} ")
        and warned[0].endswith("building it again")
    )
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # the damaged copy is gone


def test_a_full_disk_during_a_build_leaves_no_cache_and_says_so(tmp_path, monkeypatch):
    def full(file, array):
        file.write(b"\x93NUMPY")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(minibert.machinery.cache.np, "save", full)
    cache_dir = tmp_path / "cache" / "key"
    with pytest.raises(
        minibert.machinery.cache.MinibertError,
        match=r"cannot write the cache .*key \(No space left on device\); nothing was left half-written",
    ):
        build_cache(SAMPLE_CORPUS, SETTINGS, cache_dir)
    assert list((tmp_path / "cache").iterdir()) == []
