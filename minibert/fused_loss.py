"""The head over the vocabulary and the masked-word loss together, a block of rows at a time.

Not part of the lesson: :meth:`minibert.model.Encoder.loss_and_ranks` computes the same numbers
in a few readable lines. It writes the float32 logits of every scored position, an (N, V) block:
at base.yaml's 1,024 scored positions and 23,562 words, 96 MB, written by the head, read and
written again by the log-softmax, its backward and the casts around them. On a CPU those passes
over memory cost more than the head's arithmetic (docs/benchmarks.md).

:func:`linear_cross_entropy` computes the logits of ``block_rows`` rows at a time, and at once
everything the rows need from them (:func:`block_loss`): their loss, the rank of their right
word (for the accuracy metrics), and the gradient of the loss with respect to their logits,
``softmax - one_hot``. A block of logits (a few MB) stays in the cache while it is used. Only
that gradient is kept for every row, in the compute dtype (bfloat16 under autocast: 48 MB at
base.yaml's sizes), for the two products that make the gradients of the hidden states and of
the weight, each over all the rows at once: per block, the weight's partial gradients would
each have to be added into float32, a pass over the (V, D) matrix per block. The backward pass
only scales those gradients by the incoming one.

The arithmetic per block is a handful of element-wise passes over the block's logits. Where
that pays off (a vocabulary of at least ``COMPILE_FROM_VOCAB`` words) they run fused
(:func:`fast_block_loss`): on a CPU as one C loop (``fused_loss.c``, built by the system's C
compiler), elsewhere as the three loops ``torch.compile`` makes of them (the maximum and the
ranks; the exponentials and their sum; the softmax). The C loop also sums the bias's gradient as
it writes the block's. Where neither can be built, they run as written.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
from torch import Tensor

from minibert.machinery.allocator import KeptBuffer
from minibert.machinery.c_library import C_DTYPES, CLibrary
from minibert.machinery.precision import cpu_has_amx

log = logging.getLogger(__name__)

# Rows of logits computed at once: 6 MB in float32 at 23,562 words. A multiple of fast.ROW_MULTIPLE
# (64), so that no block computes rows of the one before; 64 rows took 2.4 ms a step less than 128
# in bfloat16, 4.7 in float32, and 32 rows 10.6 and 18.8 more than 64 (base.yaml, paired, AMD EPYC).
BLOCK_ROWS = 64
COMPILE_FROM_VOCAB = 4096  # below this, compiling costs more time than it saves
IGNORE_INDEX = -100  # a label that is not scored (as in minibert.masking)


def block_loss(
    logits: Tensor, bias: Tensor | None, labels: Tensor, row_weight: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss and rank of one block of rows; their softmax, for the gradient, written into ``grad_out``.

    Args:
        logits: (n, V) ``hidden @ weight.T`` of the rows, in the compute dtype (bfloat16 under autocast).
        bias: (V,) the head's bias, or None; added here, in float32.
        labels: (n,) the right words (any valid id for an ignored row).
        row_weight: (n,) float32, each row's share of the mean loss: 1/N, or 0 for an ignored row.
        grad_out: (n, V) in the logits' dtype, receives ``softmax * row_weight``: the gradient of
            the weighted loss with respect to the logits everywhere but at the right words,
            whose entries are returned (the caller writes them). Written in place, so that the
            compiled loop writes it where it is kept: a copy of it would be another pass over
            48 MB a step at base.yaml's sizes (bfloat16), about 8 ms.

    Returns:
        per-row cross-entropy (n,), float32; per-row rank of the right word (n,): how many other
        words score at least as high, as in :meth:`minibert.model.Encoder.loss_and_ranks`; and
        the gradient at the right words (n,), ``(softmax - 1) * row_weight``, in grad_out's dtype.
    """
    logits = logits.float()  # the softmax's sums in float32
    if bias is not None:
        logits = logits + bias.float()
    top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
    exp = (logits - top).exp()  # (n, V): one exp per logit, for both the sum and the softmax
    total = exp.sum(dim=-1, keepdim=True)  # (n, 1)
    log_norm = top + total.log()  # (n, 1), the logsumexp
    right = logits.gather(1, labels[:, None])  # (n, 1)
    # (n,): how many words score at least as high as the right one, counted in int32 (cheaper
    # than int64 in the vector loop); a tie counts against the right word.
    ranks = (logits >= right).sum(dim=-1, dtype=torch.int32) - 1
    # softmax * row_weight everywhere; the right words' entries, with the one-hot subtracted,
    # are returned apart: comparing every column with the label costs a third of the loop, and
    # a scatter into grad_out here makes the compiled function write the block twice.
    grad_out.copy_(exp * (row_weight[:, None] / total))  # cast to grad_out's dtype
    right_grad = ((right - log_norm).exp() - 1) * row_weight[:, None]  # (n, 1)
    return (log_norm - right)[:, 0], ranks.long(), right_grad[:, 0].to(grad_out.dtype)


