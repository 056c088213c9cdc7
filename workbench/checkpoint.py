"""Checkpoints that load without executing pickles.

A checkpoint is two files in the run directory:

* ``model.safetensors`` - the model weights, tied tensors stored once under the name
  ``save_pretrained`` keeps (``models.tied_names``; the metadata maps each alias to it, as
  ``safetensors.torch.save_model`` does), with the step in its metadata;
* ``state.pt`` - everything else as plain tensors/ints/floats/lists/dicts, loadable with
  ``torch.load(path, weights_only=True)``: ``step`` (optimizer updates done), ``optimizer``,
  ``scheduler``, ``loader`` (data position), ``rng`` (torch, cuda, numpy, python ``random``) and
  ``trainer`` (counters such as tokens seen and train time).

Each file is written to a temp file, fsynced and ``os.replace``-d, so a crash never leaves a
half-written file. ``load_checkpoint`` checks that both files carry the same step.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> net = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> save_checkpoint(d, net, step=3, optimizer=opt)
    >>> load_checkpoint(d, torch.nn.Linear(2, 2))["step"]
    3
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file

from .files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "has_checkpoint", "get_rng_state", "set_rng_state",
           "MODEL_FILE", "STATE_FILE"]

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


def get_rng_state() -> dict:
    """Every RNG the trainer can touch, as tensors/ints/lists (safe for ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss_next": py_gauss},
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by ``get_rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # a different number of GPUs: restore what matches
            for i, s in enumerate(saved[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True if ``run_dir`` holds both checkpoint files."""
    run_dir = os.fspath(run_dir)
    return os.path.exists(os.path.join(run_dir, MODEL_FILE)) and os.path.exists(os.path.join(run_dir, STATE_FILE))


def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, *, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    loader: Any = None, trainer: dict | None = None, rng: bool = True) -> None:
    """Write ``model.safetensors`` and ``state.pt`` atomically into ``run_dir``.

    ``step`` is the number of optimizer updates done; ``loader`` is anything with a
    ``state_dict()`` (the data position); ``trainer`` a dict of plain numbers.
    """
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    step = int(step)
    state = {
        "format": 1,
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict() if loader is not None else None,
        "rng": get_rng_state() if rng else None,
        "trainer": dict(trainer or {}),
    }
    # weights first: if we die between the two renames, load_checkpoint sees mismatched steps
    atomic_write(os.path.join(run_dir, MODEL_FILE), lambda p: _save_weights(model, p, {"step": str(step)}))
    atomic_write(os.path.join(run_dir, STATE_FILE), lambda p: torch.save(state, p))


def _save_weights(model: torch.nn.Module, path: str, metadata: dict) -> None:
    from .models import tied_names

    weights, aliases = model.state_dict(), tied_names(model)
    for alias, kept in aliases.items():
        if alias in weights:
            del weights[alias]
            metadata.setdefault(alias, kept)
    save_file({k: v.contiguous() for k, v in weights.items()}, path, metadata=metadata)


def load_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    loader: Any = None, restore_rng: bool = True) -> dict:
    """Load a checkpoint into the given objects (each optional) and return the ``state.pt`` dict.

    Nothing is unpickled: weights come from safetensors, the rest via ``weights_only=True``.
    Restore order follows torch's rule: optimizer, then scheduler.
    """
    run_dir = os.fspath(run_dir)
    model_path, state_path = os.path.join(run_dir, MODEL_FILE), os.path.join(run_dir, STATE_FILE)
    for p in (model_path, state_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"no checkpoint in {run_dir!r}: {os.path.basename(p)} is missing")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    with safe_open(model_path, framework="pt") as f:
        weights_step = (f.metadata() or {}).get("step")
    if weights_step is not None and int(weights_step) != int(state["step"]):
        raise ValueError(f"{run_dir}: {MODEL_FILE} is from step {weights_step} but {STATE_FILE} from step "
                         f"{state['step']} (the run died while checkpointing); restore one of them from a "
                         f"backup or start a new run")
    if model is not None:
        device = next(iter(model.parameters()), torch.empty(0)).device
        missing, unexpected = load_model(model, model_path, strict=False, device=str(device))
        if missing or unexpected:
            raise ValueError(f"{model_path} does not match the model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}; build the same model the run used")
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if loader is not None and state.get("loader") is not None:
        loader.load_state_dict(state["loader"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])
    return state
