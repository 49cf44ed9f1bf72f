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

from minibert.data import EuroparlDataModule
from minibert.encode import split_mask
from minibert.errors import MinibertError
from minibert.masking import IGNORE_INDEX
from minibert.module import MiniBert
from minibert.tokenizer import MASK_ID, PAD_ID, UNK_ID, tokenize

HELDOUT = TEST_DATA / "heldout.fr.txt"


def module(tmp_path: Path, **options) -> EuroparlDataModule:
    settings = {
        "corpus": str(SAMPLE_CORPUS),
        "data_dir": str(tmp_path / "data"),
        "vocab_size": 120,
        "seq_len": 12,
        "batch_size": 16,
        "val_fraction": 0.1,
        **options,
    }
    return EuroparlDataModule(**settings)


def masked_batch(
    data: EuroparlDataModule, split: str, indices: list[int], stage: str, epoch: int = 0
) -> dict[str, torch.Tensor]:
    """What the model receives for these samples, in ``stage`` (train, validate or test) at ``epoch``."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
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


def words_of(data: EuroparlDataModule, split: str, indices) -> list[list[str]]:
    return [data.vocab.decode(data.datasets[split][i]["input_ids"].tolist()) for i in indices]


PAD = "<pad>"
SAMPLES = {  # sentences of 3, 6, 2 and 5 tokens, in windows of 4
    ("tile", True): [["w0x0", "w0x1", "w0x2", "w1x0"], ["w1x1", "w1x2", "w1x3", "w1x4"], ["w1x5", "w2x0", "w2x1", "w3x0"], ["w3x1", "w3x2", "w3x3", "w3x4"]],
    ("tile", False): [
        ["w0x0", "w0x1", "w0x2", PAD], ["w1x0", "w1x1", "w1x2", "w1x3"], ["w1x4", "w1x5", PAD, PAD],
        ["w2x0", "w2x1", PAD, PAD], ["w3x0", "w3x1", "w3x2", "w3x3"], ["w3x4", PAD, PAD, PAD],
    ],
    # The reference: a window starts at each sentence start and runs on into the next ones (packing), or is cut and padded.
    ("sentence", True): [["w0x0", "w0x1", "w0x2", "w1x0"], ["w1x0", "w1x1", "w1x2", "w1x3"], ["w2x0", "w2x1", "w3x0", "w3x1"], ["w3x0", "w3x1", "w3x2", "w3x3"]],
    ("sentence", False): [["w0x0", "w0x1", "w0x2", PAD], ["w1x0", "w1x1", "w1x2", "w1x3"], ["w2x0", "w2x1", PAD, PAD], ["w3x0", "w3x1", "w3x2", "w3x3"]],
}  # fmt: skip


@pytest.mark.parametrize("windows, packing", list(SAMPLES))
def test_windows_with_and_without_packing(tmp_path, windows, packing):
    write_corpus(tmp_path / "c.txt", [3, 6, 2, 5])
    data = module(
        tmp_path,
        corpus=str(tmp_path / "c.txt"),
        vocab_size=100,
        seq_len=4,
        batch_size=1,
        val_fraction=0.0,
        windows=windows,
        packing=packing,
    )
    data.setup("fit")
    train = data.datasets["train"]
    assert words_of(data, "train", range(train.num_windows)) == SAMPLES[windows, packing]
    assert [train[i]["sample_ids"].item() for i in range(train.num_windows)] == list(range(train.num_windows))
    assert len(train) == train.num_windows * (
        4 if (windows, packing) == ("tile", True) else 1
    )  # shifted copies


def epoch_tokens(data: EuroparlDataModule, epoch: int) -> tuple[list[int], list[list[str]]]:
    """The indices a training epoch draws, and the words of those samples, through the real sampler."""
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return indices, words_of(data, "train", indices)


def test_tiles_train_on_every_token_every_epoch_with_a_fresh_shift(tmp_path):
    sentences = write_corpus(tmp_path / "c.txt", [7, 30, 2, 11, 25, 4])  # 79 tokens: 8 tiles of 10
    data = module(
        tmp_path, corpus=str(tmp_path / "c.txt"), vocab_size=200, seq_len=10, batch_size=2, val_fraction=0.0
    )
    data.setup("fit")
    every_token = sorted(w for s in sentences for w in s)
    shifts = set()
    for epoch in range(6):
        indices, samples = epoch_tokens(data, epoch)
        assert len(samples) == 8 and PAD not in sum(samples, [])
        # Each token once, and one tile's worth run on from the end of the stream to its start.
        assert set(sum(samples, [])) == set(every_token) and len(sum(samples, [])) == 80
        shifts.add(indices[0] // 8)
    assert len(shifts) > 1, "every epoch moved the tiles by the same amount"


def test_reference_windows_never_see_the_tails_of_long_sentences(tmp_path):
    write_corpus(tmp_path / "c.txt", [30, 25, 4])
    data = module(
        tmp_path,
        corpus=str(tmp_path / "c.txt"),
        vocab_size=200,
        seq_len=10,
        batch_size=2,
        val_fraction=0.0,
        windows="sentence",
    )
    data.setup("fit")
    seen = set(sum(epoch_tokens(data, 0)[1], []))
    assert "w0x29" not in seen and "w1x20" not in seen and {"w0x9", "w1x9", "w2x3"} <= seen


@pytest.mark.parametrize("windows", ["tile", "sentence"])
@pytest.mark.parametrize("packing", [True, False])
def test_held_out_windows_score_every_token_exactly_once(tmp_path, packing, windows):
    """Whatever the training windows, validation tiles its text: every held-out token counts, once."""
    data = module(tmp_path, packing=packing, val_fraction=0.2, windows=windows)
    data.setup("fit")
    val = data.datasets["val"]
    held_out = [t for i in range(len(val)) for t in val[i]["input_ids"].tolist() if t != PAD_ID]
    assert held_out == val.tokens.tolist() and len(val) == val.num_windows


def test_validation_scores_its_own_share_of_words(tmp_path):
    """mask_prob for training, val_mask_prob for validation and test: runs with another mask_prob compare on one task."""
    data = module(tmp_path, mask_prob=0.4, val_mask_prob=0.15, val_fraction=0.3)
    data.setup("fit")

    def share(split: str, stage: str) -> float:
        batch = masked_batch(data, split, list(range(data.datasets[split].num_windows)), stage)
        return ((batch["labels"] != IGNORE_INDEX).sum() / (~batch["padding_mask"]).sum()).item()

    assert share("train", "train") == pytest.approx(0.4, abs=0.03)
    assert share("val", "validate") == pytest.approx(0.15, abs=0.03)
    assert module(tmp_path, mask_prob=0.4).val_mask_prob == 0.4  # null: the training share


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
    data = module(
        tmp_path, corpus=str(tmp_path / "c.txt"), vocab_size=2000, seq_len=12, batch_size=8, val_fraction=0.1
    )
    data.setup("fit")
    val_sentences = set(np.flatnonzero(split_mask(200, 0.1, seed=0)).tolist())
    train = data.datasets["train"]
    seen = set()
    for i in range(len(train)):
        words = data.vocab.decode(train[i]["input_ids"].tolist())
        seen |= {int(w[1:].split("x")[0]) for w in words if w.startswith("w")}
    assert len(val_sentences) == 20 and seen == set(range(200)) - val_sentences


# --- masks: reproducible ----------------------------------------------------------------


def test_validation_masks_are_the_same_every_epoch_and_run(tmp_path):
    first, second = module(tmp_path), module(tmp_path)
    for data in (first, second):
        data.setup("fit")
    batches = [
        masked_batch(d, "val", list(range(16)), "validate", epoch)
        for d in (first, second)
        for epoch in (0, 3)
    ]
    assert all(
        torch.equal(b["labels"], batches[0]["labels"])
        and torch.equal(b["input_ids"], batches[0]["input_ids"])
        for b in batches
    )
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
    assert torch.equal(
        masked_batch(again, "train", list(range(32)), "train", epoch=1)["input_ids"], forward["input_ids"]
    )


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
    for _ in range(2):
        L.seed_everything(0)
        data = module(tmp_path)
        recorder = Recorder()
        trainer = L.Trainer(
            max_epochs=2,
            limit_train_batches=2,
            limit_val_batches=2,
            num_sanity_val_steps=0,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder],
            default_root_dir=tmp_path,
        )
        trainer.fit(
            MiniBert(
                vocab_size=data.vocab_len(), seq_len=12, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16
            ),
            datamodule=data,
        )
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
    assert len(test.offsets) == len(sentences) + 1
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
    with pytest.raises(MinibertError, match="`test` and `predict` need data.test_corpus"):
        data.setup("test")


@pytest.mark.slow
def test_lightning_test_reports_test_metrics(tiny_run, workdir):
    shutil.copy(HELDOUT, workdir / "tests" / "data")
    result = run_cli(
        "test",
        "--config",
        "configs/tiny.yaml",
        "--ckpt_path",
        str(tiny_run / "checkpoints" / "last.ckpt"),
        "--data.test_corpus",
        "tests/data/heldout.fr.txt",
        cwd=workdir,
    )
    for metric in ("test/acc", "test/top5", "test/perplexity"):
        assert metric in result.stdout, result.stdout


@pytest.mark.slow
def test_a_checkpoint_is_enough_to_score_held_out_text(tiny_run, workdir):
    """test and predict take the vocabulary from --ckpt_path: the training corpus may be gone."""
    (workdir / "tests" / "data" / "sample.fr.txt").unlink()
    shutil.copy(HELDOUT, workdir / "held.txt")
    checkpoint = str(tiny_run / "checkpoints" / "last.ckpt")
    result = run_cli(
        "test",
        "--config",
        "configs/tiny.yaml",
        "--ckpt_path",
        checkpoint,
        "--data.test_corpus",
        "held.txt",
        cwd=workdir,
    )
    assert "test/acc" in result.stdout and "test/perplexity" in result.stdout, result.stdout
    run_cli(
        "predict",
        "--config",
        "configs/tiny.yaml",
        "--ckpt_path",
        checkpoint,
        "--data.test_corpus",
        "held.txt",
        cwd=workdir,
    )
    assert not (workdir / "tests" / "data" / "sample.fr.txt").exists()


def test_words_outside_the_checkpoint_vocabulary_are_unk(tiny_run, tmp_path):
    checkpoint = tiny_run / "checkpoints" / "last.ckpt"
    (tmp_path / "held.txt").write_text("la commission zzyzxqq a voté\n", encoding="utf-8")
    data = module(
        tmp_path,
        corpus=str(tmp_path / "gone.txt"),
        vocab_from=str(checkpoint),
        test_corpus=str(tmp_path / "held.txt"),
    )
    data.setup("test")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["vocabulary"]["words"]
    assert data.vocab.itos[3:] == saved
    words = data.vocab.decode(data.datasets["test"].tokens.tolist())
    assert (
        words == [w if w in saved else "<unk>" for w in ["la", "commission", "zzyzxqq", "a", "voté"]]
        and words[2] == "<unk>"
    )


# --- bad input: one clear line naming the file or option --------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"vocab_size": 3}, "data.vocab_size=3 must be more than the 3 special tokens"),
        ({"seq_len": 1}, "data.seq_len=1 must be at least 2"),
        ({"mask_prob": 1.5}, "data.mask_prob=1.5 must be a probability in [0, 1]"),
        ({"val_mask_prob": -0.5}, "data.val_mask_prob=-0.5 must be a probability in [0, 1]"),
        ({"windows": "sentences"}, "data.windows='sentences' must be one of tile, sentence"),
        ({"mask_token_prob": -0.1}, "data.mask_token_prob=-0.1 must be a probability in [0, 1]"),
        ({"random_token_prob": 1.2}, "data.random_token_prob=1.2 must be a probability in [0, 1]"),
        (
            {"mask_token_prob": 0.8, "random_token_prob": 0.3},
            "data.mask_token_prob + data.random_token_prob = 1.1",
        ),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0 must be in [0, 1)"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(MinibertError) as error:
        module(tmp_path, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_missing_corpus(tmp_path):
    with pytest.raises(MinibertError, match=r"^data.corpus: nowhere.txt does not exist"):
        module(tmp_path, corpus="nowhere.txt").prepare_data()


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(MinibertError, match=f"corpus {tmp_path / 'empty.txt'} has no sentences"):
        module(tmp_path, corpus=str(tmp_path / "empty.txt")).prepare_data()
    assert not (tmp_path / "data" / "cache").exists() or list((tmp_path / "data" / "cache").iterdir()) == []


def test_fewer_samples_than_one_batch(tmp_path):
    data = module(tmp_path, batch_size=10_000)
    with pytest.raises(
        MinibertError, match=r"gives 668 training samples, fewer than one batch \(data.batch_size=10000\)"
    ):
        data.setup("fit")


def test_directory_without_sessions(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MinibertError, match="no Europarl session files"):
        module(tmp_path, corpus=str(tmp_path / "empty_dir")).prepare_data()


@pytest.mark.slow
def test_command_line_shows_one_error_line_and_no_traceback(workdir):
    result = run_cli(
        "fit", "--config", "configs/tiny.yaml", "--data.corpus", "missing.txt", cwd=workdir, check=False
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: data.corpus: missing.txt does not exist (give a sentence-per-line file, a .gz or a directory of Europarl session files)"
    ]
    assert "Traceback" not in result.stderr + result.stdout
