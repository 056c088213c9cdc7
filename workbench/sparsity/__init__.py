"""workbench.sparsity: update sparsity between checkpoints, overlap of updated entries.

Example:
    >>> import torch
    >>> from workbench.sparsity import diff_checkpoints
    >>> diff_checkpoints({"w": torch.zeros(2)}, {"w": torch.tensor([0., 1.])}).overall["sparsity"]
    0.5
"""
from workbench.sparsity.diff import DEFAULT_MAX_RANK_NUMEL, SparsityDiff, diff_checkpoints, overlap, parse_name

__all__ = ["SparsityDiff", "diff_checkpoints", "overlap", "parse_name", "DEFAULT_MAX_RANK_NUMEL"]
