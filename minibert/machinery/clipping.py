"""Gradient clipping by norm, with its scaling done by a fused optimizer's step (speed only).

``torch.nn.utils.clip_grad_norm_`` makes two passes over every gradient: one for their norm,
and one that multiplies them all by ``max_norm / norm`` where the norm is larger (base.yaml's
is, at every step). A fused Adam or AdamW reads every gradient again in its step, and can divide
it there: PyTorch's ``GradScaler`` hands it the factor as the optimizer's ``grad_scale``
attribute, which the fused kernel divides each gradient by (and writes back) before it updates
the moments. :func:`clip_grad_norm` gives it the clipping's factor the same way, so the
multiplying pass is gone. On 2 CPU cores at base.yaml's sizes that pass took 0.6 ms a step with
the cores under one cache and 3.9 ms with the host running them apart; the step's division
takes some of it back: about 0.35 and 2 ms a step saved (docs/benchmarks.md).

That attribute is not documented, so the first call checks on a one-element parameter that a
fused step still divides by it; where it does not (another PyTorch), and for every other
optimizer, the gradients are clipped by ``clip_grad_norm_`` itself. The updates are the same as
with ``clip_grad_norm_`` up to the rounding of a division against a multiplication.
"""

from __future__ import annotations

from weakref import WeakSet

import torch
from torch import Tensor
from torch.optim import Optimizer

EPS = 1e-6  # clip_grad_norm_'s: max_norm / (norm + 1e-6)
fold_into_step = True  # benchmarks/levers.py turns it off
_divides: bool | None = None  # whether this PyTorch's fused AdamW divides by grad_scale; checked once
_cleared: WeakSet[Optimizer] = WeakSet()  # the optimizers whose steps clear their grad_scale


def clip_grad_norm(optimizer: Optimizer, params: list[Tensor], max_norm: float) -> None:
    """Scale the gradients of ``params`` so that their total norm is at most ``max_norm``, as ``clip_grad_norm_`` does.

    For a fused optimizer of PyTorch's (``optimizer.step`` must come next, as in Lightning's
    loop), the scaling is left to its step; otherwise the gradients are scaled here.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not (grads and folds_into_step(optimizer)):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    norm = torch.nn.utils.get_total_norm(grads)
    # The step divides each gradient by this: 1 / clip_grad_norm_'s factor, never under 1.
    optimizer.grad_scale = torch.clamp((norm + EPS) / max_norm, min=1.0)
    if optimizer not in _cleared:
        optimizer.register_step_post_hook(_clear_grad_scale)
        _cleared.add(optimizer)


def _clear_grad_scale(optimizer: Optimizer, args, kwargs) -> None:
    """After each step: the factor was this step's only (a step without clipping must not divide)."""
    optimizer.__dict__.pop("grad_scale", None)


def folds_into_step(optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s step divides the gradients by its ``grad_scale``: a fused Adam or AdamW of PyTorch's."""
    fused = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and all(
        group.get("fused") for group in optimizer.param_groups
    )
    return fold_into_step and fused and fused_step_divides()


def fused_step_divides() -> bool:
    """Whether a fused AdamW step of this PyTorch divides the gradient by ``grad_scale``: checked once, on one number."""
    global _divides
    if _divides is None:
        param = torch.nn.Parameter(torch.zeros(1))
        param.grad = torch.full((1,), 4.0)
        try:
            probe = torch.optim.AdamW([param], lr=1.0, fused=True)
            probe.grad_scale = torch.tensor(2.0)
            probe.step()
        except (RuntimeError, TypeError):  # no fused AdamW on a CPU in this PyTorch
            _divides = False
            return _divides
        # The first step's moment is (1 - beta1) times the gradient it saw: 0.1 x 2 if divided.
        _divides = bool(torch.isclose(probe.state[param]["exp_avg"], torch.tensor(0.2)).all())
    return _divides
