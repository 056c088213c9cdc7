"""The trainer: one readable loop from a model, data, an optimizer and a Schedule to a run.

A run is configured by a :class:`TrainConfig` and lives in a run directory:

* ``config.json``      - the configuration (the schedule as its ``to_dict()``), enough to resume;
* ``log.jsonl``        - one JSON line per optimizer step, appended and flushed as it goes;
* ``checkpoints/step-N/`` - the last checkpoint, written as one unit (see :mod:`workbench.checkpoint`),
  and ``model.safetensors``, an export of its weights for readers;
* ``.lock``            - held by the one process training in it (see :mod:`workbench.runlock`);
* ``summary.json``     - final/best losses, time to target, throughput (written at the end).

Step convention: the event (and log line) with ``"step": t`` is emitted after the (t+1)-th
``optimizer.step()``; its ``lr`` is the LR that update used (``schedule(t)``), its ``loss`` the
training loss of the batch that produced it, and ``val_loss`` (present at evaluation steps) the
held-out loss of the model after those t+1 updates. Evaluation runs after every step with
``(t + 1) % eval_interval == 0`` and after the last step, on the first ``eval_batches`` global
batches of the val split (the same rows whatever the number of ranks or micro-steps). A resumed
run appends to the same log and repeats the steps logged after its last checkpoint; readers keep
the last line per step (:func:`workbench.runlog.read_run_log` with ``dedupe=True``).

Event keys: ``step, tokens, lr, loss, grad_norm, update_norm, tokens_per_s, peak_mem, time`` and
``val_loss`` at evaluation steps. With several validation sets (``val_data={domain: blocks}``)
an evaluation also logs ``val_losses: {domain: loss}`` (every domain, each on its first
``eval_batches`` global batches), and ``val_loss`` is the loss of the primary domain
``config.val_domain`` (default: the dict's first key), which also drives ``best_val_loss`` and
``target_val_loss``. ``grad_norm`` is the global L2 norm before clipping,
``update_norm`` is ``||theta_after - theta_before||`` (None with ``track_update_norm=False``),
``time`` the train wall-clock in seconds (evaluation, checkpointing and pauses excluded; it
carries over a resume), ``tokens`` the tokens seen by all ranks, ``peak_mem`` bytes (CUDA max
allocated, else the process's peak RSS), ``tokens_per_s`` this step's throughput.

Checkpoints: every ``checkpoint_interval`` steps (default: a tenth of the run, at most 500),
every ``checkpoint_minutes`` of wall time (default 10), at the end, when stopped, on SIGINT/SIGTERM
(the run finishes its step, checkpoints, writes its summary with status ``"interrupted"``) and
before raising :class:`TrainingDiverged`. A ``kill -9`` at any instant leaves the previous
checkpoint intact; ``resume`` cleans up what the kill left. A second trainer on the same run
directory is refused with an error naming the PID that holds it (:class:`workbench.runlock.RunLocked`).

Subscribers (callables taking the event dict) are called after each step; a subscriber that
raises is removed with a warning, the run goes on. ``stop_event`` (a ``threading.Event``) ends the
run after the current step with a checkpoint; ``pause_event`` holds it between steps. That is
how a notebook trains in a background thread under a live widget. ``Trainer.iter_run()`` is the
loop as a generator, for driving a run step by step. A NaN/inf loss or gradient norm raises
:class:`TrainingDiverged` before the update is applied, after checkpointing the last good step.

Training data: blocks ``[n, seq_len+1]``, a ``BlockLoader``, or any batch source with
``__next__`` (yielding ``(x, y)``), ``state_dict``/``load_state_dict`` and ``batch_size`` (e.g.
:class:`workbench.data.ReplayLoader`, :class:`workbench.data.DomainMix`); a source is checkpointed
and resumed like a ``BlockLoader`` (its ``state_dict()`` goes into ``state.pt``).

Meta-experience replay (Abbes et al. 2508.01908, Reptile-style): with ``mer_interval=k > 0``,
after every k-th update the weights are pulled back toward the anchor taken k updates earlier,
``theta = theta_before + mer_beta * (theta_after - theta_before)``, and the result is the next
anchor (optimizer moments are left alone). The public code uses k 500 and beta 0.01. The anchor
is part of the checkpoint, so a resumed run interpolates exactly as an uninterrupted one.

Multi-GPU: run the same script under ``torchrun``; WORLD_SIZE/RANK/LOCAL_RANK select DDP
(nccl on CUDA, gloo on CPU), every rank reads its slice of each global batch, and only rank 0
writes files, calls subscribers and draws the progress bar. ``batch_size`` is per rank.
``parallel="fsdp"`` shards the model with FSDP2 instead (:mod:`workbench.distributed`: each block
and the root ``fully_shard``-ed, bf16 compute with fp32 gradient reduction on CUDA, optional
``activation_checkpointing``, ``compile`` per block): parameters, gradients and optimizer state
are split over the ranks, and each checkpoint directory ``checkpoints/step-N`` holds every rank's
DCP shards, ``state.pt`` and the gathered ``model.safetensors`` (exported to the run's root).
Such a run resumes on any number of processes (``grad_accum`` is rescaled to keep the global
batch); with one process FSDP runs on a one-rank process group.
``stop_event``/``pause_event`` are for single-process runs (a notebook); a DDP run stops at
``steps`` or when killed, and resumes from its checkpoint (a shared run directory for multi-node).

Example:
    >>> from workbench.train import TrainConfig, train
    >>> cfg = TrainConfig(model="tiny", data="stdlib", steps=3, lr=3e-3, batch_size=2, seq_len=16,
    ...                   max_tokens=4000, eval_batches=1, progress=False)
    >>> summary = train(cfg)          # no run_dir: nothing is written
    >>> summary["status"], summary["steps"], summary["tokens"]
    ('completed', 3, 96)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import interrupts
from .runlock import RunLock
from .runlog import RunLog, read_json, write_json_atomic
from .sinks import open_sinks, parse_log_targets

try:
    import resource
except ImportError:   # Windows: no resource module; peak_mem is then reported for CUDA only
    resource = None

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "train", "resume", "load_config",
           "build_optimizer", "resolve_schedule", "run_summary", "status_text", "ProgressBar", "EVENT_KEYS"]

EVENT_KEYS = ("step", "tokens", "lr", "loss", "grad_norm", "update_norm", "tokens_per_s", "peak_mem", "time")
CONFIG_FILE, LOG_FILE, SUMMARY_FILE = "config.json", "log.jsonl", "summary.json"
_TORCH_OPTIMIZERS = ("adamw", "adam", "sgd")
#: the workbench.optim optimizers the trainer builds by name (with lowrank_param_groups where they project)
_WORKBENCH_OPTIMIZERS = ("apollo", "apollo-mini", "galore", "frugal", "lamb", "lion")
_OPTIMIZERS = _TORCH_OPTIMIZERS + _WORKBENCH_OPTIMIZERS
_CLOSURE_OPTIMIZERS = ("zero-order", "zo", "mezo", "zeroordersgd")   # need a closure: not trainable here
_now = time.monotonic         # the wall clock of checkpoint_minutes (tests replace it)


def _optimizer_name(spec: str) -> str:
    """``"Apollo_Mini"`` -> ``"apollo-mini"``; raises ValueError for unknown or closure-only names."""
    name = str(spec).lower().replace("_", "-").replace(" ", "-")
    if name in _CLOSURE_OPTIMIZERS:
        raise ValueError(f"optimizer {spec!r} (ZeroOrderSGD, MeZO) needs a closure - two forward passes and no "
                         "backward() - so it cannot run through the trainer; drive it with your own loop "
                         "(see help(workbench.optim.zero_order)) or use one of " + ", ".join(_OPTIMIZERS))
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; use one of {', '.join(_OPTIMIZERS)}, "
                         "or pass a callable params -> optimizer or an optimizer instance")
    return name


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last good step was checkpointed."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run directory).

    ``schedule`` is a family name (then ``lr`` is the peak, ``steps`` the horizon and
    ``warmup_steps``/``schedule_kwargs`` go to ``schedules.make``), a ``Schedule``, or its
    ``to_dict()``; a given schedule's ``total_steps`` is the horizon and ``steps`` (default: the
    horizon) only where this run stops, so a run can be cut short and resumed.
    ``batch_size`` is per rank and per micro-step: a step sees
    ``batch_size * grad_accum * world_size`` sequences of ``seq_len`` tokens.

    Example:
        >>> cfg = TrainConfig(model="tiny", steps=100, schedule="cosine", lr=1e-3, warmup_steps=10)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    model: str = "tiny"
    data: Any = "stdlib"
    tokenizer: str = "byte"
    run_dir: str | None = None
    steps: int | None = None
    schedule: Any = "cosine"
    lr: float = 3e-3
    warmup_steps: int = 0
    schedule_kwargs: dict = field(default_factory=dict)
    optimizer: Any = "adamw"
    weight_decay: float | None = None      # None: 0.1 for adamw, 0.01 for lamb, 0 otherwise (matrices only)
    optimizer_kwargs: dict = field(default_factory=dict)
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    eval_interval: int = 100               # 0: evaluate only after the last step
    eval_batches: int = 20                 # global batches of val data per evaluation; 0: no evaluation
    checkpoint_interval: int | None = None  # None: a tenth of the run, at most 500; 0: only by time/at the end
    checkpoint_minutes: float | None = 10.0  # also checkpoint after this much wall time; 0/None: off
    target_val_loss: float | None = None
    max_tokens: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"                    # "auto" = bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False                  # fsdp: each block compiled before sharding
    parallel: str = "auto"                 # "auto" (DDP under torchrun), "none", "ddp" or "fsdp" (FSDP2)
    activation_checkpointing: bool = False  # fsdp: recompute each block's activations in backward
    track_update_norm: bool = True         # False skips the per-step copy of the weights (update_norm None)
    progress: bool = True
    val_domain: str | None = None          # with val_data={domain: blocks}: the domain of val_loss (None: first)
    mer_interval: int = 0                  # meta-experience replay every k updates; 0: off
    mer_beta: float = 0.01                 # MER interpolation factor (public code: k=500, beta=0.01)
    log: Any = ()                          # extra sinks next to log.jsonl: "tensorboard,wandb" (workbench.sinks)

    def __post_init__(self):
        self.log = list(parse_log_targets(self.log))

        def positive_int(name, value, low=1):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        for name in ("batch_size", "seq_len", "grad_accum"):
            positive_int(name, getattr(self, name))
        for name in ("eval_interval", "eval_batches", "warmup_steps", "seed", "mer_interval"):
            positive_int(name, getattr(self, name), low=0)
        if self.checkpoint_interval is not None:
            positive_int("checkpoint_interval", self.checkpoint_interval, low=0)
        m = self.checkpoint_minutes
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m >= 0
                              or not math.isfinite(m)):
            raise ValueError(f"checkpoint_minutes must be a number of minutes >= 0 (0 or None: off), got {m!r}")
        if self.steps is not None:
            positive_int("steps", self.steps)
        if not (isinstance(self.lr, (int, float)) and self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if self.grad_clip is not None and not (self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0 or None (no clipping), got {self.grad_clip!r}")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"parallel must be 'auto', 'none', 'ddp' or 'fsdp', got {self.parallel!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(f"activation_checkpointing must be True or False, got {self.activation_checkpointing!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be 'auto', 'bf16' or 'fp32', got {self.dtype!r}")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        if isinstance(self.optimizer, str):
            _optimizer_name(self.optimizer)
        if not isinstance(self.optimizer_kwargs, dict):
            raise ValueError(f"optimizer_kwargs must be a dict, got {type(self.optimizer_kwargs).__name__}")
        if not (isinstance(self.mer_beta, (int, float)) and not isinstance(self.mer_beta, bool)
                and 0.0 < self.mer_beta <= 1.0):
            raise ValueError(f"mer_beta must be a number in (0, 1] (1 = no interpolation), got {self.mer_beta!r}")
        if self.val_domain is not None and not isinstance(self.val_domain, str):
            raise ValueError(f"val_domain must be a domain name (a key of val_data) or None, got {self.val_domain!r}")
        if self.target_val_loss is not None and not math.isfinite(self.target_val_loss):
            raise ValueError(f"target_val_loss must be a finite number or None, got {self.target_val_loss!r}")

    def to_dict(self) -> dict:
        """JSON-safe dict; Python objects (a model, a callable optimizer) become ``"<python: Type>"``."""
        from .schedules import Schedule

        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Schedule):
                v = v.to_dict()
            elif not isinstance(v, (str, int, float, bool, dict, list, type(None))):
                v = f"<python: {type(v).__name__}>"
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The ``TrainConfig`` saved in a run directory's ``config.json``."""
    path = os.path.join(os.fspath(run_dir), CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist: {run_dir!r} is not a workbench run directory")
    return TrainConfig.from_dict(read_json(path))


def resolve_schedule(config: TrainConfig):
    """The run's ``Schedule``: from a family name (+ lr, steps, warmup_steps), a dict or a Schedule."""
    from . import schedules

    s = config.schedule
    if isinstance(s, schedules.Schedule):
        return s
    if isinstance(s, dict):
        return schedules.schedule_from_dict(s)
    if isinstance(s, str):
        if config.steps is None:
            raise ValueError(f"schedule {s!r} is a family name, so steps= (the horizon) is required; "
                             "or pass a Schedule / SPEC dict that sets total_steps")
        kwargs = dict(config.schedule_kwargs)
        if config.warmup_steps:
            kwargs["warmup_steps"] = config.warmup_steps
        try:
            return schedules.make(s, peak_lr=config.lr, total_steps=config.steps, **kwargs)
        except TypeError as exc:
            raise ValueError(f"schedule family {s!r} does not take these arguments ({exc}); "
                             "see help(workbench.schedules)") from None
    raise ValueError(f"schedule must be a family name, a Schedule or its to_dict(), got {type(s).__name__}")


def build_optimizer(spec: Any, model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """An optimizer from a name, a callable ``params -> optimizer`` or an instance.

    Names: ``"adamw"``, ``"adam"``, ``"sgd"`` (torch's; they decay only matrices and embeddings,
    ``p.dim() >= 2``, nanoGPT-style; AdamW betas (0.9, 0.95)) and the :mod:`workbench.optim`
    optimizers ``"apollo"``, ``"apollo-mini"``, ``"galore"``, ``"frugal"`` (built by
    :func:`workbench.optim.make_optimizer` with :func:`workbench.optim.lowrank_param_groups`:
    attention/MLP weights projected, embeddings, head and norms plain AdamW), ``"lamb"`` and
    ``"lion"`` (decay on matrices only). ``config.optimizer_kwargs`` is passed through (e.g.
    ``{"betas": (0.9, 0.99)}`` or ``{"rank": 32, "update_proj_gap": 100}``); ``config.weight_decay``
    (None: 0.1 for adamw, the optimizer's own default otherwise) is the decay of the matrices.
    ``"zero-order"`` (ZeroOrderSGD) is refused: it needs a closure, not ``backward()``.
    The learning rate is set by the schedule, whatever the optimizer was built with.

    Example:
        >>> from workbench.models import build_model
        >>> model = build_model("tiny")
        >>> opt = build_optimizer("apollo-mini", model, TrainConfig(optimizer="apollo-mini", lr=1e-2))
        >>> type(opt).__name__, [g.get("lowrank", True) for g in opt.param_groups]
        ('ApolloMini', [True, False, False])
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(spec, torch.optim.Optimizer):
        owned = {id(p) for p in params}
        if any(id(p) not in owned for g in spec.param_groups for p in g["params"]):
            raise ValueError("the optimizer instance holds parameters that are not this model's; "
                             "build it from model.parameters() or pass a callable params -> optimizer")
        return _refuse_closure_only(spec)
    if callable(spec) and not isinstance(spec, str):
        opt = spec(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"the optimizer callable returned {type(opt).__name__}, not a torch optimizer")
        return _refuse_closure_only(opt)
    name = _optimizer_name(spec)
    if name in _WORKBENCH_OPTIMIZERS:
        from .optim import make_optimizer

        kw = dict(config.optimizer_kwargs)
        kw.setdefault("lr", config.lr)
        if config.weight_decay is not None:
            kw.setdefault("weight_decay", config.weight_decay)
        if isinstance(kw.get("betas"), list):       # config.json stores tuples as lists
            kw["betas"] = tuple(kw["betas"])
        try:
            return make_optimizer(name, model, **kw)
        except TypeError as exc:
            raise ValueError(f"optimizer {name!r} does not take these optimizer_kwargs ({exc}); "
                             f"see help(workbench.optim)") from None
    wd = config.weight_decay if config.weight_decay is not None else (0.1 if name == "adamw" else 0.0)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kw = dict(config.optimizer_kwargs)
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    known = set(inspect.signature(cls).parameters) - {"params", "lr"}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {', '.join(map(repr, unknown))} in optimizer_kwargs; "
                         f"it takes {', '.join(sorted(known))}")
    if name == "adamw":
        kw.setdefault("betas", (0.9, 0.95))
        fused_ok = all(p.is_cuda and p.is_floating_point() for p in params)
        if fused_ok:
            kw.setdefault("fused", True)
    if name == "sgd":
        kw.setdefault("momentum", 0.9)
    if isinstance(kw.get("betas"), list):       # config.json stores tuples as lists
        kw["betas"] = tuple(kw["betas"])
    try:
        return cls(groups, lr=config.lr, **kw)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"optimizer {name!r} refused optimizer_kwargs {kw}: {exc}") from None


def _refuse_closure_only(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    if getattr(opt, "requires_closure", False):
        raise ValueError(f"{type(opt).__name__} needs a closure (two forward passes, no backward()) and cannot "
                         "run through the trainer; see help(workbench.optim.zero_order)")
    return opt


class ProgressBar:
    """A subscriber drawing a tqdm.auto bar (loss, lr, last val_loss in the postfix)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
        self.val = None

    def __call__(self, event: dict) -> None:
        if "val_loss" in event:
            self.val = event["val_loss"]
        post = {"loss": f"{event['loss']:.4f}", "lr": f"{event['lr']:.2e}"}
        if self.val is not None:
            post["val"] = f"{self.val:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _peak_mem(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if resource is None:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _is_batch_source(obj: Any) -> bool:
    """A batch source: ``__next__`` -> ``(x, y)``, ``state_dict``/``load_state_dict`` and ``batch_size``."""
    return (obj is not None and not isinstance(obj, torch.Tensor) and hasattr(obj, "__next__")
            and callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
            and hasattr(obj, "batch_size"))


def _source_width(src: Any, depth: int = 0) -> int | None:
    """Tokens per row of a batch source: from its blocks, a ``seq_len`` attribute or its sub-loaders."""
    if depth > 4 or src is None:
        return None
    blocks = getattr(src, "blocks", None)
    if isinstance(blocks, torch.Tensor) and blocks.dim() == 2:
        return int(blocks.shape[1] - 1)
    if isinstance(getattr(src, "seq_len", None), int):
        return int(src.seq_len)
    children = [getattr(src, "new", None), getattr(src, "old", None)]
    loaders = getattr(src, "loaders", None)
    if isinstance(loaders, dict):
        children += list(loaders.values())
    for child in children:
        width = _source_width(child, depth + 1)
        if width is not None:
            return width
    return None


class _FrozenState:
    """Stands in for a loader whose state was snapshotted before a step."""

    def __init__(self, state: dict):
        self._state = dict(state)

    def state_dict(self) -> dict:
        return dict(self._state)


def _close_on_error(init):
    """Release the run lock a failing ``Trainer.__init__`` took (and remove the run dir it created)."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self.close()
            if getattr(self, "_owns_process_group", False):     # e.g. FSDP on one process: leave none behind
                import torch.distributed as dist

                dist.destroy_process_group()
                self._owns_process_group = False
            raise
    return wrapper


class Trainer:
    """A training run. Build it, then ``run()`` (also from a background thread).

    ``model`` (an ``nn.Module``), ``train_data`` (blocks ``[n, seq_len+1]``, a ``BlockLoader`` or
    any batch source with ``__next__``, ``state_dict``, ``load_state_dict`` and ``batch_size``),
    ``val_data`` (blocks, or ``{domain: blocks}`` to log every domain's loss as ``val_losses``)
    and ``optimizer`` (name, callable or instance) override the config for notebook use. ``resume=True`` continues the run in ``config.run_dir`` from its checkpoint.
    ``stop_event`` / ``pause_event`` (``threading.Event``) stop with a checkpoint / pause.

    Example:
        >>> cfg = TrainConfig(steps=2, batch_size=2, seq_len=16, max_tokens=4000, progress=False)
        >>> trainer = Trainer(cfg)                              # doctest: +SKIP
        >>> trainer.subscribe(lambda e: print(e["step"], round(e["loss"], 1)))  # doctest: +SKIP
        >>> trainer.run()["status"]                             # doctest: +SKIP
        0 5.6
        1 5.3
        'completed'
    """

    @_close_on_error
    def __init__(self, config: TrainConfig | None = None, *, model: torch.nn.Module | None = None,
                 train_data: Any = None, val_data: Any = None, optimizer: Any = None, resume: bool = False,
                 callbacks: Iterable[Callable[[dict], Any]] = (), stop_event: threading.Event | None = None,
                 pause_event: threading.Event | None = None):
        from .data import BlockLoader, get_tokenizer, load_blocks

        # a copy: the trainer records what it was given (e.g. "<python: Model>") without touching yours
        cfg = self.config = dataclasses.replace(config) if config is not None else TrainConfig()
        self.run_dir = os.fspath(cfg.run_dir) if cfg.run_dir is not None else None
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.pause_event = pause_event if pause_event is not None else threading.Event()
        self.callbacks: list[Callable[[dict], Any]] = list(callbacks)
        self.history: list[dict] = []
        self.status = "created"

        # -- distributed and device
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = self._pick_device(cfg.device)
        if cfg.parallel == "none" and self.world_size > 1:
            raise ValueError(f"parallel='none' but WORLD_SIZE={self.world_size} (torchrun); use parallel='ddp' "
                             "or 'fsdp', or run a single process")
        #: "fsdp" (FSDP2, also on one process), "ddp" (several processes) or "none"
        self.parallel = "fsdp" if cfg.parallel == "fsdp" else ("ddp" if self.world_size > 1 else "none")
        self._owns_process_group = False
        if self.world_size > 1 or self.parallel == "fsdp":
            from .distributed import init_distributed

            self._owns_process_group = init_distributed(self.device)
        self.is_main = self.rank == 0
        use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        # FSDP2 computes in bf16 through its mixed-precision policy (fp32 gradient reduction) instead
        self.autocast_dtype = torch.bfloat16 if use_bf16 and self.parallel != "fsdp" else None
        self._fsdp_bf16 = use_bf16 and self.parallel == "fsdp"

        # -- the run directory: one run per directory, one writer per run (a lock released by the OS on kill)
        self._run_lock = None
        self._made_run_dir = self.run_dir is not None and not os.path.exists(self.run_dir)
        if self.run_dir is not None:
            if self.is_main:
                self._run_lock = RunLock(self.run_dir).acquire()
            log_path = os.path.join(self.run_dir, LOG_FILE)
            if not resume and (os.path.exists(log_path) or ckpt.has_checkpoint(self.run_dir)):
                raise ValueError(f"{self.run_dir!r} already holds a run ({LOG_FILE} exists); resume it "
                                 f"(--resume {self.run_dir} / workbench.train.resume) or choose another run dir")
        elif resume:
            raise ValueError("resume=True needs config.run_dir, the directory of the run to continue")
        for name, given in (("model", model), ("data", train_data)):
            value = getattr(cfg, name)
            if given is None and isinstance(value, str) and value.startswith("<python:"):
                raise ValueError(f"this run's {name} was a Python object ({value}); pass it again "
                                 f"({'model' if name == 'model' else 'train_data'}=...) to resume")

        self._sharded_ckpt = None
        if resume and self.run_dir is not None:
            from .distributed import latest_checkpoint, read_checkpoint_state

            self._sharded_ckpt = latest_checkpoint(self.run_dir)
            if self._sharded_ckpt is not None and self.parallel != "fsdp":
                raise ValueError(f"{self.run_dir!r} holds sharded (FSDP) checkpoints; resume it with "
                                 "parallel='fsdp' (--parallel fsdp), on any number of processes")
            if self._sharded_ckpt is None and self.parallel == "fsdp" and ckpt.has_checkpoint(self.run_dir):
                raise ValueError(f"{self.run_dir!r} holds an unsharded checkpoint (a single-process or DDP run); "
                                 "resume it without parallel='fsdp', or start the FSDP run from its "
                                 "model.safetensors (model=...) in a new run directory")
            if self._sharded_ckpt is not None:
                saved_world = int(read_checkpoint_state(self._sharded_ckpt).get("world_size", self.world_size))
                self._keep_global_batch(saved_world)

        # -- seeds, schedule, data, model, optimizer
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.schedule = resolve_schedule(cfg)
        self.stop_step = int(cfg.steps if cfg.steps is not None else self.schedule.total_steps)
        if self.stop_step > self.schedule.total_steps:
            warnings.warn(f"steps={self.stop_step} is past the schedule's horizon "
                          f"({self.schedule.total_steps}); the LR holds its final value after it",
                          stacklevel=3)

        tok = get_tokenizer(cfg.tokenizer)     # one object for both splits and the vocab size
        if isinstance(train_data, BlockLoader) or _is_batch_source(train_data):
            self.loader = train_data
        else:
            blocks = train_data if train_data is not None else load_blocks(
                cfg.data, split="train", block_size=cfg.seq_len, tokenizer=tok, max_tokens=cfg.max_tokens)
            self.loader = BlockLoader(blocks, cfg.batch_size, seed=cfg.seed, shuffle=True,
                                      rank=self.rank, world_size=self.world_size)
        self.val_sets: dict | None = None     # {domain: blocks} with several validation sets
        if isinstance(val_data, dict):
            if not val_data:
                raise ValueError("val_data is an empty dict; pass {domain: blocks} with at least one domain")
            for name, blocks in val_data.items():
                if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2:
                    raise ValueError(f"val_data[{name!r}] must be blocks [n, seq_len+1] (from load_blocks), "
                                     f"got {type(blocks).__name__}")
            primary = cfg.val_domain if cfg.val_domain is not None else next(iter(val_data))
            if primary not in val_data:
                raise ValueError(f"val_domain={primary!r} is not a key of val_data {sorted(map(str, val_data))}; "
                                 "set config.val_domain to one of them")
            self.val_sets = {str(k): v for k, v in val_data.items()}
            self.val_domain = cfg.val_domain = str(primary)
            self.val_blocks = val_data[primary]
        elif val_data is not None:
            self.val_blocks = val_data
        elif train_data is not None or cfg.eval_batches == 0:
            self.val_blocks = None
        else:
            self.val_blocks = load_blocks(cfg.data, split="val", block_size=cfg.seq_len,
                                          tokenizer=tok, max_tokens=cfg.max_tokens)
        self.train_iter = iter(self.loader)

        if model is None:
            from .models import build_model

            model = build_model(cfg.model, vocab_size=tok.vocab_size, seed=cfg.seed, max_seq_len=cfg.seq_len)
        elif not str(cfg.model).startswith("<python:"):
            cfg.model = f"<python: {type(model).__name__}>"
        if train_data is not None and not str(cfg.data).startswith("<python:"):
            cfg.data = f"<python: {type(train_data).__name__}>"
        self.raw_model = model.to(self.device)
        self.raw_model.train()
        if self.parallel == "fsdp":          # before the optimizer: parameters become DTensor shards
            from .distributed import shard_model

            if isinstance(optimizer, torch.optim.Optimizer):
                raise ValueError("with parallel='fsdp' pass the optimizer as a name or a callable params -> "
                                 "optimizer: FSDP2 replaces the parameters, so an optimizer built before holds stale ones")
            shard_model(self.raw_model, mixed_precision=self._fsdp_bf16,
                        activation_checkpointing=cfg.activation_checkpointing, compile_blocks=cfg.compile)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(optimizer if optimizer is not None else cfg.optimizer, self.raw_model, cfg)
        self.scheduler = self.schedule.torch_scheduler(self.optimizer)
        self.model = self.raw_model
        if self.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile and self.parallel != "fsdp":
            self.model = torch.compile(self.model)
        # buffer for update_norm (one extra copy of the weights; of this rank's shards with FSDP)
        self._before = [p.detach().clone() for p in self._local_params()] if cfg.track_update_norm else None
        self.n_parameters = sum(p.numel() for p in self.raw_model.parameters())
        # from the loader itself: a BlockLoader passed in may have its own batch size and block width
        width = _source_width(self.loader)
        self.tokens_per_step = (self.loader.batch_size * getattr(self.loader, "world_size", 1) * cfg.grad_accum
                                * (width if width is not None else cfg.seq_len))
        # meta-experience replay: the anchor theta_before of the current k-step window
        self._mer_anchor = [p.detach().clone() for p in self.params] if cfg.mer_interval else None   # DTensors with FSDP

        # -- counters (restored on resume)
        self.step = 0                 # optimizer updates done; the next event has this "step"
        self.tokens = 0
        self.train_time = 0.0
        self.best_val_loss = None
        self.best_val_step = None
        self.time_to_target = None
        self.step_to_target = None
        self.tokens_to_target = None
        self.last_loss = None
        self.last_val_loss = None
        self._checkpointed_step = None
        if resume and self.is_main:
            ckpt.clean_checkpoints(self.run_dir)         # what a kill left: temp dirs, unreferenced steps
        if resume and self._sharded_ckpt is not None:
            from .distributed import load_run_checkpoint

            anchors = ({str(i): a for i, a in enumerate(self._mer_anchor)} if self._mer_anchor is not None else None)
            state = load_run_checkpoint(self._sharded_ckpt, self.raw_model, self.optimizer, extra=anchors)
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("loader") is not None:
                self.loader.load_state_dict(state["loader"])
            if state.get("rng") is not None:
                ckpt.set_rng_state(state["rng"])
            self.train_iter = iter(self.loader)
            self.step = int(state["step"])
            for k, v in state["trainer"].items():
                if hasattr(self, k) and k not in ("step", "mer_anchor"):
                    setattr(self, k, v)
            self._checkpointed_step = self.step
        elif resume:
            if ckpt.has_checkpoint(self.run_dir):
                state = ckpt.load_checkpoint(self.run_dir, self.raw_model, optimizer=self.optimizer,
                                             scheduler=self.scheduler, loader=self.loader)
                self.train_iter = iter(self.loader)
                self.step = int(state["step"])
                for k, v in state["trainer"].items():
                    if hasattr(self, k) and k not in ("step", "mer_anchor"):
                        setattr(self, k, v)
                anchor = state["trainer"].get("mer_anchor")
                if self._mer_anchor is not None and anchor is not None:
                    for a, v in zip(self._mer_anchor, anchor):
                        a.copy_(v.to(a.device))
                elif self._mer_anchor is not None:   # a checkpoint from before MER was switched on
                    self._mer_anchor = [p.detach().clone() for p in self.params]
                self._checkpointed_step = self.step
            else:
                warnings.warn(f"{self.run_dir}: no checkpoint yet, so the run restarts from step 0 "
                              f"(its log is appended to)", stacklevel=3)
        if self.run_dir is not None and self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            write_json_atomic(os.path.join(self.run_dir, CONFIG_FILE),
                              {**cfg.to_dict(), "schedule": self.schedule.to_dict()})

    # ------------------------------------------------------------------ helpers
    def close(self) -> None:
        """Release the run directory's lock (``run()`` does at its end; a trainer never run should)."""
        lock, self._run_lock = getattr(self, "_run_lock", None), None
        if lock is not None:
            lock.release()
            with contextlib.suppress(OSError):
                if getattr(self, "_made_run_dir", False) and os.listdir(self.run_dir) == [".lock"]:
                    os.remove(os.path.join(self.run_dir, ".lock"))      # nothing was written: leave no trace
                    os.rmdir(self.run_dir)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    @property
    def checkpoint_every(self) -> int:
        """Steps between checkpoints: ``config.checkpoint_interval``, by default a tenth of the run (<= 500)."""
        every = self.config.checkpoint_interval
        return min(500, max(1, math.ceil(self.stop_step / 10))) if every is None else every

    def _interrupt(self, signame: str) -> None:
        self.interrupted_by = signame
        self.stop_event.set()

    def _control(self, last_checkpoint: float) -> tuple[bool, bool]:
        """``(stop, checkpoint by time)``, the same on every rank (one small all-reduce under DDP)."""
        minutes = self.config.checkpoint_minutes
        due = bool(minutes) and self.run_dir is not None and _now() - last_checkpoint >= 60 * minutes
        stop = self.stop_event.is_set()
        if self.world_size > 1:
            import torch.distributed as dist

            flags = torch.tensor([float(stop), float(due)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, due = (bool(v) for v in flags.tolist())
        return stop, due

    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and self.world_size > 1:
            name = f"cuda:{self.local_rank}"
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' but CUDA is not available here; use device='cpu' or 'auto'")
            dev = torch.device(name)
            torch.cuda.set_device(dev.index or 0)
            return torch.device("cuda", dev.index or 0)
        return torch.device(name)

    def _keep_global_batch(self, saved_world: int) -> None:
        """Resuming on a different number of processes: scale ``grad_accum`` so that a step still sees
        ``batch_size * grad_accum * world_size`` sequences, the same rows in the same order.

        Exact within an epoch; at an epoch's end a ``BlockLoader`` wraps when fewer than
        ``batch_size * world_size`` rows are left, so if the number of blocks is not a multiple of the
        global batch the last partial batch of an epoch can differ between process counts."""
        cfg = self.config
        if saved_world == self.world_size:
            return
        rows = cfg.batch_size * cfg.grad_accum * saved_world
        per_micro = cfg.batch_size * self.world_size
        if rows % per_micro:
            raise ValueError(f"this run's global batch is {rows} sequences ({saved_world} processes x batch_size "
                             f"{cfg.batch_size} x grad_accum {cfg.grad_accum}); {self.world_size} processes "
                             f"cannot split it into micro-batches of {cfg.batch_size}; resume on a number of "
                             f"processes that divides {rows // cfg.batch_size}")
        new = rows // per_micro
        if self.is_main:
            warnings.warn(f"resuming a {saved_world}-process run on {self.world_size}: grad_accum "
                          f"{cfg.grad_accum} -> {new} keeps the global batch of {rows} sequences", stacklevel=3)
        cfg.grad_accum = new

    def _local_params(self) -> list[torch.Tensor]:
        """The trainable parameters, as this rank's local shards under FSDP (views: in-place ops update them)."""
        from .optim._base import local

        return [local(p) for p in self.params]

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def subscribe(self, fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """Call ``fn(event)`` after every step (rank 0 only). Returns ``fn``."""
        self.callbacks.append(fn)
        return fn

    def _lr_of_step(self) -> float:
        group = self.optimizer.param_groups[0]
        return float(group["lr"]) / float(group.get("lr_scale", 1.0))

    def _all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t / self.world_size
        return t

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict:
        """One optimizer update: micro-batches, backward, clip, NaN guard, step. Returns its stats.

        Host syncs: one before the update (loss and grad norm, to refuse a non-finite update)
        and one after it (the update norm).
        """
        cfg = self.config
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = next(self.train_iter)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            defer_sync = self.world_size > 1 and micro < cfg.grad_accum - 1
            if self.parallel == "fsdp":       # FSDP2: reduce-scatter only after the last micro-step
                self.model.set_requires_gradient_sync(not defer_sync)
                defer_sync = False
            with (self.model.no_sync() if defer_sync else contextlib.nullcontext()):
                with self._autocast():
                    logits = self.model(input_ids=x).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        train_loss = self._all_reduce_mean(loss_sum / cfg.grad_accum)

        if self.parallel == "fsdp":    # norm over all shards; the same clipping as clip_grad_norm_
            from .optim._base import global_sq_norms

            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = global_sq_norms(grads).sum().sqrt().to(self.device)
            if cfg.grad_clip:
                coef = torch.clamp(cfg.grad_clip / (grad_norm + 1e-6), max=1.0)
                torch._foreach_mul_(self._local_grads(grads), coef)
        elif cfg.grad_clip:   # returns the norm before clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None],
                                                      foreach=True)
        loss_value, grad_norm_value = torch.stack([train_loss, grad_norm.float()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm_value)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged at step {self.step}: the {what} is {loss_value if what == 'loss' else grad_norm_value} "
                f"(lr {self._lr_of_step():.3g}); this update was not applied and the run stopped with a "
                f"checkpoint after {self.step} good updates. Try a lower peak LR, a longer warmup or a "
                f"smaller grad_clip.")

        lr = self._lr_of_step()
        if self._before is not None:
            torch._foreach_copy_(self._before, [p.detach() for p in self._local_params()])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_norm = None
        if self._before is not None:   # ||theta_after - theta_before||, one more host sync
            torch._foreach_sub_(self._before, [p.detach() for p in self._local_params()])
            if self.parallel == "fsdp":
                from .optim._base import global_sq_norms

                update_norm = global_sq_norms(self._before, like=self.params).sum().sqrt().item()
            else:
                update_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._before)).float()).item()

        self.step += 1
        self.tokens += self.tokens_per_step
        if self._mer_anchor is not None and self.step % cfg.mer_interval == 0:
            self._mer_interpolate()
        return {"step": self.step - 1, "lr": lr, "loss": loss_value, "grad_norm": grad_norm_value,
                "update_norm": update_norm}

    @staticmethod
    def _local_grads(grads: list) -> list:
        from .optim._base import local

        return [local(g) for g in grads]

    @torch.no_grad()
    def _mer_interpolate(self) -> None:
        """Reptile step: ``theta = anchor + beta * (theta - anchor)``; the result is the new anchor."""
        from .optim._base import local

        params = [p.detach() for p in self._local_params()]
        anchor = [local(a) for a in self._mer_anchor]
        torch._foreach_sub_(params, anchor)            # theta - anchor
        torch._foreach_mul_(params, float(self.config.mer_beta))
        torch._foreach_add_(params, anchor)            # anchor + beta * (theta - anchor)
        torch._foreach_copy_(anchor, params)

    def evaluate_all(self) -> dict | None:
        """``{domain: loss}`` over every validation set (``{primary: loss}`` with a single one)."""
        if self.val_sets is None:
            val = self.evaluate()
            return None if val is None else {getattr(self, "val_domain", "val"): val}
        return {name: self._evaluate_blocks(blocks) for name, blocks in self.val_sets.items()}

    def evaluate(self) -> float | None:
        """Mean per-token loss on the first ``eval_batches`` global batches of the val blocks.

        A global batch is ``batch_size * grad_accum * world_size`` rows, so the same rows are
        evaluated whatever the split into ranks and micro-batches; each rank takes a slice.
        With several validation sets this is the primary domain's loss (``config.val_domain``).
        """
        if self.val_blocks is None:
            return None
        return self._evaluate_blocks(self.val_blocks)

    @torch.no_grad()
    def _evaluate_blocks(self, blocks: torch.Tensor) -> float | None:
        from .data import eval_batches

        cfg = self.config
        model = self.raw_model
        model.eval()
        global_batch = cfg.batch_size * cfg.grad_accum * self.world_size
        rows = blocks[: cfg.eval_batches * global_batch]
        shard = torch.tensor_split(rows, self.world_size)[self.rank]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        batches = list(eval_batches(shard, cfg.batch_size)) if shard.shape[0] else []
        if self.parallel == "fsdp":   # forwards are collectives (all-gathers): pad to the most batches of any rank
            most = math.ceil(math.ceil(rows.shape[0] / self.world_size) / cfg.batch_size)
            dummy = (rows[:1, :-1], rows[:1, 1:])
            batches = [(b, True) for b in batches] + [(dummy, False)] * (most - len(batches))
        else:
            batches = [(b, True) for b in batches]
        for (x, y), counted in batches:
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = model(input_ids=x).logits
            if counted:
                total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
                total[1] += y.numel()
        model.train()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        loss_sum, count = total.tolist()
        return loss_sum / count if count else None

    # ------------------------------------------------------------------ files
    def _counters(self) -> dict:
        out = {k: getattr(self, k) for k in ("tokens", "train_time", "best_val_loss", "best_val_step",
                                             "time_to_target", "step_to_target", "tokens_to_target",
                                             "last_loss", "last_val_loss")}
        if self._mer_anchor is not None:
            out["mer_anchor"] = [a.detach().cpu().clone() for a in self._mer_anchor]
        return out

    def save_checkpoint(self, loader_state: dict | None = None) -> None:
        """Write the checkpoint of the current step (rank 0 only; every rank with FSDP) and fsync the log."""
        if self.run_dir is not None and self.parallel == "fsdp":
            self._save_sharded_checkpoint(loader_state)
            return
        if self.run_dir is None or not self.is_main:
            return
        if self._log is not None:
            self._log.sync()
        loader = _FrozenState(loader_state) if loader_state is not None else self.loader
        ckpt.save_checkpoint(self.run_dir, self.raw_model, step=self.step, optimizer=self.optimizer,
                             scheduler=self.scheduler, loader=loader, trainer=self._counters())
        self._checkpointed_step = self.step

    def _save_sharded_checkpoint(self, loader_state: dict | None) -> None:
        """FSDP: every rank writes its shards (model, optimizer, MER anchor) into the step directory,
        with the gathered weights as its ``model.safetensors`` (exported to the run's root for the
        tools that read one file); see :func:`workbench.distributed.save_run_checkpoint`."""
        from .distributed import save_run_checkpoint

        if self._log is not None:
            self._log.sync()
        counters = self._counters()
        counters.pop("mer_anchor", None)
        state = {"format": 2, "step": int(self.step), "world_size": int(self.world_size),
                 "scheduler": self.scheduler.state_dict(),
                 "loader": dict(loader_state) if loader_state is not None else self.loader.state_dict(),
                 "rng": ckpt.get_rng_state(), "trainer": counters}
        anchors = {str(i): a for i, a in enumerate(self._mer_anchor)} if self._mer_anchor is not None else None
        save_run_checkpoint(self.run_dir, self.raw_model, self.optimizer, step=self.step, state=state, extra=anchors)
        self._checkpointed_step = self.step

    def summary(self) -> dict:
        """The run summary (also written to ``summary.json``)."""
        return {
            "status": self.status,
            "run_dir": self.run_dir,
            "model": self.config.model,
            "steps": self.step,
            "total_steps": int(self.schedule.total_steps),
            "resumable": self.run_dir is not None and self.step < int(self.schedule.total_steps),
            "tokens": self.tokens,
            "final_train_loss": self.last_loss,
            "final_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss,
            "best_val_step": self.best_val_step,
            "target_val_loss": self.config.target_val_loss,
            "time_to_target": self.time_to_target,
            "step_to_target": self.step_to_target,
            "tokens_to_target": self.tokens_to_target,
            "train_time": self.train_time,
            "tokens_per_s": self.tokens / self.train_time if self.train_time > 0 else None,
            "parameters": self.n_parameters,
            "device": str(self.device) if self.device.type != "cuda" else torch.cuda.get_device_name(self.device),
            "world_size": self.world_size,
            "parallel": self.parallel,
        }

    def _write_summary(self) -> dict:
        s = self.summary()
        if self.run_dir is not None and self.is_main:
            write_json_atomic(os.path.join(self.run_dir, SUMMARY_FILE), s)
        return s

    def _record_val(self, event: dict, val: float | None) -> None:
        if val is None:
            return
        t, target = event["step"], self.config.target_val_loss
        event["val_loss"] = self.last_val_loss = val
        if self.best_val_loss is None or val < self.best_val_loss:
            self.best_val_loss, self.best_val_step = val, t
        if target is not None and self.time_to_target is None and val <= target:
            self.time_to_target, self.step_to_target, self.tokens_to_target = event["time"], t, event["tokens"]

    def _emit(self, event: dict) -> None:
        self.history.append(event)
        if not self.is_main:
            return
        if self._log is not None:
            self._log.write(event)
        for fn in list(self.callbacks):
            try:
                fn(dict(event))
            except Exception as exc:   # a broken plot must not kill a training run
                warnings.warn(f"subscriber {fn!r} raised {exc!r} at step {event['step']}; it is removed",
                              RuntimeWarning, stacklevel=2)
                self.callbacks.remove(fn)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train from the current step to ``stop_step``; returns the summary dict.

        Raises ``TrainingDiverged`` (after checkpointing the last good step) on a NaN/inf loss.
        In the main thread, SIGINT/SIGTERM stop the run after its current step with a checkpoint
        (status ``"interrupted"``; see :mod:`workbench.interrupts`).
        """
        with interrupts.stop_on_signals():
            for _ in self.iter_run():
                pass
        return self.result

    def iter_run(self):
        """The loop as a generator: yields each step's event; ``self.result`` is the summary at the end.

        For driving a run step by step (``for event in trainer.iter_run(): ...``); iterate to the
        end (or ``close()`` the generator) so the log is closed. ``run()`` is this, drained.
        """
        cfg = self.config
        if self.run_dir is not None and self.is_main and self._run_lock is None:
            self._run_lock = RunLock(self.run_dir).acquire()      # run again after a previous run() ended
        self._log = RunLog(os.path.join(self.run_dir, LOG_FILE)) if (self.run_dir and self.is_main) else None
        sinks = open_sinks(cfg.log, self.run_dir, cfg.to_dict()) if self.is_main else []
        self.callbacks.extend(sinks)
        bar = ProgressBar(self.stop_step, initial=self.step) if (cfg.progress and self.is_main) else None
        if bar is not None:
            self.callbacks.append(bar)
        self.status = "running"
        finished = False
        clock = time.perf_counter()   # train time not yet counted starts here
        last_checkpoint = _now()
        stop_agreed = False           # under DDP every rank stops at the same step
        self.interrupted_by = None
        signal_token = interrupts.register(self._interrupt)
        try:
            while self.step < self.stop_step:
                if stop_agreed or (self.world_size == 1 and self.stop_event.is_set()):
                    self.status = "interrupted" if self.interrupted_by else "stopped"
                    break
                if self.pause_event.is_set():
                    self.train_time += time.perf_counter() - clock
                    while self.pause_event.is_set() and not self.stop_event.is_set():
                        time.sleep(0.05)
                    clock = time.perf_counter()        # paused time is not train time
                    continue
                loader_state = self.loader.state_dict()
                try:
                    stats = self.train_step()
                except TrainingDiverged:
                    self.status = "diverged"
                    self.save_checkpoint(loader_state)
                    self.result = self._write_summary()
                    raise
                now = time.perf_counter()
                step_time, clock = now - clock, now
                self.train_time += step_time
                t = stats["step"]
                event = {"step": t, "tokens": self.tokens, "lr": stats["lr"], "loss": stats["loss"],
                         "grad_norm": stats["grad_norm"], "update_norm": stats["update_norm"],
                         "tokens_per_s": self.tokens_per_step / step_time if step_time > 0 else None,
                         "peak_mem": _peak_mem(self.device), "time": self.train_time}
                self.last_loss = stats["loss"]
                if (cfg.eval_interval and (t + 1) % cfg.eval_interval == 0) or t + 1 == self.stop_step:
                    if self.val_sets is not None:
                        losses = self.evaluate_all()
                        event["val_losses"] = losses
                        self._record_val(event, losses[self.val_domain])
                    else:
                        self._record_val(event, self.evaluate())
                    clock = time.perf_counter()        # evaluation time is not train time
                self._emit(event)
                yield event
                stop_agreed, time_due = self._control(last_checkpoint)
                every = self.checkpoint_every
                if (every and self.step % every == 0) or time_due:
                    self.train_time += time.perf_counter() - clock
                    self.save_checkpoint()
                    last_checkpoint = _now()
                    clock = time.perf_counter()        # nor is checkpointing
            else:
                self.status = "completed"
            if self._checkpointed_step != self.step:
                self.save_checkpoint()
            self.result = self._write_summary()
            finished = True
        finally:
            interrupts.unregister(signal_token)
            if bar is not None:
                bar.close()
                self.callbacks.remove(bar)
            if self._log is not None:
                self._log.close()
            self._log = None
            for sink in sinks:
                sink.close()
                if sink in self.callbacks:
                    self.callbacks.remove(sink)
            self.close()
            if self._owns_process_group:
                import torch.distributed as dist

                if finished:
                    dist.barrier()
                dist.destroy_process_group()
                self._owns_process_group = False

    result: dict | None = None
    _log: RunLog | None = None
    interrupted_by: str | None = None   # "SIGINT"/"SIGTERM" when a signal stopped the run


# ---------------------------------------------------------------------- functional entry points
def train(config: TrainConfig | None = None, callbacks: Iterable[Callable[[dict], Any]] = (),
          stop_event: threading.Event | None = None, pause_event: threading.Event | None = None, *,
          model: torch.nn.Module | None = None, train_data: Any = None, val_data: Any = None,
          optimizer: Any = None, **overrides) -> dict:
    """Run a fresh training run and return its summary; ``overrides`` replace config fields.

    Example:
        >>> s = train(steps=2, batch_size=2, seq_len=16, max_tokens=4000, progress=False)  # doctest: +SKIP
        >>> s["status"], s["steps"]                                                        # doctest: +SKIP
        ('completed', 2)
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    trainer = Trainer(config, model=model, train_data=train_data, val_data=val_data, optimizer=optimizer,
                      callbacks=callbacks, stop_event=stop_event, pause_event=pause_event)
    return trainer.run()


def resume(run_dir: str | os.PathLike, *, steps: int | None = None, callbacks: Iterable[Callable[[dict], Any]] = (),
           stop_event: threading.Event | None = None, pause_event: threading.Event | None = None,
           model: torch.nn.Module | None = None, train_data: Any = None, val_data: Any = None,
           optimizer: Any = None, **overrides) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint with its saved configuration.

    ``steps`` moves the stop point (the schedule, and so the horizon, stays as saved);
    ``overrides`` may change run-time settings such as ``device``, ``compile`` or ``progress``.
    """
    config = load_config(run_dir)
    config = dataclasses.replace(config, run_dir=os.fspath(run_dir),
                                 **({"steps": steps} if steps is not None else {}), **overrides)
    trainer = Trainer(config, model=model, train_data=train_data, val_data=val_data, optimizer=optimizer,
                      resume=True, callbacks=callbacks, stop_event=stop_event, pause_event=pause_event)
    return trainer.run()


def _number(v):
    """``v`` if it is a plain number (not a bool), else None: fields of hand-edited run files."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run_summary(run_dir: str | os.PathLike) -> dict:
    """The summary of the run in ``run_dir``: its ``summary.json``, or, for a run still going or
    killed before writing one, a summary rebuilt from ``log.jsonl`` (``status`` ``"incomplete"``).

    Example:
        >>> run_summary("runs/a")["best_val_loss"]     # doctest: +SKIP
        1.93
    """
    from .runlog import read_run_log

    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, SUMMARY_FILE)
    log_path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path) and not os.path.exists(log_path):
        raise FileNotFoundError(f"{run_dir!r} has neither {SUMMARY_FILE} nor {LOG_FILE}: not a workbench run")
    records = read_run_log(log_path, dedupe=True) if os.path.exists(log_path) else []
    if os.path.exists(path):
        summary = read_json(path)
        if not isinstance(summary, dict):
            raise ValueError(f"{path}: not a run summary (a JSON object); delete it and run_summary rebuilds one "
                             f"from {LOG_FILE}")
        # stale if the run was resumed past it (and is still going, or was killed)
        if not records or records[-1]["step"] + 1 <= (_number(summary.get("steps")) or 0):
            return summary
    config = read_json(os.path.join(run_dir, CONFIG_FILE)) if os.path.exists(os.path.join(run_dir, CONFIG_FILE)) else {}
    if not isinstance(config, dict):
        raise ValueError(f"{os.path.join(run_dir, CONFIG_FILE)}: not a run configuration (a JSON object)")
    target = _number(config.get("target_val_loss"))
    vals = [(r["val_loss"], r) for r in records if _number(r.get("val_loss")) is not None]
    best = min(vals, key=lambda v: v[0]) if vals else None
    hit = next((r for v, r in vals if target is not None and v <= target), None)
    last = records[-1] if records else {}
    return {
        "status": "incomplete", "run_dir": run_dir, "model": config.get("model"),
        "steps": last["step"] + 1 if records else 0,
        "total_steps": (config.get("schedule") or {}).get("total_steps") if isinstance(config.get("schedule"), dict) else None,
        "tokens": last.get("tokens"), "final_train_loss": last.get("loss"),
        "final_val_loss": vals[-1][0] if vals else None,
        "best_val_loss": best[0] if best else None, "best_val_step": best[1]["step"] if best else None,
        "target_val_loss": target, "time_to_target": hit["time"] if hit else None,
        "step_to_target": hit["step"] if hit else None, "tokens_to_target": hit.get("tokens") if hit else None,
        "train_time": last.get("time"),
        "tokens_per_s": (last["tokens"] / last["time"]) if _number(last.get("time")) and _number(last.get("tokens"))
        is not None else None,
        "parameters": None, "device": None, "world_size": None,
    }


def status_text(summary: dict) -> str:
    """A run's status for people: ``completed``, or ``stopped at 40 of 10,000 (resumable)`` for a run short of
    its schedule's end (``--steps`` below the horizon, or stopped), else the ``status`` as it is.

    Example:
        >>> status_text({"status": "completed", "steps": 40, "total_steps": 10_000, "resumable": True})
        'stopped at 40 of 10,000 (resumable)'
        >>> status_text({"status": "completed", "steps": 8, "total_steps": 8})
        'completed'
    """
    status, steps, total = summary.get("status"), summary.get("steps"), summary.get("total_steps")
    if status not in ("completed", "stopped") or steps is None or total is None or steps >= total:
        return "-" if status is None else str(status)
    resumable = summary.get("resumable")
    if resumable is None:  # summaries written before the field existed
        resumable = bool(summary.get("run_dir")) and ckpt.has_checkpoint(summary["run_dir"])
    return f"stopped at {steps:,} of {total:,}" + (" (resumable)" if resumable else "")
