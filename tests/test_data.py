"""The data module: samples, masked batches, reproducibility, loaders, test corpus, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import SAMPLE_CORPUS, TEST_DATA, run_cli
from torch.utils.data import default_collate

from minibert.cache import split_mask
from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.masking import IGNORE_INDEX
from minibert.module import MiniBert
from minibert.tokenizer import MASK_ID, PAD_ID, UNK_ID, tokenize

HELDOUT = TEST_DATA / "heldout.fr.txt"


def module(tmp_path: Path, **options) -> EuroparlDataModule:
    settings = {"corpus": str(SAMPLE_CORPUS), "data_dir": str(tmp_path / "data"), "vocab_size": 120, "seq_len": 12, "batch_size": 16, "val_fraction": 0.1, **options}
    return EuroparlDataModule(**settings)


def masked_batch(data: EuroparlDataModule, split: str, indices: list[int], stage: str, epoch: int = 0) -> dict[str, torch.Tensor]:
    """What the model receives for these samples, in ``stage`` (train, validate or test) at ``epoch``."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    setattr(trainer, {"train": "training", "validate": "validating", "test": "testing"}[stage], True)
    trainer.fit_loop.epoch_progress.current.completed = epoch  # trainer.current_epoch
    data.trainer = trainer
    batch = default_collate([data.datasets[split][i] for i in indices])
    return data.on_after_batch_transfer(batch, 0)


# --- samples -------------------------------------------------------------------------


def write_corpus(path: Path, lengths: list[int]) -> list[list[str]]:
    """Sentences of the given lengths in tokens (``w{sentence}x{position}``)."""
    sentences = [[f"w{s}x{t}" for t in range(n)] for s, n in enumerate(lengths)]
    path.write_text("\n".join(" ".join(s) for s in sentences) + "\n", encoding="utf-8")
    return sentences


@pytest.mark.parametrize("packing", [True, False])
def test_samples_with_and_without_packing(tmp_path, packing):
    sentences = write_corpus(tmp_path / "c.txt", [3, 6, 2, 5])
    data = module(tmp_path, corpus=str(tmp_path / "c.txt"), vocab_size=100, seq_len=4, batch_size=1, val_fraction=0.0, packing=packing)
    data.setup("fit")
    words = [data.vocab.decode(data.datasets["train"][i]["input_ids"].tolist()) for i in range(4)]
    if packing:  # a window starts at each sentence start and runs on into the next ones
        assert words == [["w0x0", "w0x1", "w0x2", "w1x0"], sentences[1][:4], ["w2x0", "w2x1", "w3x0", "w3x1"], ["w3x0", "w3x1", "w3x2", "w3x3"]]
    else:  # one sentence, cut or padded
        assert words == [sentences[0] + ["<pad>"], sentences[1][:4], sentences[2] + ["<pad>", "<pad>"], sentences[3][:4]]
    assert [data.datasets["train"][i]["sample_ids"].item() for i in range(4)] == [0, 1, 2, 3]


def test_padding_is_masked_and_never_scored(tmp_path):
    data = module(tmp_path, packing=False, seq_len=40)
    data.setup("fit")
    batch = masked_batch(data, "train", list(range(64)), "train")
    padding = batch["padding_mask"]
    assert padding.any() and (~padding).any()
    assert (batch["input_ids"][padding] == PAD_ID).all() and (batch["input_ids"][~padding] != PAD_ID).all()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()


def test_no_validation_sentence_is_trained_on(tmp_path):
    """The split is by sentence, before windowing: packed training windows never reach a validation sentence."""
    write_corpus(tmp_path / "c.txt", [5] * 200)
    data = module(tmp_path, corpus=str(tmp_path / "c.txt"), vocab_size=2000, seq_len=12, batch_size=8, val_fraction=0.1)
    data.setup("fit")
    val_sentences = set(np.flatnonzero(split_mask(200, 0.1, seed=0)).tolist())
    train = data.datasets["train"]
    seen = set()
    for i in range(len(train)):
        words = data.vocab.decode(train[i]["input_ids"].tolist())
        seen |= {int(w[1:].split("x")[0]) for w in words if w.startswith("w")}
    assert len(val_sentences) == 20 and seen == set(range(200)) - val_sentences
    assert len(data.datasets["val"]) == 20


# --- masks: reproducible ----------------------------------------------------------------


def test_validation_masks_are_the_same_every_epoch_and_run(tmp_path):
    first, second = module(tmp_path), module(tmp_path)
    for data in (first, second):
        data.setup("fit")
    batches = [masked_batch(d, "val", list(range(16)), "validate", epoch) for d in (first, second) for epoch in (0, 3)]
    assert all(torch.equal(b["labels"], batches[0]["labels"]) and torch.equal(b["input_ids"], batches[0]["input_ids"]) for b in batches)
    assert (batches[0]["labels"] != IGNORE_INDEX).any()


def test_training_masks_depend_on_seed_epoch_and_sample_only(tmp_path):
    data = module(tmp_path, mask_prob=0.3)
    data.setup("fit")
    forward = masked_batch(data, "train", list(range(32)), "train", epoch=1)
    backward = masked_batch(data, "train", list(range(31, -1, -1)), "train", epoch=1)
    assert torch.equal(backward["labels"].flip(0), forward["labels"])  # another batch, same masks
    other_epoch = masked_batch(data, "train", list(range(32)), "train", epoch=2)
    assert not torch.equal(other_epoch["labels"], forward["labels"])
    again = module(tmp_path, mask_prob=0.3)  # another run: same seed, same masks
    again.setup("fit")
    assert torch.equal(masked_batch(again, "train", list(range(32)), "train", epoch=1)["input_ids"], forward["input_ids"])


