"""Angle concentration of prompts (GAIN-RL, Wang et al. 2506.02281), batched and padding-safe.

For each sample, hidden states ``h`` (tokens x d) are taken at the input of the last
decoder block's MLP, i.e. the output of its post-attention norm
(``model.model.layers[-1].post_attention_layernorm`` for Llama,
``model.transformer.h[-1].ln_2`` for GPT-2; found by walking the module tree), or at
any module named with ``layer=``. ``x = normalize(h, dim=-1)`` (over features) and
``cos = x x^T``. With ``P`` the prompt tokens and ``T`` the template (system) tokens:

* ``intra`` = mean of ``cos[i, j]`` over distinct pairs ``i < j`` in ``P``
  (NaN when fewer than 2 prompt tokens);
* ``inter`` = mean of ``cos[i, j]`` over ``i`` in ``P``, ``j`` in ``T``
  (NaN when ``template_mask`` is None: then ``score = intra``);
* ``score`` = ``intra + inter_weight * inter`` (public code: ``inter_weight = 8``).

Segment masks are intersected with ``attention_mask``, so padding never counts, and the
means divide by the number of counted pairs (no zeros in the means); a mean with no pairs
(e.g. a sample without template tokens) is NaN, and so is that sample's score. Position ids are
derived from ``attention_mask`` (``cumsum - 1``), so a left-padded sample gets the same
hidden states as the unpadded one (up to float rounding). Higher score = more
concentrated; GAIN-RL trains on the highest scores first (see
:class:`workbench.data.sampler.GainSampler`).

``faithful=True`` reproduces, for comparison with published numbers, the quirks of the
public code as described in REFERENCE.md section 4 (our reading; the public code was not
run here): per sample, on the unpadded sequence, with ``[a, b)`` the span from the first
to the last prompt token and ``[c, d)`` that of the template tokens,
``intra = triu(cos[a:b][a:b], diagonal=1).mean()`` -- the chained slice cuts *rows*
twice (rows ``2a .. b-1``, all columns) and the zeros of the triangle mask are counted
in the mean; NaN when ``2a >= b`` leaves no rows -- and ``inter = cos[a:b, c:d].mean()``
over the whole rectangle (gaps in a segment counted; equal to the exact inter for
contiguous segments). Hard-coded token offsets, a hard-coded hook layer and normalisation
across tokens are not reproduced (the spans come from the masks; the layer is found by
structure; normalisation is over features).

Example::

    >>> import torch
    >>> from workbench.models import build_model
    >>> from workbench.data.angles import angle_concentration
    >>> model = build_model("tiny", seed=0)
    >>> ids = torch.randint(1, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    >>> template = torch.zeros(2, 12, dtype=torch.bool); template[:, :4] = True
    >>> out = angle_concentration(model, ids, prompt_mask=~template, template_mask=template)
    >>> sorted(out), tuple(out["score"].shape)
    (['inter', 'intra', 'score'], (2,))
    >>> bool(torch.allclose(out["score"], out["intra"] + 8.0 * out["inter"]))
    True
"""
from __future__ import annotations

import inspect
import math

import torch

__all__ = ["angle_concentration", "find_mlp_input_module"]

_NORM_NAMES = ("post_attention_layernorm", "ln_2", "post_attn_norm", "ffn_norm", "norm2")
_COS_BUDGET = 1 << 24  # elements of the [chunk, T, T] cosine tensor per chunk


class _Stop(Exception):
    """Raised by the hook to skip the rest of the forward pass."""


def find_mlp_input_module(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """``(name, module)`` of the last decoder block's post-attention norm (the MLP input).

    Looks for the last ``ModuleList`` of blocks that have an ``mlp`` child and, in its
    last block, a child named one of ``post_attention_layernorm`` (Llama), ``ln_2``
    (GPT-2), ``post_attn_norm``, ``ffn_norm``, ``norm2``.

    Example::

        >>> from workbench.models import build_model
        >>> find_mlp_input_module(build_model("gpt2-1m"))[0]
        'transformer.h.3.ln_2'
        >>> find_mlp_input_module(build_model("tiny"))[0]
        'model.layers.3.post_attention_layernorm'
    """
    found = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and hasattr(mod[-1], "mlp"):
            found = (name, mod)
    if found is not None:
        name, blocks = found
        last = len(blocks) - 1
        for child in _NORM_NAMES:
            if hasattr(blocks[last], child):
                return f"{name}.{last}.{child}", getattr(blocks[last], child)
    raise ValueError("could not find the last decoder block's post-attention norm (looked for a "
                     f"ModuleList of blocks with an 'mlp' child holding one of {_NORM_NAMES}); "
                     "pass layer='<module name>' (a name from model.named_modules())")


def _resolve_layer(model, layer):
    if layer is None:
        return find_mlp_input_module(model)[1]
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer={layer!r} is not a module of the model; pass a name from "
                         "model.named_modules(), e.g. 'model.layers.3.post_attention_layernorm'")
    return modules[layer]


def _bool_mask(name, mask, shape, device):
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of input_ids {tuple(shape)}, got "
                         f"{tuple(mask.shape)}")
    return mask.to(device=device).bool()


