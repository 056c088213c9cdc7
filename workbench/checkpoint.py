"""Checkpoints that survive ``kill -9`` at any instant and load without executing pickles.

Layout of a run directory::

    RUN/checkpoints/step-00000120/    one complete checkpoint (a directory per step)
        model.safetensors             the weights, tied tensors once under the name ``save_pretrained``
                                      keeps (``models.tied_names``; the metadata maps each alias to it,
                                      as ``safetensors.torch.save_model`` does), with the step
        state.pt                      everything else, loadable with ``torch.load(weights_only=True)``:
                                      ``step``, ``optimizer``, ``scheduler``, ``loader`` (data position),
                                      ``rng`` (torch, cuda, numpy, python) and ``trainer`` (counters)
    RUN/checkpoints/latest            the pointer: the name of the latest complete step directory
    RUN/model.safetensors             export of the latest weights (a hard link, replaced atomically) for
                                      readers: sparsity diffs, the dashboard, Hugging Face

A checkpoint is written as one unit: into ``checkpoints/.tmp-step-N`` (a deterministic name, the same
on every rank, so several processes can fill it), every file fsynced, the directory renamed to
``step-N``, then the pointer replaced atomically; the previous checkpoint is deleted only after
that. A crash at any instant leaves the pointer on a complete checkpoint (or no pointer yet);
:func:`clean_checkpoints` removes the leftovers (temp directories, unreferenced steps, temp files).
Run directories of the old layout (``model.safetensors`` + ``state.pt`` at the root) still load and
resume; their first new checkpoint moves them to this layout.

For writers that fill the directory themselves (e.g. ``torch.distributed.checkpoint`` on every rank):
``prepare_checkpoint`` (one process) -> all write -> barrier -> ``commit_checkpoint`` (one process),
or ``checkpoint_writer`` (a context manager doing both around the body) in a single process.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> net = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> os.path.basename(save_checkpoint(d, net, step=3, optimizer=opt))
    'step-00000003'
    >>> load_checkpoint(d, torch.nn.Linear(2, 2))["step"]
    3
    >>> sorted(os.listdir(d))
    ['checkpoints', 'model.safetensors']
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_model, save_file

from .files import atomic_write, atomic_write_text
from .tensorfiles import SAFETENSORS_DTYPES, load_weights_only, read_safetensors_header

__all__ = ["save_checkpoint", "load_checkpoint", "has_checkpoint", "latest_checkpoint", "checkpoint_writer",
           "prepare_checkpoint", "commit_checkpoint", "clean_checkpoints", "export_weights", "step_dir_name",
           "get_rng_state", "set_rng_state", "CheckpointError",
           "MODEL_FILE", "STATE_FILE", "CHECKPOINTS_DIR", "LATEST_FILE"]

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, corrupt, another model's); the message says why."""


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


# ---------------------------------------------------------------------------------------- layout
def step_dir_name(step: int) -> str:
    """``"step-00000120"``: the directory of the checkpoint after ``step`` updates (sorts by step)."""
    return f"step-{int(step):08d}"


def _root(run_dir) -> str:
    return os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)


