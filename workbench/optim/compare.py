"""Build optimizers by name for a model, and compare several on the same run through the workbench trainer.

:func:`compare_optimizers` trains one fresh copy of the same model per optimizer, with the same
data order, schedule shape and seed, through :class:`workbench.train.Trainer`, and returns a
pandas DataFrame. Each optimizer keeps its own peak learning rate (the ``lr`` you give, else the
one it was built with); the schedule (``"cosine"``, ``"wsd"``, ...) scales it over the steps.
``ZeroOrderSGD`` cannot run through the trainer (it needs a closure instead of ``backward()``).

Example (about 10 s on a laptop CPU; skipped in the doctest run):
    >>> from workbench.optim import compare_optimizers
    >>> table = compare_optimizers({"AdamW": ("adamw", {"lr": 3e-3}),
    ...                             "APOLLO-Mini": ("apollo-mini", {"lr": 1e-2}),
    ...                             "APOLLO r=32": ("apollo", {"lr": 1e-2, "rank": 32})},
    ...                            steps=100, batch_size=8, seq_len=64)      # doctest: +SKIP
    >>> table[["final_val_loss", "step_time_ms", "state_bytes"]]             # doctest: +SKIP
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from .groups import lowrank_param_groups

__all__ = ["make_optimizer", "compare_optimizers", "OPTIMIZER_NAMES"]

OPTIMIZER_NAMES = ("adamw", "adam", "sgd", "apollo", "apollo-mini", "galore", "frugal", "lamb", "lion",
                   "zero-order")


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(spec: Any, model: torch.nn.Module, **kwargs) -> torch.optim.Optimizer:
    """An optimizer for ``model`` from a name, a class or a factory.

    Names: ``"adamw"``, ``"adam"``, ``"sgd"`` (the trainer's own: decay on matrices only, AdamW betas
    (0.9, 0.95)), ``"apollo"``, ``"apollo-mini"``, ``"galore"``, ``"frugal"`` (with
    :func:`lowrank_param_groups`: attention/MLP weights projected, the rest AdamW), ``"lamb"``,
    ``"lion"`` (decay on matrices only), ``"zero-order"``. ``kwargs`` go to the constructor
    (``weight_decay`` to the groups). A class is called with the same grouping (low-rank classes)
    or with ``model.parameters()``; a callable ``model -> optimizer`` is called as is.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        >>> opt = make_optimizer("apollo-mini", net, lr=1e-2)
        >>> type(opt).__name__, [g.get("lowrank", True) for g in opt.param_groups]
        ('ApolloMini', [True, False])
    """
    from . import Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, ZeroOrderSGD
    from ._base import ProjectedOptimizer

    if isinstance(spec, str):
        name = spec.lower().replace("_", "-")
        if name in ("adamw", "adam", "sgd"):
            from ..train import TrainConfig, build_optimizer

            wd = kwargs.pop("weight_decay", None)
            lr = kwargs.pop("lr", 1e-3)
            cfg = TrainConfig(optimizer=name, lr=lr, weight_decay=wd, optimizer_kwargs=kwargs)
            return build_optimizer(name, model, cfg)
        classes = {"apollo": Apollo, "apollo-mini": ApolloMini, "galore": GaLore, "frugal": Frugal,
                   "lamb": Lamb, "lion": Lion, "zero-order": ZeroOrderSGD}
        if name not in classes:
            raise ValueError(f"unknown optimizer {spec!r}; use one of {', '.join(OPTIMIZER_NAMES)}, "
                             "an optimizer class or a callable model -> optimizer")
        spec = classes[name]
    if isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer):
        if issubclass(spec, ProjectedOptimizer):
            return spec(lowrank_param_groups(model, weight_decay=kwargs.pop("weight_decay", 0.0)), **kwargs)
        if spec is ZeroOrderSGD:
            return spec(model.parameters(), **kwargs)
        if issubclass(spec, (Lamb, Lion)) or "weight_decay" in kwargs:
            wd = kwargs.pop("weight_decay", 0.01 if issubclass(spec, Lamb) else 0.0)
            return spec(_decay_groups(model, wd), **kwargs)
        return spec(model.parameters(), **kwargs)
    if callable(spec):
        if kwargs:
            raise ValueError("keyword arguments cannot be passed to a model -> optimizer callable; bind them in it")
        opt = spec(model)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"the optimizer factory returned {type(opt).__name__}, not a torch optimizer")
        return opt
    raise ValueError(f"cannot build an optimizer from {spec!r}: pass a name ({', '.join(OPTIMIZER_NAMES)}), "
                     "a class, a callable model -> optimizer, or (one of these, kwargs)")


def _split_spec(spec: Any) -> tuple[Any, dict]:
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"an optimizer given as a dict needs a 'name' key, got keys {sorted(spec)}")
        return spec.pop("name"), spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        return spec[0], dict(spec[1])
    return spec, {}


def compare_optimizers(optimizers: Mapping[str, Any], *, model: Any = "tiny", data: Any = "stdlib",
                       steps: int = 100, schedule: Any = "cosine", warmup_steps: int = 0, batch_size: int = 16,
                       seq_len: int = 128, max_tokens: int | None = 200_000, eval_interval: int = 0,
                       eval_batches: int = 10, target_val_loss: float | None = None, grad_clip: float | None = 1.0,
                       seed: int = 0, device: str = "auto", progress: bool = False,
                       callbacks: Any = None):
    """Train the same model with each optimizer and tabulate the results.

    ``optimizers``: label -> spec, where spec is a name or class (see :func:`make_optimizer`),
    ``(name_or_class, kwargs)``, ``{"name": ..., **kwargs}`` or a callable ``model -> optimizer``.
    ``model``: a preset name of :func:`workbench.models.build_model`, an ``nn.Module`` (deep-copied
    for every run) or a callable returning a fresh one. ``data``: a corpus name (train/val blocks
    loaded once with ``max_tokens``) or a ``[n, seq_len + 1]`` tensor of training blocks (then no
    validation loss). The other arguments are :class:`workbench.train.TrainConfig` fields shared by
    all runs. ``callbacks``: a function ``label -> list of subscribers`` called before each run, e.g.
    ``lambda label: [LiveTraining(title=label).update]`` for a live view per optimizer (shown by
    the caller), or ``None``.

    Returns a DataFrame indexed by label with columns ``optimizer, lr, final_train_loss,
    final_val_loss, best_val_loss, time_to_target_s, step_to_target, step_time_ms, tokens_per_s,
    state_bytes, state_bytes_per_param``; ``df.attrs["history"][label]`` holds each run's per-step
    events. ``step_time_ms`` is the whole training step (forward, backward, clipping, update).
    """
    import pandas as pd

    from ..data import get_tokenizer, load_blocks
    from ..train import ProgressBar, TrainConfig, Trainer
    from .memory import state_bytes

    if not optimizers:
        raise ValueError("optimizers must name at least one optimizer, e.g. {'AdamW': 'adamw'}")
    tok = get_tokenizer("byte")
    if isinstance(data, torch.Tensor):
        train_blocks, val_blocks = data, None
    else:
        train_blocks = load_blocks(data, split="train", block_size=seq_len, tokenizer=tok, max_tokens=max_tokens)
        val_blocks = load_blocks(data, split="val", block_size=seq_len, tokenizer=tok, max_tokens=max_tokens)

    def fresh_model() -> torch.nn.Module:
        if isinstance(model, str):
            from ..models import build_model

            return build_model(model, vocab_size=tok.vocab_size, seed=seed, max_seq_len=seq_len)
        if isinstance(model, torch.nn.Module):
            return copy.deepcopy(model)
        if callable(model):
            torch.manual_seed(seed)
            return model()
        raise ValueError(f"model must be a preset name, an nn.Module or a callable, got {type(model).__name__}")

    rows, history = {}, {}
    for label, entry in optimizers.items():
        spec, kwargs = _split_spec(entry)
        net = fresh_model().to(_device(device))   # before the optimizer: fused AdamW looks at the device
        opt = make_optimizer(spec, net, **kwargs)
        if getattr(opt, "requires_closure", False):
            raise ValueError(f"{label!r}: {type(opt).__name__} needs a closure (two forward passes, no backward) "
                             "and cannot run through the trainer; see help(workbench.optim.zero_order)")
        lr = float(kwargs.get("lr", opt.param_groups[0]["lr"]))
        cfg = TrainConfig(model=model if isinstance(model, str) else "<python: model>",
                          data=data if isinstance(data, str) else "<python: Tensor>",
                          steps=steps, schedule=schedule, lr=lr, warmup_steps=warmup_steps, batch_size=batch_size,
                          seq_len=seq_len, grad_clip=grad_clip, eval_interval=eval_interval,
                          eval_batches=eval_batches if val_blocks is not None else 0,
                          target_val_loss=target_val_loss, max_tokens=max_tokens, seed=seed, device=device,
                          progress=False, checkpoint_interval=0)
        subscribers = list(callbacks(label)) if callbacks is not None else []
        trainer = Trainer(cfg, model=net, train_data=train_blocks, val_data=val_blocks, optimizer=opt,
                          callbacks=subscribers)
        bar = trainer.subscribe(ProgressBar(trainer.stop_step, desc=label)) if progress else None  # named bars
        try:
            summary = trainer.run()
        finally:
            if bar is not None:
                bar.close()
        n_params = sum(p.numel() for p in net.parameters())
        sb = state_bytes(trainer.optimizer)
        rows[label] = {
            "optimizer": type(trainer.optimizer).__name__, "lr": lr,
            "final_train_loss": summary["final_train_loss"], "final_val_loss": summary["final_val_loss"],
            "best_val_loss": summary["best_val_loss"], "time_to_target_s": summary["time_to_target"],
            "step_to_target": summary["step_to_target"],
            "step_time_ms": 1e3 * summary["train_time"] / max(summary["steps"], 1),
            "tokens_per_s": summary["tokens_per_s"], "state_bytes": sb, "state_bytes_per_param": sb / n_params,
        }
        history[label] = list(trainer.history)
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.attrs["history"] = history
    return df


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

