"""The training and validation step built for a GPU: static shapes, compiled into CUDA graphs, no waiting.

Not part of the lesson: :meth:`minibert.module.MiniBert.masked_loss` computes the same loss and
ranks in two readable lines, and a CPU trains with it. On a GPU a step of this small model
(a few million parameters, 2,560 tokens a batch) is over a thousand operations of a few microseconds of work each
(1,637 counted in one step of base.yaml's model on a CPU): it is bound by their launches and by
every point where the host waits for the device (a synchronisation), and the lesson's step has
several of those every step:

- the scored positions are picked by a boolean mask (``x[scored]``): the host cannot size the
  result before the device has counted them, and each batch has a shape of its own, which no
  compiled graph or CUDA graph can replay;
- each ``MeanMetric`` update checks its input for NaN (``if nans.any()``: the host reads the
  answer) and copies the number of rows, a Python int, to the device;
- a torchmetrics object logged on every step is read by the progress bar (``.item()``) at every
  redraw, and ``train/tokens_per_sec``, a Python float, is copied to the device.

:class:`StaticStep` computes the same numbers without them:

- **static shapes**: every position of the batch goes through the head and the loss; one that is
  not scored has the label ``IGNORE_INDEX`` and counts for nothing (the loss is the mean over the
  scored rows; the accuracy counts scored rows only). A smaller batch (an epoch's last) is padded
  with rows of padding that are not scored, so every batch of a stage has the same shape;
- **compiled** by ``torch.compile``, one graph for training and one for evaluation; on a GPU in
  ``reduce-overhead`` mode, which records the step's kernels once as a CUDA graph and then
  replays them with one launch;
- **no synchronisation inside the step**: the counts of scored rows, right first guesses and
  top-k hits stay on the device; validation adds them to its metrics there
  (:class:`WeightedMean`: the same sums, without the NaN check); training metrics are copied to
  the host once a logging interval (``trainer.log_every_n_steps``) and logged from there, with
  the tokens per second between two such copies (each waits for the device, so that time is
  the steps' own).

Scoring every position costs more arithmetic in the head: 2.5 times as much at base.yaml's 40%
of masked words. A GPU has it to spare; a CPU does not, and there inductor's compiled training
kernels were also measured slower than eager ones (docs/benchmarks.md). So ``model.compile``
(``auto``) uses this step on a GPU and the lesson's on a CPU; ``true`` or ``false`` chooses one
everywhere. ``tests/test_static_step.py`` checks that both give the same loss, gradients and
metrics, and that no shape in this step depends on the data.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from minibert.errors import MinibertError
from minibert.machinery.lightning_internals import step_metrics_logged
from minibert.masking import IGNORE_INDEX
from minibert.model import Encoder
from minibert.tokenizer import PAD_ID

CompileOption = bool | Literal["auto"]


def check_compile_option(value: Any) -> CompileOption:
    """``model.compile`` as given, or one line saying what it may be."""
    if not (isinstance(value, bool) or value == "auto"):
        raise MinibertError(f"model.compile={value!r} must be auto (compiled on a GPU only), true or false")
    return value


def compile_mode(device_type: str) -> str | None:
    """``reduce-overhead`` (CUDA graphs) on a GPU; inductor's default mode elsewhere."""
    return "reduce-overhead" if device_type == "cuda" else None


def static_loss(
    encoder: Encoder, input_ids: Tensor, padding_mask: Tensor, labels: Tensor, top_k: int
) -> tuple[Tensor, Tensor]:
    """The masked-word loss over every position of the batch, and the counts its metrics need.

    Args:
        encoder: the model's encoder (:class:`minibert.model.Encoder` or its fast version).
        input_ids, padding_mask, labels: (B, T); labels are ``IGNORE_INDEX`` where not scored.
        top_k: k of the top-k accuracy.

    Returns:
        the mean cross-entropy over the scored positions (a scalar, float32), and (3,) float32
        counts: scored positions, right first guesses, right words among the first k guesses.
        Ranks are those of :meth:`minibert.model.Encoder.loss_and_ranks`: a tie counts against
        the right word.
    """
    hidden = encoder(input_ids, padding_mask)  # (B, T, D): every position, a shape known in advance
    labels = labels.flatten()  # (B*T,)
    scored = labels != IGNORE_INDEX  # (B*T,)
    logits = encoder.logits(hidden.flatten(0, 1)).float()  # (B*T, V); the softmax's sums in float32
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)  # mean over the scored rows
    right = logits.gather(1, torch.where(scored, labels, 0)[:, None])  # (B*T, 1); any word where not scored
    ranks = (logits >= right).sum(dim=-1) - 1  # (B*T,)
    counts = torch.stack([scored.sum(), (scored & (ranks == 0)).sum(), (scored & (ranks < top_k)).sum()])
    return loss, counts.float()


