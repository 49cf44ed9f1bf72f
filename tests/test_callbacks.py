"""The EmbeddingProjector callback in real (tiny, in-process) training runs."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from test_projector import parse_config, read_metadata, read_vectors
from torch.utils.data import DataLoader

from minibert.explore.callbacks import EmbeddingProjector
from minibert.masking import IGNORE_INDEX
from minibert.module import MiniBert
from minibert.tokenizer import Vocabulary

VOCAB = Vocabulary([f"mot{i}" for i in range(40)], list(range(400, 0, -10)))  # 43 ids, most frequent first
BATCHES_PER_EPOCH = 3


def tiny_model(tie_embeddings: bool = False) -> MiniBert:
    model = MiniBert(
        vocab_size=len(VOCAB),
        seq_len=8,
        embed_dim=8,
        num_heads=2,
        num_layers=1,
        ff_dim=16,
        tie_embeddings=tie_embeddings,
    )
    model.vocab = VOCAB  # what the data module would hand over
    return model


def batches() -> DataLoader:
    """Masked-word batches of random words: (4, 8) ids, a third of them scored."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB.num_specials, len(VOCAB), (BATCHES_PER_EPOCH, 4, 8), generator=generator)
    scored = torch.rand(ids.shape, generator=generator) < 0.3
    scored[..., 0] = True
    return DataLoader(
        [
            {"input_ids": i, "labels": torch.where(s, i, IGNORE_INDEX), "padding_mask": torch.zeros_like(s)}
            for i, s in zip(ids, scored)
        ],
        batch_size=None,
    )


def fit(
    root: Path,
    callback: EmbeddingProjector,
    logger,
    model: MiniBert | None = None,
    ckpt_path: Path | None = None,
    **trainer_args,
) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=root,
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **{"max_epochs": 2, **trainer_args},
    )
    trainer.fit(model or tiny_model(), train_dataloaders=batches(), ckpt_path=ckpt_path)
    return trainer


def folders(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "projector").iterdir())


def test_one_folder_per_epoch_listed_for_tensorboard(tmp_path):
    model = tiny_model()
    trainer = fit(
        tmp_path, EmbeddingProjector(top_k=0), TensorBoardLogger(tmp_path, name="lightning_logs"), model
    )
    version = tmp_path / "lightning_logs" / "version_0"
    assert folders(version) == ["epoch_0", "epoch_1"]  # fit's end, right after epoch 1's, adds nothing
    header, rows = read_metadata(version / "projector" / "epoch_1" / "metadata.tsv")
    assert [row[0] for row in rows] == VOCAB.itos[3:]  # top_k=0: every word, no special token
    assert torch.equal(
        read_vectors(version / "projector" / "epoch_1" / "vectors.tsv"),
        model.encoder.token_embedding.weight[3:],
    )
    assert not torch.equal(  # each epoch its own weights
        read_vectors(version / "projector" / "epoch_0" / "vectors.tsv"),
        read_vectors(version / "projector" / "epoch_1" / "vectors.tsv"),
    )
    config = parse_config(version)
    assert [e.tensor_name for e in config.embeddings] == [
        "word_embeddings/9998 epoch 1",
        "word_embeddings/9999 epoch 0",
    ]
    assert trainer.global_step == 2 * BATCHES_PER_EPOCH


def test_a_long_run_keeps_at_most_max_kept_epochs_and_always_the_newest(tmp_path):
    fit(
        tmp_path,
        EmbeddingProjector(top_k=5, max_kept=3),
        TensorBoardLogger(tmp_path, name="lightning_logs"),
        max_epochs=6,
    )
    version = tmp_path / "lightning_logs" / "version_0"
    assert folders(version) == ["epoch_0", "epoch_4", "epoch_5"]
    assert [e.tensor_name for e in parse_config(version).embeddings] == [
        "word_embeddings/9994 epoch 5",
        "word_embeddings/9995 epoch 4",
        "word_embeddings/9999 epoch 0",
    ]


@pytest.mark.parametrize("max_kept", [1, -1])
def test_max_kept_must_leave_room_for_two_epochs(max_kept):
    with pytest.raises(ValueError, match=f"max_kept={max_kept} must be 0"):
        EmbeddingProjector(max_kept=max_kept)


def test_fit_stopped_mid_epoch_exports_its_last_weights_once(tmp_path):
    model = tiny_model()
    fit(tmp_path, EmbeddingProjector(top_k=5), False, model, max_steps=BATCHES_PER_EPOCH + 1, max_epochs=-1)
    assert folders(tmp_path) == ["epoch_0", "epoch_1"]  # epoch 1 stopped after one step
    assert torch.equal(
        read_vectors(tmp_path / "projector" / "epoch_1" / "vectors.tsv"),
        model.encoder.token_embedding.weight[3:8],
    )


