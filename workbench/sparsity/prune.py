"""Pruning scores and masks: magnitude ``|W_ij|``, Wanda ``|W_ij| * ||X_j||_2`` and FLAP fluctuation.

Wanda (Sun et al. 2306.11695) scores each weight by its magnitude times the L2 norm of its input channel
over calibration tokens, and prunes the lowest scores within each output row. Masks here are ``True`` where
a weight is pruned.

FLAP (An et al. 2312.11983) prunes whole input channels of the attention output and MLP down projections
(structured): see :func:`flap_prune`.

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
           "wanda_prune", "flap_scores", "flap_prune", "input_stats", "FLAP_TARGETS"]


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


# --------------------------------------------------------------------------------------------- FLAP
#: module-name suffixes FLAP prunes: Llama attention output / MLP down, GPT-2 attn.c_proj / mlp.c_proj
FLAP_TARGETS = ("o_proj", "down_proj", "attn.c_proj", "mlp.c_proj")
_ATTN_OUT = ("o_proj", "attn.c_proj")  # the attention output projections among them (heads on their input)


def _is_conv1d(m) -> bool:   # transformers' GPT-2 Conv1D: weight (in, out), y = x @ W + b
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _in_features(m) -> int:
    return m.weight.shape[0] if _is_conv1d(m) else m.in_features


def _weight_out_in(m) -> torch.Tensor:
    """The weight as an (out, in) view for ``nn.Linear`` and transformers ``Conv1D``."""
    return m.weight.t() if _is_conv1d(m) else m.weight


def _targets(model: nn.Module, targets) -> dict[str, nn.Module]:
    found = {name: m for name, m in model.named_modules()
             if (isinstance(m, nn.Linear) or _is_conv1d(m)) and any(name.endswith(t) for t in targets)}
    if not found:
        raise ValueError(f"no nn.Linear / Conv1D module name ends with any of {tuple(targets)}; pass "
                         "targets=(...) naming the attention output and MLP down projections of this model")
    return found


def _run(model, batches) -> int:
    n = 0
    for batch in batches:
        model(**batch) if isinstance(batch, dict) else model(batch)
        n += 1
    if n == 0:
        raise ValueError("batches is empty; pass at least one calibration batch")
    return n


@torch.no_grad()
def input_stats(model: nn.Module, batches, targets=FLAP_TARGETS) -> dict[str, dict]:
    """Per-input-channel mean and population variance (1/N) of the inputs of the ``targets`` modules.

    Streamed over tokens with forward pre-hooks (Chan et al.'s parallel update of count, mean and sum of
    squared deviations, float64), so no activation is stored. Returns name -> {"n", "mean", "var"}.
    """
    state: dict[str, list] = {}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().double().reshape(-1, _in_features(module))
            nb = x.shape[0]
            if nb == 0:
                return
            mb = x.mean(0)
            m2b = (x - mb).pow(2).sum(0)
            if name not in state:
                state[name] = [nb, mb, m2b]
                return
            na, ma, m2a = state[name]
            n = na + nb
            delta = mb - ma
            state[name] = [n, ma + delta * (nb / n), m2a + m2b + delta.pow(2) * (na * nb / n)]
        return fn

    mods = _targets(model, targets)
    for name, m in mods.items():
        hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        _run(model, batches)
    finally:
        for h in hooks:
            h.remove()
    missing = sorted(set(mods) - set(state))
    if missing:
        raise ValueError(f"modules {missing[:5]} saw no input on the calibration batches; pass batches that "
                         "run them or leave them out of targets")
    return {k: {"n": n, "mean": mean.float(), "var": (m2 / n).float()} for k, (n, mean, m2) in state.items()}


def flap_scores(weight: torch.Tensor, input_var: torch.Tensor) -> torch.Tensor:
    """FLAP fluctuation ``S_j = Var_n(X_nj) * ||W_:,j||^2``; ``weight`` is (out, in), returns (in,).

    >>> flap_scores(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([1.0, 0.5])).tolist()
    [1.0, 2.5]
    """
    if weight.dim() != 2 or input_var.shape != (weight.shape[1],):
        raise ValueError(f"flap_scores needs an (out, in) weight and an (in,) variance, got "
                         f"{list(weight.shape)} and {list(input_var.shape)}; collect the variance with "
                         "input_stats(model, batches)")
    return input_var.detach().float().to(weight.device) * weight.detach().float().pow(2).sum(0)


@torch.no_grad()
def flap_prune(model: nn.Module, calibration_batches, ratio: float, targets=FLAP_TARGETS,
               compensate: bool = True, structure: str = "channel",
               num_heads: int | None = None) -> dict[str, torch.Tensor]:
    """FLAP structured pruning in place; returns module name -> (in,) bool mask (True = channel pruned).

    1. ``input_stats`` on ``calibration_batches``; 2. ``S = flap_scores(W, var)`` per module;
    3. standardise per module, ``(S - S.mean()) / S.std()`` (torch's default, unbiased std; a module whose
    scores are all equal standardises to 0); 4. prune the ``floor(ratio * total channels)`` lowest
    standardised scores over all modules (one global threshold, ties broken by module order);
    5. bias compensation ``b += W (mean(X) * mask)`` so that an input equal to the calibration mean gives
    the same output as before, then zero the pruned input columns of ``W``.

    A module without a bias (Llama's ``Linear(bias=False)``) gets one: a zero-initialised ``nn.Parameter``
    is registered as its ``bias`` in place (``F.linear`` then adds it; the state dict gains
    ``<name>.bias``).

    ``structure="channel"`` (default) prunes input channels one by one. ``structure="head"`` prunes whole
    attention heads as in the paper: in the attention output modules (names ending with ``o_proj`` or
    ``attn.c_proj``) the input channels are grouped per head (``num_heads``, default
    ``model.config.num_attention_heads``; head ``h`` owns channels ``h*d .. (h+1)*d - 1``), a head's score is
    the sum of its channels' fluctuation scores, standardised over the heads of that module; MLP channels
    stay single units standardised per module; then one global threshold over all units: units are taken
    from the lowest standardised score up (ties by module order, then unit index) while the pruned channels
    stay within ``floor(ratio * total channels)``, stopping at the first that does not fit. A pruned head's
    ``d`` input columns are zeroed with the same bias compensation (its q/k/v rows become dead weight; they
    are left in place). Masks are per input channel either way.

    >>> from workbench.models import build_model
    >>> model = build_model("tiny", num_hidden_layers=1)
    >>> masks = flap_prune(model, [torch.randint(0, 256, (2, 16))], 0.2, structure="head")
    >>> m = masks["model.layers.0.self_attn.o_proj"].reshape(4, 32)   # 4 heads of 32 channels
    >>> bool((m.all(1) | ~m.any(1)).all())                            # whole heads or nothing
    True
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction of input channels to prune), got {ratio!r}")
    if structure not in ("channel", "head"):
        raise ValueError(f"structure must be 'channel' or 'head', got {structure!r}")
    stats = input_stats(model, calibration_batches, targets)
    mods = _targets(model, targets)
    names = list(mods)
    if structure == "head":
        heads = num_heads if num_heads is not None else getattr(getattr(model, "config", None),
                                                                 "num_attention_heads", None)
        if not isinstance(heads, int) or heads < 1:
            raise ValueError("structure='head' needs the number of attention heads: pass num_heads=... (the "
                             "model has no config.num_attention_heads)")
    # units: (module index, first channel, channel count); standardised per module
    units, zs = [], []
    for i, name in enumerate(names):
        s = flap_scores(_weight_out_in(mods[name]), stats[name]["var"]).double().cpu()
        size = 1
        if structure == "head" and name.endswith(_ATTN_OUT):
            if s.numel() % heads:
                raise ValueError(f"{name} has {s.numel()} input channels, not a multiple of num_heads={heads}; "
                                 "pass the right num_heads")
            size = s.numel() // heads
            s = s.reshape(heads, size).sum(1)
        sd = s.std() if s.numel() > 1 else s.new_zeros(())
        zs.append((s - s.mean()) / sd if sd > 0 else torch.zeros_like(s))
        units += [(i, j * size, size) for j in range(s.numel())]
    flat = torch.cat(zs)
    total = sum(_in_features(mods[n]) for n in names)
    budget = int(ratio * total)
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    used = 0
    for u in torch.argsort(flat, stable=True).tolist():
        if used + units[u][2] > budget:
            break
        pruned[u] = True
        used += units[u][2]
    chan = {name: torch.zeros(_in_features(mods[name]), dtype=torch.bool) for name in names}
    for u in torch.nonzero(pruned).flatten().tolist():
        i, first, size = units[u]
        chan[names[i]][first:first + size] = True
    masks = {}
    for name in names:
        m = mods[name]
        mask = chan[name].to(m.weight.device)
        w = _weight_out_in(m)
        if compensate and mask.any():
            mean = stats[name]["mean"].to(w.device, torch.float32)
            comp = (w.float() @ (mean * mask)).to(w.dtype)
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
            m.bias += comp
        w[:, mask] = 0
        masks[name] = mask
    return masks
