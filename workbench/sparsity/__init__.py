"""workbench.sparsity: update sparsity between checkpoints, overlap of updated entries, pruning, retraining.

Example:
    >>> import torch
    >>> from workbench.sparsity import diff_checkpoints
    >>> diff_checkpoints({"w": torch.zeros(2)}, {"w": torch.tensor([0., 1.])}).overall["sparsity"]
    0.5
"""
from workbench.sparsity.diff import (DEFAULT_MAX_RANK_NUMEL, TOLERANCE_GRID, SparsityDiff, diff_checkpoints,
                                     matrix_type, overlap, parse_name, snap_tolerance)
from workbench.sparsity.prune import (FLAP_STRUCTURES, FLAP_TARGETS, blocks, flap_prune, flap_scores, flap_units,
                                      input_norms, input_stats,
                                      magnitude_prune, magnitude_scores, prune_mask, wanda_prune, wanda_scores)
from workbench.sparsity.finetune import dpo, grpo, preference_pairs, sft
from workbench.sparsity.retrain import MaskRestorer, MiguHook, perp_parameters, restore_masks

__all__ = ["SparsityDiff", "diff_checkpoints", "overlap", "parse_name", "DEFAULT_MAX_RANK_NUMEL",
           "TOLERANCE_GRID", "snap_tolerance", "matrix_type",
           "magnitude_scores", "wanda_scores", "prune_mask", "input_norms", "magnitude_prune", "wanda_prune",
           "flap_scores", "flap_prune", "flap_units", "input_stats", "FLAP_TARGETS", "FLAP_STRUCTURES", "blocks",
           "perp_parameters", "restore_masks", "MaskRestorer", "MiguHook",
           "sft", "dpo", "grpo", "preference_pairs"]
