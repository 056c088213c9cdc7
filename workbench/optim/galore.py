"""GaLore (Zhao et al., arXiv 2403.03507): Adam in the subspace of the gradient's top singular vectors.

For each projected 2-D weight ``G`` (m x n), rank ``r = min(rank, m, n)``: every
``update_proj_gap`` steps (and at the first) an SVD of the current gradient gives ``P``: the top-r
right singular vectors (``P`` is r x n, ``R = G P^T``) if m >= n, else the top-r left singular
vectors (``P`` is m x r, ``R = P^T G``). Adam (bias-corrected) on ``R`` gives
``N = m_hat / (sqrt(v_hat) + eps)``, projected back (``N P`` or ``P N``) and applied as
``p -= lr * scale * back(N)``, then ``p -= lr * weight_decay * p``. The moments are kept across
projection refreshes, as in the paper's code. Other parameters get plain AdamW.

``bias_correction="step"`` follows the official ``galore-torch`` code instead: ``N = m / (sqrt(v) + eps)``
from the raw moments and the correction ``sqrt(1 - beta2^t) / (1 - beta1^t)`` in the step size (as
Hugging Face's old AdamW). The two differ only through where ``eps`` sits (``eps`` vs
``eps * sqrt(1 - beta2^t)``); with ``eps = 0`` they are the same update.

``P`` depends on the gradient, so unlike APOLLO it is part of the state (``projector``) and is
saved. The SVD runs on the stacked gradients of same-shape weights at once (in float32); it is the
one place where a CUDA run waits for the device (``torch.linalg.svd`` checks convergence), and only
at refresh steps. If it fails to converge in float32 it is retried in float64.

Example:
    >>> import torch
    >>> from workbench.optim import GaLore
    >>> w = torch.nn.Parameter(torch.randn(16, 8))
    >>> opt = GaLore([w], rank=2, update_proj_gap=5)
    >>> w.grad = torch.randn(16, 8)
    >>> opt.step()
    >>> tuple(opt.state[w]["projector"].shape), tuple(opt.state[w]["exp_avg"].shape)
    ((2, 8), (16, 2))
"""
from __future__ import annotations

import math

import torch

from ._base import (ProjectedOptimizer, adam_direction, check_choice, check_int, check_range, local, shard_info,
                    update_moments)

__all__ = ["GaLore"]


def _svd(G: torch.Tensor):
    try:
        return torch.linalg.svd(G.float(), full_matrices=False)
    except RuntimeError:        # non-convergence: retry in double precision
        U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
        return U.float(), S.float(), Vh.float()


class GaLore(ProjectedOptimizer):
    """GaLore-AdamW. Defaults: lr 1e-2, rank 128, scale 0.25, update_proj_gap 200,
    betas (0.9, 0.999), eps 1e-6, weight_decay 0, bias_correction ``"moments"`` (``"step"``: the
    official package's placement of the bias correction). A group with ``rank=None`` gets plain AdamW."""

    def __init__(self, params, lr: float = 1e-2, rank: int | None = 128, update_proj_gap: int = 200,
                 scale: float = 0.25, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 bias_correction: str = "moments"):
        defaults = dict(lr=lr, rank=rank, update_proj_gap=update_proj_gap, scale=scale,
                        betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, seed=0, bias_correction=bias_correction)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        self._check_common(group)
        check_int("rank", group["rank"], 1, allow_none=True)
        check_range("scale", group["scale"], 0.0, low_open=True)
        check_choice("bias_correction", group.get("bias_correction", "moments"), ("moments", "step"))

    def _step_bucket(self, key, group, index, params, step):
        p0 = params[0]
        m, n = p0.shape                              # the global shape (FSDP2: of the whole DTensor)
        r = min(group["rank"], m, n)
        tall = m >= n
        beta1, beta2 = group["betas"]
        sh = shard_info(p0)                          # FSDP2: this rank holds some rows of each weight
        grads = [local(p.grad) for p in params]
        lparams = [local(p) for p in params]
        refresh = (step - 1) % group["update_proj_gap"] == 0
        G = torch.stack(grads) if refresh or self._stacking(p0.device) else None
        wide_shard = sh if not tall else None        # a wide weight's P (m x r) has one row per weight row
        proj = self._stacked(key, params, "projector", (r, n) if tall else (grads[0].shape[0], r),
                             p0.dtype, p0.device, shard=wide_shard)
        if refresh:
            full = G if sh is None else torch.stack([p.grad.full_tensor() for p in params])   # all-gather
            U, _, Vh = _svd(full)
            P = (Vh[:, :r, :] if tall else U[:, :, :r])
            if sh is not None:                       # bit-identical on every rank: the first rank's SVD
                P = sh.broadcast_(P.contiguous())
                P = P if tall else sh.rows_of(P)
            proj.copy_(P)
        R = self._project(grads, proj, tall, G)
        if sh is not None and not tall:
            sh.all_reduce_(R)                        # R = P^T G sums over every row: one all-reduce
        exp_avg = self._stacked(key, params, "exp_avg", R.shape[1:], p0.dtype, p0.device, shard=sh if tall else None)
        exp_avg_sq = self._stacked(key, params, "exp_avg_sq", R.shape[1:], p0.dtype, p0.device,
                                   shard=sh if tall else None)
        update_moments(exp_avg, exp_avg_sq, R, beta1, beta2)
        step_size = group["lr"] * group["scale"]
        if group.get("bias_correction", "moments") == "step":   # as the official code (old states lack the key)
            N = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
            step_size *= math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        else:
            N = adam_direction(exp_avg, exp_avg_sq, beta1, beta2, group["eps"], step)
        if self._stacking(p0.device):
            update = torch.bmm(N, proj) if tall else torch.bmm(proj, N)
            self._apply(lparams, update, step_size, 0.0)
        else:                                   # p += -step_size * back(N), no full-size temporary
            for p, Ni, Pi in zip(lparams, N.unbind(0), proj.unbind(0)):
                if tall:
                    p.addmm_(Ni, Pi, alpha=-step_size)
                else:
                    p.addmm_(Pi, Ni, alpha=-step_size)
        if group["weight_decay"] != 0:
            torch._foreach_mul_(lparams, 1.0 - group["lr"] * group["weight_decay"])