def _fsync_dir(path: str) -> None:
    if os.name == "nt":   # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pointer(run_dir) -> str | None:
    path = os.path.join(_root(run_dir), LATEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        name = f.read(200).decode("utf-8", "replace").strip()
    if not _STEP_RE.match(name):
        raise CheckpointError(f"{path}: does not name a checkpoint ({name[:40]!r}); write the name of a "
                              f"complete step directory in {_root(run_dir)} into it (e.g. step-00000100)")
    return name


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The directory of the run's latest complete checkpoint, or None if it has none.

    That is ``RUN/checkpoints/<latest>``, or ``RUN`` itself for a run of the old layout
    (``model.safetensors`` + ``state.pt`` at the root).
    """
    run_dir = os.fspath(run_dir)
    name = _read_pointer(run_dir)
    if name is not None:
        path = os.path.join(_root(run_dir), name)
        if not os.path.isdir(path):
            raise CheckpointError(f"{os.path.join(_root(run_dir), LATEST_FILE)} points to {name}, which does "
                                  f"not exist; point it to a step directory that does, or start a new run")
        return path
    if os.path.isfile(os.path.join(run_dir, STATE_FILE)) and os.path.isfile(os.path.join(run_dir, MODEL_FILE)):
        return run_dir     # old layout
    return None


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """True if ``run_dir`` holds a complete checkpoint (either layout)."""
    return latest_checkpoint(run_dir) is not None


def prepare_checkpoint(run_dir: str | os.PathLike, step: int) -> str:
    """Create (empty) and return the temp directory ``RUN/checkpoints/.tmp-step-N`` for the checkpoint of ``step``.

    Call it from one process; every writer then fills the returned directory.
    """
    tmp = os.path.join(_root(run_dir), _TMP_PREFIX + step_dir_name(step))
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)        # a leftover of a run killed while writing this step
    os.makedirs(tmp)
    return tmp


def commit_checkpoint(run_dir: str | os.PathLike, step: int, *, keep: int = 1, export: bool = True) -> str:
    """Make the filled temp directory of ``step`` the latest checkpoint; returns its final path.

    fsyncs every file and the directory, renames ``.tmp-step-N`` to ``step-N``, replaces the pointer
    atomically, refreshes the root ``model.safetensors`` export (``export=True``) and then deletes older
    checkpoints beyond the ``keep`` most recent. If ``step-N`` is already the latest (the same step
    checkpointed twice), the new copy is dropped and the committed one kept.
    """
    run_dir = os.fspath(run_dir)
    root = _root(run_dir)
    name = step_dir_name(step)
    tmp, final = os.path.join(root, _TMP_PREFIX + name), os.path.join(root, name)
    if not os.path.isdir(tmp):
        raise CheckpointError(f"{tmp} does not exist; call prepare_checkpoint(run_dir, {step}) and write into it first")
    for dirpath, _, files in os.walk(tmp):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(dirpath)
    if _read_pointer(run_dir) == name:
        shutil.rmtree(tmp)
        return final
    if os.path.lexists(final):        # left by a crash after its rename but before the pointer moved
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(os.path.join(root, LATEST_FILE), name + "\n")
    _fsync_dir(root)
    if export and os.path.isfile(os.path.join(final, MODEL_FILE)):
        export_weights(run_dir, os.path.join(final, MODEL_FILE))
    legacy_state = os.path.join(run_dir, STATE_FILE)
    if os.path.exists(legacy_state):  # an old-layout run moved to this layout: its root state is stale
        os.remove(legacy_state)
    steps = sorted((d for d in os.listdir(root) if _STEP_RE.match(d) and int(d[5:]) < int(step)),
                   key=lambda d: int(d[5:]))
    for old in steps[: max(0, len(steps) - (keep - 1))] if keep >= 1 else steps:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def export_weights(run_dir: str | os.PathLike, source: str) -> None:
    """Replace ``RUN/model.safetensors`` atomically by ``source`` (a hard link; a copy where links fail)."""
    run_dir = os.fspath(run_dir)
    dest = os.path.join(run_dir, MODEL_FILE)
    tmp = os.path.join(run_dir, _TMP_PREFIX + "export-" + MODEL_FILE)
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:                    # no hard links on this file system
        atomic_write(dest, lambda p: shutil.copyfile(source, p))
        return
    os.replace(tmp, dest)
    _fsync_dir(run_dir)


def clean_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Remove what a crash can leave behind; returns the removed paths.

    Temp checkpoint directories, step directories other than the latest, and ``.tmp-*`` files of
    interrupted atomic writes at the run directory's root. Call it only while holding the run's lock
    (:mod:`workbench.runlock`): it would delete a live writer's temp files.
    """
    run_dir = os.fspath(run_dir)
    removed = []
    root = _root(run_dir)
    latest = _read_pointer(run_dir) if os.path.isdir(root) else None
    if os.path.isdir(root):
        for d in os.listdir(root):
            path = os.path.join(root, d)
            if (d.startswith(_TMP_PREFIX) or (_STEP_RE.match(d) and d != latest)):
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
                removed.append(path)
    if os.path.isdir(run_dir):
        for f in os.listdir(run_dir):
            path = os.path.join(run_dir, f)
            if f.startswith(_TMP_PREFIX) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


@contextlib.contextmanager
def checkpoint_writer(run_dir: str | os.PathLike, step: int, *, keep: int = 1, export: bool = True) -> Iterator[str]:
    """Yield the temp directory of the checkpoint of ``step``; commit it when the body ends without error.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with checkpoint_writer(d, 5) as tmp:
    ...     _ = open(os.path.join(tmp, "extra.txt"), "w").write("hi")
    >>> os.path.relpath(latest_checkpoint(d), d)
    'checkpoints/step-00000005'
    """
    tmp = prepare_checkpoint(run_dir, step)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_checkpoint(run_dir, step, keep=keep, export=export)


# ------------------------------------------------------------------------------------ save / load
def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, *, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    loader: Any = None, trainer: dict | None = None, rng: bool = True, keep: int = 1) -> str:
    """Write the checkpoint of ``step`` as one unit into ``RUN/checkpoints/step-N``; returns that directory.

    ``step`` is the number of optimizer updates done; ``loader`` is anything with a
    ``state_dict()`` (the data position); ``trainer`` a dict of plain numbers; ``keep`` how many
    checkpoints to keep (the older are deleted once this one is committed).
    """
    step = int(step)
    state = {
        "format": 2,
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict() if loader is not None else None,
        "rng": get_rng_state() if rng else None,
        "trainer": dict(trainer or {}),
    }
    with checkpoint_writer(run_dir, step, keep=keep) as tmp:
        _save_weights(model, os.path.join(tmp, MODEL_FILE), {"step": str(step)})
        torch.save(state, os.path.join(tmp, STATE_FILE))
    return os.path.join(_root(run_dir), step_dir_name(step))