def _hidden(model, module, ids, attn):
    captured = {}

    def hook(_mod, _inp, out):
        captured["h"] = out[0] if isinstance(out, (tuple, list)) else out
        raise _Stop

    kwargs = {"input_ids": ids, "attention_mask": attn.long()}
    params = inspect.signature(model.forward).parameters
    if "position_ids" in params:
        kwargs["position_ids"] = (attn.long().cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    handle = module.register_forward_hook(hook)
    try:
        model(**kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in captured:
        raise ValueError("the hooked layer was not called during the forward pass; pass a "
                         "layer= that the model runs")
    return captured["h"]


def _masked_means(cos, p, t):
    eye = torch.eye(cos.shape[-1], dtype=torch.bool, device=cos.device)
    pair_pp = p[:, :, None] & p[:, None, :] & ~eye
    intra = (cos * pair_pp).sum((1, 2)) / pair_pp.sum((1, 2))  # NaN when < 2 prompt tokens
    if t is None:
        return intra, torch.full_like(intra, math.nan)
    pair_pt = p[:, :, None] & t[:, None, :]
    inter = (cos * pair_pt).sum((1, 2)) / pair_pt.sum((1, 2))
    return intra, inter


def _faithful(cos, attn, p, t):
    intra, inter = [], []
    for b in range(cos.shape[0]):
        idx = attn[b].nonzero().flatten()
        c = cos[b][idx][:, idx]
        pp = p[b][idx].nonzero().flatten()
        if len(pp) == 0:
            intra.append(math.nan); inter.append(math.nan)
            continue
        lo, hi = int(pp[0]), int(pp[-1]) + 1
        intra.append(torch.triu(c[lo:hi][lo:hi], diagonal=1).mean().item())  # quirks kept
        if t is None:
            inter.append(math.nan)
            continue
        tt = t[b][idx].nonzero().flatten()
        if len(tt) == 0:
            inter.append(math.nan)
            continue
        inter.append(c[lo:hi, int(tt[0]):int(tt[-1]) + 1].mean().item())
    kw = dict(dtype=cos.dtype, device=cos.device)
    return torch.tensor(intra, **kw), torch.tensor(inter, **kw)


def angle_concentration(model, input_ids, attention_mask=None, prompt_mask=None,
                        template_mask=None, inter_weight: float = 8.0, layer: str | None = None,
                        chunk_size: int | None = None, faithful: bool = False) -> dict:
    """Per-sample angle concentration: ``{"intra", "inter", "score"}``, float32 ``[batch]``.

    ``input_ids``: ``[batch, seq]``. ``attention_mask``: 1 for real tokens (default all),
    left or right padding. ``prompt_mask``: the question tokens (default: every attended
    token not in ``template_mask``). ``template_mask``: template/system tokens; None gives
    ``inter = NaN`` and ``score = intra``. Masks are intersected with ``attention_mask``;
    prompt and template must not overlap. ``layer``: module name to hook instead of the
    last post-attention norm. ``chunk_size``: samples per forward pass (default: as many
    as keep the ``[chunk, seq, seq]`` cosine tensor under 16M elements). Runs under
    ``torch.no_grad`` in eval mode (restored afterwards), on the model's device; the rest of
    the forward pass after the hooked layer is skipped. See the module docstring for the
    definitions and for ``faithful``.
    """
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)};"
                         " add a batch dimension with input_ids[None]")
    if not math.isfinite(float(inter_weight)):
        raise ValueError(f"inter_weight must be a finite number, got {inter_weight!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    device = next(model.parameters()).device
    shape = input_ids.shape
    ids = input_ids.to(device)
    attn = _bool_mask("attention_mask", attention_mask, shape, device)
    attn = torch.ones(shape, dtype=torch.bool, device=device) if attn is None else attn
    tmpl = _bool_mask("template_mask", template_mask, shape, device)
    prm = _bool_mask("prompt_mask", prompt_mask, shape, device)
    tmpl = None if tmpl is None else tmpl & attn
    if prm is None:
        prm = attn if tmpl is None else attn & ~tmpl
    prm = prm & attn
    if tmpl is not None and bool((prm & tmpl).any()):
        raise ValueError("prompt_mask and template_mask overlap; a token must be in at most one "
                         "segment (e.g. pass prompt_mask=~template_mask)")
    module = _resolve_layer(model, layer)
    if chunk_size is None:
        chunk_size = max(1, _COS_BUDGET // max(1, shape[1] * shape[1]))
    was_training = model.training
    model.eval()
    intra, inter = [], []
    try:
        with torch.no_grad():
            for s in range(0, shape[0], chunk_size):
                sl = slice(s, s + chunk_size)
                h = _hidden(model, module, ids[sl], attn[sl]).float()
                x = torch.nn.functional.normalize(h, dim=-1)
                cos = x @ x.transpose(1, 2)
                t = None if tmpl is None else tmpl[sl]
                fn = _faithful(cos, attn[sl], prm[sl], t) if faithful else \
                    _masked_means(cos, prm[sl], t)
                intra.append(fn[0]); inter.append(fn[1])
    finally:
        model.train(was_training)
    intra = torch.cat(intra).cpu() if intra else torch.zeros(0)
    inter = torch.cat(inter).cpu() if inter else torch.zeros(0)
    score = intra if tmpl is None else intra + float(inter_weight) * inter
    return {"intra": intra, "inter": inter, "score": score}
