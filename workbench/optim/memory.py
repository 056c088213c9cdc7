"""Optimizer memory: count what an optimizer holds, predict it before building anything.

* :func:`state_bytes` counts every byte an optimizer holds in tensors: ``optimizer.state`` (moments,
  step tensors, stored projectors, limiter norms) plus what the workbench optimizers keep outside
  it (cached projections and subspace indices, stacked bucket buffers), each storage once.
  Python ints (the step counters of the workbench optimizers) are not counted.
* :func:`estimate_state_bytes` predicts that number from parameter shapes alone (exactly, for every
  optimizer here except FRUGAL's ``"blocks"``, where it is the expectation), so a notebook can
  tabulate the memory of a LLaMA-7B without allocating it: :func:`llama_shapes` gives its
  parameter shapes, :func:`memory_table` the paper-style table.

Rules of thumb (REFERENCE section 3, fp32 state): AdamW 8 B per parameter, 8-bit Adam ~2 B,
Lion / SGD-momentum 4 B, signSGD and MeZO 0; a rank-``r`` projection of an ``m x n`` weight
(``m >= n``) keeps ``2 r m`` moment numbers plus ``r n`` for the projection.

Example:
    >>> from workbench.optim import estimate_state_bytes, llama_shapes
    >>> shapes = llama_shapes("7b")
    >>> sum(math.prod(s) for s in shapes.values())
    6738415616
    >>> round(estimate_state_bytes(shapes, "adamw") / 2**30, 1)           # GiB, fp32 moments
    50.2
    >>> mini = estimate_state_bytes(shapes, "apollo-mini")                   # embeddings/head: AdamW
    >>> lowrank = {k: v for k, v in shapes.items() if "layers" in k and len(v) == 2}
    >>> estimate_state_bytes(lowrank, "apollo-mini") / estimate_state_bytes(lowrank, "adamw") < 0.01
    True
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Mapping

import torch

from ._base import local
from .groups import is_lowrank_name, lowrank_parameter_names

__all__ = ["state_bytes", "estimate_state_bytes", "llama_shapes", "memory_table", "LLAMA_CONFIGS",
           "DEFAULT_TABLE_SPECS"]


# ---------------------------------------------------------------------- counting
def _walk(x, out: list, seen: set | None = None) -> None:
    """Collect the tensors in ``x``: inside mappings, sequences and the attributes of plain objects
    (e.g. a projector object that other libraries keep in the optimizer state)."""
    seen = set() if seen is None else seen
    if isinstance(x, torch.Tensor):
        out.append(x)
        return
    if id(x) in seen or isinstance(x, (str, bytes, int, float, bool, type, torch.nn.Module)) or x is None:
        return
    seen.add(id(x))
    if isinstance(x, Mapping):
        for v in x.values():
            _walk(v, out, seen)
    elif isinstance(x, (list, tuple, set)):
        for v in x:
            _walk(v, out, seen)
    elif hasattr(x, "__dict__"):
        for v in vars(x).values():
            _walk(v, out, seen)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds (state, cached projections, buffers), each storage once.

    With FSDP2 (DTensor parameters and state) this is the state held by this rank: its local shards
    plus whatever is replicated on every rank (e.g. APOLLO's moments of a wide weight, ``r x n``).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(10, 10))
        >>> opt = torch.optim.AdamW([w])
        >>> w.grad = torch.ones(10, 10); opt.step()
        >>> state_bytes(opt)                      # 2 x 100 fp32 moments + the 4-byte step tensor
        804
    """
    tensors: list = []
    _walk(list(optimizer.state.values()), tensors)
    extra = getattr(optimizer, "extra_state_tensors", None)
    if callable(extra):
        tensors.extend(extra())
    seen, total = set(), 0
    for t in tensors:
        t = local(t)                      # sharded (FSDP2) state: what this rank holds
        storage = t.untyped_storage()
        key = (storage.data_ptr(), str(t.device))
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


