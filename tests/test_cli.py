"""The command line end to end: install, train a tiny model, find every output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


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


def test_every_config_works_from_a_fresh_clone(tmp_path):
    """No config reads ../shared, which users never have: the corpus is the download, or a fixture of this repository."""
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {c.name for c in configs} >= {"base.yaml", "quick.yaml", "reference.yaml", "tiny.yaml"}
    for path in configs:
        assert "../shared" not in path.read_text(encoding="utf-8"), path.name
        corpus = resolved(path.name, tmp_path)["data"]["corpus"]
        assert corpus == "europarl-v7-fr" or (REPO / corpus).is_file(), (path.name, corpus)


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


def test_bad_option_is_one_clear_line(workdir):
    result = run_cli("fit", "--config", "configs/tiny.yaml", "--data.seq_len", "1", cwd=workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.seq_len=1 must be at least 2"
    assert "Traceback" not in result.stderr


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
