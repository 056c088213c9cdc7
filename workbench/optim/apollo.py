"""APOLLO and APOLLO-Mini (Zhu et al., arXiv 2412.05270): AdamW-level training with SGD-level memory.

For each projected 2-D weight ``G`` (m x n) with rank ``r = min(rank, m, n)``:

1. project with a random ``P ~ N(0, 1)/sqrt(r)``: ``R = G P^T`` (P is r x n) if m >= n, else
   ``R = P^T G`` (P is m x r). ``P`` is redrawn every ``update_proj_gap`` steps from
   ``(seed, parameter index, refresh count)`` by a counter-based generator that runs on the
   parameter's device with integer arithmetic (:func:`workbench.optim.rng.counter_normal`), so it
   is bit-identical on CPU and CUDA, on every DDP rank and after a resume, and it is never saved;
2. Adam moments on ``R`` (bias-corrected): ``Rt = m_hat / (sqrt(v_hat) + eps)``;
3. scaling factors: per channel of the larger side ``s_j = ||Rt_j|| / (||R_j|| + 1e-8)``
   (``scale_type="channel"``) or one per tensor ``s = ||Rt|| / (||R|| + 1e-8)`` (``"tensor"``);
4. ``Gt = sqrt(scale) * s * G`` (the raw full-rank gradient, rescaled);
5. norm-growth limiter (Fira): if ``||Gt_t|| > limit * ||Gt_{t-1}||`` rescale ``Gt_t`` to that
   norm; the post-limit norm is what the next step compares with (``norm_growth_limit=None`` turns
   it off);
6. ``p -= lr * Gt``, then decoupled weight decay ``p -= lr * weight_decay * p``.

Parameters that are not 2-D, and groups with ``rank=None`` (or ``lowrank=False``), get plain
AdamW (``torch.optim.AdamW`` semantics with the group's hyperparameters). Same-shape weights are
updated together (stacked gradients, batched matmuls, one kernel per moment update) and nothing in
``step()`` waits for the device. Use :func:`workbench.optim.lowrank_param_groups` to project only
attention/MLP weights (embeddings, head and norms then get AdamW), as in the paper.

State per projected weight: ``exp_avg``/``exp_avg_sq`` (the shape of ``R``: ``2 r max(m, n)``
numbers, exactly ``r / min(m, n)`` of AdamW's two moments), ``gt_norm`` (the limiter's previous
norm, one number) and ``step``. ``P`` is not state: by default it is regenerated on the device at
every step (a dozen elementwise kernels over ``r min(m, n)`` numbers, cheap next to the projection
matmul), so nothing but the moments is held. ``cache_projection=True`` keeps the current ``P``
between refreshes instead (``r min(m, n)`` more numbers per weight, counted by
:func:`workbench.optim.state_bytes`), which saves CPU time on large models.

Example:
    >>> import torch
    >>> from workbench.optim import Apollo, ApolloMini
    >>> w = torch.nn.Parameter(torch.randn(64, 32))
    >>> b = torch.nn.Parameter(torch.zeros(64))
    >>> opt = Apollo([w, b], lr=1e-2, rank=4, update_proj_gap=10)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     loss = (w.sum(1) + b - 1).pow(2).mean()
    ...     loss.backward()
    ...     opt.step()
    >>> tuple(opt.state[w]["exp_avg"].shape), tuple(opt.projection(w).shape)   # R is 64 x 4, P 4 x 32
    ((64, 4), (4, 32))
    >>> ApolloMini([w]).param_groups[0]["rank"], ApolloMini([w]).param_groups[0]["scale_type"]
    (1, 'tensor')
"""
from __future__ import annotations

import math

import torch

from ._base import (ProjectedOptimizer, adam_direction, check_choice, check_int, check_range, derive_seed,
                    local, shard_info, update_moments)
from .rng import counter_normal

__all__ = ["Apollo", "ApolloMini", "gaussian_projection"]


def gaussian_projection(seed: int, shape: tuple[int, int], rank: int, *, dtype: torch.dtype = torch.float32,
                        device=None) -> torch.Tensor:
    """``N(0, 1)/sqrt(rank)`` matrix of ``shape`` for ``seed``, the same bits on every device
    (values rounded to float32, then cast to ``dtype``). See :func:`workbench.optim.rng.counter_normal`."""
    return counter_normal([seed], shape[0] * shape[1], scale=1 / math.sqrt(rank), dtype=dtype,
                          device=device).view(shape)


