"""Scale-out on PyTorch's own engine: FSDP2 sharding, sharded (DCP) checkpoints, sharded norms.

* :func:`shard_model` wraps each transformer block and then the root with
  ``torch.distributed.fsdp.fully_shard`` (FSDP2): every parameter becomes a ``DTensor`` sharded on
  its first dimension over the ranks, gathered for each block's forward/backward and
  reduce-scattered after it. On CUDA the mixed-precision policy computes in bf16 and reduces
  gradients in fp32 (the sharded master weights and the optimizer state stay fp32); optional
  activation checkpointing and ``torch.compile`` are applied per block.
* :func:`save_sharded` / :func:`load_sharded` write and read model + optimizer state with
  ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards into one directory, and
  a checkpoint saved on N ranks loads on any number of ranks (or in one plain process).
* :func:`export_safetensors` gathers the full weights into one ``model.safetensors`` (rank 0 writes)
  for everything that reads single-file checkpoints (sparsity diffs, assets, Hugging Face).
* :func:`global_norm` is the L2 norm of a list of tensors, some of which may be sharded DTensors.

Collectives: everything here is called by every rank in the same order (the trainer does that).

Example (two CPU processes)::

    torchrun --standalone --nproc_per_node 2 -m workbench.cli train --parallel fsdp \\
        --run-dir runs/fsdp --model tiny --steps 20 --device cpu

    >>> from workbench.distributed import world
    >>> world()            # outside torchrun: (world_size, rank, local_rank)
    (1, 0, 0)
"""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["world", "init_distributed", "transformer_blocks", "shard_model", "is_sharded", "global_norm",
           "save_sharded", "load_sharded", "export_safetensors", "full_state_dict", "save_run_checkpoint",
           "load_run_checkpoint", "latest_checkpoint", "read_checkpoint_state", "PARALLEL_MODES"]

STATE_FILE = "state.pt"

#: what ``TrainConfig.parallel`` accepts ("auto": DDP under torchrun, else one process)
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")


