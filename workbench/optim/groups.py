"""Param groups for the low-rank optimizers: project attention/MLP weights, AdamW for the rest.

:func:`lowrank_param_groups` selects, by module type, the weights of ``nn.Linear`` layers and of
``transformers``' ``Conv1D`` (GPT-2's attention and MLP layers; their weight is stored
``[in, out]``, the transpose of ``nn.Linear``'s ``[out, in]``; the projected optimizers pick the
projected side from the shape alone, so no transpose is needed). Excluded: the output layer
(``model.get_output_embeddings()`` and modules named ``lm_head``), any weight shared with an
``nn.Embedding`` (tied heads), embeddings, norms and biases; these go to plain groups with
``lowrank=False``, which every low-rank optimizer here updates with plain AdamW.

Example:
    >>> import torch
    >>> from workbench.optim import Apollo, lowrank_param_groups
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    >>> groups = lowrank_param_groups(model, rank=4, weight_decay=0.1)
    >>> [(len(g["params"]), g.get("lowrank", True), g["weight_decay"]) for g in groups]
    [(1, True, 0.1), (1, False, 0.1), (3, False, 0.0)]
    >>> opt = Apollo(groups, lr=1e-2)
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["lowrank_param_groups", "lowrank_parameter_names", "is_lowrank_name"]

_HEAD_NAMES = {"lm_head", "embed_out", "output_projection"}
_EMBED_PARTS = ("embed", "wte", "wpe", "lm_head", "embed_out", "shared")


def _is_linear_like(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def lowrank_parameter_names(model: torch.nn.Module, target_modules: Iterable[str] | None = None) -> list[str]:
    """Names of the parameters :func:`lowrank_param_groups` projects (in ``model.named_parameters()`` order)."""
    targets = tuple(target_modules) if target_modules is not None else None
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = None
    if hasattr(model, "get_output_embeddings"):
        try:
            head = model.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            head = None
    excluded = set(embeddings)
    if head is not None and getattr(head, "weight", None) is not None:
        excluded.add(id(head.weight))
    chosen = set()
    for name, module in model.named_modules():
        if not _is_linear_like(module) or module.weight is None or module.weight.dim() != 2:
            continue
        if name.split(".")[-1] in _HEAD_NAMES or id(module.weight) in excluded:
            continue
        if targets is not None and not any(t in name for t in targets):
            continue
        chosen.add(id(module.weight))
    return [n for n, p in model.named_parameters() if id(p) in chosen]


def is_lowrank_name(name: str, shape) -> bool:
    """The name-based rule used when only names and shapes are known (e.g. :func:`llama_shapes`):
    2-D and not an embedding or output head (``embed``, ``wte``, ``wpe``, ``lm_head``, ``shared``)."""
    return len(tuple(shape)) == 2 and not any(part in name for part in _EMBED_PARTS)


def lowrank_param_groups(model: torch.nn.Module, *, weight_decay: float = 0.0,
                         target_modules: Iterable[str] | None = None, **lowrank_options) -> list[dict]:
    """Param groups: ``[low-rank weights (with lowrank_options), other matrices, 1-D params]``.

    ``weight_decay`` applies to the low-rank weights and the other matrices (embeddings, head);
    norms and biases get 0. ``target_modules`` (substrings of module names, e.g.
    ``("attn", "mlp")``) narrows the projected set. Empty groups are dropped; parameters with
    ``requires_grad=False`` are left out; shared (tied) parameters appear once.
    """
    names = set(lowrank_parameter_names(model, target_modules))
    low, mats, vecs, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (low if name in names else mats if p.dim() >= 2 else vecs).append(p)
    groups = [{"params": low, "weight_decay": weight_decay, **lowrank_options},
              {"params": mats, "weight_decay": weight_decay, "lowrank": False},
              {"params": vecs, "weight_decay": 0.0, "lowrank": False}]
    return [g for g in groups if g["params"]]