def test_a_real_run_sees_the_same_batches_twice(tmp_path):
    """Two in-process fits with the same seed get identical masked batches, every epoch."""

    class Recorder(L.Callback):
        def __init__(self) -> None:
            self.train, self.val = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.train.append((trainer.current_epoch, batch["labels"].clone()))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.val.append((trainer.current_epoch, batch["labels"].clone()))

    runs = []
    for run in range(2):
        L.seed_everything(0)
        data = module(tmp_path)
        recorder = Recorder()
        trainer = L.Trainer(
            max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder], default_root_dir=tmp_path,
        )
        trainer.fit(MiniBert(vocab_size=data.vocab_len, seq_len=12, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16), datamodule=data)
        runs.append(recorder)
    first, second = runs
    assert len(first.train) == 4 and len(first.val) == 4
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first.train + first.val, second.train + second.val))
    assert torch.equal(first.val[0][1], first.val[2][1])  # validation: epoch 0 == epoch 1


# --- DataLoader options ----------------------------------------------------------------------


def test_dataloader_options_come_from_the_config(tmp_path):
    data = module(tmp_path, batch_size=8, num_workers=2, persistent_workers=True)
    data.setup("fit")
    loader = data.train_dataloader()
    assert (loader.batch_size, loader.num_workers, loader.persistent_workers) == (8, 2, True)
    assert loader.pin_memory is False  # no GPU under this trainer
    assert data.val_dataloader().batch_size == 8
    assert module(tmp_path, num_workers=0, persistent_workers=True).num_workers == 0


# --- the test corpus ---------------------------------------------------------------------------


def test_test_corpus_is_encoded_with_the_training_vocabulary(tmp_path):
    data = module(tmp_path, test_corpus=str(HELDOUT))
    data.prepare_data()
    data.setup("test")
    test = data.datasets["test"]
    sentences = HELDOUT.read_text(encoding="utf-8").splitlines()
    assert len(test) == len(sentences)
    for i, sentence in enumerate(sentences):
        ids = test.tokens[test.offsets[i] : test.offsets[i + 1]].tolist()
        assert data.vocab.decode(ids) == [w if w in data.vocab.stoi else "<unk>" for w in tokenize(sentence)]
    assert UNK_ID in test.tokens and (test.tokens > UNK_ID).sum() > 50
    # Masks of the test set depend on the seed only: the same in every epoch and every run.
    again = module(tmp_path, test_corpus=str(HELDOUT))
    again.setup("test")
    a = masked_batch(data, "test", list(range(8)), "test", epoch=0)
    b = masked_batch(again, "test", list(range(8)), "test", epoch=4)
    assert torch.equal(a["labels"], b["labels"]) and (a["labels"] != IGNORE_INDEX).any()
    assert (a["input_ids"] == MASK_ID).any()


def test_test_without_test_corpus_is_a_clear_error(tmp_path):
    data = module(tmp_path)
    with pytest.raises(MinibertError, match="`test` needs data.test_corpus"):
        data.setup("test")


def test_lightning_test_reports_test_metrics(tiny_run, workdir):
    shutil.copy(HELDOUT, workdir / "tests" / "data")
    result = run_cli(
        "test", "--config", "configs/tiny.yaml", "--ckpt_path", str(tiny_run / "checkpoints" / "last.ckpt"),
        "--data.test_corpus", "tests/data/heldout.fr.txt", cwd=workdir,
    )
    for metric in ("test/acc", "test/top5", "test/perplexity"):
        assert metric in result.stdout, result.stdout


# --- bad input: one clear line naming the file or option --------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"vocab_size": 3}, "data.vocab_size=3 must be more than the 3 special tokens"),
        ({"seq_len": 1}, "data.seq_len=1 must be at least 2"),
        ({"mask_prob": 1.5}, "data.mask_prob=1.5 must be a probability in [0, 1]"),
        ({"mask_token_prob": -0.1}, "data.mask_token_prob=-0.1 must be a probability in [0, 1]"),
        ({"random_token_prob": 1.2}, "data.random_token_prob=1.2 must be a probability in [0, 1]"),
        ({"mask_token_prob": 0.8, "random_token_prob": 0.3}, "data.mask_token_prob + data.random_token_prob = 1.1"),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0 must be in [0, 1)"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(MinibertError) as error:
        module(tmp_path, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_missing_corpus(tmp_path):
    with pytest.raises(MinibertError, match=r"^data.corpus: nowhere.txt does not exist"):
        module(tmp_path, corpus="nowhere.txt").vocab


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(MinibertError, match=f"corpus {tmp_path / 'empty.txt'} has no sentences"):
        module(tmp_path, corpus=str(tmp_path / "empty.txt")).vocab
    assert not (tmp_path / "data" / "cache").exists() or list((tmp_path / "data" / "cache").iterdir()) == []


def test_fewer_samples_than_one_batch(tmp_path):
    data = module(tmp_path, batch_size=10_000)
    with pytest.raises(MinibertError, match=r"gives 540 training samples, fewer than one batch \(data.batch_size=10000\)"):
        data.setup("fit")


def test_directory_without_sessions(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MinibertError, match="no Europarl session files"):
        module(tmp_path, corpus=str(tmp_path / "empty_dir")).vocab


def test_command_line_shows_one_error_line_and_no_traceback(workdir):
    result = run_cli("fit", "--config", "configs/tiny.yaml", "--data.corpus", "missing.txt", cwd=workdir, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.corpus: missing.txt does not exist (give a sentence-per-line file, a .gz or a directory of Europarl session files)"]
    assert "Traceback" not in result.stderr + result.stdout