class Apollo(ProjectedOptimizer):
    """APOLLO: random-projection scaled AdamW. See the module docstring for the algorithm.

    Args:
        params: parameters or param groups; a group may override any argument, ``rank=None``
            gives that group plain AdamW.
        lr: learning rate (1e-2, the paper's).
        rank: projection rank, capped at each weight's smaller dimension (256).
        scale_type: ``"channel"`` (APOLLO) or ``"tensor"`` (APOLLO-Mini).
        scale: the gradient is multiplied by ``sqrt(scale)`` (1; 128 for APOLLO-Mini).
        update_proj_gap: steps between projection refreshes ``T`` (200).
        betas, eps, weight_decay: as AdamW (0.9, 0.999), 1e-6, 0.
        norm_growth_limit: Fira's limiter ratio (1.01); None switches it off.
        seed: base seed of the projections (0); keep it equal on every DDP rank.
        cache_projection: redraw ``P`` on the device at every step (False: no memory for it) or
            keep it between refreshes (True: ``r min(m, n)`` numbers per weight, less compute).
        bias_correction: ``"moments"`` (REFERENCE.md: ``Rt`` from the bias-corrected moments, so the
            limiter compares corrected norms) or ``"step"`` (the official code: ``Rt = m / (sqrt(v) + eps)``
            from the raw moments, the limiter sees those norms, and the correction
            ``sqrt(1 - beta2^t) / (1 - beta1^t)`` multiplies the step). The two differ only through
            the limiter (and eps); ``benchmarks/optim_quality.py --ablations`` compares them.
        proj_dtype: dtype of the projection ``R = G P^T`` (None: the parameter's; e.g. ``"bfloat16"``
            runs that matmul on bf16 tensor cores and stacks the gradients at half the bytes on a
            GPU; the moments, norms and the update stay in the parameter's dtype).
    """

    def __init__(self, params, lr: float = 1e-2, rank: int | None = 256, scale_type: str = "channel",
                 scale: float = 1.0, update_proj_gap: int = 200, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, norm_growth_limit: float | None = 1.01, seed: int = 0,
                 cache_projection: bool = False, bias_correction: str = "moments", proj_dtype: str | None = None):
        defaults = dict(lr=lr, rank=rank, scale_type=scale_type, scale=scale, update_proj_gap=update_proj_gap,
                        betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, norm_growth_limit=norm_growth_limit, seed=seed,
                        cache_projection=cache_projection, bias_correction=bias_correction, proj_dtype=proj_dtype)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        self._check_common(group)
        check_int("rank", group["rank"], 1, allow_none=True)
        check_choice("scale_type", group["scale_type"], ("channel", "tensor"))
        check_range("scale", group["scale"], 0.0, low_open=True)
        check_range("norm_growth_limit", group["norm_growth_limit"], 1.0, allow_none=True)
        check_choice("bias_correction", group["bias_correction"], ("moments", "step"))
        check_choice("proj_dtype", group["proj_dtype"], (None, "float32", "float64", "bfloat16", "float16"))
        if not isinstance(group["cache_projection"], bool):
            raise ValueError(f"cache_projection must be True or False, got {group['cache_projection']!r}")

    # ------------------------------------------------------------------ projections
    @staticmethod
    def _proj_shape(shape, rank: int) -> tuple[int, int, int, bool]:
        m, n = shape
        r = min(rank, m, n)
        tall = m >= n
        return (r, n, r, tall) if tall else (m, r, r, tall)

    def _projections(self, key, group: dict, index: list[int], shape, step: int, device, dtype):
        """The stacked ``[B, *P.shape]`` projections for this step (kept until the next refresh if
        the group caches them)."""
        pm, pn, r, _ = self._proj_shape(shape, group["rank"])
        refresh = (step - 1) // group["update_proj_gap"]
        tag = (tuple(index), refresh, r, group["seed"], dtype, device)
        cached = self._caches.get(key)
        if cached is not None and cached[0] == tag:
            return cached[1]
        P = counter_normal([derive_seed(group["seed"], i, refresh) for i in index], pm * pn,
                           scale=1 / math.sqrt(r), dtype=dtype, device=device).view(len(index), pm, pn)
        if group["cache_projection"]:
            self._caches[key] = (tag, P)
        else:
            self._caches.pop(key, None)
        return P

    def projection(self, param: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The projection ``P`` used for ``param`` at ``step`` (default: its last completed step),
        regenerated from the seed. Raises ``ValueError`` if ``param`` is not projected."""
        i, group = self._index_of(param)
        if not self.is_projected(param, group):
            raise ValueError(f"this parameter (shape {tuple(param.shape)}) is not projected: it is not 2-D "
                             f"or its group has rank=None/lowrank=False")
        step = max(1, int(self.state[param].get("step", 1))) if step is None else step
        check_int("step", step, 1)
        pm, pn, r, _ = self._proj_shape(param.shape, group["rank"])
        refresh = (step - 1) // group["update_proj_gap"]
        return gaussian_projection(derive_seed(group["seed"], i, refresh), (pm, pn), r, dtype=param.dtype,
                                   device=param.device)

    # ------------------------------------------------------------------ the update
    def _step_bucket(self, key, group, index, params, step):
        p0 = params[0]
        B = len(params)
        shape = tuple(p0.shape)                      # the global shape (FSDP2: of the whole DTensor)
        _, _, r, tall = self._proj_shape(shape, group["rank"])
        beta1, beta2 = group["betas"]
        sh = shard_info(p0)                          # FSDP2: this rank holds rows [start, start + rows)
        grads = [local(p.grad) for p in params]
        lparams = [local(p) for p in params]
        lshape = tuple(grads[0].shape)
        pdtype = getattr(torch, group["proj_dtype"]) if group["proj_dtype"] else p0.dtype
        low = pdtype != p0.dtype                     # project in another dtype (e.g. bf16 tensor cores)
        G = None                                     # [B, m, n] stacked gradients, a copy we own
        if self._stacking(p0.device) and not low:
            G = torch.stack(grads)
        elif self._stacking(p0.device):
            G = torch.empty((B, *lshape), dtype=pdtype, device=p0.device)
            for row, g in zip(G, grads):             # converted while copied: one pass
                row.copy_(g)

        def across(n, rows):
            """A norm over sharded rows (FSDP2) is the root of the summed squares of every rank's rows."""
            return sh.all_reduce_(n.square()).sqrt() if sh is not None and rows else n

        def norm(x, dim, rows, dtype=None):
            return across(torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=dtype), rows)

        P = self._projections(key, group, index, shape, step, p0.device, pdtype)
        if sh is not None and not tall:
            P = sh.rows_of(P)                        # P (m x r): the rows that meet this rank's rows of G
        R = self._project([g.to(pdtype) for g in grads] if low and G is None else grads, P, tall, G)
        R = R.to(p0.dtype)                                                  # [B, m, r] or [B, r, n]
        if sh is not None and not tall:
            sh.all_reduce_(R)                        # R = P^T G sums over every row: one all-reduce
        state_shard = sh if tall else None           # tall: R has the parameter's rows; wide: replicated
        exp_avg = self._stacked(key, params, "exp_avg", R.shape[1:], p0.dtype, p0.device, shard=state_shard)
        exp_avg_sq = self._stacked(key, params, "exp_avg_sq", R.shape[1:], p0.dtype, p0.device, shard=state_shard)
        update_moments(exp_avg, exp_avg_sq, R, beta1, beta2)
        if group["bias_correction"] == "step":      # as the official code: limiter sees uncorrected norms
            Rt = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
            post = math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
        else:
            Rt = adam_direction(exp_avg, exp_avg_sq, beta1, beta2, group["eps"], step)
            post = 1.0

        alpha = math.sqrt(group["scale"])
        if group["scale_type"] == "channel":
            dim = -1 if tall else -2                     # the channels of the larger side
            s = norm(Rt, dim, False) / (norm(R, dim, False) + 1e-8)
            channel = (norm(G, dim, not tall, p0.dtype) if G is not None else
                       across(torch.stack([torch.linalg.vector_norm(g, dim=dim, keepdim=True) for g in grads]),
                              not tall))
            gt_norm = norm(s * channel, (-2, -1), tall).view(B) * alpha  # ||Gt||, [B]
        else:
            s = norm(Rt, (-2, -1), tall) / (norm(R, (-2, -1), tall) + 1e-8)
            g_norm = (norm(G, (-2, -1), True, p0.dtype) if G is not None else
                      across(torch.stack(torch._foreach_norm(grads)).view(B, 1, 1), True)).view(B)
            gt_norm = s.view(B) * g_norm * alpha
        factor = alpha
        limit = group["norm_growth_limit"]
        if limit is not None:
            prev = self._stacked(key, params, "gt_norm", (), p0.dtype, p0.device)
            cap = prev * limit
            shrink = torch.where((prev > 0) & (gt_norm > cap), cap / gt_norm.clamp_min(1e-30), 1.0)
            prev.copy_(gt_norm * shrink)
            factor = shrink.view(B, 1, 1) * alpha
        scale = s * (factor * post)                          # Gt = G * scale
        lr, wd = group["lr"], group["weight_decay"]
        # p -= lr * G * scale in one pass over each weight (no scaled copy of G), then decoupled decay
        torch._foreach_addcmul_(lparams, list(G.unbind(0)) if G is not None and not low else grads,
                                list(scale.unbind(0)), value=-lr)
        if wd != 0:
            torch._foreach_mul_(lparams, 1.0 - lr * wd)


class ApolloMini(Apollo):
    """APOLLO-Mini: :class:`Apollo` with ``rank=1, scale_type="tensor", scale=128`` (SGD-like memory:
    two numbers per row/column of the larger side per weight)."""

    def __init__(self, params, lr: float = 1e-2, rank: int | None = 1, scale_type: str = "tensor",
                 scale: float = 128.0, update_proj_gap: int = 200, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, norm_growth_limit: float | None = 1.01, seed: int = 0,
                 cache_projection: bool = False, bias_correction: str = "moments", proj_dtype: str | None = None):
        super().__init__(params, lr=lr, rank=rank, scale_type=scale_type, scale=scale,
                         update_proj_gap=update_proj_gap, betas=betas, eps=eps, weight_decay=weight_decay,
                         norm_growth_limit=norm_growth_limit, seed=seed, cache_projection=cache_projection,
                         bias_correction=bias_correction, proj_dtype=proj_dtype)
