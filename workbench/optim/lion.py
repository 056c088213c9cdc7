"""Lion (Chen et al., arXiv 2302.06675), written with the prototyping kit (:mod:`workbench.optim.rule`).

``direction = sign(beta1 * m + (1 - beta1) * g)``; ``m <- beta2 * m + (1 - beta2) * g``;
``p <- p * (1 - lr * weight_decay) - lr * direction``. One state tensor (4 bytes per fp32 parameter).

Example:
    >>> import torch
    >>> from workbench.optim import Lion, state_bytes
    >>> w = torch.nn.Parameter(torch.ones(10, 10))
    >>> opt = Lion([w], lr=1e-3, weight_decay=0.1)
    >>> w.grad = torch.ones(10, 10)
    >>> opt.step()
    >>> state_bytes(opt)                  # one fp32 momentum per parameter
    400
"""
from __future__ import annotations

import torch

from .rule import update_rule

__all__ = ["Lion"]


@update_rule(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, state=("exp_avg",))
def Lion(grad, state, group):
    """Lion: the sign of the interpolated momentum. Defaults lr 1e-4, betas (0.9, 0.99), weight_decay 0."""
    beta1, beta2 = group["betas"]
    m = state["exp_avg"]
    direction = torch.sign(m.lerp(grad, 1 - beta1))
    m.lerp_(grad, 1 - beta2)
    return direction
