"""Pruning scores and masks: magnitude ``|W_ij|``, Wanda ``|W_ij| * ||X_j||_2`` and FLAP fluctuation.

Wanda (Sun et al. 2306.11695) scores each weight by its magnitude times the L2 norm of its input channel
over calibration tokens, and prunes the lowest scores within each output row. Masks here are ``True`` where
a weight is pruned.

FLAP (An et al. 2312.11983) prunes whole attention heads and MLP channels (structured), scored on the
inputs of the attention output and MLP down projections, with one global threshold over a parameter
budget: see :func:`flap_prune`.

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
           "wanda_prune", "blocks", "flap_scores", "flap_prune", "flap_units", "input_stats", "FLAP_TARGETS",
           "FLAP_STRUCTURES"]


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
    return _group_norms(model, list(batches), _linears(model, skip), None)


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


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of a model in order: the children of its largest ``nn.ModuleList`` (by
    parameter count), e.g. ``model.layers`` of Llama or ``transformer.h`` of GPT-2; ``[]`` if it has none.

    >>> from workbench.models import build_model
    >>> [n for n, _ in blocks(build_model("tiny", num_hidden_layers=2))]
    ['model.layers.0', 'model.layers.1']
    """
    best, size = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m):
            n = sum(p.numel() for p in m.parameters())
            if n > size:
                best, size = (name, m), n
    if best is None:
        return []
    prefix = best[0] + "." if best[0] else ""
    return [(f"{prefix}{i}", b) for i, b in enumerate(best[1])]


class _Stop(Exception):
    """Raised by a forward hook to end a calibration forward pass once a block has run."""


def wanda_prune(model: nn.Module, batches, sparsity: float, skip=("lm_head",),
                sequential: bool = True) -> dict[str, torch.Tensor]:
    """Wanda: prune each ``nn.Linear`` per output row in place by ``|W_ij| * ||X_j||_2``; returns name -> mask.

    ``sequential=True`` (default, the reference code's order): block by block (:func:`blocks`), the input
    norms of a block's linears are collected from a forward pass of the model whose earlier blocks are
    already pruned (the pass stops after that block), then that block is pruned; the pruned outputs feed
    the next block. Linears outside the blocks (other than ``skip``) come last, calibrated on the fully
    block-pruned model. A model without an ``nn.ModuleList`` of blocks is one block (= one-shot).
    ``sequential=False``: one-shot, every layer's norms from one pass of the unpruned model.
    ``batches`` is iterated once per block (a list is kept internally).

    >>> import torch
    >>> from workbench.models import build_model
    >>> model = build_model("tiny", num_hidden_layers=2)
    >>> masks = wanda_prune(model, [torch.randint(0, 256, (2, 16))], 0.5)
    >>> float(masks["model.layers.1.mlp.down_proj"].float().mean())
    0.5
    """
    batches = list(batches)
    lin = _linears(model, skip)
    groups: list[tuple[nn.Module | None, list[str]]] = []
    if sequential:
        for bname, block in blocks(model):
            names = [n for n in lin if n.startswith(bname + ".")]
            if names:
                groups.append((block, names))
    inside = {n for _, names in groups for n in names}
    rest = [n for n in lin if n not in inside]
    if rest:
        groups.append((None, rest))
    masks = {}
    for block, names in groups:
        norms = _group_norms(model, batches, {n: lin[n] for n in names}, block)
        missing = sorted(set(names) - set(norms))
        if missing:
            raise ValueError(f"linear layers {missing[:5]} saw no input on the calibration batches; pass "
                             "batches that run them or add them to skip")
        masks.update(_apply(model, {n: (lin[n], wanda_scores(lin[n].weight, norms[n])) for n in names},
                            sparsity, "row"))
    return masks