# ---------------------------------------------------------------------- shapes
#: LLaMA configurations (d, layers, heads, ffn, vocab): 7B as released, the small ones as in the
#: GaLore/APOLLO pre-training configs.
LLAMA_CONFIGS = {
    "60m": dict(d=512, layers=8, heads=8, ffn=1376, vocab=32000),
    "130m": dict(d=768, layers=12, heads=12, ffn=2048, vocab=32000),
    "350m": dict(d=1024, layers=24, heads=16, ffn=2736, vocab=32000),
    "1b": dict(d=2048, layers=24, heads=32, ffn=5461, vocab=32000),
    "7b": dict(d=4096, layers=32, heads=32, ffn=11008, vocab=32000),
}


def llama_shapes(size: str | None = "7b", *, d: int | None = None, layers: int | None = None,
                 ffn: int | None = None, vocab: int | None = None) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a LLaMA model (transformers naming, untied head), nothing allocated.

    ``size`` is one of ``LLAMA_CONFIGS`` ("7b": 32 layers, d 4096, ffn 11008, vocab 32000); the
    keyword arguments override it (``size=None`` needs all four).

    Example:
        >>> s = llama_shapes("7b")
        >>> s["model.layers.0.mlp.gate_proj.weight"], s["lm_head.weight"], len(s)
        ((11008, 4096), (32000, 4096), 291)
    """
    if size is not None:
        key = str(size).lower()
        if key not in LLAMA_CONFIGS:
            raise ValueError(f"size must be one of {', '.join(LLAMA_CONFIGS)} or None, got {size!r}")
        cfg = dict(LLAMA_CONFIGS[key])
    else:
        cfg = {}
    for name, value in (("d", d), ("layers", layers), ("ffn", ffn), ("vocab", vocab)):
        if value is not None:
            cfg[name] = value
        if isinstance(cfg.get(name), bool) or not isinstance(cfg.get(name), int) or cfg[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {cfg.get(name)!r}")
    D, F, V = cfg["d"], cfg["ffn"], cfg["vocab"]
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg["layers"]):
        pre = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[pre + f"self_attn.{proj}.weight"] = (D, D)
        shapes[pre + "mlp.gate_proj.weight"] = (F, D)
        shapes[pre + "mlp.up_proj.weight"] = (F, D)
        shapes[pre + "mlp.down_proj.weight"] = (D, F)
        shapes[pre + "input_layernorm.weight"] = (D,)
        shapes[pre + "post_attention_layernorm.weight"] = (D,)
    shapes["model.norm.weight"] = (D,)
    shapes["lm_head.weight"] = (V, D)
    return shapes


# ---------------------------------------------------------------------- per-parameter formulas
def _options(cls, given: dict) -> dict:
    sig = inspect.signature(cls.__init__)
    opts = {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("self", "params")}
    unknown = sorted(set(given) - set(opts))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; it takes {sorted(opts)}")
    opts.update(given)
    return opts


def _lowrank_bytes(cls_name: str, o: dict, shape: tuple, item: int) -> int:
    m, n = shape
    if cls_name in ("Apollo", "ApolloMini", "GaLore"):
        r = min(o["rank"], m, n)
        extra = 1 if cls_name != "GaLore" and o.get("norm_growth_limit") is not None else 0
        proj = r * min(m, n) if cls_name == "GaLore" or o["cache_projection"] else 0   # GaLore stores its P
        proj_item = getattr(torch, o["proj_dtype"]).itemsize if o.get("proj_dtype") else item
        return (2 * r * max(m, n) + extra) * item + proj * proj_item
    # Frugal
    kind, rho = o["proj_type"], o["rho"]
    from .frugal import Frugal

    if kind == "blocks":
        return round(rho * 2 * m * n * item)
    k = Frugal._subspace_size(shape, rho, kind)
    if kind == "random":
        return (2 * k * max(m, n) + k * min(m, n)) * item
    other = m if kind == "columns" else n
    return 2 * k * other * item + 8 * k


_SIMPLE = {  # name -> (state slots per parameter, extra bytes per parameter tensor, bytes/param override)
    "adamw": (2, 4, None), "adam": (2, 4, None), "sgd": (0, 0, None), "sgd-momentum": (1, 0, None),
    "momentum": (1, 0, None), "signsgd": (0, 0, None), "lion": (1, 0, None), "lamb": (2, 0, None),
    "zero-order": (0, 0, None), "mezo": (0, 0, None), "zo": (0, 0, None), "adam8bit": (0, 0, 2.0),
}


def _resolve(spec: Any):
    """-> ("simple", (slots, per_tensor, per_param)) or ("lowrank", cls_name, options)."""
    from . import Apollo, ApolloMini, Frugal, GaLore, Lamb, ZeroOrderSGD
    from .rule import RuleOptimizer

    lowrank = {"apollo": Apollo, "apollo-mini": ApolloMini, "galore": GaLore, "frugal": Frugal}
    options: dict = {}
    if isinstance(spec, Mapping):
        options = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name")
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        spec, options = spec[0], dict(spec[1])
    if isinstance(spec, str):
        key = spec.lower().replace("_", "-").replace(" ", "-")
        if key in lowrank:
            return ("lowrank", lowrank[key].__name__, _options(lowrank[key], options))
        if key in _SIMPLE:
            slots, per_tensor, per_param = _SIMPLE[key]
            if key in ("sgd",) and options.get("momentum", 0):
                slots = 1
            return ("simple", (slots, per_tensor, per_param))
        raise ValueError(f"unknown optimizer {spec!r}; use one of {sorted(set(lowrank) | set(_SIMPLE))}, "
                         "an optimizer class or a RuleOptimizer subclass")
    if isinstance(spec, type):
        for cls in (ApolloMini, Apollo, GaLore, Frugal):
            if issubclass(spec, cls):
                return ("lowrank", cls.__name__, _options(spec, options))
        if issubclass(spec, RuleOptimizer):
            return ("simple", (len(spec.state_names), 0, None))
        if issubclass(spec, (torch.optim.AdamW, torch.optim.Adam, Lamb)):
            return ("simple", (2, 0 if issubclass(spec, Lamb) else 4, None))
        if issubclass(spec, ZeroOrderSGD):
            return ("simple", (0, 0, None))
        if issubclass(spec, torch.optim.SGD):
            return ("simple", (1 if options.get("momentum", 0) else 0, 0, None))
    raise ValueError(f"cannot estimate the state of {spec!r}: pass a name, {{'name': ..., **options}}, "
                     "(name_or_class, options) or an optimizer class")


def _params(model_or_shapes, dtype):
    """-> [(name, shape, itemsize, projected_by_groups_rule)]"""
    if isinstance(model_or_shapes, torch.nn.Module):
        names = set(lowrank_parameter_names(model_or_shapes))
        return [(n, tuple(p.shape), (dtype or p.dtype).itemsize, n in names)
                for n, p in model_or_shapes.named_parameters() if p.requires_grad]
    item = (dtype or torch.float32).itemsize
    if isinstance(model_or_shapes, Mapping):
        return [(n, tuple(s), item, is_lowrank_name(n, s)) for n, s in model_or_shapes.items()]
    if isinstance(model_or_shapes, Iterable):
        out = []
        for i, s in enumerate(model_or_shapes):
            if isinstance(s, torch.Tensor):
                out.append((str(i), tuple(s.shape), (dtype or s.dtype).itemsize, s.dim() == 2))
            else:
                out.append((str(i), tuple(s), item, len(tuple(s)) == 2))
        return out
    raise ValueError(f"model_or_shapes must be an nn.Module, a dict name -> shape or a list of shapes/tensors, "
                     f"got {type(model_or_shapes).__name__}")


def estimate_state_bytes(model_or_shapes, spec, *, dtype: torch.dtype | None = None) -> int:
    """Predicted :func:`state_bytes` of optimizer ``spec`` over ``model_or_shapes`` after a step.

    ``model_or_shapes``: an ``nn.Module`` (projected weights chosen as by
    :func:`lowrank_param_groups`), a dict ``name -> shape`` (projected: 2-D and not an embedding
    or head, :func:`is_lowrank_name`) or a list of shapes / tensors (every 2-D one projected, as
    when a low-rank optimizer is given a plain parameter list). ``spec``: a name (``"adamw"``,
    ``"adam"``, ``"adam8bit"`` (~2 B per parameter, approximate), ``"sgd"``, ``"sgd-momentum"``,
    ``"signsgd"``, ``"lion"``, ``"lamb"``, ``"zero-order"``, ``"apollo"``, ``"apollo-mini"``,
    ``"galore"``, ``"frugal"``), ``{"name": ..., **options}``, ``(name_or_class, options)`` or an
    optimizer class (a :class:`RuleOptimizer` subclass counts one tensor per ``state_names``).
    ``dtype`` (the state's) defaults to the parameters' dtype, float32 for shapes.
    Non-projected parameters of a low-rank optimizer are counted as AdamW (two moments).
    """
    kind, *info = _resolve(spec)
    total = 0
    for _, shape, item, projected in _params(model_or_shapes, dtype):
        numel = math.prod(shape)
        if kind == "simple":
            slots, per_tensor, per_param = info[0]
            total += round(per_param * numel) if per_param is not None else slots * numel * item + per_tensor
            continue
        cls_name, opts = info
        rank_key = "rho" if cls_name == "Frugal" else "rank"
        if projected and opts.get(rank_key) is not None:
            total += _lowrank_bytes(cls_name, opts, shape, item)
        else:
            total += 2 * numel * item
    return int(total)


#: label -> spec of the default rows of :func:`memory_table` (GaLore at the rank its paper used for 7B).
DEFAULT_TABLE_SPECS = {
    "AdamW": "adamw",
    "Adam 8-bit (approx.)": "adam8bit",
    "Lion": "lion",
    "SGD + momentum": "sgd-momentum",
    "GaLore (r=1024)": {"name": "galore", "rank": 1024},
    "FRUGAL (rho=0.25)": {"name": "frugal", "rho": 0.25},
    "APOLLO (r=256)": {"name": "apollo", "rank": 256},
    "APOLLO-Mini (r=1)": "apollo-mini",
    "signSGD / MeZO": "signsgd",
}


def memory_table(model_or_shapes, specs: Mapping[str, Any] | None = None, *, dtype: torch.dtype | None = None):
    """A pandas DataFrame of estimated optimizer-state memory, one row per optimizer: ``state_bytes``,
    ``state_GiB``, ``bytes_per_param`` (over all parameters) and ``vs_adamw``.

    Example:
        >>> t = memory_table(llama_shapes("7b"))
        >>> float(t.loc["AdamW", "bytes_per_param"]), bool(t.loc["APOLLO-Mini (r=1)", "vs_adamw"] < 0.05)
        (8.0, True)
    """
    import pandas as pd

    specs = dict(DEFAULT_TABLE_SPECS if specs is None else specs)
    n_params = sum(math.prod(s) for _, s, _, _ in _params(model_or_shapes, dtype))
    adamw = estimate_state_bytes(model_or_shapes, "adamw", dtype=dtype)
    rows = {}
    for label, spec in specs.items():
        b = estimate_state_bytes(model_or_shapes, spec, dtype=dtype)
        rows[label] = {"state_bytes": b, "state_GiB": round(b / 2**30, 3),
                       "bytes_per_param": round(b / n_params, 3), "vs_adamw": round(b / adamw, 4)}
    return pd.DataFrame.from_dict(rows, orient="index")
