"""Memory-efficient optimizers, a prototyping kit for update rules, and optimizer memory accounting.

Optimizers (all ``torch.optim.Optimizer`` subclasses with param groups, closures, ``state_dict``
loadable with ``weights_only=True`` and no host-device sync in ``step()``):

============================  ==========================================================================
:class:`Apollo`               APOLLO: random-projection scaled AdamW (rank 256, channel-wise scaling)
:class:`ApolloMini`           APOLLO-Mini: rank 1, tensor-wise scaling, scale 128 (~SGD memory)
:class:`GaLore`               GaLore: Adam in the top-r SVD subspace (for comparison)
:class:`Frugal`               FRUGAL: Adam on a random subspace, signSGD/SGD on the rest
:class:`Lamb`                 LAMB as apex FusedLAMB (global clipping, decay inside the trust ratio)
:class:`ZeroOrderSGD`         MeZO/SPSA: two forward passes, one scalar per step
:class:`Lion`                 Lion, written with the prototyping kit
============================  ==========================================================================

FSDP2 (``torch.distributed.fsdp.fully_shard``, see :mod:`workbench.distributed`): every optimizer
here steps DTensor parameters sharded on their rows and gives the update of the whole weight
(norms and projections that span the rows are summed over the ranks: a few numbers, or ``R`` of a
wide weight, per step; the README's scale-out section lists the collectives); state that follows
the rows is sharded and :func:`state_bytes` counts what one rank holds.

Kit and tools: :class:`RuleOptimizer` / :func:`update_rule` (write only the update rule),
:func:`lowrank_param_groups` (project attention/MLP weights only), :func:`state_bytes`,
:func:`estimate_state_bytes`, :func:`llama_shapes`, :func:`memory_table`, :func:`make_optimizer`,
:func:`compare_optimizers`.

Example:
    >>> import torch
    >>> from workbench.optim import ApolloMini, lowrank_param_groups, state_bytes, estimate_state_bytes
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    >>> opt = ApolloMini(lowrank_param_groups(net))
    >>> net(torch.randn(8, 64)).square().mean().backward()
    >>> opt.step()
    >>> state_bytes(opt) == estimate_state_bytes(net, "apollo-mini")
    True
"""
from .apollo import Apollo, ApolloMini
from .compare import compare_optimizers, make_optimizer
from .frugal import Frugal
from .galore import GaLore
from .groups import lowrank_param_groups, lowrank_parameter_names
from .lamb import Lamb
from .lion import Lion
from .memory import estimate_state_bytes, llama_shapes, memory_table, state_bytes
from .rule import RuleOptimizer, update_rule
from .zero_order import ZeroOrderSGD

__all__ = [
    "Apollo", "ApolloMini", "GaLore", "Frugal", "Lamb", "ZeroOrderSGD", "Lion",
    "RuleOptimizer", "update_rule", "lowrank_param_groups", "lowrank_parameter_names",
    "state_bytes", "estimate_state_bytes", "llama_shapes", "memory_table",
    "make_optimizer", "compare_optimizers",
]
