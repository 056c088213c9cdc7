"""Optimizer step time against torch.optim.AdamW on the same parameters, and optimizer-state bytes.

A LLaMA-style layer stack (q, k, v, o: d x d; gate, up: ffn x d; down: d x ffn; two norms per layer;
no embeddings) with fixed random gradients; only ``optimizer.step()`` is timed. The baseline is the
faster of torch AdamW's for-loop and foreach paths on CPU, ``AdamW(fused=True)`` on CUDA.
APOLLO regenerates its random projection at every step by default (nothing stored); the
"cached P" row keeps it between refreshes instead. Steady-state steps and projection-refresh
steps (APOLLO's new random matrices, GaLore's SVD,
FRUGAL's new subspace) are timed separately; "amortized" adds the refresh cost spread over
T = 200 steps. Memory: optimizer-state bytes per parameter (every weight here but the norms is
projected), measured with ``state_bytes`` and checked against ``estimate_state_bytes``.

    python benchmarks/optim.py                      # ~50M parameters (d 768, ffn 2048, 7 layers)
    python benchmarks/optim.py --repeats 2          # quicker
    python benchmarks/optim.py --device cuda --d 2048 --ffn 5504 --layers 8     # ~400M on a GPU
"""
import argparse
import statistics
import time

import torch

from _machine import describe
from workbench.optim import (Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, estimate_state_bytes,
                             state_bytes)

T = 200  # projection refresh interval the amortized figure assumes