def _check_weights(model_path: str, model: torch.nn.Module) -> None:
    """Refuse weights whose dtypes or shapes differ from the model's (before loading any)."""
    header, _ = read_safetensors_header(model_path)
    expected = model.state_dict()
    for name, info in header.items():
        if name == "__metadata__" or name not in expected:
            continue
        want = expected[name]
        have_dtype = SAFETENSORS_DTYPES[info["dtype"]][0]
        want_dtype = str(want.dtype).replace("torch.", "")
        if have_dtype != want_dtype:
            raise CheckpointError(f"{model_path}: {name!r} is {have_dtype} but the run's model holds {want_dtype}; "
                                  "this file is not this run's checkpoint (converted or replaced) - restore the "
                                  f"{want_dtype} weights or start a new run")
        if list(want.shape) != info["shape"]:
            raise CheckpointError(f"{model_path}: {name!r} has shape {info['shape']} but the model's is "
                                  f"{list(want.shape)}; build the same model the run used")


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

    ``run_dir`` is a run directory (its latest checkpoint is loaded) or a checkpoint directory.
    Nothing is unpickled: weights come from safetensors, the rest via ``weights_only=True``.
    Every problem (missing, truncated or garbage files, a pickle needing code execution, weights of
    another dtype or shape, files of different steps) raises :class:`CheckpointError` naming the file.
    Restore order follows torch's rule: optimizer, then scheduler.
    """
    run_dir = os.fspath(run_dir)
    if os.path.isfile(os.path.join(run_dir, STATE_FILE)) and not os.path.isdir(_root(run_dir)):
        path = run_dir                 # a checkpoint directory, or a run of the old layout
    else:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {run_dir!r}: neither {CHECKPOINTS_DIR}/{LATEST_FILE} "
                                    f"nor {STATE_FILE} exists")
    model_path, state_path = os.path.join(path, MODEL_FILE), os.path.join(path, STATE_FILE)
    for p in (model_path, state_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"checkpoint {path!r} is incomplete: {os.path.basename(p)} is missing")
    try:
        state = load_weights_only(state_path)
        header, _ = read_safetensors_header(model_path)
    except ValueError as exc:
        raise CheckpointError(f"{exc} (cannot resume from this checkpoint)") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("trainer", {}), dict)):
        raise CheckpointError(f"{state_path}: not a workbench checkpoint state (no integer 'step'); "
                              "resume from a checkpoint the trainer wrote")
    weights_step = (header.get("__metadata__") or {}).get("step")
    if weights_step is not None and weights_step != str(state["step"]):
        raise CheckpointError(f"{path}: {MODEL_FILE} is from step {weights_step} but {STATE_FILE} from step "
                              f"{state['step']}; restore one of them from a backup or start a new run")
    if model is not None:
        _check_weights(model_path, model)
        device = next(iter(model.parameters()), torch.empty(0)).device
        missing, unexpected = load_model(model, model_path, strict=False, device=str(device))
        if missing or unexpected:
            raise CheckpointError(f"{model_path} does not match the model: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}; build the same model the run used")
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if loader is not None and state.get("loader") is not None:
            loader.load_state_dict(state["loader"])
        if restore_rng and state.get("rng") is not None:
            set_rng_state(state["rng"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{state_path}: does not fit this run ({type(exc).__name__}: {str(exc)[:120]}); "
                              "resume with the optimizer and data the run used") from None
    return state