def world() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` from the environment torchrun sets (1, 0, 0 outside it)."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); True if this call created it.

    A single process that asks for FSDP (world size 1) gets a one-rank gloo/nccl group on a free
    local port, so the same sharded code path (and DCP) runs without torchrun.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        store = dist.HashStore()
        dist.init_process_group(backend=backend, store=store, rank=0, world_size=1)
        return True
    dist.init_process_group(backend=backend)
    return True


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a model: the children of its longest ``nn.ModuleList`` (the decoder
    layers of Llama/GPT-2-style models); raises ``ValueError`` when it has none."""
    best: list = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    if not best:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks to shard; FSDP here wraps "
                         "each transformer block (e.g. model.model.layers), so build a model with one")
    return best


def shard_model(model: torch.nn.Module, *, mixed_precision: bool | None = None, activation_checkpointing: bool = False,
                compile_blocks: bool = False, reshard_after_forward: bool = True) -> torch.nn.Module:
    """Apply FSDP2 (``fully_shard``) to each transformer block, then to the root; returns ``model``.

    ``mixed_precision`` (None: on CUDA) computes in bf16 and reduces gradients in fp32;
    ``activation_checkpointing`` recomputes each block's activations in the backward pass;
    ``compile_blocks`` ``torch.compile``-s each block (before sharding, as FSDP2 recommends).
    Needs an initialised process group (:func:`init_distributed`).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    if mixed_precision is None:
        mixed_precision = device.type == "cuda"
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
          else MixedPrecisionPolicy())
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        ids = {id(b) for b in blocks}
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in ids)
        blocks = transformer_blocks(model)
    for block in blocks:
        if compile_blocks:
            block.compile()
        fully_shard(block, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def is_sharded(t: Any) -> bool:
    """True for a ``DTensor`` (an FSDP2 parameter, its gradient or optimizer state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all ``tensors`` (a 0-d fp32 tensor, the same on every rank); sharded DTensors
    contribute the squares of their local shards, summed over their mesh with one all-reduce per mesh."""
    from workbench.optim._base import global_sq_norms

    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    return global_sq_norms(tensors).sum().sqrt()


# ---------------------------------------------------------------------- checkpoints
def _state_dict_options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def save_sharded(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 extra: dict | None = None) -> None:
    """Write model (+ optimizer, + ``extra``: a dict of tensors/DTensors) to the directory ``path``
    with DCP: every rank its own shards, rank 0 the metadata. Called by every rank; ``path`` must
    be on a file system all ranks see."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optimizer": osd}
    else:
        state = {"model": get_model_state_dict(model)}
    if extra:
        state["extra"] = extra
    dcp.save(state, checkpoint_id=os.fspath(path))


def load_sharded(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 extra: dict | None = None) -> None:
    """Load what :func:`save_sharded` wrote into ``model`` (+ ``optimizer``, + the tensors of ``extra``,
    in place), resharding to this run's ranks: a checkpoint saved on 2 ranks loads on 1, 2 or 8."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, ".metadata")):
        raise FileNotFoundError(f"{path!r} is not a DCP checkpoint (no .metadata); point to a step directory "
                                "written by workbench.distributed.save_sharded")
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optimizer": osd, **({"extra": extra} if extra else {})}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        state = {"model": get_model_state_dict(model), **({"extra": extra} if extra else {})}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU, on rank 0 (other ranks get ``{}``); called by every rank."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    if not any(is_sharded(p) for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=_state_dict_options(full=True))


def export_safetensors(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Gather the full weights and write them as one ``model.safetensors`` (atomically, rank 0 only),
    in the layout of the unsharded model's checkpoints (tied weights once, under the name
    ``models.tied_names`` keeps, as ``save_pretrained`` does; the metadata maps each alias to it)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from .files import atomic_write
    from .models import tied_names

    state = full_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    metadata = dict(metadata or {})
    for alias, kept in tied_names(model).items():
        if alias in state and kept in state:
            del state[alias]
            metadata.setdefault(alias, kept)
    state = {k: v.contiguous() for k, v in state.items()}
    atomic_write(os.fspath(path), lambda p: save_file(state, p, metadata=metadata))


# ---------------------------------------------------------------------- a run's checkpoints
def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The run's latest checkpoint directory if it is a sharded (DCP) one, else None
    (see :func:`workbench.checkpoint.latest_checkpoint` for the layout)."""
    from .checkpoint import latest_checkpoint as latest

    path = latest(run_dir)
    return path if path is not None and os.path.exists(os.path.join(path, ".metadata")) else None


def save_run_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        *, step: int, state: dict, extra: dict | None = None, keep: int = 1) -> str:
    """Write one sharded checkpoint of a run as a unit; called by every rank. Returns its directory.

    Rank 0 prepares ``checkpoints/.tmp-step-N`` (:func:`workbench.checkpoint.prepare_checkpoint`);
    every rank writes its DCP shards into it and takes part in gathering the full weights, which
    rank 0 writes there as ``model.safetensors`` with ``state.pt`` (``state``: plain tensors and
    numbers, ``weights_only``-loadable); after a barrier rank 0 commits it
    (:func:`workbench.checkpoint.commit_checkpoint`: fsync, rename to ``step-N``, atomic ``latest``
    pointer, root ``model.safetensors`` export, older checkpoints deleted). A crash at any moment
    leaves ``latest`` naming a complete checkpoint.
    """
    from . import checkpoint as ckpt
    from .files import atomic_write

    tmp = os.path.join(os.fspath(run_dir), ckpt.CHECKPOINTS_DIR, ".tmp-" + ckpt.step_dir_name(step))
    if _rank() == 0:
        ckpt.prepare_checkpoint(run_dir, step)
    _barrier()
    save_sharded(tmp, model, optimizer, extra)
    export_safetensors(model, os.path.join(tmp, ckpt.MODEL_FILE), metadata={"step": str(int(step))})
    final = os.path.join(os.fspath(run_dir), ckpt.CHECKPOINTS_DIR, ckpt.step_dir_name(step))
    if _rank() == 0:
        atomic_write(os.path.join(tmp, STATE_FILE), lambda p: torch.save(state, p))
        final = ckpt.commit_checkpoint(run_dir, step, keep=keep, export=True)
    _barrier()
    return final


def load_run_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        extra: dict | None = None) -> dict:
    """Load a checkpoint written by :func:`save_run_checkpoint` (any number of ranks then and now);
    returns its ``state.pt`` dict (read with ``weights_only=True``)."""
    state = read_checkpoint_state(path)
    load_sharded(path, model, optimizer, extra)
    return state


def read_checkpoint_state(path: str | os.PathLike) -> dict:
    """The ``state.pt`` dict of a sharded checkpoint directory (no model needed)."""
    return torch.load(os.path.join(os.fspath(path), STATE_FILE), map_location="cpu", weights_only=True)
