"""FRUGAL (Zmushko et al., arXiv 2411.07837): Adam in a small state-full subspace, a state-free
update (signSGD or SGD) on the rest of the gradient.

Every ``update_proj_gap`` steps ``T`` (and at the first) a new state-full subspace of density
``rho`` is chosen for each projected 2-D weight ``G`` (m x n), from ``(seed, parameter index,
refresh count)`` on a CPU generator (so it is identical on CPU and CUDA, on every rank, after a
resume, and is never saved), and the Adam state is reset (moments to zero, bias correction
restarted). ``proj_type``:

* ``"random"``: a random semi-orthogonal projection of rank ``k = round(rho * min(m, n))`` (halves
  round up, at least 1; QR of a
  Gaussian matrix): ``P`` is k x n and ``R = G P^T`` if m >= n, else ``P`` is m x k and ``R = P^T G``;
  the state-full part is ``back(R)`` (``R P`` or ``P R``);
* ``"columns"`` / ``"rows"``: ``k = round(rho * n)`` random columns (``round(rho * m)`` rows); ``R``
  is those columns (rows) of ``G``;
* ``"blocks"``: whole weights: ``round(rho * N)`` of the group's N 2-D weights are state-full
  (Adam on all of ``G``), the others fully state-free.

Update: ``p -= lr * (back(Adam(R)) + residual_scale * f(G - back(R)))`` with ``f = sign``
(``residual="sign"``), identity (``"sgd"``) or zero (``None``, the GaLore-like special case), then
decoupled weight decay ``p -= lr * weight_decay * p``. Parameters that are not 2-D, and groups
with ``rho=None`` (or ``lowrank=False``), get plain AdamW without resets (the paper keeps
embeddings, norms and the head state-full).

Example:
    >>> import torch
    >>> from workbench.optim import Frugal
    >>> w = torch.nn.Parameter(torch.randn(32, 16))
    >>> opt = Frugal([w], lr=1e-3, rho=0.25, proj_type="columns")
    >>> w.grad = torch.randn(32, 16)
    >>> opt.step()
    >>> tuple(opt.state[w]["exp_avg"].shape)          # Adam state on 4 of the 16 columns
    (32, 4)
"""
from __future__ import annotations

import torch

from ._base import (ProjectedOptimizer, adam_direction, check_choice, check_range, cpu_generator, derive_seed,
                    local, shard_info, to_device, update_moments)

__all__ = ["Frugal", "PROJ_TYPES"]

PROJ_TYPES = ("random", "columns", "rows", "blocks")
_BLOCKS_TAG = 0xB10C5


def _density_count(rho: float, size: int) -> int:
    return max(1, min(size, int(rho * size + 0.5)))


