"""minibert.static_step computes what the lesson's step computes: the same loss, gradients and metrics.

The GPU itself is not here: these tests check the numbers on a CPU (in float32, to rounding),
that no step's shape depends on the data (the step runs on PyTorch's "meta" device, which has
shapes but no values: anything that reads a value, as a host waiting for a GPU would, fails
there), and that the compiled step equals the eager one.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import REPO
from lightning.pytorch.loggers import CSVLogger
from test_module import T, V, make_batch, tiny_model
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from minibert.errors import MinibertError
from minibert.masking import IGNORE_INDEX
from minibert.module import MiniBert
from minibert.static_step import StaticStep, compile_mode, static_loss

K = 5


BATCHES = [make_batch(9, seed=1), make_batch(3, seed=2), make_batch(7, seed=3, rows=3)]  # the last smaller


def lesson_step(model: MiniBert, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, list[float]]:
    """The lesson's loss, gradients, and (scored rows, accuracy, top-k accuracy)."""
    model.zero_grad()
    loss, ranks = model.masked_loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    metrics = [ranks.numel(), (ranks == 0).float().mean().item(), (ranks < K).float().mean().item()]
    return loss.detach(), grads, metrics


def static_step(model: MiniBert, batch: dict[str, torch.Tensor], step=static_loss):
    """The same through :func:`static_loss` (or ``step``, with its arguments)."""
    model.zero_grad()
    loss, counts = step(model.encoder, batch["input_ids"], batch["padding_mask"], batch["labels"], K)
    if torch.is_grad_enabled():
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    scored, right, top = counts.tolist()
    return loss.detach(), grads, [int(scored), (counts[1] / counts[0]).item(), (counts[2] / counts[0]).item()]


def assert_same(ours, lesson, atol: float = 1e-6) -> None:
    (loss, grads, metrics), (expected_loss, expected_grads, expected_metrics) = ours, lesson
    torch.testing.assert_close(loss, expected_loss, atol=atol, rtol=0)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=atol, rtol=0, msg=name)
    assert metrics == expected_metrics  # counts of whole positions: exactly the same


# --- the option ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, None, "Auto"])
def test_model_compile_is_checked_where_it_enters(value):
    with pytest.raises(MinibertError, match="model.compile"):
        tiny_model(compile=value)


def test_auto_takes_the_static_step_on_a_gpu_only():
    on_gpu = {"input_ids": SimpleNamespace(device=torch.device("cuda"))}
    on_cpu = {"input_ids": torch.zeros(1, T, dtype=torch.long)}
    assert StaticStep("auto").applies(on_gpu) and not StaticStep("auto").applies(on_cpu)
    assert StaticStep(True).applies(on_cpu) and not StaticStep(False).applies(on_gpu)
    assert compile_mode("cuda") == "reduce-overhead" and compile_mode("cpu") is None  # CUDA graphs on a GPU


# --- the same numbers as the lesson's step -------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_static_loss_gives_the_lessons_loss_gradients_and_metrics(fast, tie, mode):
    # Training mode without dropout: minibert.fast's last layer runs on the scored rows only there.
    model = tiny_model(fast=fast, tie_embeddings=tie).train(mode == "train")
    for batch in BATCHES:
        assert_same(static_step(model, batch), lesson_step(model, batch))


def test_a_smaller_batch_is_padded_with_rows_that_count_for_nothing():
    model, step = tiny_model(), StaticStep(True, eager=True)
    full, small = BATCHES[0], BATCHES[2]
    step.fixed_shape(full, "val")
    padded = dict(zip(("input_ids", "padding_mask", "labels"), step.fixed_shape(small, "val")))
    assert padded["input_ids"].shape == full["input_ids"].shape  # every batch of the stage: one shape
    assert (padded["labels"][len(small["labels"]) :] == IGNORE_INDEX).all()
    assert_same(static_step(model, padded), lesson_step(model, small))
    assert step.fixed_shape(small, "train")[0].shape == small["input_ids"].shape  # each stage its own


def test_the_loss_stays_float32_under_bf16_autocast():
    model = tiny_model().train()
    batch = BATCHES[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, counts = static_loss(
            model.encoder, batch["input_ids"], batch["padding_mask"], batch["labels"], K
        )
        expected, _ = model.masked_loss(batch)
    assert loss.dtype == torch.float32 and counts.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=2e-2, rtol=0)  # bfloat16 products, computed alike
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- nothing in the step waits for values -------------------------------------------------------


def test_no_shape_in_the_step_depends_on_the_data():
    """On the meta device a tensor has a shape and no values: whatever would read one fails."""
    model = tiny_model(tie_embeddings=True).train().to("meta")
    step = StaticStep(True, eager=True)
    step.fixed_shape(BATCHES[0], "train")
    batch = {k: v.to("meta") for k, v in BATCHES[2].items()}
    input_ids, padding_mask, labels = step.fixed_shape(batch, "train")  # padded without looking
    loss, counts = static_loss(model.encoder, input_ids, padding_mask, labels, K)
    loss.backward()
    assert counts.shape == (3,) and model.encoder.lm_head.weight.grad.shape == (V, 16)
    # The lesson's step picks its rows with a boolean mask: their number is in the data.
    with pytest.raises(NotImplementedError, match="nonzero"):
        model.masked_loss(batch)