def block_loss_no_grad(logits: Tensor, bias: Tensor | None, labels: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`block_loss` without the gradients: per-row loss (n,) and rank (n,), for evaluation."""
    logits = logits.float() if bias is None else logits.float() + bias.float()
    right = logits.gather(1, labels[:, None])  # (n, 1)
    return logits.logsumexp(dim=-1) - right[:, 0], (logits >= right).sum(dim=-1) - 1


class CompiledOnce:
    """``function`` compiled by ``torch.compile`` on first use, or run as it is where compiling fails.

    ``dynamic=False`` compiles once per shape of the arguments; ``dynamic=True`` once for all sizes.
    """

    def __init__(self, function, dynamic: bool = False) -> None:
        self.function, self.dynamic, self.compiled, self.failed = function, dynamic, None, False

    def __call__(self, *args: Tensor):
        if self.failed:
            return self.function(*args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.function, dynamic=self.dynamic)
            return self.compiled(*args)
        except Exception as error:  # no C++ compiler, a platform inductor does not support, ...
            self.failed = True
            name = self.function.__name__
            log.warning("%s runs uncompiled: torch.compile failed (%s)", name, str(error).splitlines()[0])
            return self.function(*args)


compiled_block_loss = CompiledOnce(block_loss)
c_library = CLibrary(Path(__file__).with_name("fused_loss.c"))
# The (N, V) gradient of the logits, the same memory every step on a CPU: glibc's malloc gives a
# block this large (48 to 100 MB) back to the kernel when it is freed, and the kernel faults it
# in and zeroes it again at the next step (see minibert/machinery/allocator.py).
logits_gradient = KeptBuffer()


def c_loop_runs(word_logits: Tensor) -> bool:
    """Whether :func:`fast_block_loss` computes these logits by ``fused_loss.c``: on a CPU, in float32 or bfloat16, built."""
    return word_logits.device.type == "cpu" and word_logits.dtype in C_DTYPES and c_library.get() is not None


def fast_block_loss(
    word_logits: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    row_weight: Tensor,
    grad_out: Tensor,
    bias_sums: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``block_loss(word_logits.T, ...)``, the fastest way here: on a CPU, ``fused_loss.c``'s loop; else compiled.

    ``word_logits`` is (V, n), a row per word, as :func:`linear_cross_entropy` computes it;
    ``grad_out`` is (n, V). torch.compile's three loops each run over the whole block (3 MB at
    base.yaml's sizes in bfloat16), so each reads it back from the last level of cache; the C loop
    takes 16 positions at once and reads the block once (docs/benchmarks.md). The same numbers up
    to rounding: its exponential is within two float32 steps of PyTorch's, its sums are added in
    another order, and shifted by the right word's logit rather than the largest one.

    ``bias_sums``, (threads, V) float32, is for the C loop only (:func:`c_loop_runs`): each of its
    threads adds its rows' gradients, right words included, into a row of its own, from the float32
    values before they are rounded to ``grad_out``'s dtype. Summed over its rows once every block
    is done, it is the bias's gradient, without another pass over the (N, V) gradient.
    """
    if not (c_loop_runs(word_logits) and grad_out.is_contiguous()):
        return compiled_block_loss(word_logits.T, bias, labels, row_weight, grad_out)
    V, n = word_logits.shape
    labels, row_weight = labels.long().contiguous(), row_weight.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    word_logits = word_logits.contiguous()
    losses = word_logits.new_empty(n, dtype=torch.float32)
    right_grads = word_logits.new_empty(n, dtype=torch.float32)
    ranks = labels.new_empty(n, dtype=torch.long)
    outside = c_library.call(
        "block_loss", word_logits.dtype, word_logits, bias, labels, row_weight, grad_out, losses, ranks,
        right_grads, bias_sums, ctypes.c_int64(n), ctypes.c_int64(V),
    )  # fmt: skip
    if outside:  # checked by the loop before it reads anything
        raise IndexError(f"a label outside the vocabulary of {V} words")  # as gather would
    return losses, ranks, right_grads.to(grad_out.dtype)


def transpose(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.T`` in ``dtype``, stored contiguous: (a, b) -> (b, a).

    Compiled (:data:`compiled_transpose`) for the head's sizes: PyTorch's copy transposed the
    (23,562, 128) float32 weight in 4.8 ms on 2 threads here, and cast it to bfloat16 and
    transposed it in 3.6 ms (two passes); inductor's loop, which transposes in vector-sized
    tiles and casts in the same pass, took 1.4 and 1.1 ms. It now turns the weight's bfloat16
    gradient, (128, 23,562), into the weight's float32 layout on a CPU with AMX
    (:func:`head_weight_gradient`).
    """
    return x.to(dtype).T.contiguous()


compiled_transpose = CompiledOnce(transpose)


def head_weight_gradient(grad_logits: Tensor, hidden: Tensor, hidden_t: Tensor, dtype: torch.dtype) -> Tensor:
    """The head's weight gradient (V, D) in ``dtype``, ``grad_logits.T @ hidden``: (V, N) @ (N, D).

    Straight into the weight's layout, where autograd adds the word embeddings' gradient to it
    without a strided pass, and keeps the sum as the weight's ``.grad`` without a copy. On the
    AMD EPYC this took 17.4 ms in bfloat16 (2 threads), where (D + 1, N) @ (N, V), the bias's
    row of ones under ``hidden.T``, and the transpose took 20.5. On the Intel Xeon, whose AMX
    multiplies bfloat16, (D, N) @ (N, V) was twice as fast as this product, so there it is kept:
    ``hidden_t`` is ``hidden.T`` stored contiguous, as oneDNN's product over the transposed view
    took 1.2 to 1.3 times as long.
    """
    if grad_logits.dtype == torch.bfloat16 and grad_logits.device.type == "cpu" and cpu_has_amx():
        transpose_fn = compiled_transpose if grad_logits.shape[1] >= COMPILE_FROM_VOCAB else transpose
        return transpose_fn(hidden_t @ grad_logits, dtype)  # (D, N) @ (N, V) -> (D, V) -> (V, D)
    return (grad_logits.T @ hidden).to(dtype)


def set_right_words(grad: Tensor, labels: Tensor, values: Tensor) -> None:
    """``grad[i, labels[i]] = values[i]`` for every row i of the (n, V) block ``grad``.

    Through the flat indices of the entries: PyTorch's CPU ``scatter_`` took about 16 ms for
    these 128 entries of a bfloat16 block (2 threads), ``index_copy_`` 0.03 ms.
    """
    n, V = grad.shape
    flat = torch.arange(n, device=grad.device) * V + labels  # (n,)
    grad.view(-1).index_copy_(0, flat, values)


class WeightGradient:
    """Where the head's backward leaves the weight's gradient, for a later backward of the same pass to add to.

    With tied embeddings the weight is also the word embeddings, whose backward comes after the
    head's: :class:`minibert.fast.TiedEmbedding` adds its rows straight into this tensor, which
    autograd still holds and has not yet made the weight's ``.grad``.
    """

    def __init__(self) -> None:
        self.grad: Tensor | None = None

    def take(self) -> Tensor | None:
        """The gradient left here, once: None where there is none (any more)."""
        grad, self.grad = self.grad, None
        return grad


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    block_rows: int = BLOCK_ROWS,
    weight_gradient: WeightGradient | None = None,
) -> tuple[Tensor, Tensor]:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` and each right word's rank, without the whole logits.

    Args:
        hidden: (N, D) hidden states of the scored positions.
        weight: (V, D) the head's weight (the word embeddings when they are tied).
        bias: (V,) the head's bias, or None.
        labels: (N,) the right words; ``IGNORE_INDEX`` rows count for nothing.
        block_rows: rows of logits computed at once.
        weight_gradient: where the backward also leaves the weight's gradient, or None.

    Returns:
        the mean loss over the rows that are not ignored (a scalar, float32), and the ranks (N,).
        Under autocast the products run in its dtype (bfloat16), the softmax in float32.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # Decided here: inside the Function's forward, ctx.needs_input_grad says True for a weight
    # that requires gradients even under torch.no_grad (validation), where none will be asked for.
    with_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden.to(dtype), weight, bias, labels, block_rows, with_grad, weight_gradient
        )


class _LinearCrossEntropy(torch.autograd.Function):
    """The forward computes the loss and, at the same time, every gradient; the backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, block_rows, with_grad, weight_gradient):
        N, dtype = hidden.shape[0], hidden.dtype
        ctx.weight_gradient = weight_gradient
        large = weight.shape[0] >= COMPILE_FROM_VOCAB  # worth compiling the passes over (V, D) or (n, V)
        weight_c = weight.to(dtype)  # (V, D) in the compute dtype: the weight itself in float32
        scored = labels != IGNORE_INDEX  # (N,)
        row_weight = scored.float() / scored.sum().clamp(min=1)  # (N,)
        labels = torch.where(scored, labels, 0)
        losses = hidden.new_zeros(N, dtype=torch.float32)
        ranks = torch.zeros(N, dtype=torch.long, device=hidden.device)
        right_grads = hidden.new_zeros(N, dtype=dtype)  # the gradient at each right word
        # (D, N), stored so: a block's columns are a slice of it. oneDNN's bfloat16 product over
        # that slice took 1.5 ms a step less than over the transposed view hidden[rows].T (AMD EPYC).
        hidden_t = hidden.T.contiguous()
        if with_grad:
            # (N, V), in the compute dtype: scratch, used up before this function returns.
            grad_logits = logits_gradient.take(N, weight.shape[0], like=hidden)
        # Every block is full: the last one is moved back to end at row N, and the rows it shares
        # with the one before keep their results (a row weight of 0 here: no gradient). One shape
        # of block is one compilation.
        fused = large and N >= block_rows
        bias_sums = None  # (threads, V): where the C loop adds up the bias's gradient
        if with_grad and bias is not None and fused and c_loop_runs(weight_c):
            bias_sums = hidden.new_zeros(torch.get_num_threads(), weight.shape[0], dtype=torch.float32)
        for start in range(0, N, block_rows):
            new = slice(start, min(start + block_rows, N))  # the rows this block adds
            rows = slice(max(min(start, N - block_rows), 0), new.stop)  # the rows it computes
            done = new.start - rows.start  # of those, the ones the block before computed
            # (V, D) @ (D, n) -> (V, n): a row per word. In this layout the product took 0.6 times as
            # long as the (n, V) one (hidden[rows] @ weight.T stored contiguous) in float32, 0.85
            # times in bfloat16 (AMD EPYC, 2 threads).
            word_logits = weight_c @ hidden_t[:, rows]
            logits = word_logits.T  # (n, V), a view
            if not (with_grad or fused):
                losses[new], ranks[new] = (x[done:] for x in block_loss_no_grad(logits, bias, labels[rows]))
                continue
            weights = row_weight[rows]
            if done:
                weights = weights.clone()
                weights[:done] = 0
            # A block of new rows writes its gradient in place; the last, shared one into a scratch
            # block, as does every block without gradients: the fused loop, which writes one, is
            # still faster than block_loss_no_grad's separate passes (a bf16 validation step took
            # 1.4 times as long with those).
            grad = grad_logits[rows] if with_grad and done == 0 else hidden.new_empty(logits.shape)  # (n, V)
            if fused:  # the C loop reads the block a row per word, as the product wrote it
                results = fast_block_loss(word_logits, bias, labels[rows], weights, grad, bias_sums)
            else:
                results = block_loss(logits, bias, labels[rows], weights, grad)
            losses[new], ranks[new], right_grads[new] = (x[done:] for x in results)
            if with_grad and done:
                grad_logits[new] = grad[done:]
        if with_grad:
            set_right_words(grad_logits, labels, right_grads)  # every row's at once
            grad_hidden = grad_logits @ weight_c  # (N, V) @ (V, D) -> (N, D)
            grad_weight = head_weight_gradient(grad_logits, hidden, hidden_t, weight.dtype)
            if bias is None:
                grad_bias = None
            elif bias_sums is not None:
                grad_bias = bias_sums.sum(dim=0)  # (threads, V) -> (V,)
            else:  # the rows' sum, as a row of ones times them (a column sum took 5.5 ms, this 4.2)
                grad_bias = (hidden.new_ones(1, N) @ grad_logits)[0].to(bias.dtype)  # (V,)
            if weight_gradient is None:
                ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            else:  # given away by the backward, the weight's to be added to: not saved for another
                ctx.grads = grad_hidden, grad_weight, grad_bias
        ctx.mark_non_differentiable(ranks)
        return (losses * row_weight).sum(), ranks

    @staticmethod
    def backward(ctx, grad_loss, grad_ranks):
        # The hidden states', the weight's and the bias's (or None).
        if ctx.weight_gradient is None:
            grads = ctx.saved_tensors
        elif ctx.grads is None:
            raise RuntimeError("a second backward through the head: the first gave its gradients away")
        else:
            grads, ctx.grads = ctx.grads, None
        # loss.backward() itself: nothing to scale (a pass over the weight's 3M gradients saved).
        # Autograd copies saved tensors before it adds anything to them, as they are still held.
        if not (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
            grads = tuple(None if g is None else g * grad_loss.to(g.dtype) for g in grads)
        if ctx.weight_gradient is not None and ctx.needs_input_grad[1]:
            ctx.weight_gradient.grad = grads[1]
        return *grads, None, None, None, None
