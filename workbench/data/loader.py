"""Deterministic, resumable, DDP-aware batches of ``(x, y)`` from packed blocks.

:class:`BlockLoader` walks a per-epoch permutation of the block rows. The permutation
of epoch ``e`` comes from a CPU ``torch.Generator`` seeded with
``seed * 1_000_003 + e``, so it is the same on every machine. A *global* batch is
``batch_size * world_size`` consecutive entries of the permutation; rank ``r`` takes
entries ``[r * batch_size, (r + 1) * batch_size)`` of it, so two ranks with batch 4 see
together exactly the rows that one rank with batch 8 sees. The incomplete tail of each
epoch is dropped and the next epoch starts; iteration never ends. ``state_dict()`` is
``{"seed", "epoch", "position"}`` (ints; ``position`` = index into the epoch's
permutation of the next global batch), and a loader that loads it continues with exactly
the batches the original would have produced.

Example::

    >>> import torch
    >>> from workbench.data import BlockLoader
    >>> blocks = torch.arange(40).reshape(10, 4)        # 10 blocks of block_size 3
    >>> loader = BlockLoader(blocks, batch_size=2, seed=0)
    >>> len(loader)                                      # batches per epoch
    5
    >>> x, y = next(loader)
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([2, 3]), True)
    >>> state = loader.state_dict()
    >>> again = BlockLoader(blocks, batch_size=2); again.load_state_dict(state)
    >>> bool((next(again)[0] == next(loader)[0]).all())
    True
"""
from __future__ import annotations

import operator
from typing import Iterator

import torch

_SEED_MULT = 1_000_003


def _check_blocks(blocks) -> torch.Tensor:
    from .shards import TokenBlocks

    if isinstance(blocks, TokenBlocks):     # memory-mapped prepared shards (workbench data prepare)
        return blocks
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.shape[1] < 2:
        shape = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise ValueError(f"blocks must be a 2-D tensor [n_blocks, block_size + 1] with "
                         f"block_size >= 1 (from load_blocks); got {shape}")
    return blocks


def _int(name: str, value, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        out = None
    if out is None or out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def _positive_int(name: str, value) -> int:
    return _int(name, value, 1)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The order of the ``n`` rows in ``epoch`` (``arange`` when ``shuffle`` is False)."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) * _SEED_MULT + int(epoch))
    return torch.randperm(n, generator=g)


class BlockLoader:
    """Endless, seeded batches ``(x, y)``, each ``LongTensor [batch_size, block_size]``.

    ``blocks`` is a tensor from :func:`load_blocks` or a :class:`~workbench.data.shards.TokenBlocks`
    (prepared shards on disk, read lazily; its epoch order is a keyed Feistel permutation rather than
    ``randperm``, so no ``n_blocks``-sized array is ever built).

    ``x = rows[:, :-1]``, ``y = rows[:, 1:]``. ``len(loader)`` is the number of (global)
    batches per epoch; ``loader.epoch`` the current epoch. See the module docstring.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.blocks = _check_blocks(blocks)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.world_size = _positive_int("world_size", world_size)
        rank = _int("rank", rank, 0)
        if rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {rank}")
        self.rank = rank
        self.seed = _int("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.global_batch = self.batch_size * self.world_size
        n = self.blocks.shape[0]
        if n < self.global_batch:
            raise ValueError(f"only {n} blocks, fewer than one global batch of batch_size*world_size"
                             f" = {self.global_batch}; lower batch_size or block_size, or add data")
        self.epoch = 0
        self.position = 0
        self._perm: torch.Tensor | None = None
        self._perm_epoch = -1

    def __len__(self) -> int:
        return self.blocks.shape[0] // self.global_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            lazy = getattr(self.blocks, "permutation", None)   # TokenBlocks: computed on demand, O(1) memory
            self._perm = (lazy(self.seed, self.epoch, self.shuffle) if callable(lazy) else
                          epoch_permutation(self.blocks.shape[0], self.seed, self.epoch, self.shuffle))
            self._perm_epoch = self.epoch
        return self._perm

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.global_batch > self.blocks.shape[0]:
            self.epoch += 1
            self.position = 0
        start = self.position + self.rank * self.batch_size
        idx = self._permutation()[start:start + self.batch_size]
        self.position += self.global_batch
        rows = self.blocks[idx]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"seed": int(self.seed), "epoch": int(self.epoch), "position": int(self.position)}

    def load_state_dict(self, state: dict) -> None:
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}; expected the dict from "
                             "BlockLoader.state_dict() with keys seed, epoch, position")
        seed, epoch, position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        if seed < 0 or epoch < 0 or not 0 <= position <= self.blocks.shape[0]:
            raise ValueError(f"invalid loader state {dict(state)}: need seed >= 0, epoch >= 0 and "
                             f"0 <= position <= {self.blocks.shape[0]} (number of blocks)")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._perm_epoch = -1

    def __repr__(self) -> str:
        return (f"BlockLoader(n_blocks={self.blocks.shape[0]}, batch_size={self.batch_size}, "
                f"rank={self.rank}/{self.world_size}, epoch={self.epoch}, position={self.position})")


def eval_batches(blocks: torch.Tensor, batch_size: int, max_batches: int | None = None):
    """Validation batches ``(x, y)`` in fixed row order; the last batch may be smaller.

    Arguments are checked at once (not at the first ``next``).

    Example::

        >>> import torch
        >>> from workbench.data import eval_batches
        >>> [x.shape[0] for x, y in eval_batches(torch.zeros(10, 5, dtype=torch.long), 4)]
        [4, 4, 2]
    """
    blocks = _check_blocks(blocks)
    _positive_int("batch_size", batch_size)
    if max_batches is not None:
        _positive_int("max_batches", max_batches)
    return _eval_iter(blocks, batch_size, max_batches)


def _eval_iter(blocks, batch_size, max_batches):
    for i, start in enumerate(range(0, blocks.shape[0], batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        rows = blocks[start:start + batch_size]
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
