"""The LightningModule: the encoder, the masked-word loss, metrics and the optimiser."""

from __future__ import annotations

import math
from time import perf_counter
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from minibert.errors import MinibertError
from minibert.fast import FastEncoder
from minibert.machinery.clipping import clip_grad_norm
from minibert.masking import IGNORE_INDEX
from minibert.model import Encoder, EncoderConfig
from minibert.static_step import StaticStep
from minibert.tokenizer import Vocabulary


class MiniBert(L.LightningModule):
    """A masked language model over the encoder of :mod:`minibert.model`.

    Args:
        fast: train with the speed-ups of :mod:`minibert.fast` (the same numbers, computed
            faster); false runs the plain encoder of :mod:`minibert.model`.
        compile: ``auto`` trains on a GPU with :mod:`minibert.static_step`'s compiled step (the
            same numbers, without waiting for the GPU), on a CPU with this file's; true or false
            chooses that step, or this file's, everywhere.
        optimizer: ``adam`` (the reference) or ``adamw`` (decoupled weight decay).
        lr: peak learning rate.
        weight_decay: applied to weight matrices and embeddings, never to norms and biases.
        betas: Adam's moment decay rates.
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        lr_decay: after warm-up, ``constant``, ``linear`` or ``cosine`` decay to
            ``min_lr_ratio * lr`` at the trainer's last step.
        min_lr_ratio: where the decay ends, as a share of ``lr``.
        top_k: k of the top-k accuracy metric.
        encoder: the encoder's shape and initialisation, the fields of
            :class:`minibert.model.EncoderConfig` (``embed_dim``, ``num_layers``, ...; in a
            config, ``model.embed_dim`` and so on). Its ``vocab_size`` and ``seq_len`` are
            linked from the data module, never written in a config.
    """

    def __init__(
        self,
        fast: bool = True,
        compile: bool | Literal["auto"] = "auto",
        optimizer: Literal["adam", "adamw"] = "adam",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_decay: Literal["constant", "linear", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        top_k: int = 5,
        **encoder: Any,
    ) -> None:
        super().__init__()
        check_recipe(lr, weight_decay, betas, warmup_steps, min_lr_ratio, top_k)
        self.save_hyperparameters()
        config = EncoderConfig(**encoder)  # the command line reads its fields as model.* options
        self.encoder = FastEncoder(config) if fast else Encoder(config)
        self.vocab: Vocabulary | None = None  # set from the data module, saved in every checkpoint
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric()
                for stage in ("train", "val", "test")
                for name in ("loss", "acc", f"top{top_k}")
            }
        )
        self._step_started = 0.0
        self.static_step = StaticStep(compile)  # the GPU's step, not part of the lesson

    @property
    def config(self) -> EncoderConfig:
        """The encoder's shape: vocab_size, seq_len, embed_dim, num_layers, ..."""
        return self.encoder.config

    # --- the loss, scored only where masked ---------------------------------------------

    def masked_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy over the scored positions, and where each right word ranks, (N,).

        Only the N scored positions (``labels`` not ``IGNORE_INDEX``) go through the head over
        the vocabulary, which is most of the model's arithmetic (see :meth:`minibert.model.Encoder.forward`).
        """
        scored = batch["labels"] != IGNORE_INDEX  # (B, T)
        hidden = self.encoder(batch["input_ids"], batch.get("padding_mask"), scored)  # (N, D)
        return self.encoder.loss_and_ranks(hidden, batch["labels"][scored])  # scalar, (N,)

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        if self.static_step.applies(batch):  # on a GPU: the same numbers, computed in static shapes
            return self.static_step(self, batch, stage)
        loss, ranks = self.masked_loss(batch)
        n, k = ranks.numel(), self.hparams.top_k
        with torch.no_grad():
            self.metrics[f"{stage}_loss"](loss.detach(), n)
            self.metrics[f"{stage}_acc"]((ranks == 0).float().mean(), n)
            self.metrics[f"{stage}_top{k}"]((ranks < k).float().mean(), n)
        on_step = stage == "train"
        for name in ("loss", "acc", f"top{k}"):
            self.log(
                f"{stage}/{name}",
                self.metrics[f"{stage}_{name}"],
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name != f"top{k}",
                batch_size=n,
            )
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The most likely word at every scored position, beside the true one."""
        scored = batch["labels"] != IGNORE_INDEX  # (B, T)
        labels = batch["labels"][scored]  # (N,)
        hidden = self.encoder(batch["input_ids"], batch.get("padding_mask"), scored)[: len(labels)]  # (N, D)
        return {"predicted": self.encoder.logits(hidden).argmax(dim=-1), "labels": labels}

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")

    def _log_perplexity(self, stage: str) -> None:
        # exp of the token-weighted mean loss, the usual definition (not a mean of exps).
        mean_loss = self.metrics[f"{stage}_loss"].compute()
        # The metric is already synced across processes, so every rank holds the same value;
        # sync_dist tells Lightning so (a mean of equal values) instead of warning under DDP.
        self.log(f"{stage}/perplexity", torch.exp(mean_loss), prog_bar=stage == "val", sync_dist=True)

    # --- throughput -----------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.static_step.active:  # a GPU's step times itself, over each logging interval
            return
        elapsed = perf_counter() - self._step_started
        self.log(
            "train/tokens_per_sec",
            batch["input_ids"].numel() / max(elapsed, 1e-9),
            on_step=True,
            on_epoch=False,
        )

    # --- optimiser ------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel updates every parameter, instead of about ten small operations per
        # parameter tensor (on CPU, 4x less time in the optimiser step at the base configuration).
        # Under float16 the gradients are scaled, and a fused optimiser unscales them only inside
        # its step: gradient clipping would see them scaled, so Lightning then needs the plain one.
        fused = self._precision() not in ("16-mixed", "16-true")
        optimizer = optimizer_class(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
        total = self._total_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, total, hp.lr_decay, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients as ``trainer.gradient_clip_val`` asks, under ``bf16-mixed`` too.

        Lightning's mixed-precision plugin refuses to clip for a fused optimiser, because under
        float16 its gradients would still be scaled (see :meth:`configure_optimizers`). bfloat16
        has float32's range and needs no scaling: its gradients are the true ones, clipped here
        as Lightning clips them in float32. By norm, the fused optimiser's step does the scaling
        (:mod:`minibert.machinery.clipping`, speed only: one pass over the gradients fewer).
        """
        if not gradient_clip_val or self._precision() in ("16-mixed", "16-true"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"]]  # Lightning's order
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            clip_grad_norm(optimizer, params, gradient_clip_val)

    def _precision(self) -> str:
        """The trainer's precision (``32-true``, ``bf16-mixed``, ...); ``32-true`` without a trainer (benchmarks)."""
        try:
            return str(self.trainer.precision)
        except RuntimeError:  # "not attached to a Trainer"
            return "32-true"

    def _total_steps(self) -> int:
        """The steps the schedule spans: the trainer's whole run, or 1 when no trainer is attached (benchmarks)."""
        try:
            return max(self.trainer.estimated_stepping_batches, 1)
        except RuntimeError:  # "not attached to a Trainer"
            return 1

    # --- the vocabulary travels inside every checkpoint ----------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "vocab"):
            self.vocab = datamodule.vocab

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.vocab is not None:
            checkpoint["vocabulary"] = self.vocab.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "vocabulary" in checkpoint:
            self.vocab = Vocabulary.from_dict(checkpoint["vocabulary"])


def check_recipe(
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    min_lr_ratio: float,
    top_k: int,
) -> None:
    """Refuse, in one line, a training option out of its range, before any work (PyTorch would fail later, at length)."""
    checks = [
        (math.isfinite(lr) and lr >= 0, f"model.lr={lr} must be at least 0"),
        (
            math.isfinite(weight_decay) and weight_decay >= 0,
            f"model.weight_decay={weight_decay} must be at least 0",
        ),
        (
            len(betas) == 2 and all(0 <= beta < 1 for beta in betas),
            f"model.betas={list(betas)} must be two numbers in [0, 1)",
        ),
        (warmup_steps >= 0, f"model.warmup_steps={warmup_steps} must be at least 0"),
        (0 <= min_lr_ratio <= 1, f"model.min_lr_ratio={min_lr_ratio} must be in [0, 1]"),
        (top_k >= 1, f"model.top_k={top_k} must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise MinibertError(message)


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay: str, min_ratio: float) -> float:
    """The learning rate at ``step`` as a share of the peak."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape
