"""Retraining after pruning: PERP (train only biases, norms and head) and MIGU gradient masking.

PERP (Zimmer et al. 2312.15230): after pruning, retrain only a tiny set of parameters (biases, norm weights,
the LM head; LoRA in the paper) to recover quality. :func:`perp_parameters` freezes everything else;
:func:`restore_masks` keeps pruned weights at zero during any retraining.

MIGU (Du et al. 2406.17245): per linear layer, accumulate the L1 magnitude of each output unit over the
forward pass and zero the gradient rows of units below a quantile (0.5) of that magnitude:
:class:`MiguHook`.

With the workbench trainer (it collects ``requires_grad`` parameters when built, so freeze first)::

    info = perp_parameters(model)                       # before Trainer(...)
    trainer = Trainer(cfg, model=model)
    trainer.subscribe(restore_masks(model, masks))      # runs after every optimizer step
    migu = MiguHook(model, quantile=0.5, optimizer=trainer.optimizer)  # masks grads before every step
    trainer.run(); migu.remove()

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    >>> perp_parameters(net, include=("norm",))["names"]
    ['1.weight', '1.bias']
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.sparsity.prune import _is_conv1d

__all__ = ["perp_parameters", "restore_masks", "MaskRestorer", "MiguHook"]

_KINDS = ("bias", "norm", "head")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or \
        "norm" in type(module).__name__.lower()


def perp_parameters(model: nn.Module, include=_KINDS) -> dict:
    """Set ``requires_grad`` only on the parameters of the kinds in ``include``; freeze the rest.

    Kinds: ``"bias"`` (every parameter named ``*bias``), ``"norm"`` (every parameter of a norm module:
    ``nn.LayerNorm`` or a class with "norm" in its name, e.g. ``LlamaRMSNorm``), ``"head"`` (the
    parameters of ``model.get_output_embeddings()``; a head tied to the input embedding trains that too).
    Returns ``{"names", "trainable", "total", "fraction"}`` (fraction of parameters left trainable).
    Call it before building the optimizer / ``Trainer``.
    """
    include = tuple(include)
    bad = [k for k in include if k not in _KINDS]
    if bad:
        raise ValueError(f"unknown include kinds {bad}; choose from {_KINDS}")
    chosen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if ("bias" in include and pname.endswith("bias")) or ("norm" in include and _is_norm(module)):
                chosen.add(id(p))
    if "head" in include:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ValueError("include has 'head' but the model has no get_output_embeddings(); drop 'head' "
                             "from include or unfreeze the head yourself")
        chosen.update(id(p) for p in head.parameters())
    names, trainable, total = [], 0, 0
    for name, p in model.named_parameters():
        on = id(p) in chosen
        p.requires_grad_(on)
        total += p.numel()
        if on:
            names.append(name)
            trainable += p.numel()
    return {"names": names, "trainable": trainable, "total": total,
            "fraction": trainable / total if total else 0.0}


class MaskRestorer:
    """Re-zeroes pruned weights; call it (``restorer()`` or as a trainer subscriber ``restorer(event)``),
    or ``attach(optimizer)`` to run after every ``optimizer.step()`` (returns the hook handle).

    ``masks``: module name -> bool mask (True = pruned), either weight-shaped (magnitude / Wanda, an
    ``(out, in)`` mask for ``nn.Linear``) or ``(in,)`` input-channel masks (FLAP; those columns are zeroed,
    for ``Conv1D`` the rows of its ``(in, out)`` weight).
    """

    def __init__(self, model: nn.Module, masks: dict):
        self.items = []
        for name, mask in masks.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"mask {name!r} names no module of this model; pass the masks returned by "
                                 "magnitude_prune / wanda_prune / flap_prune on this model") from None
            w = module.weight
            mask = mask.to(w.device, torch.bool)
            if mask.shape == w.shape:
                self.items.append((w, mask, None))
            elif mask.dim() == 1:
                dim = 0 if _is_conv1d(module) else 1
                if w.dim() != 2 or w.shape[dim] != mask.shape[0]:
                    raise ValueError(f"mask {name!r} of shape {list(mask.shape)} fits neither the weight "
                                     f"{list(w.shape)} nor its input channels")
                self.items.append((w, mask, dim))
            else:
                raise ValueError(f"mask {name!r} has shape {list(mask.shape)}, the weight {list(w.shape)}; "
                                 "masks must be weight-shaped or one entry per input channel")

    @torch.no_grad()
    def __call__(self, event=None) -> None:
        for w, mask, dim in self.items:
            if dim is None:
                w.masked_fill_(mask, 0)
            elif dim == 1:
                w[:, mask] = 0
            else:
                w[mask, :] = 0

    def attach(self, optimizer: torch.optim.Optimizer):
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self(None))


def restore_masks(model: nn.Module, masks: dict, optimizer: torch.optim.Optimizer | None = None) -> MaskRestorer:
    """A :class:`MaskRestorer` for ``masks``, applied once now; with ``optimizer`` it also runs after every
    ``optimizer.step()`` (its handle is ``.handle``). Pass it to ``Trainer.subscribe`` otherwise.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    >>> _ = restore_masks(net, {"0": torch.tensor([True, False])})
    >>> net[0].weight[:, 0].abs().sum().item()
    0.0
    """
    r = MaskRestorer(model, masks)
    r()
    r.handle = r.attach(optimizer) if optimizer is not None else None
    return r


class MiguHook:
    """MIGU gradient masking for every ``nn.Linear`` (and transformers ``Conv1D``) not named in ``skip``.

    At construction a forward hook is registered on each layer; while grad is enabled it adds
    ``|y|.sum()`` over all tokens to the layer's per-output-unit magnitude. :meth:`apply` (call it after
    ``backward()``, before ``optimizer.step()``) zeroes the gradient rows (weight rows and bias entries)
    of the units whose magnitude is strictly below ``torch.quantile(magnitude, quantile)`` and resets the
    magnitudes. With ``optimizer``, ``apply`` runs as its step pre-hook (so with the workbench
    ``Trainer``: ``MiguHook(trainer.raw_model, optimizer=trainer.optimizer)``; note the trainer clips and
    reports the gradient norm before the mask). :meth:`remove` removes all hooks. ``masks`` holds the
    last applied row masks (True = gradient zeroed).
    """

    def __init__(self, model: nn.Module, quantile: float = 0.5, skip=("lm_head",),
                 optimizer: torch.optim.Optimizer | None = None):
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
        self.quantile = float(quantile)
        self.modules = {n: m for n, m in model.named_modules()
                        if (isinstance(m, nn.Linear) or _is_conv1d(m)) and not any(s in n for s in skip)}
        if not self.modules:
            raise ValueError("the model has no nn.Linear / Conv1D outside skip; nothing to mask")
        self.magnitude: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        if optimizer is not None:
            self.handles.append(optimizer.register_step_pre_hook(self._pre_step))

    def _pre_step(self, optimizer, args, kwargs) -> None:
        self.apply()

    def _hook(self, name):
        def fn(module, args, out):
            if not torch.is_grad_enabled():
                return
            mag = out.detach().float().abs().reshape(-1, out.shape[-1]).sum(0)
            self.magnitude[name] = self.magnitude[name] + mag if name in self.magnitude else mag
        return fn

    @torch.no_grad()
    def apply(self) -> dict[str, torch.Tensor]:
        """Zero the gradient rows below the quantile; returns name -> (out,) mask; resets the magnitudes."""
        self.masks = {}
        for name, mag in self.magnitude.items():
            module = self.modules[name]
            mask = mag < torch.quantile(mag, self.quantile)
            w = module.weight
            if w.grad is not None:
                if _is_conv1d(module):
                    w.grad[:, mask] = 0
                else:
                    w.grad[mask] = 0
            if module.bias is not None and module.bias.grad is not None:
                module.bias.grad[mask] = 0
            self.masks[name] = mask
        self.magnitude = {}
        return self.masks

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