class Frugal(ProjectedOptimizer):
    """FRUGAL with Adam as the state-full and signSGD/SGD as the state-free optimizer.

    Args:
        params: parameters or param groups (a group may override any argument; ``rho=None``
            gives that group plain AdamW).
        lr: learning rate of both parts (1e-3).
        rho: density of the state-full subspace (0.25).
        proj_type: ``"random"``, ``"columns"``, ``"rows"`` or ``"blocks"`` (see the module doc).
        update_proj_gap: steps between subspace switches ``T`` (200); the Adam state is reset at each.
        betas, eps, weight_decay: Adam's (0.9, 0.999), 1e-8, 0 (decoupled, on all parameters).
        residual: ``"sign"`` (signSGD), ``"sgd"`` or None (no update outside the subspace).
        residual_scale: the state-free update is ``lr * residual_scale * f(residual)``
            (1.0 for pre-training, 0.1 for fine-tuning in the paper).
        seed: base seed of the subspaces (0).
    """

    rank_key = "rho"

    def __init__(self, params, lr: float = 1e-3, rho: float | None = 0.25, proj_type: str = "random",
                 update_proj_gap: int = 200, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 residual: str | None = "sign", residual_scale: float = 1.0, seed: int = 0):
        defaults = dict(lr=lr, rho=rho, proj_type=proj_type, update_proj_gap=update_proj_gap,
                        betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, residual=residual, residual_scale=residual_scale, seed=seed)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        self._check_common(group)
        check_range("rho", group["rho"], 0.0, 1.0, low_open=True, allow_none=True)
        check_choice("proj_type", group["proj_type"], PROJ_TYPES)
        check_choice("residual", group["residual"], ("sign", "sgd", None))
        check_range("residual_scale", group["residual_scale"], 0.0)

    # ------------------------------------------------------------------ subspaces
    @staticmethod
    def _subspace_size(shape, rho: float, proj_type: str) -> int:
        m, n = shape
        if proj_type == "random":
            return _density_count(rho, min(m, n))
        return _density_count(rho, n if proj_type == "columns" else m)

    @staticmethod
    def _make_subspace(seed: int, shape, k: int, proj_type: str) -> torch.Tensor:
        """CPU tensor: the orthonormal ``P`` ("random") or the sorted chosen indices."""
        m, n = shape
        g = cpu_generator(seed)
        if proj_type == "random":
            side = n if m >= n else m
            q, _ = torch.linalg.qr(torch.randn(side, k, generator=g, dtype=torch.float32))
            return q.T.contiguous() if m >= n else q          # k x n  or  m x k
        size = n if proj_type == "columns" else m
        return torch.randperm(size, generator=g)[:k].sort().values

    def subspace(self, param: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The projection ``P`` ("random") or chosen column/row indices of ``param`` at ``step``
        (default: its last completed step), regenerated from the seed. For ``"blocks"``: a 0-d bool,
        whether the whole weight is state-full."""
        i, group = self._index_of(param)
        if not self.is_projected(param, group):
            raise ValueError(f"this parameter (shape {tuple(param.shape)}) is not projected")
        step = max(1, int(self.state[param].get("step", 1))) if step is None else step
        refresh = (step - 1) // group["update_proj_gap"]
        if group["proj_type"] == "blocks":
            return torch.tensor(self._chosen_blocks(group, refresh)[id(param)])
        k = self._subspace_size(param.shape, group["rho"], group["proj_type"])
        sub = self._make_subspace(derive_seed(group["seed"], i, refresh), param.shape, k, group["proj_type"])
        return sub.to(param.device, param.dtype) if group["proj_type"] == "random" else sub.to(param.device)

    def _subspaces(self, key, group, index, shape, refresh, like) -> torch.Tensor:
        k = self._subspace_size(shape, group["rho"], group["proj_type"])
        tag = (tuple(index), refresh, k, group["seed"], group["proj_type"], like.dtype, like.device)
        cached = self._caches.get(key)
        if cached is not None and cached[0] == tag:
            return cached[1]
        subs = torch.stack([self._make_subspace(derive_seed(group["seed"], i, refresh), shape, k,
                                                group["proj_type"]) for i in index])
        subs = to_device(subs, like.device, like.dtype if group["proj_type"] == "random" else torch.int64)
        self._caches[key] = (tag, subs)
        return subs

    def _chosen_blocks(self, group: dict, refresh: int) -> dict:
        """id(param) -> whether it is state-full in this window (``round(rho * N)`` of the group's N 2-D weights)."""
        gi = next(j for j, g in enumerate(self.param_groups) if g is group)
        mats = [p for p in group["params"] if p.dim() == 2]
        k = _density_count(group["rho"], len(mats))
        perm = torch.randperm(len(mats), generator=cpu_generator(derive_seed(group["seed"], _BLOCKS_TAG, gi, refresh)))
        chosen = set(perm[:k].tolist())
        return {id(p): j in chosen for j, p in enumerate(mats)}

    # ------------------------------------------------------------------ the update
    def _residual_update(self, group, G: torch.Tensor) -> torch.Tensor:
        """In place: ``G <- residual_scale * f(G)``."""
        if group["residual"] == "sign":
            G.sign_()
        elif group["residual"] is None:
            G.zero_()
        if group["residual"] is not None and group["residual_scale"] != 1.0:
            G.mul_(group["residual_scale"])
        return G

    def _adam(self, key, group, params, R, adam_step, p0, shard=None) -> torch.Tensor:
        beta1, beta2 = group["betas"]
        exp_avg = self._stacked(key, params, "exp_avg", R.shape[1:], p0.dtype, p0.device, shard=shard)
        exp_avg_sq = self._stacked(key, params, "exp_avg_sq", R.shape[1:], p0.dtype, p0.device, shard=shard)
        if adam_step == 1:             # a new subspace: reset the state
            exp_avg.zero_()
            exp_avg_sq.zero_()
        update_moments(exp_avg, exp_avg_sq, R, beta1, beta2)
        return adam_direction(exp_avg, exp_avg_sq, beta1, beta2, group["eps"], adam_step)

    def _step_bucket(self, key, group, index, params, step):
        p0 = params[0]
        m, n = p0.shape                              # the global shape (FSDP2: of the whole DTensor)
        T = group["update_proj_gap"]
        refresh, adam_step = (step - 1) // T, (step - 1) % T + 1
        kind = group["proj_type"]
        lr, wd = group["lr"], group["weight_decay"]
        sh = shard_info(p0)                          # FSDP2: this rank holds rows [start, start + rows)
        lp = {id(p): local(p) for p in params}
        if kind == "blocks":                         # elementwise on whole weights: local rows suffice
            chosen = self._chosen_blocks(group, refresh)
            full = [p for p in params if chosen[id(p)]]
            free = [p for p in params if not chosen[id(p)]]
            if full:
                N = self._adam((*key, "full"), group, full, torch.stack([local(p.grad) for p in full]),
                               adam_step, p0, shard=sh)
                self._apply([lp[id(p)] for p in full], N, lr, wd)
            if free:
                self._drop_state(free, "exp_avg", "exp_avg_sq")
                Gs = torch.stack([local(p.grad) for p in free])
                self._apply([lp[id(p)] for p in free], self._residual_update(group, Gs), lr, wd)
            return
        G = torch.stack([local(p.grad) for p in params])       # becomes the update, in place
        sub = self._subspaces(key, group, index, (m, n), refresh, p0)
        if kind == "random":
            tall = m >= n
            if sh is not None and not tall:
                sub = sh.rows_of(sub)                # P (m x k): the rows that meet this rank's rows of G
            R = torch.bmm(G, sub.mT) if tall else torch.bmm(sub.mT, G)
            if sh is not None and not tall:
                sh.all_reduce_(R)                    # R = P^T G sums over every row: one all-reduce
            if group["residual"] is not None:
                if tall:
                    G.baddbmm_(R, sub, alpha=-1.0)        # residual G - R P
                else:
                    G.baddbmm_(sub, R, alpha=-1.0)        # residual G - P R
            N = self._adam(key, group, params, R, adam_step, p0, shard=sh if tall else None)
            U = self._residual_update(group, G)
            if tall:
                U.baddbmm_(N, sub)
            else:
                U.baddbmm_(sub, N)
        elif kind == "columns" or sh is None:
            B, k = sub.shape
            rows = G.shape[1]
            dim = -1 if kind == "columns" else -2
            idx = sub[:, None, :].expand(B, rows, k) if kind == "columns" else sub[:, :, None].expand(B, k, n)
            R = G.gather(dim, idx)
            N = self._adam(key, group, params, R, adam_step, p0, shard=sh if kind == "columns" else None)
            U = self._residual_update(group, G).scatter_(dim, idx, N)
        else:                                        # rows of a sharded weight: gather them on every rank
            B, k = sub.shape
            loc = sub - sh.start
            mine = (loc >= 0) & (loc < sh.rows)      # [B, k]: chosen rows held here
            R = G.new_zeros((B, k, n))
            for b in range(B):
                R[b, mine[b]] = G[b, loc[b, mine[b]]]
            sh.all_reduce_(R)                        # each chosen row comes from the one rank holding it
            N = self._adam(key, group, params, R, adam_step, p0)
            U = self._residual_update(group, G)
            for b in range(B):
                U[b, loc[b, mine[b]]] = N[b, mine[b]]
        self._apply([lp[id(p)] for p in params], U, lr, wd)
