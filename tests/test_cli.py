"""The command line end to end: install, train a tiny model, find every output."""

from __future__ import annotations

import subprocess
import sys

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


def test_print_config_shows_the_reference_numbers(tmp_path):
    out = run_cli("fit", "--config", str(REPO / "configs" / "base.yaml"), "--print_config", cwd=tmp_path).stdout
    config = yaml.safe_load(out)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    assert (data["batch_size"], data["seq_len"], data["vocab_size"], data["max_sentences"]) == (128, 20, 40003, 30000)
    assert (model["embed_dim"], model["num_heads"], model["num_layers"], model["ff_dim"]) == (128, 8, 8, 512)
    assert (model["dropout"], model["lr"], model["weight_decay"], tuple(model["betas"])) == (0.1, 0.002, 0.0001, (0.9, 0.999))
    assert data["mask_prob"] == 0.15 and trainer["max_steps"] == 30000
    projector = [c for c in trainer["callbacks"] if c["class_path"].endswith("EmbeddingProjector")]
    assert projector[0]["init_args"]["top_k"] == 3000


def test_minibert_and_python_m_are_the_same_command(tmp_path):
    via_script = run_cli("fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--print_config", cwd=tmp_path, command="minibert").stdout
    via_module = subprocess.run(
        [sys.executable, "-m", "minibert", "fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--print_config"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout
    assert via_script == via_module and "EmbeddingProjector" in via_script


def test_bad_option_is_one_clear_line(workdir):
    result = run_cli("fit", "--config", "configs/tiny.yaml", "--data.seq_len", "1", cwd=workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.seq_len=1 must be at least 2"
    assert "Traceback" not in result.stderr