@pytest.mark.filterwarnings("ignore:aten::nll_loss")  # PyTorch's note on a meta-device backward
def test_the_gpus_branches_compile_into_one_graph():
    """Off a CPU, attention is PyTorch's fused kernel and dropout PyTorch's own: the meta device takes those branches.

    Traced with ``aot_eager`` (the graphs inductor would compile, run without generating kernels),
    in training mode with dropout and in evaluation mode; ``fullgraph=True`` fails on any break.
    """
    model = tiny_model(tie_embeddings=True, dropout=0.1).to("meta")
    step = StaticStep(True, backend="aot_eager")
    batch = {k: v.to("meta") for k, v in BATCHES[0].items()}
    args = (batch["input_ids"], batch["padding_mask"], batch["labels"], K)
    loss, counts = step.run(model.encoder.train(), *args)
    loss.backward()
    with torch.no_grad():
        step.run(model.encoder.eval(), *args)
    assert step.how.startswith("static shapes, compiled"), step.how  # no fallback to eager


def test_a_mean_metric_reads_its_input_unless_its_nan_check_is_off():
    """Why StaticStep turns the validation metrics' NaN check off: on a GPU, that read is a wait."""
    value, weight = torch.tensor(0.5, device="meta"), torch.tensor(3.0, device="meta")
    with pytest.raises(Exception):  # noqa: B017 (PyTorch's error for reading a meta tensor)
        MeanMetric().to("meta").update(value, weight)
    quiet = MeanMetric(nan_strategy="disable").to("meta")
    quiet.update(value, weight)
    assert quiet.compute().device.type == "meta"


# --- through Lightning -------------------------------------------------------------------------


def fit_and_read(tmp_path, model: MiniBert, name: str) -> list[dict[str, str]]:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, log_every_n_steps=2, val_check_interval=3, num_sanity_val_steps=0,
        logger=CSVLogger(tmp_path, name=name), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(BATCHES, batch_size=None)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    return list(csv.DictReader(open(tmp_path / name / "version_0" / "metrics.csv")))


def by_step(rows: list[dict[str, str]], tag: str) -> dict[int, float]:
    return {int(row["step"]): float(row[tag]) for row in rows if row.get(tag)}


def test_training_and_validation_log_what_the_lessons_step_logs(tmp_path):
    lesson = fit_and_read(tmp_path, tiny_model(compile=False), "lesson")
    model = tiny_model(compile=True)
    model.static_step = StaticStep(True, eager=True)  # the compiled one is compared with it below
    ours = fit_and_read(tmp_path, model, "static")
    assert model.static_step.active
    for tag in ("train/loss", "train/acc", "train/top5", "val/loss", "val/acc", "val/top5", "val/perplexity"):
        expected = by_step(lesson, tag)
        assert expected, tag
        assert by_step(ours, tag) == pytest.approx(expected, rel=1e-5, abs=1e-5), tag
    assert sorted(by_step(ours, "train/loss")) == [1, 3, 5]  # every log_every_n_steps, copied then only
    # The rate between two logged steps with no validation between them: steps 3 to 5 only.
    assert list(by_step(ours, "train/tokens_per_sec")) == [5]
    assert by_step(ours, "train/tokens_per_sec")[5] > 0


# --- compiled --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_one():
    model = tiny_model(tie_embeddings=True)
    compiled = StaticStep(True)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        for batch in BATCHES[:2]:
            with torch.set_grad_enabled(mode == "train"):
                ours = static_step(model, batch, compiled.run)
                eager = static_step(model, batch)
            assert_same(ours, eager, atol=1e-5)
    assert compiled.how.startswith("static shapes, compiled"), compiled.how  # not a fallback to eager


# --- benchmarks/gpu_check.py -------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_runs_every_part_in_its_cpu_smoke_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--smoke"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["errors"] == {}
    assert results["machine"]["torch"] == torch.__version__
    assert results["loader"]["fetch_ms"] > 0
    run = results["fit"]
    assert run["exit_code"] == 0 and run["last_logged_step"] == 7
    assert 0 <= run["last_validation"]["val/acc"] <= 1 and run["purity@5"] is not None
    measured = results["throughput"]
    assert "compiled" in measured["compiled"]["minibert"]["step"]
    for mode in ("eager", "compiled"):
        for model in measured[mode]:
            if isinstance(measured[mode][model], dict):
                assert measured[mode][model]["tokens_per_sec"] > 0
                assert measured[mode][model]["profile"]["wall_ms"] > 0
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| target (one H100) |" in report and (tmp_path / "fit.log").exists()