@torch.no_grad()
def _group_norms(model, batches, mods: dict, block) -> dict[str, torch.Tensor]:
    """Input norms of ``mods`` over ``batches``; with ``block``, each forward pass ends after it."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, module.in_features)
            sq = x.pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return fn

    def stop(*_):
        raise _Stop

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    if block is not None:
        hooks.append(block.register_forward_hook(stop))
    if not batches:
        raise ValueError("batches is empty; pass at least one calibration batch")
    try:
        for batch in batches:
            try:
                model(**batch) if isinstance(batch, dict) else model(batch)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


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


#: ``flap_prune(structure=...)``: "al-am" the official default, "head" and "channel" the earlier variants
FLAP_STRUCTURES = ("al-am", "head", "channel")


def _unit_params(model: nn.Module, name: str, units: int) -> int:
    """Parameters that removing one of ``units`` units of module ``name`` removes: the weights of every
    linear / Conv1D in its parent (attention: q, k, v, o; MLP: gate, up, down / fc, proj) over ``units``."""
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    total = sum(m.weight.numel() for m in parent.modules() if isinstance(m, nn.Linear) or _is_conv1d(m))
    return total // units


def _num_heads(model, num_heads):
    heads = num_heads if num_heads is not None else getattr(getattr(model, "config", None),
                                                             "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise ValueError("FLAP head pruning needs the number of attention heads: pass num_heads=... (the model "
                         "has no config.num_attention_heads)")
    return heads


def flap_units(model: nn.Module, stats: dict, targets=FLAP_TARGETS, structure: str = "al-am",
               num_heads: int | None = None) -> list[dict]:
    """FLAP's pruning units with their standardised scores, one dict per unit, in module order:
    ``{"module", "first", "size", "score", "params"}`` (``size`` input channels from ``first``; ``params``
    the parameters removing the unit removes, used by the ``"al-am"`` budget).

    ``structure="al-am"`` (the official code's default mode, ``lib/prune.py``): in an attention output module
    the fluctuation ``S_j`` is squared, standardised over the module's channels (``(x - mean) / std``, unbiased
    std), and a head's score is the mean of its channels' standardised scores; MLP down channels are
    standardised per module, unsquared. ``"head"``: a head's score is the sum of its channels' raw ``S_j``,
    standardised over the heads of the module. ``"channel"``: every input channel a unit, standardised per
    module. A module whose values are all equal standardises to 0.
    """
    if structure not in FLAP_STRUCTURES:
        raise ValueError(f"structure must be one of {FLAP_STRUCTURES}, got {structure!r}")
    mods = _targets(model, targets)
    heads = _num_heads(model, num_heads) if structure != "channel" else None
    out = []
    for name, m in mods.items():
        s = flap_scores(_weight_out_in(m), stats[name]["var"]).double().cpu()
        n = s.numel()
        attn = structure != "channel" and name.endswith(_ATTN_OUT)
        if attn and n % heads:
            raise ValueError(f"{name} has {n} input channels, not a multiple of num_heads={heads}; pass the "
                             "right num_heads")
        size = n // heads if attn else 1
        if structure == "al-am" and attn:
            s = _standardise(s.pow(2)).reshape(heads, size).mean(1)
        elif structure == "head" and attn:
            s = _standardise(s.reshape(heads, size).sum(1))
        else:
            s = _standardise(s)
        params = _unit_params(model, name, s.numel())
        out += [{"module": name, "first": j * size, "size": size, "score": float(s[j]), "params": params}
                for j in range(s.numel())]
    return out


def _standardise(x: torch.Tensor) -> torch.Tensor:
    sd = x.std() if x.numel() > 1 else x.new_zeros(())
    return (x - x.mean()) / sd if sd > 0 else torch.zeros_like(x)


def _select_al_am(units: list[dict], ratio: float) -> list[bool]:
    """The official AL-AM threshold: units sorted by score, descending; ``k`` = the position where the
    cumulative parameter count is closest to ``(1 - ratio) * total`` (the first such); every unit scoring
    at or below ``score[k]`` is pruned. ``ratio == 0`` prunes nothing (the official rule would still prune
    the lowest unit)."""
    if ratio == 0 or not units:
        return [False] * len(units)
    score = torch.tensor([u["score"] for u in units], dtype=torch.float64)
    params = torch.tensor([u["params"] for u in units], dtype=torch.float64)
    order = torch.argsort(score, descending=True, stable=True)
    kept = torch.cumsum(params[order], 0)
    k = int(torch.argmin((kept - params.sum() * (1 - ratio)).abs()))
    thr = score[order[k]]
    return (score <= thr).tolist()


def _select_channels(units: list[dict], ratio: float, total: int) -> list[bool]:
    """The ``"head"`` / ``"channel"`` budget: units from the lowest score up (ties by module order, then unit
    index) while the pruned channels stay within ``floor(ratio * total)``, stopping at the first that
    does not fit."""
    score = torch.tensor([u["score"] for u in units], dtype=torch.float64)
    budget, used, pruned = int(ratio * total), 0, [False] * len(units)
    for u in torch.argsort(score, stable=True).tolist():
        if used + units[u]["size"] > budget:
            break
        pruned[u] = True
        used += units[u]["size"]
    return pruned


@torch.no_grad()
def flap_prune(model: nn.Module, calibration_batches, ratio: float, targets=FLAP_TARGETS,
               compensate: bool = True, structure: str = "al-am",
               num_heads: int | None = None) -> dict[str, torch.Tensor]:
    """FLAP structured pruning in place; returns module name -> (in,) bool mask (True = channel pruned).

    1. ``input_stats`` on ``calibration_batches`` (per-channel mean and variance of the inputs of the
    attention output and MLP down projections); 2. ``S_j = flap_scores(W, var)`` per module; 3. units and
    standardised scores by :func:`flap_units`; 4. one global threshold; 5. bias compensation
    ``b += W (mean(X) * mask)`` so that an input equal to the calibration mean gives the same output as
    before, then the pruned input columns of ``W`` are zeroed.

    ``structure="al-am"`` (default: the official code's adaptive structure, CASIA-IVA-Lab/FLAP
    ``lib/prune.py``): units are whole attention heads (``num_heads``, default
    ``model.config.num_attention_heads``; head ``h`` owns channels ``h*d .. (h+1)*d - 1``; a single attention
    channel is never pruned) and single MLP channels; a head's score is the mean of its channels'
    standardised squared fluctuation. ``ratio`` is a fraction of *parameters*: every unit weighs the
    parameters its removal removes (a head: its share of q, k, v, o; an MLP channel: its row of gate and up
    and column of down), units are kept from the highest score down until the kept parameters are closest
    to ``(1 - ratio)`` of the total, and the rest are pruned (the official threshold rule, see
    ``_select_al_am``; ``ratio=0`` prunes nothing). The inputs' variance is the population variance over
    all calibration tokens (the official streaming estimator leaves out the first sample's spread; that
    is not reproduced).

    ``structure="head"`` and ``"channel"`` (the earlier variants): ``ratio`` is a fraction of *input
    channels* (``floor(ratio * total channels)`` at most); ``"head"`` scores a head by the sum of its raw
    channel scores standardised over heads, ``"channel"`` prunes single channels everywhere (attention
    included); units are taken from the lowest standardised score up (ties by module order, then unit
    index), stopping at the first that does not fit.

    A module without a bias (Llama's ``Linear(bias=False)``) gets one: a zero-initialised ``nn.Parameter``
    is registered as its ``bias`` in place (the state dict gains ``<name>.bias``). A pruned head's q/k/v
    rows and a pruned MLP channel's gate/up rows become dead weight: left in place, as the official
    ``unstr`` mode leaves the shapes. Masks are per input channel.

    >>> from workbench.models import build_model
    >>> model = build_model("tiny", num_hidden_layers=1)
    >>> masks = flap_prune(model, [torch.randint(0, 256, (2, 16))], 0.2)
    >>> m = masks["model.layers.0.self_attn.o_proj"].reshape(4, 32)   # 4 heads of 32 channels
    >>> bool((m.all(1) | ~m.any(1)).all())                            # whole heads or nothing
    True
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (the fraction to prune), got {ratio!r}")
    if structure not in FLAP_STRUCTURES:
        raise ValueError(f"structure must be one of {FLAP_STRUCTURES}, got {structure!r}")
    if structure != "channel":
        _num_heads(model, num_heads)                          # fail before the calibration pass
    stats = input_stats(model, calibration_batches, targets)
    mods = _targets(model, targets)
    units = flap_units(model, stats, targets, structure, num_heads)
    if structure == "al-am":
        pruned = _select_al_am(units, ratio)
    else:
        pruned = _select_channels(units, ratio, sum(_in_features(m) for m in mods.values()))
    chan = {name: torch.zeros(_in_features(m), dtype=torch.bool) for name, m in mods.items()}
    for u, p in zip(units, pruned):
        if p:
            chan[u["module"]][u["first"]:u["first"] + u["size"]] = True
    masks = {}
    for name, m in mods.items():
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
