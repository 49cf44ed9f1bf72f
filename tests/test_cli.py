"""The command line end to end: install, train a tiny model, find every output."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from minibert import progress
from minibert.machinery import precision
from minibert.module import MiniBert


def test_tiny_fit_writes_checkpoint_logs_and_projector(tiny_run):
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    version = tiny_run / "lightning_logs" / "version_0"
    events = EventAccumulator(str(version)).Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert len(events.Scalars("train/loss")) > 10
    for epoch in (0, 1):
        folder = version / "projector" / f"epoch_{epoch}"
        assert (folder / "vectors.tsv").stat().st_size > 0
        assert (folder / "metadata.tsv").read_text(encoding="utf-8").startswith("word\tcount\n")


def resolved(config: str, cwd: Path) -> dict:
    return yaml.safe_load(
        run_cli("fit", "--config", str(REPO / "configs" / config), "--print_config", cwd=cwd).stdout
    )


@pytest.mark.parametrize("name", ["base.yaml", "reference.yaml"])
def test_base_and_reference_keep_the_reference_model_and_budget(tmp_path, name):
    config = resolved(name, tmp_path)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    assert (data["batch_size"], data["seq_len"], data["vocab_size"], data["max_sentences"]) == (
        128,
        20,
        40003,
        30000,
    )
    assert (model["embed_dim"], model["num_heads"], model["num_layers"], model["ff_dim"]) == (128, 8, 8, 512)
    assert trainer["max_steps"] == 30000 and data["corpus"] == "europarl-v7-fr"
    projector = [c for c in trainer["callbacks"] if c["class_path"].endswith("EmbeddingProjector")]
    assert projector[0]["init_args"]["top_k"] == 3000


@pytest.mark.slow
def test_reference_yaml_is_the_reference_recipe(tmp_path):
    model, data = (resolved("reference.yaml", tmp_path)[key] for key in ("model", "data"))
    assert (model["dropout"], model["lr"], model["weight_decay"], tuple(model["betas"])) == (
        0.1,
        0.002,
        0.0001,
        (0.9, 0.999),
    )
    assert (model["init_std"], model["tie_embeddings"], model["lr_decay"], model["optimizer"]) == (
        None,
        False,
        "constant",
        "adam",
    )
    assert (data["mask_prob"], data["windows"], data["packing"]) == (0.15, "sentence", True)


@pytest.mark.slow
def test_every_config_works_from_a_fresh_clone(tmp_path):
    """No config reads ../shared, which users never have: the corpus is the download, or a fixture of this repository."""
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {c.name for c in configs} >= {"base.yaml", "quick.yaml", "reference.yaml", "tiny.yaml"}
    for path in configs:
        assert "../shared" not in path.read_text(encoding="utf-8"), path.name
        corpus = resolved(path.name, tmp_path)["data"]["corpus"]
        assert corpus == "europarl-v7-fr" or (REPO / corpus).is_file(), (path.name, corpus)


@pytest.mark.slow
def test_minibert_and_python_m_are_the_same_command(tmp_path):
    via_script = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--print_config",
        cwd=tmp_path,
        command="minibert",
    ).stdout
    via_module = subprocess.run(
        [
            sys.executable,
            "-m",
            "minibert",
            "fit",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--print_config",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert via_script == via_module and "EmbeddingProjector" in via_script


@pytest.mark.slow
def test_bad_option_is_one_clear_line(workdir):
    result = run_cli("fit", "--config", "configs/tiny.yaml", "--data.seq_len", "1", cwd=workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.seq_len=1 must be at least 2"
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_progress_bar_counts_the_whole_run_in_steps(workdir):
    """One bar from the first step to max_steps, across epochs: the rate is steps per second and the time left the run's."""
    result = run_cli(
        "fit",
        "--config",
        "configs/tiny.yaml",
        "--trainer.enable_progress_bar",
        "true",
        "--trainer.max_steps",
        "60",
        "--trainer.max_epochs",
        "-1",
        cwd=workdir,
    )
    frames = [frame for frame in result.stdout.replace("\r", "\n").splitlines() if frame.startswith("Epoch")]
    assert any(frame.startswith("Epoch 1:") and "/60 [" in frame for frame in frames), frames[
        -3:
    ]  # an epoch is 42 steps
    assert "60/60 [" in frames[-1] and "step/s" in frames[-1], frames[-1]


