"""Small causal language models from named presets, randomly initialised, fully offline.

Presets are Hugging Face ``transformers`` models (nothing is fetched from the hub):
Llama-style (``LlamaForCausalLM``: RMSNorm, RoPE, SwiGLU, no biases) and GPT-2-style
(``GPT2LMHeadModel``: LayerNorm, learned positions, GELU MLP, biases), at roughly 1M,
10M, 30M and 100M parameters. Defaults: byte vocabulary (256; pass ``vocab_size`` to
match a BPE tokenizer), 1024 positions, tied input/output embeddings, no dropout,
``attn_implementation="sdpa"``, ``eos_token_id = bos_token_id = 0`` (the separator of
both tokenizers in :mod:`workbench.data`). ``"tiny"`` is an alias of ``"llama-1m"``.

Parameter counts, measured at ``vocab_size=256`` (tied embeddings counted once):

==========  ======  ======  =====  ====  ===========
preset      d       layers  heads  ffn   parameters
==========  ======  ======  =====  ====  ===========
llama-1m    128     4       4      512   1,082,496
llama-10m   384     6       6      1024  10,720,128
llama-30m   512     10      8      1408  32,254,464
llama-100m  768     14      12     2048  99,309,312
gpt2-1m     128     4       4      512   957,184
gpt2-10m    384     6       6      1536  11,139,072
gpt2-30m    512     9       8      2048  29,027,840
gpt2-100m   768     14      12     3072  100,214,784
==========  ======  ======  =====  ====  ===========

(GPT-2 counts include the 1024 learned position embeddings: 0.13M to 0.79M.)
``tiny`` trains visibly on a laptop CPU: at batch 16 x 128 bytes of ``stdlib`` with
AdamW (lr 3e-3, no warmup) its loss falls from 5.4 to 3.0 in 25 steps and to 2.5 in 200
steps, at 0.13-0.28 s per step on 2 CPU cores (30-56 s for the 200 steps, measured on a
shared machine).

Note: ``model(input_ids=x, labels=...)`` shifts the labels by one inside the model;
with ``(x, y)`` from :class:`workbench.data.BlockLoader` (``y`` already shifted) compute
``cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())`` instead.

Example::

    >>> from workbench.models import build_model, count_parameters
    >>> model = build_model("tiny", seed=0)
    >>> count_parameters(model)
    1082496
    >>> import math, torch
    >>> ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    >>> loss = model(ids, labels=ids).loss.item()   # labels are shifted inside the model
    >>> abs(loss - math.log(256)) < 0.1              # about ln(256) = 5.55 at init
    True
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

_FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "gpt2": ("GPT2Config", "GPT2LMHeadModel")}
_LLAMA = dict(num_attention_heads=None, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False,
              attention_dropout=0.0, rope_theta=10000.0, initializer_range=0.02)
_GPT2 = dict(activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
             layer_norm_epsilon=1e-5, initializer_range=0.02)


def _llama(d, layers, heads, ffn, n_params):
    cfg = dict(_LLAMA, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=heads, intermediate_size=ffn)
    return {"family": "llama", "config": cfg, "n_params": n_params}


def _gpt2(d, layers, heads, n_params):
    cfg = dict(_GPT2, n_embd=d, n_layer=layers, n_head=heads, n_inner=None)
    return {"family": "gpt2", "config": cfg, "n_params": n_params}


#: name -> {"family", "config" (transformers config kwargs), "n_params" (measured, vocab 256)}
PRESETS: dict[str, dict] = {
    "llama-1m": _llama(128, 4, 4, 512, 1_082_496),
    "llama-10m": _llama(384, 6, 6, 1024, 10_720_128),
    "llama-30m": _llama(512, 10, 8, 1408, 32_254_464),
    "llama-100m": _llama(768, 14, 12, 2048, 99_309_312),
    "gpt2-1m": _gpt2(128, 4, 4, 957_184),
    "gpt2-10m": _gpt2(384, 6, 6, 11_139_072),
    "gpt2-30m": _gpt2(512, 9, 8, 29_027_840),
    "gpt2-100m": _gpt2(768, 14, 12, 100_214_784),
}
ALIASES = {"tiny": "llama-1m"}
DEFAULT_VOCAB_SIZE = 256
DEFAULT_MAX_SEQ_LEN = 1024


def list_presets() -> list[str]:
    """Preset names (aliases such as ``"tiny"`` are in :data:`ALIASES`)."""
    return list(PRESETS)


def _resolve(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets are {list_presets()} "
                         f"(aliases {ALIASES}), or pass a local directory holding a "
                         "transformers causal LM (config.json + weights)")
    return name


def _classes(family: str):
    import transformers

    cfg_name, model_name = _FAMILIES[family]
    return getattr(transformers, cfg_name), getattr(transformers, model_name)


def preset_config(name: str, vocab_size: int | None = None, max_seq_len: int | None = None,
                  **overrides):
    """The ``transformers`` config of a preset (``overrides`` are config fields).

    Example::

        >>> from workbench.models import preset_config
        >>> preset_config("gpt2-10m", vocab_size=4096).n_embd
        384
    """
    name = _resolve(name)
    preset = PRESETS[name]
    cfg_cls, _ = _classes(preset["family"])
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    max_seq_len = DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
    for what, v in (("vocab_size", vocab_size), ("max_seq_len", max_seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    defaults = cfg_cls()
    unknown = sorted(k for k in overrides if not hasattr(defaults, k))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for {cfg_cls.__name__} "
                         f"(preset {name!r}); check the spelling against {cfg_cls.__name__}()")
    kwargs = copy.deepcopy(preset["config"])
    pos_key = "max_position_embeddings" if preset["family"] == "llama" else "n_positions"
    kwargs.update(vocab_size=vocab_size, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    kwargs[pos_key] = max_seq_len
    kwargs.update(overrides)
    return cfg_cls(**kwargs)


def _from_config(config):
    from transformers import AutoModelForCausalLM

    try:
        return _causal_loss(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))
    except (ValueError, ImportError):  # architecture without SDPA support
        return _causal_loss(AutoModelForCausalLM.from_config(config))


def _causal_loss(model):
    """Name the loss of causal LMs whose class name transformers cannot map to one (``GPT2LMHeadModel``), which
    otherwise warns "`loss_type=None` was set in the config but it is unrecognized" at the first loss."""
    if getattr(model, "loss_type", "") is None:
        model.loss_type = "ForCausalLM"
    return model


def _is_model_dir(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and (Path(path) / "config.json").is_file()


def build_model(name_or_dir, vocab_size: int | None = None, seed: int = 0,
                max_seq_len: int | None = None, **overrides):
    """A causal LM: a preset with weights drawn from ``seed``, or a saved local model.

    ``name_or_dir``: a preset name (:func:`list_presets`, or ``"tiny"``) or a local
    directory with a ``transformers`` causal LM (``config.json`` + weights, e.g. from
    ``save_pretrained``), loaded with ``local_files_only=True``. ``vocab_size`` defaults
    to 256 (bytes); ``max_seq_len`` to 1024; ``overrides`` are config fields (e.g.
    ``num_hidden_layers=2``). The same ``seed`` gives identical weights whatever the
    global ``torch`` RNG state, which is left untouched.

    Example::

        >>> from workbench.models import build_model
        >>> a = build_model("gpt2-1m", seed=1); b = build_model("gpt2-1m", seed=1)
        >>> all(bool((p == q).all()) for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if _is_model_dir(name_or_dir):
        return _load_dir(Path(name_or_dir), vocab_size, seed, max_seq_len, overrides)
    is_name = isinstance(name_or_dir, str) and (name_or_dir in PRESETS or name_or_dir in ALIASES)
    if not is_name and isinstance(name_or_dir, (str, os.PathLike)) and (
            isinstance(name_or_dir, os.PathLike) or Path(name_or_dir).exists()):
        state = "has no config.json" if Path(name_or_dir).exists() else "does not exist"
        raise ValueError(f"model directory {str(name_or_dir)!r} {state}; save a model there with "
                         f"model.save_pretrained(dir) or pass a preset name {list_presets()}")
    if not isinstance(name_or_dir, str):
        raise ValueError(f"name_or_dir must be a preset name or a directory path, got "
                         f"{type(name_or_dir).__name__}")
    config = preset_config(name_or_dir, vocab_size, max_seq_len, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _from_config(config)
    return model


def _load_dir(path: Path, vocab_size, seed, max_seq_len, overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise ValueError(f"the model in {str(path)!r} has vocab_size={config.vocab_size}, not "
                         f"{vocab_size}; use the matching tokenizer or omit vocab_size")
    n_pos = getattr(config, "max_position_embeddings", getattr(config, "n_positions", None))
    if max_seq_len is not None and n_pos is not None and max_seq_len > n_pos:
        raise ValueError(f"max_seq_len={max_seq_len} exceeds the {n_pos} positions of the model "
                         f"in {str(path)!r}; use max_seq_len <= {n_pos}")
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for the model in {str(path)!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return _causal_loss(AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                                     attn_implementation="sdpa", **overrides))
        except (ValueError, ImportError):
            return _causal_loss(AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **overrides))


def tied_names(model_or_state) -> dict[str, str]:
    """Tied tensors: ``{alias: kept name}``, the kept name being the first of its group in ``state_dict`` order.

    ``model_or_state`` is an ``nn.Module`` (groups by parameter/buffer identity, so it works on the
    ``meta`` device too) or a state dict (groups entries that are the same view of one storage). The
    kept name is the one ``transformers``' ``save_pretrained`` keeps for tied input/output embeddings
    (e.g. ``model.embed_tokens.weight``, alias ``lm_head.weight``), so checkpoints written with it
    and the bundled pretrained model name their tensors alike.

    Example::

        >>> from workbench.models import build_model, tied_names
        >>> tied_names(build_model("tiny"))
        {'lm_head.weight': 'model.embed_tokens.weight'}
        >>> tied_names(build_model("tiny").state_dict())
        {'lm_head.weight': 'model.embed_tokens.weight'}
    """
    if isinstance(model_or_state, torch.nn.Module):
        pairs = list(model_or_state.named_parameters(remove_duplicate=False))
        pairs += list(model_or_state.named_buffers(remove_duplicate=False))
        order = {n: i for i, n in enumerate(model_or_state.state_dict(keep_vars=True))}
        pairs = sorted(((n, t) for n, t in pairs if n in order), key=lambda nt: order[nt[0]])
        keys = [(n, id(t)) for n, t in pairs]
    else:
        keys = [(n, (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                     t.dtype)) for n, t in model_or_state.items()
                if isinstance(t, torch.Tensor) and t.numel() and t.device.type != "meta"]
    first, out = {}, {}
    for name, key in keys:
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def count_parameters(model, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (tied weights once); optionally without embeddings.

    ``exclude_embeddings=True`` drops the input token and position embedding tables but
    keeps the output projection (a real matmul even when its weight is tied).

    Example::

        >>> import torch
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    total = sum(p.numel() for p in model.parameters())
    if not exclude_embeddings:
        return total
    emb = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = total - sum(w.numel() for w in emb.values())
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out is not None else None
    if head is not None and id(head.weight) in emb:
        n += head.weight.numel()
    return n


def _attn_width(config) -> tuple[int, int]:
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return int(layers), int(heads * head_dim)


def model_flops_per_token(model_or_config, seq_len: int) -> float:
    """Training FLOPs per token, PaLM-style: ``6 * N + 12 * n_layer * d_attn * seq_len``.

    ``N`` is :func:`count_parameters` with ``exclude_embeddings=True`` (embedding lookups
    cost no FLOPs, the output projection does); ``d_attn = n_heads * head_dim``. The
    attention term counts the full ``seq_len x seq_len`` score matrix (no causal
    discount), as in PaLM appendix B and nanoGPT. MFU = tokens/s * this / peak FLOP/s.
    Accepts a model, a ``transformers`` config or a preset name.

    Example::

        >>> from workbench.models import model_flops_per_token, build_model, count_parameters
        >>> m = build_model("tiny")
        >>> model_flops_per_token(m, 128) == 6 * count_parameters(m, True) + 12 * 4 * 128 * 128
        True
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(model_or_config, str):
        model_or_config = preset_config(model_or_config)
    if isinstance(model_or_config, torch.nn.Module):
        model, config = model_or_config, model_or_config.config
    else:
        config = model_or_config
        with torch.device("meta"):
            model = _from_config(config)
    layers, d_attn = _attn_width(config)
    return float(6 * count_parameters(model, exclude_embeddings=True) + 12 * layers * d_attn * seq_len)
