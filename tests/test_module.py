"""The LightningModule: the masked loss, its metrics, the optimiser and checkpoints, by hand."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO, run_cli
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

import minibert.module
from minibert.masking import IGNORE_INDEX
from minibert.module import MiniBert, lr_factor
from minibert.tokenizer import MASK_ID, Vocabulary

V, T = 50, 6


def tiny_model(**options) -> MiniBert:
    settings = dict(vocab_size=V, seq_len=T, embed_dim=16, num_heads=2, num_layers=2, ff_dim=32, dropout=0.0)
    torch.manual_seed(0)
    return MiniBert(**{**settings, **options})


def make_batch(scored: int, seed: int, rows: int = 4) -> dict[str, torch.Tensor]:
    """``rows`` sequences with ``scored`` positions labelled and the last sequence half padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (rows, T), generator=generator)
    padding = torch.zeros(rows, T, dtype=torch.bool)
    padding[-1, T // 2 :] = True
    ids = ids.masked_fill(padding, 0)
    labels = torch.full_like(ids, IGNORE_INDEX)
    candidates = (~padding).flatten().nonzero().flatten()
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:scored]]
    labels.view(-1)[chosen] = ids.view(-1)[chosen]
    ids.view(-1)[chosen] = MASK_ID
    return {"input_ids": ids, "labels": labels, "padding_mask": padding}


BATCHES = [make_batch(3, seed=1), make_batch(9, seed=2)]


