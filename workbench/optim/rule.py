"""Prototyping kit: write only the per-tensor update rule, get a full torch optimizer.

A rule is a function ``(grad, state, group) -> direction``: ``grad`` the gradient, ``state`` a dict of
the state tensors you named (zeros like the parameter at the first step, updated in place) plus
``state["step"]`` (the 1-based step number), ``group`` the hyperparameters of the parameter's group.
The optimizer then applies ``p -= lr * direction`` after decoupled weight decay
``p *= 1 - lr * weight_decay`` (AdamW order) if the rule has a ``weight_decay`` hyperparameter.

You get for free: hyperparameter validation (``lr``, ``weight_decay``, ``eps``, ``momentum`` and
``betas`` by their usual ranges, others by ``bounds={"name": (low, high)}``, unknown names
refused), param groups, closures, ``state_dict``/``load_state_dict`` (loads with
``weights_only=True``), memory accounting (:func:`workbench.optim.state_bytes`,
:func:`workbench.optim.estimate_state_bytes`) and a foreach-style fast path: with
``elementwise=True`` (the default) the rule is called once per bucket of same-shape parameters,
with ``grad`` and the state tensors stacked along a new first dimension, so a model with a
hundred same-shape layers costs a handful of kernels, not a hundred Python calls. Write the rule
with elementwise ops and broadcasting scalars (``sign``, ``lerp``, ``mul``, ``sqrt``...); if it
needs a per-tensor reduction (a norm, a matmul), pass ``elementwise=False`` and it is called
once per parameter. With FSDP2 (DTensor parameters) an elementwise rule runs on each rank's
local shards (no communication); a rule with ``elementwise=False`` gets the DTensors themselves,
so its norms and matmuls span the shards (DTensor inserts the collectives: one all-reduce per
reduction). ``grad`` may be modified in place only when ``elementwise=True`` (it is then a
stacked copy); returning a state tensor replaced by a new one (``state["m"] = ...``) also works.

Lion (Chen et al., arXiv 2302.06675) in a notebook cell:

    >>> import torch
    >>> from workbench.optim import update_rule
    >>> @update_rule(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, state=("exp_avg",))
    ... def Lion(grad, state, group):
    ...     '''Sign of the interpolated momentum.'''
    ...     beta1, beta2 = group["betas"]
    ...     m = state["exp_avg"]
    ...     direction = torch.sign(m.lerp(grad, 1 - beta1))
    ...     m.lerp_(grad, 1 - beta2)
    ...     return direction
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = Lion([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, -2.0, 0.0])
    >>> opt.step()
    >>> w.detach()
    tensor([-0.1000,  0.1000,  0.0000])
    >>> Lion([w], betas=(0.9, 1.5))
    Traceback (most recent call last):
    ...
    ValueError: betas[1] must be a finite number >= 0.0 and < 1.0, got 1.5

Or as a class::

    class Lion(RuleOptimizer):
        hyperparameters = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
        state_names = ("exp_avg",)
        def update(self, grad, state, group): ...
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch.optim import Optimizer

from ._base import StackedStateMixin, buckets, check_betas, check_range, local, shard_info

__all__ = ["RuleOptimizer", "update_rule"]

_KNOWN = {"lr": (0.0, None), "weight_decay": (0.0, None), "eps": (0.0, None), "momentum": (0.0, 1.0)}


class RuleOptimizer(StackedStateMixin, Optimizer):
    """Base class: set ``hyperparameters`` (defaults; must include ``lr``), ``state_names``, optionally
    ``bounds`` and ``elementwise``, and implement ``update(self, grad, state, group) -> direction``."""

    hyperparameters: ClassVar[dict] = {"lr": 1e-3}
    state_names: ClassVar[tuple] = ()
    bounds: ClassVar[dict] = {}
    elementwise: ClassVar[bool] = True
    max_bucket_numel: ClassVar[int | None] = None     # None: workbench.optim._base.default_bucket_numel

    def __init__(self, params, **hyperparameters):
        cls = type(self)
        if "lr" not in cls.hyperparameters:
            raise ValueError(f"{cls.__name__}.hyperparameters must include 'lr'")
        unknown = sorted(set(hyperparameters) - set(cls.hyperparameters))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for {cls.__name__}; "
                             f"it takes {sorted(cls.hyperparameters)}")
        self._init_stacks()
        super().__init__(params, {**cls.hyperparameters, **hyperparameters})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for name, default in type(self).hyperparameters.items():
            value = group[name]
            if name == "betas":
                check_betas(value)
            elif name in self.bounds:
                low, high = self.bounds[name]
                check_range(name, value, low, high)
            elif name in _KNOWN:
                low, high = _KNOWN[name]
                check_range(name, value, low, high, high_open=name == "momentum")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                check_range(name, value)

    def update(self, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError("write update(grad, state, group) -> direction")

    def _call_rule(self, grad, state, group, buffers) -> torch.Tensor:
        direction = self.update(grad, state, group)
        for name, buf in buffers.items():           # a rule that rebound a state entry
            if state[name] is not buf:
                buf.copy_(state[name])
        if not isinstance(direction, torch.Tensor) or direction.shape != grad.shape:
            raise ValueError(f"{type(self).__name__}.update must return a tensor shaped like grad "
                             f"{tuple(grad.shape)}, got {getattr(direction, 'shape', type(direction).__name__)}")
        return direction

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise ValueError(f"{type(self).__name__} does not support sparse gradients")
            lr, wd = group["lr"], group.get("weight_decay", 0.0)
            if not self.elementwise:
                for p in params:
                    st = self.state[p]
                    for name in self.state_names:
                        if name not in st:
                            st[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["step"] = int(st.get("step", 0)) + 1
                    view = {name: st[name] for name in self.state_names}
                    direction = self._call_rule(p.grad, {**view, "step": st["step"]}, group, view)
                    if wd:
                        p.mul_(1.0 - lr * wd)
                    p.add_(direction, alpha=-lr)
                continue
            key_fn = lambda p: (tuple(p.shape), p.dtype, p.device, int(self.state[p].get("step", 0)))  # noqa: E731
            for key, ps in buckets(params, key_fn, self.max_bucket_numel):
                shape, dtype, device, step = key[0], key[1], key[2], key[3] + 1
                bkey = (gi, shape, dtype, device, key[4])
                sh = shard_info(ps[0])               # FSDP2: elementwise, so the local shards suffice
                grad = torch.stack([local(p.grad) for p in ps])
                lshape = tuple(grad.shape[1:])
                bufs = {name: self._stacked(bkey, ps, name, lshape, dtype, device, shard=sh)
                        for name in self.state_names}
                direction = self._call_rule(grad, {**bufs, "step": step}, group, bufs)
                lps = [local(p) for p in ps]
                if wd:
                    torch._foreach_mul_(lps, 1.0 - lr * wd)
                torch._foreach_add_(lps, list(direction.unbind(0)), alpha=-lr)
                for p in ps:
                    self.state[p]["step"] = step
        return loss


def update_rule(fn: Callable | None = None, *, state: tuple = (), elementwise: bool = True,
                bounds: dict | None = None, **hyperparameters):
    """Decorator turning ``fn(grad, state, group) -> direction`` into a :class:`RuleOptimizer` subclass
    named like ``fn``; keyword arguments are the hyperparameter defaults (``lr`` required),
    ``state`` the names of the state tensors. See the module docstring for Lion."""
    if "lr" not in hyperparameters:
        raise ValueError("update_rule needs an lr= default among the hyperparameters")
    if isinstance(state, str):
        state = (state,)

    def wrap(f: Callable) -> type:
        attrs = {"hyperparameters": dict(hyperparameters), "state_names": tuple(state),
                 "elementwise": bool(elementwise), "bounds": dict(bounds or {}),
                 "update": staticmethod(f), "__doc__": f.__doc__, "__module__": f.__module__,
                 "__qualname__": getattr(f, "__qualname__", f.__name__)}
        return type(f.__name__, (RuleOptimizer,), attrs)

    return wrap(fn) if fn is not None else wrap