def layer_stack(d, ffn, layers, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(device))
        p.grad = torch.randn(s, generator=g).to(device)
        params.append(p)
    return params


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def candidates(device, rank):
    base = {}
    if device.type == "cuda":
        base["AdamW (torch, fused)"] = lambda ps: torch.optim.AdamW(ps, lr=1e-6, fused=True)
    else:
        base["AdamW (torch, for-loop)"] = lambda ps: torch.optim.AdamW(ps, lr=1e-6, foreach=False)
        base["AdamW (torch, foreach)"] = lambda ps: torch.optim.AdamW(ps, lr=1e-6, foreach=True)
    ours = {
        f"APOLLO r={rank}": lambda ps: Apollo(ps, lr=1e-6, rank=rank, update_proj_gap=4),
        f"APOLLO r={rank}, cached P": lambda ps: Apollo(ps, lr=1e-6, rank=rank, update_proj_gap=4,
                                                        cache_projection=True),
        f"APOLLO r={rank // 2}": lambda ps: Apollo(ps, lr=1e-6, rank=rank // 2, update_proj_gap=4),
        "APOLLO-Mini": lambda ps: ApolloMini(ps, lr=1e-6, update_proj_gap=4),
        f"GaLore r={rank // 2}": lambda ps: GaLore(ps, lr=1e-6, rank=rank // 2, update_proj_gap=4),
        "FRUGAL random rho=.25": lambda ps: Frugal(ps, lr=1e-6, update_proj_gap=4),
        "FRUGAL columns rho=.25": lambda ps: Frugal(ps, lr=1e-6, proj_type="columns", update_proj_gap=4),
        "FRUGAL blocks rho=.25": lambda ps: Frugal(ps, lr=1e-6, proj_type="blocks", update_proj_gap=4),
        "LAMB": lambda ps: Lamb(ps, lr=1e-6),
        "Lion": lambda ps: Lion(ps, lr=1e-6),
    }
    specs = {f"APOLLO r={rank}": {"name": "apollo", "rank": rank},
             f"APOLLO r={rank}, cached P": {"name": "apollo", "rank": rank, "cache_projection": True},
             f"APOLLO r={rank // 2}": {"name": "apollo", "rank": rank // 2}, "APOLLO-Mini": "apollo-mini",
             f"GaLore r={rank // 2}": {"name": "galore", "rank": rank // 2}, "FRUGAL random rho=.25": "frugal",
             "FRUGAL columns rho=.25": {"name": "frugal", "proj_type": "columns"},
             "FRUGAL blocks rho=.25": {"name": "frugal", "proj_type": "blocks"}, "LAMB": "lamb", "Lion": "lion"}
    if device.type == "cuda":       # bf16 tensor cores for the projection (a CPU without them: much slower)
        ours[f"APOLLO r={rank}, bf16 projection"] = lambda ps: Apollo(ps, lr=1e-6, rank=rank, update_proj_gap=4,
                                                                      proj_dtype="bfloat16")
        specs[f"APOLLO r={rank}, bf16 projection"] = {"name": "apollo", "rank": rank, "proj_dtype": "bfloat16"}
    return base, {**ours, **official_apollo(rank)}, specs


def official_apollo(rank):
    """The official ``apollo-torch`` package's APOLLO and APOLLO-Mini, when it is installed (an optional
    comparison only: its licence is non-commercial; ``pip install apollo-torch bitsandbytes``)."""
    try:
        from apollo_torch import APOLLOAdamW
    except ImportError:
        print("apollo-torch is not installed: no official-package rows (pip install apollo-torch bitsandbytes)")
        return {}

    def make(r, scale_type, scale):
        def build(ps):
            low = [p for p in ps if p.dim() == 2]
            rest = [p for p in ps if p.dim() != 2]
            return APOLLOAdamW([{"params": rest},
                                {"params": low, "rank": r, "proj": "random", "proj_type": "std",
                                 "scale_type": scale_type, "scale": scale, "update_proj_gap": 4}], lr=1e-6)
        return build

    return {f"apollo-torch r={rank}": make(rank, "channel", 1.0), "apollo-torch Mini": make(1, "tensor", 128.0)}


def timed(opt, device):
    sync(device)
    t0 = time.perf_counter()
    opt.step()
    sync(device)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (3 steady steps + 1 refresh step)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                    help="time only the optimizers whose label contains one of these (case-insensitive; "
                         "the AdamW baseline always runs), e.g. --only apollo")
    ap.add_argument("--tf32", action="store_true",
                    help="torch.set_float32_matmul_precision('high'): TF32 tensor cores for fp32 matmuls (the "
                         "projections) on CUDA, as many training scripts set it")
    args = ap.parse_args()
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(describe())
    params = layer_stack(args.d, args.ffn, args.layers, device)
    n = sum(p.numel() for p in params)
    print(f"layer stack: {args.layers} layers, d {args.d}, ffn {args.ffn}: {n / 1e6:.1f}M parameters on {device}, "
          f"torch threads {torch.get_num_threads()}, fp32 matmul precision {torch.get_float32_matmul_precision()}")
    base, ours, specs = candidates(device, args.rank)
    if args.only:
        ours = {k: v for k, v in ours.items() if any(t.lower() in k.lower() for t in args.only)}
    opts = {name: make(params) for name, make in {**base, **ours}.items()}
    steady = {name: [] for name in opts}
    refresh = {name: [] for name in opts}
    for name, opt in opts.items():          # step 1: state allocation and first projections
        opt.step()
    for _ in range(args.repeats):           # interleaved, so a noisy neighbour hits every optimizer alike
        for name, opt in opts.items():
            steady[name] += [timed(opt, device) for _ in range(3)]    # steps 2-4 of a window (T = 4)
            refresh[name].append(timed(opt, device))                   # step 5: new projection / subspace
    med = {k: statistics.median(v) for k, v in steady.items()}
    ref_med = {k: statistics.median(v) for k, v in refresh.items()}
    baseline = min(med[k] for k in base)
    bname = min(base, key=lambda k: med[k])
    adamw_bytes = state_bytes(opts[bname])
    print(f"\nbaseline: {bname}, {baseline * 1e3:.1f} ms/step; ratios are step time / baseline (lower is faster)\n")
    print(f"{'optimizer':26s} {'steady ms':>10s} {'ratio':>7s} {'refresh ms':>11s} {'amortized ratio':>16s} "
          f"{'state B/param':>14s} {'vs AdamW':>9s}")
    for name in opts:
        extra = max(ref_med[name] - med[name], 0.0)
        amort = (med[name] + extra / T) / baseline
        sb = state_bytes(opts[name])
        if name in specs:
            assert sb == estimate_state_bytes(params, specs[name]) or "blocks" in name, name
        print(f"{name:26s} {med[name] * 1e3:10.1f} {med[name] / baseline:7.2f} {ref_med[name] * 1e3:11.1f} "
              f"{amort:16.2f} {sb / n:14.3f} {sb / adamw_bytes:9.4f}")
    # the bound of the issue: APOLLO's moments are r / min(m, n) of AdamW's, per projected weight
    r = args.rank
    low = [p for p in params if p.dim() == 2]
    adamw_low = estimate_state_bytes(low, "adamw")
    moments = estimate_state_bytes(low, {"name": "apollo", "rank": r, "norm_growth_limit": None})
    bound = sum(8 * p.numel() * min(r, *p.shape) / min(p.shape) for p in low)
    default = estimate_state_bytes(low, {"name": "apollo", "rank": r})
    cached = estimate_state_bytes(low, {"name": "apollo", "rank": r, "cache_projection": True})
    mini = estimate_state_bytes(low, "apollo-mini") / adamw_low
    print(f"\nprojected weights only: APOLLO r={r} moments = {moments / bound:.3f} x the r/min(m,n) bound "
          f"({moments / adamw_low:.4f} of AdamW); all state (+ 1 limiter norm per weight) {default / adamw_low:.4f}; "
          f"with cached P {cached / adamw_low:.4f}; APOLLO-Mini all-in = {100 * mini:.3f}% of AdamW")


if __name__ == "__main__":
    main()
