"""Worker for tests/test_fsdp_optim.py, run under torchrun with 2 gloo processes on CPU.

Every optimizer steps a small model twice over: unsharded (a reference copy on every rank) and
FSDP2-sharded with the same gradients; rank 0 writes, per optimizer, the largest relative
difference of the parameter updates and the per-rank / reference state bytes, to argv[1] (JSON).
Shapes are chosen so the rows do not split evenly (15 and 7 rows over 2 ranks) and include tall
and wide matrices, an embedding and 1-D parameters.
"""
import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import distribute_tensor

from workbench.distributed import init_distributed, shard_model
from workbench.optim import Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, state_bytes, update_rule


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(12, 15, bias=False)     # 15 x 12: tall, 15 rows (8 + 7)
        self.down = torch.nn.Linear(15, 7)                # 7 x 15: wide, 7 rows (4 + 3)
        self.norm = torch.nn.LayerNorm(12)
        self.back = torch.nn.Linear(7, 12, bias=False)     # 12 x 7: tall, even

    def forward(self, x):
        return x + self.back(torch.relu(self.down(torch.relu(self.up(self.norm(x))))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 12)
        self.layers = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        h = self.embed(x)
        for b in self.layers:
            h = b(h)
        return h


def groups(model, **kw):
    mats = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    return [dict(params=mats, **kw), dict(params=rest, lowrank=False)]


@update_rule(lr=1e-2, eps=1e-8, state=("m",), elementwise=False)
def NormalizedMomentum(grad, state, group):
    """A rule with a per-tensor reduction: momentum divided by its norm."""
    state["m"].mul_(0.9).add_(grad)
    return state["m"] / (torch.linalg.vector_norm(state["m"]) + group["eps"])


OPTIMIZERS = {
    "apollo": lambda m: Apollo(groups(m), lr=1e-2, rank=3, update_proj_gap=2, weight_decay=0.1),
    "apollo-tensor": lambda m: Apollo(groups(m), lr=1e-2, rank=3, update_proj_gap=2, scale_type="tensor"),
    "apollo-cached-step": lambda m: Apollo(groups(m), lr=1e-2, rank=3, cache_projection=True,
                                           bias_correction="step", update_proj_gap=2),
    "apollo-mini": lambda m: ApolloMini(groups(m), lr=1e-2, update_proj_gap=2, weight_decay=0.1),
    "galore": lambda m: GaLore(groups(m), lr=1e-2, rank=3, update_proj_gap=2, weight_decay=0.1),
    "frugal-random": lambda m: Frugal(groups(m), lr=1e-2, rho=0.3, update_proj_gap=2, proj_type="random"),
    "frugal-columns": lambda m: Frugal(groups(m), lr=1e-2, rho=0.3, update_proj_gap=2, proj_type="columns"),
    "frugal-rows": lambda m: Frugal(groups(m), lr=1e-2, rho=0.3, update_proj_gap=2, proj_type="rows",
                                    residual="sgd"),
    "frugal-blocks": lambda m: Frugal(groups(m), lr=1e-2, rho=0.5, update_proj_gap=2, proj_type="blocks"),
    "lamb": lambda m: Lamb(m.parameters(), lr=1e-2, weight_decay=0.01, max_grad_norm=1.0),
    "lion": lambda m: Lion(m.parameters(), lr=1e-3, weight_decay=0.1),
    "rule-norm": lambda m: NormalizedMomentum(m.parameters()),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
}
STEPS = 5


def main(out: str) -> None:
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    rank = dist.get_rank()
    results = {}
    for name, make in OPTIMIZERS.items():
        torch.manual_seed(0)
        ref = Net()
        model = shard_model(copy.deepcopy(ref))
        opt_ref, opt = make(ref), make(model)
        start = {n: p.detach().clone() for n, p in ref.named_parameters()}
        gen = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            for (n, p), q in zip(ref.named_parameters(), model.parameters()):
                g = torch.randn(p.shape, generator=gen) * (1 + float(hash(n) % 3))
                p.grad = g.clone()
                q.grad = distribute_tensor(g, q.device_mesh, q.placements)
            opt_ref.step()
            opt.step()
        worst = 0.0
        for (n, p), q in zip(ref.named_parameters(), model.parameters()):
            full = q.detach().full_tensor()
            du_ref, du = p.detach() - start[n], full - start[n]
            worst = max(worst, float((du - du_ref).norm() / du_ref.norm().clamp_min(1e-12)))
        sizes = [None] * dist.get_world_size()
        dist.all_gather_object(sizes, state_bytes(opt))
        results[name] = {"rel_err": worst, "state_bytes_per_rank": sizes, "state_bytes_unsharded": state_bytes(opt_ref)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
