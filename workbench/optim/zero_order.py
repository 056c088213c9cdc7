"""Zeroth-order SGD: seed-based SPSA as in MeZO (Malladi et al., arXiv 2305.17333) and
"Just One Byte" (arXiv 2306.10015). Two forward passes per step, no backward, no gradients,
no optimizer state: memory equals inference.

One step with seed ``s`` (derived from ``seed`` and the step number) and ``z ~ N(0, I)``
regenerated from ``s`` whenever it is needed (never stored):

1. ``theta += eps * z``; ``loss_plus = closure()``;
2. ``theta -= 2 * eps * z``; ``loss_minus = closure()``;
3. ``theta += eps * z`` (restore);
4. ``g = (loss_plus - loss_minus) / (2 * eps)`` (one scalar, the projected gradient);
5. ``theta -= lr * g * z``, then decoupled weight decay ``theta -= lr * weight_decay * theta``.

``g`` stays a tensor (no host sync); ``step()`` returns ``loss_plus``. After a step,
``last_seed`` and ``last_projected_grad`` hold the ``(seed, g)`` pair: that pair is all a worker
has to send for others to replay the update (:meth:`ZeroOrderSGD.apply_update`).

Plugging it into a training loop: ``step()`` needs a closure that runs the forward pass on the
*same* batch and returns the loss; do not call ``backward()`` (the closure runs under
``torch.no_grad()``). The workbench ``Trainer`` calls ``backward()`` and ``step()`` without a
closure, so drive it with a loop like the one below. With DDP (or any data parallelism) make the
closure return the loss averaged over ranks (``dist.all_reduce(loss); loss /= world_size``): every
rank then computes the same ``g`` and, with the same ``seed``, the same update; no gradient is
communicated, only that scalar.

A training loop (the model in eval mode or without dropout, so both passes see the same function)::

    opt = ZeroOrderSGD(model.parameters(), lr=1e-3, eps=1e-3)
    sched = schedule.torch_scheduler(opt)            # workbench schedules work as with any optimizer
    for step, (x, y) in zip(range(steps), BlockLoader(blocks, batch_size=16, seed=0)):
        def closure():
            return F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss = opt.step(closure)                     # two forward passes on this batch, no backward
        sched.step()

``z`` is drawn on each parameter's device (a CPU generator for CPU parameters, the CUDA one for
CUDA parameters), so runs on CPU and on CUDA use different ``z``; ranks and resumed runs on the
same kind of device agree.

Example:
    >>> import torch
    >>> from workbench.optim import ZeroOrderSGD
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(8, 1)
    >>> x, y = torch.randn(64, 8), torch.randn(64, 1)
    >>> opt = ZeroOrderSGD(model.parameters(), lr=1e-2, eps=1e-3)
    >>> first = float(torch.nn.functional.mse_loss(model(x), y).detach())
    >>> for _ in range(200):
    ...     loss = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    >>> float(torch.nn.functional.mse_loss(model(x), y).detach()) < first
    True
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from ._base import check_int, check_range, derive_seed

__all__ = ["ZeroOrderSGD"]


class ZeroOrderSGD(Optimizer):
    """MeZO / SPSA. Defaults: lr 1e-6 (MeZO's fine-tuning scale; use ~1e-3 for small models from
    scratch), eps 1e-3, weight_decay 0, seed 0. ``eps`` must be the same in every group."""

    requires_closure = True

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, seed: int = 0):
        check_int("seed", seed, 0)
        self.seed = seed
        self.last_seed: int | None = None
        self.last_projected_grad: torch.Tensor | None = None
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_range("lr", g["lr"], 0.0)
        check_range("eps", g["eps"], 0.0, low_open=True)
        check_range("weight_decay", g["weight_decay"], 0.0)
        if g["eps"] != self.param_groups[0]["eps"]:
            raise ValueError(f"eps must be the same in every param group (the perturbation is one "
                             f"direction); got {g['eps']!r} and {self.param_groups[0]['eps']!r}")

    def _params(self):
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, group, p
                i += 1

    def _z(self, seed: int, i: int, p: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device=p.device)
        g.manual_seed(derive_seed(seed, i))
        return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)

    def _perturb(self, seed: int, scale: float) -> None:
        for i, group, p in self._params():
            p.add_(self._z(seed, i, p), alpha=scale * group["eps"])

    @property
    def step_count(self) -> int:
        """Steps taken so far (kept in the state of the first parameter)."""
        first = next(iter(self._params()))[2]
        return int(self.state[first].get("step", 0))

    @torch.no_grad()
    def step(self, closure=None):
        """One SPSA step; ``closure()`` must return the loss of the current batch (no backward)."""
        if closure is None:
            raise ValueError("ZeroOrderSGD.step needs closure=lambda: loss_of_the_batch (two forward passes "
                             "per step); it does not use .grad. See help(workbench.optim.zero_order).")
        step = self.step_count + 1
        seed = derive_seed(self.seed, step)
        self._perturb(seed, 1.0)
        loss_plus = closure()
        self._perturb(seed, -2.0)
        loss_minus = closure()
        self._perturb(seed, 1.0)
        eps = self.param_groups[0]["eps"]
        g = (_detach(loss_plus) - _detach(loss_minus)) / (2.0 * eps)
        self.apply_update(seed, g)
        for _, _, p in self._params():
            self.state[p]["step"] = step
        return loss_plus

    @torch.no_grad()
    def apply_update(self, seed: int, projected_grad) -> None:
        """``theta -= lr * g * z(seed)`` then weight decay: the update of a step, replayable from the
        ``(seed, g)`` pair another worker sent (``last_seed``, ``last_projected_grad``)."""
        self.last_seed, self.last_projected_grad = seed, projected_grad
        for i, group, p in self._params():
            z = self._z(seed, i, p)
            if isinstance(projected_grad, torch.Tensor):
                p.addcmul_(z, projected_grad.to(p.device, p.dtype), value=-group["lr"])
            else:
                p.add_(z, alpha=-group["lr"] * float(projected_grad))
            if group["weight_decay"] != 0:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x