def by_hand(model: MiniBert, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Loss, accuracy, top-5 and perplexity over every scored token of ``batches``, full head."""
    losses, hits, top5 = [], [], []
    with torch.no_grad():
        for b in batches:
            logits = model.encoder.logits(model.encoder(b["input_ids"], b["padding_mask"]))  # (B, T, V)
            scored = b["labels"] != IGNORE_INDEX
            losses.append(F.cross_entropy(logits[scored], b["labels"][scored], reduction="none"))
            hits.append(logits[scored].argmax(-1) == b["labels"][scored])
            top5.append((logits[scored].topk(5, dim=-1).indices == b["labels"][scored][:, None]).any(-1))
    loss = torch.cat(losses).mean().item()
    return {
        "loss": loss,
        "acc": torch.cat(hits).float().mean().item(),
        "top5": torch.cat(top5).float().mean().item(),
        "perplexity": math.exp(loss),
    }


def trainer(tmp_path, **options) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**settings, **options})


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_loss_on_scored_rows_equals_full_head_loss(tie):
    model = tiny_model(tie_embeddings=tie).eval()
    batch = BATCHES[1]
    loss, ranks = model.masked_loss(batch)
    full = model.encoder.logits(model.encoder(batch["input_ids"], batch["padding_mask"]))  # (B, T, V)
    expected = F.cross_entropy(full.view(-1, V), batch["labels"].view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    assert ranks.shape == (9,)
    # The rank of each right word: how many other words score at least as high.
    scored = batch["labels"] != IGNORE_INDEX
    logits, labels = full[scored], batch["labels"][scored]  # (9, V), (9,)
    order = logits.argsort(dim=-1, descending=True)  # (9, V), best guess first
    assert ranks.tolist() == (order == labels[:, None]).int().argmax(dim=-1).tolist()


def test_loss_and_softmax_stay_float32_under_bf16_autocast():
    model = tiny_model().train()
    batch = BATCHES[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.encoder(batch["input_ids"], batch["padding_mask"])
        assert model.encoder.logits(hidden).dtype == torch.bfloat16  # autocast is really on
        loss, _ = model.masked_loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- metrics ----------------------------------------------------------------------------------


def test_validation_and_test_metrics_are_token_weighted_over_the_epoch(tmp_path):
    model = tiny_model()
    expected = by_hand(model, BATCHES)
    loader = DataLoader(BATCHES, batch_size=None)
    for stage, run in (("val", trainer(tmp_path).validate), ("test", trainer(tmp_path).test)):
        logged = run(model, dataloaders=loader, verbose=False)[0]
        for name in ("loss", "acc", "top5", "perplexity"):
            assert logged[f"{stage}/{name}"] == pytest.approx(expected[name], rel=1e-5, abs=1e-5), (
                f"{stage}/{name}"
            )
    # a plain mean over the two batches would differ: the weighting is tested
    per_batch = [by_hand(model, [b])["loss"] for b in BATCHES]
    assert abs(sum(per_batch) / 2 - expected["loss"]) > 1e-3


def test_training_logs_every_step_with_lr_and_tokens_per_second(tmp_path, monkeypatch):
    model = tiny_model(lr=0.01, warmup_steps=2, lr_decay="cosine", min_lr_ratio=0.1)
    before = by_hand(model, BATCHES[:1])
    ticks = iter(range(100))
    monkeypatch.setattr(minibert.module, "perf_counter", lambda: next(ticks) * 0.5)  # every step lasts 0.5 s
    run = trainer(
        tmp_path,
        max_steps=4,
        log_every_n_steps=1,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path, name="log"),
        callbacks=[LearningRateMonitor("step")],
    )
    run.fit(model, train_dataloaders=DataLoader(BATCHES, batch_size=None))
    rows = list(csv.DictReader(open(tmp_path / "log" / "version_0" / "metrics.csv")))
    steps = {int(r["step"]): r for r in rows if r.get("train/loss")}
    assert sorted(steps) == [0, 1, 2, 3]
    assert float(steps[0]["train/loss"]) == pytest.approx(
        before["loss"], abs=1e-5
    )  # the first step scores the untrained model
    assert float(steps[0]["train/acc"]) == pytest.approx(before["acc"], abs=1e-6)
    tokens = BATCHES[0]["input_ids"].numel()
    assert float(steps[0]["train/tokens_per_sec"]) == pytest.approx(tokens / 0.5)
    for group in ("pg1", "pg2"):  # with and without weight decay
        lrs = [float(r[f"lr-Adam/{group}"]) for r in rows if r.get(f"lr-Adam/{group}")]
        # warm-up 0.5, 1; then cosine over the 2 remaining steps from 1 down to 0.1: 1, 0.55
        assert lrs == pytest.approx(
            [0.005, 0.01, 0.01, 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))]
        )


# --- optimiser and schedule --------------------------------------------------------------------


def test_lr_factor_warms_up_then_decays():
    assert [lr_factor(s, 4, 14, "constant", 0.0) for s in (0, 1, 3, 4, 13)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    # after 4 warm-up steps, 10 decay steps: halfway at step 9, the floor at step 14 and beyond
    assert lr_factor(9, 4, 14, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(9, 4, 14, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(6, 4, 14, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(9, 4, 14, "linear", 0.1) == pytest.approx(0.55)
    assert lr_factor(14, 4, 14, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(20, 4, 14, "linear", 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_no_weight_decay_on_norms_and_biases(name, cls):
    model = tiny_model(optimizer=name, weight_decay=0.05)
    optimizer = model.configure_optimizers()["optimizer"]
    assert type(optimizer) is cls
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    params = dict(model.named_parameters())
    matrices = {
        n for n in params if n.endswith("weight") and "norm" not in n
    }  # linear layers and the embedding
    assert {n for n, p in params.items() if id(p) in decayed} == matrices
    assert {n for n, p in params.items() if id(p) in plain} == set(params) - matrices
    assert any("norm" in n for n in set(params) - matrices) and any(
        n.endswith("bias") for n in set(params) - matrices
    )


def test_adam_is_the_default():
    assert type(tiny_model().configure_optimizers()["optimizer"]) is torch.optim.Adam


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_loads_with_weights_only_and_predicts_alone(tiny_run):
    path = tiny_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["embed_dim"] == 16
    assert "vocabulary" in checkpoint

    model = MiniBert.load_from_checkpoint(path, map_location="cpu").eval()
    assert isinstance(model.vocab, Vocabulary) and len(model.vocab) == model.config.vocab_size
    ids = torch.tensor([model.vocab.encode("le parlement européen a adopté la résolution".split())])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], ids[0, 2] = ids[0, 2].item(), MASK_ID
    with torch.no_grad():
        out = model.predict_step(
            {"input_ids": ids, "labels": labels, "padding_mask": torch.zeros_like(ids, dtype=torch.bool)}, 0
        )
    assert out["predicted"].shape == (1,)
    assert model.vocab.decode(out["predicted"].tolist())[0] in model.vocab.stoi


def test_configs_log_the_learning_rate():
    for name in ("base", "quick", "reference"):
        text = (REPO / "configs" / f"{name}.yaml").read_text()
        assert "lightning.pytorch.callbacks.LearningRateMonitor" in text, name


def test_quick_config_resolves(tmp_path):
    config = yaml.safe_load(
        run_cli(
            "fit", "--config", str(REPO / "configs" / "quick.yaml"), "--print_config", cwd=tmp_path
        ).stdout
    )
    assert config["data"]["corpus"] == "europarl-v7-fr"
    assert (config["model"]["init_std"], config["model"]["tie_embeddings"], config["model"]["lr_decay"]) == (
        0.02,
        True,
        "cosine",
    )
    assert config["model"]["scale_embeddings"] is True
