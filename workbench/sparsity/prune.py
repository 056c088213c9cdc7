"""Pruning scores and masks: magnitude ``|W_ij|`` and Wanda ``|W_ij| * ||X_j||_2``.

Wanda (Sun et al. 2306.11695) scores each weight by its magnitude times the L2 norm of its input channel
over calibration tokens, and prunes the lowest scores within each output row. Masks here are ``True`` where
a weight is pruned.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -3.0, 2.0, 0.5]])
    >>> prune_mask(magnitude_scores(w), 0.5).tolist()
    [[True, False, False, True]]
    >>> prune_mask(wanda_scores(w, torch.tensor([10.0, 1.0, 1.0, 1.0])), 0.5).tolist()
    [[False, False, True, True]]
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["magnitude_scores", "wanda_scores", "prune_mask", "input_norms", "magnitude_prune",
           "wanda_prune"]


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` in float32."""
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2``; ``weight`` is (out, in), ``input_norm`` the (in,) norms of the inputs."""
    if weight.dim() != 2:
        raise ValueError(f"wanda_scores needs a 2-D (out, in) weight, got shape {list(weight.shape)}")
    if input_norm.shape != (weight.shape[1],):
        raise ValueError(f"input_norm must have shape ({weight.shape[1]},) (one norm per input channel), got "
                         f"{list(input_norm.shape)}; collect it with input_norms(model, batches)")
    return weight.detach().float().abs() * input_norm.detach().float().to(weight.device)[None, :]


def prune_mask(scores: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Boolean mask (True = pruned) of the ``floor(sparsity * n)`` lowest scores.

    ``per="row"``: within each output row (Wanda's comparison group, n = row length);
    ``per="tensor"``: over the whole tensor (n = numel).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    if per not in ("row", "tensor"):
        raise ValueError(f"per must be 'row' or 'tensor', got {per!r}")
    if per == "row":
        if scores.dim() != 2:
            raise ValueError(f"per='row' needs 2-D scores, got shape {list(scores.shape)}; use per='tensor'")
        flat = scores
    else:
        flat = scores.reshape(1, -1)
    k = int(sparsity * flat.shape[1])
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    if k:
        idx = torch.argsort(flat, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask.reshape(scores.shape)


def _linears(model: nn.Module, skip) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s in name for s in skip)}


@torch.no_grad()
def input_norms(model: nn.Module, batches, skip=("lm_head",)) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over all calibration tokens for the input of every ``nn.Linear`` (name -> (in,)).

    ``batches``: an iterable of model inputs (tensors, e.g. input_ids; dicts are passed as keyword args).
    """
    sums: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, module.in_features)
            sq = x.pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return fn

    for name, m in _linears(model, skip).items():
        hooks.append(m.register_forward_pre_hook(hook(name)))
    n = 0
    try:
        for batch in batches:
            model(**batch) if isinstance(batch, dict) else model(batch)
            n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError("batches is empty; pass at least one calibration batch")
    return {k: v.sqrt() for k, v in sums.items()}


@torch.no_grad()
def _apply(model, scores: dict, sparsity, per) -> dict[str, torch.Tensor]:
    masks = {}
    for name, (module, s) in scores.items():
        mask = prune_mask(s, sparsity, per)
        module.weight[mask] = 0
        masks[name] = mask
    return masks


def magnitude_prune(model: nn.Module, sparsity: float, per: str = "row",
                    skip=("lm_head",)) -> dict[str, torch.Tensor]:
    """Zero the lowest-``|W|`` fraction of every ``nn.Linear`` weight in place; returns name -> mask."""
    lin = _linears(model, skip)
    return _apply(model, {n: (m, magnitude_scores(m.weight)) for n, m in lin.items()}, sparsity, per)


def wanda_prune(model: nn.Module, batches, sparsity: float, skip=("lm_head",)) -> dict[str, torch.Tensor]:
    """Wanda: collect input norms on ``batches``, then prune each ``nn.Linear`` per output row in place."""
    norms = input_norms(model, batches, skip)
    lin = _linears(model, skip)
    missing = sorted(set(lin) - set(norms))
    if missing:
        raise ValueError(f"linear layers {missing[:5]} saw no input on the calibration batches; pass "
                         "batches that run them or add them to skip")
    return _apply(model, {n: (m, wanda_scores(m.weight, norms[n])) for n, m in lin.items()}, sparsity,
                  "row")