def test_resuming_a_finished_run_adds_no_folder(tmp_path):
    trainer = fit(tmp_path, EmbeddingProjector(top_k=5), False)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    before = {p: p.read_bytes() for p in (tmp_path / "projector").rglob("*.tsv")}
    again = fit(
        tmp_path, EmbeddingProjector(top_k=5), False, ckpt_path=tmp_path / "last.ckpt"
    )  # max_epochs already reached
    assert again.global_step == trainer.global_step
    assert {
        p: p.read_bytes() for p in (tmp_path / "projector").rglob("*.tsv")
    } == before  # no epoch_2 copy of epoch 1


def fake_trainer(root: Path, epoch: int, step: int) -> SimpleNamespace:
    """What the callback reads from a trainer, without training."""
    return SimpleNamespace(
        loggers=[], logger=None, default_root_dir=root, current_epoch=epoch, global_step=step
    )


def test_fit_end_exports_only_when_steps_were_taken_since_the_last_export(tmp_path):
    callback, model = EmbeddingProjector(top_k=3), tiny_model()
    callback.on_fit_end(
        fake_trainer(tmp_path, 0, 0), model
    )  # no training in this fit (a finished run resumed)
    assert not (tmp_path / "projector").exists()
    callback.on_train_start(fake_trainer(tmp_path, 4, 100), model)  # resumed at step 100
    callback.on_fit_end(fake_trainer(tmp_path, 4, 100), model)
    assert not (tmp_path / "projector").exists()
    callback.on_fit_end(fake_trainer(tmp_path, 4, 130), model)  # stopped in the middle of epoch 4
    assert folders(tmp_path) == ["epoch_4"]


@pytest.mark.parametrize("tied", [False, True])
def test_source_output_is_the_head_and_the_same_matrix_when_tied(tmp_path, tied):
    model = tiny_model(tie_embeddings=tied)
    EmbeddingProjector(top_k=4, source="output").export(fake_trainer(tmp_path, 0, 1), model)
    exported = read_vectors(tmp_path / "projector" / "epoch_0" / "vectors.tsv")
    assert torch.equal(exported, model.encoder.lm_head.weight[3:7])
    assert torch.equal(exported, model.encoder.token_embedding.weight[3:7]) == tied


def test_top_k_keeps_the_most_frequent_words(tmp_path):
    EmbeddingProjector(top_k=4, with_counts=False).export(fake_trainer(tmp_path, 0, 1), tiny_model())
    header, rows = read_metadata(tmp_path / "projector" / "epoch_0" / "metadata.tsv")
    assert header is None and rows == [["mot0"], ["mot1"], ["mot2"], ["mot3"]]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    EmbeddingProjector(top_k=4).export(fake_trainer(tmp_path, 0, 1), tiny_model())
    assert not (tmp_path / "projector").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    EmbeddingProjector(top_k=4).export(fake_trainer(tmp_path, 0, 1), tiny_model())
    assert folders(tmp_path) == ["epoch_0"]


@pytest.fixture
def lightning_log(caplog):
    """Lightning's info lines. Its logger stops propagating to the root, where caplog listens,
    when the root had no handler at import time (outside pytest)."""
    logger = logging.getLogger("lightning.pytorch")
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    if not logger.propagate:
        logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def projector_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "EmbeddingProjector" in r.getMessage()]


def test_another_logger_gets_the_files_and_one_info_line(tmp_path, lightning_log):
    fit(tmp_path, EmbeddingProjector(top_k=5), CSVLogger(tmp_path, name="csv"))
    version = tmp_path / "csv" / "version_0"
    assert folders(version) == ["epoch_0", "epoch_1"]
    assert not list(tmp_path.rglob("projector_config.pbtxt"))
    lines = projector_lines(lightning_log)
    assert len(lines) == 1 and "no TensorBoard logger" in lines[0] and str(version / "projector") in lines[0]


def test_without_a_logger_the_files_go_to_the_default_root(tmp_path, lightning_log):
    fit(tmp_path, EmbeddingProjector(top_k=5), False)
    assert folders(tmp_path) == ["epoch_0", "epoch_1"]
    assert len(projector_lines(lightning_log)) == 1


def test_a_write_failure_is_reported_once_and_training_goes_on(tmp_path):
    (tmp_path / "projector").write_text(
        "a file where the folder should go"
    )  # fails even for root, unlike chmod
    with pytest.warns(UserWarning) as warned:
        trainer = fit(tmp_path, EmbeddingProjector(top_k=5), False)
    assert trainer.global_step == 2 * BATCHES_PER_EPOCH and trainer.state.finished
    reports = [str(w.message) for w in warned if "EmbeddingProjector" in str(w.message)]
    assert len(reports) == 1 and "could not write" in reports[0] and "epoch_0" in reports[0]
    assert (tmp_path / "projector").read_text() == "a file where the folder should go"