class StaticStep:
    """:meth:`minibert.module.MiniBert._shared_step` for a GPU: the same loss and metrics, logged the same way.

    Args:
        compile: ``model.compile``: ``auto`` applies to batches on a GPU, ``true`` to all, ``false`` to none.
        eager: run :func:`static_loss` as it is, uncompiled (the tests compare both).
        backend: ``torch.compile``'s backend (``inductor``; ``aot_eager`` traces without generating kernels).
    """

    def __init__(
        self, compile: CompileOption = "auto", eager: bool = False, backend: str = "inductor"
    ) -> None:
        self.option, self.eager, self.backend = check_compile_option(compile), eager, backend
        self.active = False  # whether the last batch went through this step
        self.function = None  # static_loss, compiled on first use
        self.cuda_graphs = False  # whether the compiled function replays CUDA graphs
        self.how = "not used yet"  # what ran, in words: compiled, how, or why not
        self.rows: dict[str, int] = {}  # stage -> the rows every batch of that stage is padded to
        self.interval: list[float] | None = None  # [start, tokens since] from the last logged step on

    def __getstate__(self) -> dict[str, Any]:
        # A compiled function is not copied (deepcopy, pickling for spawned processes): it is made again.
        return {"compile": self.option, "eager": self.eager, "backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def applies(self, batch: dict[str, Tensor]) -> bool:
        """Whether ``batch`` goes through this step (``model.compile`` and the batch's device say)."""
        on_gpu = batch["input_ids"].device.type == "cuda"
        self.active = self.option is True or (self.option == "auto" and on_gpu)
        return self.active

    def __call__(self, module: L.LightningModule, batch: dict[str, Tensor], stage: str) -> Tensor:
        """The step's loss; its metrics logged as the lesson logs them (``train/loss``, ``val/acc``, ...)."""
        input_ids, padding_mask, labels = self.fixed_shape(batch, stage)
        loss, counts = self.run(module.encoder, input_ids, padding_mask, labels, module.hparams.top_k)
        if stage == "train":
            self.log_training(module, loss, counts, batch["input_ids"].numel())
        else:
            self.log_evaluation(module, loss, counts, stage)
        return loss

    def fixed_shape(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids, padding_mask and labels, padded to the most rows this stage has seen with rows that are not scored."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        padding_mask = batch.get("padding_mask")
        if padding_mask is None:  # nothing is padding: every key may be attended to, as without a mask
            padding_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        rows = self.rows[stage] = max(self.rows.get(stage, 0), len(input_ids))
        if rows == len(input_ids):
            return input_ids, padding_mask, labels
        extra = (rows - len(input_ids), input_ids.shape[1])
        return (
            torch.cat([input_ids, input_ids.new_full(extra, PAD_ID)]),
            torch.cat([padding_mask, padding_mask.new_ones(extra)]),
            torch.cat([labels, labels.new_full(extra, IGNORE_INDEX)]),
        )

    def run(self, *args: Any) -> tuple[Tensor, Tensor]:
        """:func:`static_loss` of ``args``, compiled on first use; uncompiled, with a warning, where compiling fails."""
        if self.function is None:
            self.function = self.build(args[1].device.type)
        if self.cuda_graphs:
            # A new step: its CUDA graph may reuse the memory of the last step's outputs, all consumed.
            torch.compiler.cudagraph_mark_step_begin()
        try:
            return self.function(*args)
        except Exception as error:  # no C++ compiler or Triton, a GPU too old for Triton, ...
            if self.function is static_loss:
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.function, self.cuda_graphs = static_loss, False
            self.how = f"static shapes, eager: torch.compile failed ({first_line})"
            rank_zero_warn(f"minibert's step: {self.how}")
            return static_loss(*args)

    def build(self, device_type: str):
        """:func:`static_loss`, compiled for ``device_type`` unless ``eager``."""
        function = static_loss
        if self.eager:
            self.how = "static shapes, eager"
        else:
            mode = compile_mode(device_type) if self.backend == "inductor" else None
            self.cuda_graphs = mode == "reduce-overhead"
            self.how = f"static shapes, compiled: torch.compile(backend={self.backend}, mode={mode})"
            function = torch.compile(
                static_loss, backend=self.backend, mode=mode, dynamic=False, fullgraph=True
            )
        rank_zero_info(f"minibert's step: {self.how} (model.compile: {self.option})")
        return function

    def log_training(self, module: L.LightningModule, loss: Tensor, counts: Tensor, tokens: int) -> None:
        """Log the step's metrics when Lightning logs this step, copied to the host then only.

        Each such copy waits for the device, so the time between two of them is the time of the
        steps between them: ``train/tokens_per_sec`` is their tokens over that time. It is logged
        from the second logged step on, and again from the second after each validation.
        """
        trainer = attached_trainer(module)
        if trainer is None:  # a step run by hand (benchmarks): nothing to log to
            return
        if self.interval is not None:
            self.interval[1] += tokens
        if not step_metrics_logged(trainer):
            return
        loss, scored, right, top = torch.cat([loss.detach()[None], counts]).cpu()  # waits for the device
        now = perf_counter()
        k = module.hparams.top_k
        for name, value in (("loss", loss), ("acc", right / scored), (f"top{k}", top / scored)):
            module.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name != f"top{k}")
        if self.interval is not None:
            started, tokens_since = self.interval
            rate = torch.tensor(tokens_since / max(now - started, 1e-9))  # on the host: nothing to copy
            module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False)
        self.interval = [now, 0]  # the next interval starts here

    def log_evaluation(self, module: L.LightningModule, loss: Tensor, counts: Tensor, stage: str) -> None:
        """Add the batch to the stage's metrics on the device; Lightning computes them at the epoch's end."""
        self.interval = None  # training's next interval starts at its first logged step
        if attached_trainer(module) is None:
            return
        scored, k = counts[0], module.hparams.top_k
        for name, value in (
            ("loss", loss.detach()),
            ("acc", counts[1] / scored),
            (f"top{k}", counts[2] / scored),
        ):
            attribute = f"{stage}_{name}"
            if type(module.metrics[attribute]) is not WeightedMean:  # once: the lesson's MeanMetric, replaced
                module.metrics[attribute] = WeightedMean().to(scored.device)
            module.metrics[attribute].update(value, scored)  # weighted by the scored rows, as the lesson's
            module.log(
                f"{stage}/{name}",
                module.metrics[attribute],
                on_step=False,
                on_epoch=True,
                prog_bar=name != f"top{k}",
                metric_attribute=f"metrics.{attribute}",  # the lesson's metric's name: the same entry in the logs
            )


class WeightedMean(MeanMetric):
    """torchmetrics' ``MeanMetric`` (the same sums), without the checks of its ``update`` that read the input.

    ``MeanMetric.update`` asks whether the value or the weight holds a NaN (``if nans.any()``),
    which makes the host wait for the GPU; its ``nan_strategy="disable"`` skips that, but also
    replaces the weights by ones (torchmetrics 1.9), so the mean would no longer count rows.
    A NaN here makes the epoch's mean NaN, where the lesson's metric would warn and drop it.
    """

    def update(self, value: Tensor, weight: Tensor) -> None:
        self.mean_value += value * weight
        self.weight += weight


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The module's trainer, or None when the module runs without one."""
    try:
        return module.trainer
    except RuntimeError:  # "not attached to a Trainer"
        return None
