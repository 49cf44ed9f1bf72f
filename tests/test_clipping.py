"""Gradient clipping by norm with its scaling in the fused optimizer's step (minibert/machinery/clipping.py)."""

import pytest
import torch

from minibert.machinery.clipping import clip_grad_norm, folds_into_step, fused_step_divides


def model_and_grads() -> torch.nn.Module:
    """The same small model with the same gradients (total norm 14.25) at every call."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    # eps 1.0: the update then depends on the gradient's size, so clipping shows in the parameters.
    return torch.optim.AdamW(model.parameters(), lr=0.1, eps=1.0, fused=fused)


def params_after(model: torch.nn.Module, clip, fused: bool = True) -> list[torch.Tensor]:
    optimizer = adamw(model, fused)
    clip(optimizer, list(model.parameters()))
    optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_this_pytorchs_fused_step_divides_by_grad_scale():
    assert fused_step_divides()  # else every run falls back to clip_grad_norm_ (correct, one pass slower)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped (the norm is 14.25), and not
def test_the_update_is_clip_grad_norms(max_norm):
    reference = params_after(model_and_grads(), lambda opt, ps: torch.nn.utils.clip_grad_norm_(ps, max_norm))
    folded_model = model_and_grads()
    assert folds_into_step(adamw(folded_model, fused=True))
    folded = params_after(folded_model, lambda opt, ps: clip_grad_norm(opt, ps, max_norm))
    unclipped = params_after(model_and_grads(), lambda opt, ps: None)
    for a, b in zip(folded, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the step writes back the gradients it used: the clipped ones
    norm = torch.nn.utils.get_total_norm([p.grad for p in folded_model.parameters()])
    assert norm.item() == pytest.approx(min(max_norm, 14.25), rel=1e-3) and norm <= max_norm * 1.0001
    changed = any(not torch.allclose(a, b, rtol=1e-4) for a, b in zip(folded, unclipped))
    assert changed == (max_norm == 0.5)


def test_the_factor_serves_one_step_only():
    model, reference = model_and_grads(), model_and_grads()
    optimizer, reference_optimizer = adamw(model, fused=True), adamw(reference, fused=True)
    clip_grad_norm(optimizer, list(model.parameters()), 0.5)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    optimizer.step(), reference_optimizer.step()
    assert not hasattr(optimizer, "grad_scale")
    for m in (model, reference):  # a second step, unclipped, with new gradients
        for p in m.parameters():
            p.grad = torch.full_like(p, 3.0)
    optimizer.step(), reference_optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_an_optimizer_that_is_not_fused_gets_clipped_gradients_at_once():
    model = model_and_grads()
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1), adamw(model, fused=False)):
        assert not folds_into_step(optimizer)
        clip_grad_norm(optimizer, list(model.parameters()), 0.5)
        assert not hasattr(optimizer, "grad_scale")
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        assert norm.item() == pytest.approx(0.5, rel=1e-5)
