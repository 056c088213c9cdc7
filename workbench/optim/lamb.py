"""LAMB (You et al., arXiv 1904.00962) behaving like NVIDIA apex ``FusedLAMB`` (its default
``adam_w_mode=True``, ``grad_averaging=True``, ``use_nvlamb=False``).

One step:

1. global gradient clipping first: ``g_norm = ||all gradients||`` (every group together); if
   ``max_grad_norm > 0`` and ``g_norm > max_grad_norm`` every gradient is divided by
   ``g_norm / max_grad_norm`` (the ``.grad`` tensors themselves are not modified);
2. Adam moments on the clipped gradient, bias-corrected: ``r = m_hat / (sqrt(v_hat) + eps)``;
3. weight decay inside the trust ratio: ``u = r + weight_decay * p``;
4. per tensor, ``p -= lr * ratio * u`` with ``ratio = ||p|| / ||u||``, and ``ratio = 1`` when
   either norm is 0. As in apex, a group with ``weight_decay == 0`` (biases, norms) skips the
   trust ratio (``ratio = 1``) unless ``use_nvlamb=True``.

All of it is ``torch._foreach_*`` kernels and tensor ops: the clipping decision and the trust
ratios are ``torch.where``, so there is no host-device synchronisation.

Example:
    >>> import torch
    >>> from workbench.optim import Lamb
    >>> w = torch.nn.Parameter(torch.ones(4, 4))
    >>> opt = Lamb([w], lr=0.1, weight_decay=0.01)
    >>> w.grad = torch.full((4, 4), 10.0)          # norm 40: clipped to 1 first
    >>> opt.step()
    >>> round(float(torch.linalg.vector_norm(w.detach() - 1)), 4)   # one step moves by lr * ||p||
    0.4
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from ._base import check_betas, check_range, default_bucket_numel, global_sq_norms, local, numel_chunks, shard_info

__all__ = ["Lamb"]


class Lamb(Optimizer):
    """LAMB as apex FusedLAMB. Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight_decay 0.01,
    max_grad_norm 1.0 (0 disables clipping; one value for the whole optimizer), bias_correction True,
    use_nvlamb False."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, bias_correction: bool = True,
                 use_nvlamb: bool = False):
        check_range("max_grad_norm", max_grad_norm, 0.0)
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, bias_correction=bias_correction, use_nvlamb=use_nvlamb)
        self.max_grad_norm = float(max_grad_norm)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_range("lr", g["lr"], 0.0)
        check_betas(g["betas"])
        check_range("eps", g["eps"], 0.0)
        check_range("weight_decay", g["weight_decay"], 0.0)
        for name in ("bias_correction", "use_nvlamb"):
            if not isinstance(g[name], bool):
                raise ValueError(f"{name} must be True or False, got {g[name]!r}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        grads_all = [p.grad for ps in with_grad for p in ps]
        if not grads_all:
            return loss
        if any(g.is_sparse for g in grads_all):
            raise ValueError("Lamb does not support sparse gradients")
        clip = None
        sharded = any(shard_info(g) is not None for g in grads_all)       # FSDP2 DTensors
        if self.max_grad_norm > 0 and sharded:       # one all-reduce of the local squares
            g_norm = global_sq_norms(grads_all).sum().sqrt()
            clip = torch.where(g_norm > self.max_grad_norm, g_norm / self.max_grad_norm, 1.0)
        elif self.max_grad_norm > 0:
            norms = torch._foreach_norm(grads_all)
            dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
            g_norm = torch.linalg.vector_norm(torch.stack([n.to(grads_all[0].device, dtype) for n in norms]))
            clip = torch.where(g_norm > self.max_grad_norm, g_norm / self.max_grad_norm, 1.0)

        for group, params in zip(self.param_groups, with_grad):
            if not params:
                continue
            by_key: dict = {}
            for p in params:
                st = self.state[p]
                if "exp_avg" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                by_key.setdefault((p.device, p.dtype, int(st["step"])), []).append(p)
            for (device, dtype, step0), key_params in by_key.items():
                for ps in numel_chunks(key_params, default_bucket_numel(device)):
                    self._update(group, ps, clip, device, dtype, step0 + 1)
        return loss

    def _update(self, group, ps, clip, device, dtype, step):
        beta1, beta2 = group["betas"]
        params, ps = ps, [local(p) for p in ps]        # FSDP2: elementwise on the local shards
        grads = [local(p.grad) for p in params]
        if clip is not None:
            grads = torch._foreach_div(grads, clip.to(device, dtype))
        m = [local(self.state[p]["exp_avg"]) for p in params]
        v = [local(self.state[p]["exp_avg_sq"]) for p in params]
        torch._foreach_lerp_(m, grads, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        bc1 = 1.0 - beta1 ** step if group["bias_correction"] else 1.0
        bc2 = 1.0 - beta2 ** step if group["bias_correction"] else 1.0
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bc2))
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_reciprocal_(denom)
        update = denom                                    # becomes m_hat / (sqrt(v_hat) + eps), in place
        torch._foreach_mul_(update, m)
        torch._foreach_div_(update, bc1)
        wd = group["weight_decay"]
        if wd != 0:
            torch._foreach_add_(update, ps, alpha=wd)
        if wd != 0 or group["use_nvlamb"]:
            if any(shard_info(p) is not None for p in params):    # norms over all shards: one all-reduce
                both = global_sq_norms(list(ps) + list(update), like=list(params) * 2).sqrt()
                p_norm, u_norm = both[:len(ps)], both[len(ps):]
            else:
                p_norm = torch.stack(torch._foreach_norm(ps))
                u_norm = torch.stack(torch._foreach_norm(update))
            ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm.clamp_min(1e-30), 1.0)
            torch._foreach_mul_(update, list(ratio.unbind(0)))
        torch._foreach_add_(ps, update, alpha=-group["lr"])
        for p in params:
            self.state[p]["step"] = step