def test_the_progress_bar_redraws_at_most_twice_a_second_and_at_the_end(monkeypatch):
    """Lightning's bar redraws at every step (a line per step in a log file); this one by the clock."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock.now))  # its clock only
    bar = progress.RunProgressBar()
    bar.train_progress_bar = progress.TQDMProgressBar().init_train_tqdm()
    bar.train_progress_bar.reset(total=100)
    drawn = []
    monkeypatch.setattr(bar, "get_metrics", lambda *_: drawn.append(trainer.global_step) or {})
    trainer = SimpleNamespace(max_steps=100, global_step=0)
    for step in range(1, 101):  # a step every 1/8 s
        trainer.global_step, clock.now = step, step / 8
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    assert drawn == [*range(1, 100, 4), 100]  # every 0.5 s, and the last step


# --- precision ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bf16_mixed_trains_with_gradient_clipping_and_the_fused_optimiser(workdir):
    """Lightning refuses to clip for a fused optimiser under mixed precision; bfloat16 needs no scaler, so minibert clips."""
    run_cli(
        "fit", "--config", "configs/tiny.yaml", "--trainer.precision", "bf16-mixed",
        "--trainer.gradient_clip_val", "0.01", "--trainer.max_epochs", "1", cwd=workdir,
    )  # fmt: skip
    checkpoint = torch.load(workdir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    steps = checkpoint["global_step"]
    losses = EventAccumulator(str(workdir / "lightning_logs" / "version_0")).Reload().Scalars("train/loss")
    assert steps > 20 and len(losses) == steps and all(math.isfinite(event.value) for event in losses)


def test_clipping_under_bf16_bounds_the_gradient_norm(tmp_path):
    model = MiniBert(vocab_size=50, seq_len=6, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16, lr=0.0)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.01, max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    norms = []

    class Watch(L.Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):  # the last step's clipped gradients
            norms.append(
                torch.nn.utils.get_total_norm(
                    [p.grad for p in pl_module.parameters() if p.grad is not None]
                ).item()
            )

    trainer.callbacks.append(Watch())
    ids = torch.randint(3, 50, (4, 6))
    batch = {"input_ids": ids, "labels": ids, "padding_mask": torch.zeros(4, 6, dtype=torch.bool)}
    trainer.fit(model, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    assert norms[-1] == pytest.approx(0.01, rel=1e-3)  # unclipped, it is about 0.6


@pytest.mark.parametrize(
    "accelerator,native,expected",
    [
        ("auto", True, "bf16-mixed"),
        ("cpu", True, "bf16-mixed"),
        ("cpu", False, "32-true"),
        ("mps", True, "32-true"),
    ],
)
def test_the_precision_follows_the_hardware(monkeypatch, accelerator, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen, why = precision.choose_precision(accelerator)
    assert chosen == expected and why


@pytest.mark.slow
def test_a_run_says_which_precision_it_chose_and_the_option_overrides_it(workdir, monkeypatch):
    config = "configs/tiny.yaml"
    (workdir / config).write_text((workdir / config).read_text().replace("  precision: 32-true", ""))
    shrink = ("--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    chosen = run_cli("fit", "--config", config, *shrink, cwd=workdir)
    expected, _ = precision.choose_precision("cpu")
    assert f"precision: {expected}, as " in chosen.stdout + chosen.stderr
    assert "not supported by the model summary" not in chosen.stderr  # its bf16-mixed warning is wrong
    saved = yaml.safe_load((workdir / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == expected  # a resumed run reads the same choice
    forced = run_cli(
        "fit",
        "--config",
        config,
        *shrink,
        "--trainer.precision",
        "32-true",
        "--overwrite",
        "true",
        cwd=workdir,
    )
    assert "precision: " not in forced.stdout + forced.stderr
