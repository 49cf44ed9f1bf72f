"""minibert.fused_loss computes what F.cross_entropy computes on the whole logits: the loss, the ranks, every gradient."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from minibert import fused_loss
from minibert.fused_loss import IGNORE_INDEX, block_loss, fast_block_loss, linear_cross_entropy
from minibert.machinery.allocator import KeptBuffer
from minibert.machinery.c_library import CLibrary, SwitchedOff

D, V = 8, 37


def inputs(n: int, bias: bool = True, ignored: bool = True, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, D, generator=generator).requires_grad_()
    weight = torch.randn(V, D, generator=generator).requires_grad_()
    b = torch.randn(V, generator=generator).requires_grad_() if bias else None
    labels = torch.randint(0, V, (n,), generator=generator)
    if ignored:
        labels[::4] = IGNORE_INDEX
    return hidden, weight, b, labels


def reference(hidden, weight, bias, labels):
    """The loss and ranks from the whole (N, V) logits, as minibert.model computes them."""
    logits = F.linear(hidden, weight, bias).float()  # (N, V)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    right = logits.gather(1, labels.clamp(min=0)[:, None])
    return loss, (logits >= right).sum(dim=-1) - 1


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,block_rows", [(3, 4), (8, 4), (11, 4), (11, 16), (1, 1)])
def test_loss_ranks_and_every_gradient_equal_cross_entropy_on_the_whole_logits(n, block_rows, bias):
    hidden, weight, b, labels = inputs(n, bias, ignored=n > 1)
    expected_loss, expected_ranks = reference(hidden, weight, b, labels)
    loss, ranks = linear_cross_entropy(hidden, weight, b, labels, block_rows)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    scored = labels != IGNORE_INDEX
    assert torch.equal(ranks[scored], expected_ranks[scored])
    for got, want in zip(
        grads(loss * 3.0, (hidden, weight, b)), grads(expected_loss * 3.0, (hidden, weight, b))
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_with_the_c_loop_every_gradient_equals_cross_entropys(monkeypatch, dtype):
    """The fused path as base.yaml runs it on a CPU without AMX: the C loop, its bias sums, grad_logits.T @ hidden."""
    monkeypatch.setattr(fused_loss, "COMPILE_FROM_VOCAB", V)  # this small vocabulary takes the fused path
    monkeypatch.setattr(fused_loss, "cpu_has_amx", lambda: False)
    hidden, weight, b, labels = inputs(40)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, b, labels, 16)
        expected, _ = reference(hidden, weight, b, labels)
    assert fused_loss.c_library.get() is not None
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-3}
    for got, want in zip(grads(loss, (hidden, weight, b)), grads(expected, (hidden, weight, b))):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("amx", [False, True])
def test_the_head_weight_gradient_is_grad_logits_transposed_times_hidden(monkeypatch, amx):
    """Either form of the product, (V, N) @ (N, D) or AMX's (D, N) @ (N, V) transposed, in the weight's layout and dtype."""
    monkeypatch.setattr(fused_loss, "cpu_has_amx", lambda: amx)
    generator = torch.Generator().manual_seed(2)
    grad_logits = torch.randn(24, V, generator=generator).bfloat16()
    hidden = torch.randn(24, D, generator=generator).bfloat16()
    got = fused_loss.head_weight_gradient(grad_logits, hidden, hidden.T.contiguous(), torch.float32)
    want = grad_logits.double().T @ hidden.double()
    assert got.dtype == torch.float32 and got.shape == (V, D) and got.is_contiguous()
    torch.testing.assert_close(got, want.float(), rtol=1e-2, atol=1e-2)  # bfloat16's output rounding


def test_ranks_count_ties_against_the_right_word():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 5.0, 2.0], [2.0, 1.0, 0.0, 0.0]])
    grad = torch.full_like(logits, float("nan"))
    labels = torch.tensor([1, 0, 0])
    losses, ranks, right_grads = block_loss(logits, None, labels, torch.full((3,), 1 / 3), grad)
    assert ranks.tolist() == [1, 1, 0]  # a tie for first place is not a right first guess
    torch.testing.assert_close(losses, F.cross_entropy(logits, labels, reduction="none"))
    expected = (logits.softmax(dim=-1) - F.one_hot(labels, 4)) / 3
    torch.testing.assert_close(right_grads, expected[torch.arange(3), labels])
    fused_loss.set_right_words(grad, labels, right_grads)  # softmax / 3 was written in place
    torch.testing.assert_close(grad, expected)


def test_a_tied_weight_gets_both_gradients():
    hidden, weight, b, labels = inputs(9)
    ids = torch.tensor([[1, 2, 3]])
    loss = linear_cross_entropy(hidden, weight, b, labels, 4)[0] + F.embedding(ids, weight).sum()
    expected = reference(hidden, weight, b, labels)[0] + F.embedding(ids, weight).sum()
    torch.testing.assert_close(grads(loss, (weight,))[0], grads(expected, (weight,))[0], rtol=1e-5, atol=1e-6)


def test_loss_backward_unscaled_accumulates_and_leaves_the_saved_gradients_alone():
    # loss.backward() hands the saved gradients over unscaled: autograd must not add into them.
    hidden, weight, b, labels = inputs(9)
    ids = torch.tensor([[1, 2, 3]])
    loss = linear_cross_entropy(hidden, weight, b, labels, 4)[0] + F.embedding(ids, weight).sum()
    expected = reference(hidden, weight, b, labels)[0] + F.embedding(ids, weight).sum()
    want = grads(expected, (hidden, weight, b))
    loss.backward(retain_graph=True)
    firsts = [t.grad.clone() for t in (hidden, weight, b)]
    loss.backward(retain_graph=True)
    loss.backward()  # a gradient added into a saved one would make this 4 times the first
    for first, total, w in zip(firsts, (hidden.grad, weight.grad, b.grad), want):
        torch.testing.assert_close(first, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(total, 3 * first)


def test_the_weight_gradient_is_handed_on_once_and_not_saved_for_a_second_backward():
    hidden, weight, b, labels = inputs(9)
    handed = fused_loss.WeightGradient()
    loss = linear_cross_entropy(hidden, weight, b, labels, 4, weight_gradient=handed)[0]
    loss.backward(retain_graph=True)
    expected = grads(reference(hidden, weight, b, labels)[0], (weight,))[0]
    torch.testing.assert_close(weight.grad, expected, rtol=1e-5, atol=1e-6)
    head_grad = handed.take()  # what a tied embedding would add its rows into
    assert head_grad is not None and torch.equal(head_grad, weight.grad) and handed.take() is None
    with pytest.raises(RuntimeError, match="second backward through the head"):
        loss.backward()  # its gradients may have been added to since: not given again


def test_the_logits_gradient_is_kept_memory_that_no_result_refers_to():
    # A second forward writes the same scratch memory before the first's backward: the first's
    # gradients were made from it in its own forward and do not depend on it afterwards.
    first, second = inputs(13, seed=1), inputs(11, seed=2)
    loss_1 = linear_cross_entropy(*first, 4)[0]
    scratch = fused_loss.logits_gradient.block
    loss_2 = linear_cross_entropy(*second, 4)[0]
    assert fused_loss.logits_gradient.block.data_ptr() == scratch.data_ptr()  # 11 x 37 fits in it
    for loss, tensors in ((loss_1, first), (loss_2, second)):
        expected = reference(*tensors)[0]
        for got, want in zip(grads(loss, tensors[:3]), grads(expected, tensors[:3])):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_kept_buffer_grows_when_asked_for_more_and_follows_the_dtype():
    kept, like = KeptBuffer(), torch.zeros(1)
    a = kept.take(4, 5, like=like)
    assert a.shape == (4, 5) and kept.take(2, 3, like=like).data_ptr() == a.data_ptr()
    b = kept.take(6, 5, like=like)
    assert b.shape == (6, 5) and kept.block.numel() == 30
    c = kept.take(2, 2, like=like.bfloat16())
    assert c.dtype == torch.bfloat16 and kept.block.dtype == torch.bfloat16


def test_without_gradients_it_only_scores(monkeypatch):
    monkeypatch.setattr(fused_loss, "logits_gradient", KeptBuffer())
    hidden, weight, b, labels = inputs(10)
    with torch.no_grad():
        loss, ranks = linear_cross_entropy(hidden, weight, b, labels, 4)
        expected_loss, expected_ranks = reference(hidden, weight, b, labels)
    torch.testing.assert_close(loss, expected_loss)
    assert not loss.requires_grad
    scored = labels != IGNORE_INDEX
    assert torch.equal(ranks[scored], expected_ranks[scored])
    # The inputs require gradients, but under no_grad (validation) none are computed.
    assert fused_loss.logits_gradient.block is None


def test_under_bf16_autocast_the_products_are_bf16_and_the_loss_float32():
    hidden, weight, b, labels = inputs(64, ignored=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, b, labels, 16)
        expected, _ = reference(hidden, weight, b, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads(loss, (hidden, weight, b)), grads(expected, (hidden, weight, b))):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)


def block(dtype: torch.dtype, bias: bool, n: int = 12, words: int = 3000):
    """A block of logits with ties (bf16 has 8 bits of mantissa), an ignored row and two far-off rows."""
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(n, words, generator=generator) * 4).to(dtype)
    logits[1, :40] = 30.0  # 40 words tie for first place, the right word among them
    logits[2, 5] = (
        200.0  # a word far above every other, the right one included: exp underflows to 0 elsewhere,
    )
    # and fused_loss.c computes the strip again, shifted by the top logit instead of the right one
    b = torch.randn(words, generator=generator) if bias else None
    if bias:
        b[:40] = 0.5
    labels = torch.randint(0, words, (n,), generator=generator)
    labels[1] = 0
    # A word 60 above the right one, under fused_loss.c's limit: the sum of e^(logit - right) holds e^60.
    logits[6, (labels[6] + 1) % words] = logits[6, labels[6]].float() + 60
    row_weight = torch.full((n,), 1 / (n - 1))
    row_weight[3] = 0.0  # an ignored row: no gradient
    return logits, b, labels, row_weight


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [12, 40])  # a short strip of 16 positions; two whole ones and a short one
def test_the_c_loop_computes_what_block_loss_does(dtype, bias, n):
    logits, b, labels, row_weight = block(dtype, bias, n)
    want_grad, got_grad = torch.empty_like(logits), torch.empty_like(logits)
    want = block_loss(logits, b, labels, row_weight, want_grad)
    got = fast_block_loss(logits.T.contiguous(), b, labels, row_weight, got_grad)  # a row per word
    assert fused_loss.c_library.get() is not None, "cc builds fused_loss.c on this machine"
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)  # losses
    assert torch.equal(got[1], want[1])  # ranks, ties included
    assert got[1][1] == 39
    # The gradients: float32 within a few steps of float32, bf16 within one step of bf16.
    tolerance = {"rtol": 1e-5, "atol": 1e-9} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 1e-9}
    torch.testing.assert_close(got_grad, want_grad, **tolerance)
    torch.testing.assert_close(got[2], want[2], **tolerance)
    assert got[2].dtype == dtype and not got_grad[3].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [12, 40])
def test_the_c_loop_adds_up_the_bias_gradient_a_row_per_thread(dtype, n):
    """The gradient's column sums, right words set, from the float32 values before any rounding; added to what is there."""
    logits, b, labels, row_weight = block(dtype, True, n)
    exact = torch.empty_like(logits, dtype=torch.float32)
    right = block_loss(logits.float(), b, labels, row_weight, exact)[2]  # the same logits, in float32
    exact[torch.arange(n), labels] = right
    bias_sums = torch.zeros(torch.get_num_threads(), logits.shape[1])
    bias_sums[0] = 1.0  # what earlier blocks left
    fast_block_loss(logits.T.contiguous(), b, labels, row_weight, torch.empty_like(logits), bias_sums)
    torch.testing.assert_close(bias_sums.sum(dim=0), exact.sum(dim=0) + 1.0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label", [100, -1])
def test_the_c_loop_refuses_a_label_outside_the_vocabulary_and_writes_nothing(label):
    logits, b, labels, row_weight = block(torch.float32, True, words=100)
    labels[4] = label
    grad = torch.zeros_like(logits)
    with pytest.raises(IndexError, match="vocabulary of 100 words"):
        fast_block_loss(logits.T.contiguous(), b, labels, row_weight, grad)
    assert not grad.any()


def test_without_a_c_compiler_the_block_is_computed_by_pytorch(monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler")
    library = CLibrary(fused_loss.c_library.source)
    with caplog.at_level(logging.WARNING):
        assert library.get() is None
    assert "fused_loss.c not built by no-such-compiler" in caplog.text
    monkeypatch.setattr(fused_loss, "c_library", library)
    monkeypatch.setattr(fused_loss, "compiled_block_loss", block_loss)  # what torch.compile would run
    logits, b, labels, row_weight = block(torch.float32, True)
    want_grad, got_grad = torch.empty_like(logits), torch.empty_like(logits)
    word_logits = logits.T.contiguous()  # (V, n), as the head computes them
    want = block_loss(word_logits.T, b, labels, row_weight, want_grad)
    got = fast_block_loss(word_logits, b, labels, row_weight, got_grad)
    assert all(torch.equal(x, y) for x, y in zip(got, want)) and torch.equal(got_grad, want_grad)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["c", "compiled"])
def test_the_compiled_block_computes_what_the_plain_one_does(monkeypatch, loop):
    """The C loop, or torch.compile's loops, and AMX's compiled transpose; the numbers stay the plain ones."""
    monkeypatch.setattr(fused_loss, "COMPILE_FROM_VOCAB", V)
    monkeypatch.setattr(fused_loss, "cpu_has_amx", lambda: True)  # its form of the weight's gradient
    if loop == "compiled":
        monkeypatch.setattr(fused_loss, "c_library", SwitchedOff())
    hidden, weight, b, labels = inputs(11)
    expected_loss, expected_ranks = reference(hidden, weight, b, labels)
    loss, ranks = linear_cross_entropy(hidden, weight, b, labels, 4)
    compiled = fused_loss.compiled_block_loss
    if loop == "compiled":
        assert compiled.compiled is not None and not compiled.failed
    else:
        assert fused_loss.c_library.get() is not None
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    scored = labels != IGNORE_INDEX
    assert torch.equal(ranks[scored], expected_ranks[scored])
    for got, want in zip(grads(loss, (hidden, weight, b)), grads(expected_loss, (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # validation: the same loop, no gradient kept
        scoring_loss, scoring_ranks = linear_cross_entropy(hidden, weight, b, labels, 4)
    torch.testing.assert_close(scoring_loss, expected_loss, rtol=1e-6, atol=1e-6)
    assert torch.equal(scoring_ranks[scored], expected_ranks[scored])
    # In bfloat16 on a CPU with AMX, the weight's gradient goes through the compiled transpose.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss, _ = linear_cross_entropy(hidden, weight, b, labels, 4)
    assert fused_loss.compiled_transpose.compiled is not None and not fused_loss.compiled_transpose.failed
    expected_loss, _ = reference(hidden, weight, b, labels)  # a graph of its own: the first was used up
    torch.testing.assert_close(bf16_loss, expected_loss, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads(bf16_loss, (hidden, weight, b)), grads(expected_loss, (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)
