"""Quality at equal steps: APOLLO and APOLLO-Mini against AdamW on the tiny model and the built-in corpus.

Each optimizer runs at its documented default learning rate (AdamW 3e-3, the trainer's default for the
tiny model, betas (0.9, 0.95), weight decay 0.1; APOLLO and APOLLO-Mini 1e-2, the paper's, no weight
decay), on the same model initialisation, data order and cosine schedule (warmup 1/15 of the steps,
at least 10) through ``compare_optimizers``. Prints the final validation loss of every run and the
ratio to AdamW's per seed, then the mean and spread over seeds. The target of issue 5: APOLLO and
APOLLO-Mini within 2% of AdamW (ratio <= 1.02).

    python benchmarks/optim_quality.py                        # 1000 steps, seeds 0 1 2: ~15 min on 2 CPU cores
    python benchmarks/optim_quality.py --steps 150 --seeds 0  # the tutorial's budget, ~1 min
    python benchmarks/optim_quality.py --ablations            # + APOLLO-Mini without the limiter and with the
                                                              #   official code's bias-correction placement
    python benchmarks/optim_quality.py --sweep --steps 300    # + the same log-space LR grid for every optimizer

``--sweep`` (the APOLLO paper tunes every optimizer's LR): each optimizer also runs at every LR of one
log-spaced grid (``--grid LO HI N``, default 1e-3 .. 1e-1, 5 points: 1e-3, 3.2e-3, 1e-2, 3.2e-2, 1e-1), all
other settings unchanged, same seeds. Two tables follow: at the default LRs (as without ``--sweep``) and
swept: per optimizer the grid LR with the lowest final validation loss averaged over the seeds, that
loss (mean +- sd over seeds) and its ratio to swept AdamW's (per seed). A run that diverges (NaN or
inf) counts as infinitely bad. The full grid is printed as well.
"""
import argparse
import math
import statistics
import time

import torch

from _machine import describe
from workbench.optim import compare_optimizers


def specs(rank, ablations):
    out = {"AdamW": ("adamw", {"lr": 3e-3}),
           f"APOLLO r={rank}": ("apollo", {"lr": 1e-2, "rank": rank}),
           "APOLLO-Mini": ("apollo-mini", {"lr": 1e-2})}
    if ablations:
        out.update({
            f"APOLLO r={rank}, bias_correction=step": ("apollo", {"lr": 1e-2, "rank": rank, "bias_correction": "step"}),
            "APOLLO-Mini, bias_correction=step": ("apollo-mini", {"lr": 1e-2, "bias_correction": "step"}),
            "APOLLO-Mini, no limiter": ("apollo-mini", {"lr": 1e-2, "norm_growth_limit": None}),
        })
    return out


ORDER = ("AdamW", "APOLLO", "APOLLO-Mini")


def sweep_specs(rank, grid):
    """label -> spec for every optimizer at every LR of ``grid``; labels ``"<optimizer> lr=<lr>"``."""
    base = {"AdamW": ("adamw", {}), "APOLLO": ("apollo", {"rank": rank}), "APOLLO-Mini": ("apollo-mini", {})}
    return {f"{name} lr={lr:.3g}": (opt, {**kw, "lr": lr}) for name, (opt, kw) in base.items() for lr in grid}


def _finite(x):
    return x if math.isfinite(x) else math.inf


def swept_table(grid_losses, seeds):
    """Per optimizer: the grid LR with the lowest mean final val loss over seeds, and that LR's losses.

    ``grid_losses``: optimizer -> lr -> [loss per seed]. Returns optimizer -> (lr, [loss per seed]).
    """
    best = {}
    for name, by_lr in grid_losses.items():
        lr = min(by_lr, key=lambda x: statistics.mean(_finite(v) for v in by_lr[x]))
        best[name] = (lr, by_lr[lr])
    return best


def print_sweep(grid, grid_losses, seeds, rank):
    grid_losses = {k: grid_losses[k] for k in ORDER}
    print(f"\nLR sweep over the grid {[f'{x:.3g}' for x in grid]} (final validation loss, mean over seeds {seeds}):")
    print(f"  {'optimizer':14s} " + " ".join(f"{x:>9.3g}" for x in grid))
    for name, by_lr in grid_losses.items():
        print(f"  {name:14s} " + " ".join(f"{statistics.mean(_finite(v) for v in by_lr[x]):9.4f}"
                                           for x in sorted(by_lr)))
    best = swept_table(grid_losses, seeds)
    adamw = best["AdamW"][1]
    print(f"\nswept: best grid LR per optimizer; final validation loss and ratio to swept AdamW's (per seed)")
    for name, (lr, losses) in best.items():
        r = [a / b for a, b in zip(losses, adamw)]
        sd = statistics.stdev(r) if len(r) > 1 else 0.0
        lsd = statistics.stdev(losses) if len(losses) > 1 else 0.0
        label = f"APOLLO r={rank}" if name == "APOLLO" else name
        print(f"  {label:14s} lr {lr:.3g}  loss {statistics.mean(losses):.4f} +- {lsd:.4f}  "
              f"ratio {statistics.mean(r):.4f} +- {sd:.4f}  (per seed {' / '.join(f'{x:.3f}' for x in r)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rank", type=int, default=32, help="APOLLO's rank (the tiny model is 128 wide)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="also run every optimizer on one log-space LR grid")
    ap.add_argument("--sweep-only", action="store_true",
                    help="with --sweep: skip the default-LR runs (e.g. to extend an earlier grid)")
    ap.add_argument("--grid", type=float, nargs=3, default=[1e-3, 1e-1, 5], metavar=("LO", "HI", "N"),
                    help="the sweep's grid: N log-spaced LRs from LO to HI (default 1e-3 1e-1 5)")
    args = ap.parse_args()
    lo, hi, n = args.grid
    if not (0 < lo < hi and n >= 2 and n == int(n)):
        ap.error(f"--grid needs 0 < LO < HI and an integer N >= 2, got {args.grid}")
    grid = [lo * (hi / lo) ** (i / (int(n) - 1)) for i in range(int(n))]
    grid_losses: dict[str, dict[float, list]] = {}
    torch.set_num_threads(args.threads)
    print(describe())
    print(f"tiny model, stdlib corpus, {args.steps} steps of {args.batch_size} x {args.seq_len} tokens, "
          f"cosine, seeds {args.seeds}\n")
    ratios, losses = {}, {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        todo = {} if args.sweep and args.sweep_only else specs(args.rank, args.ablations)
        same = {}                                        # sweep label -> the default run it equals
        if args.sweep:
            for label, spec in sweep_specs(args.rank, grid).items():
                twin = next((k for k, v in todo.items() if v == spec and " lr=" not in k), None)
                if twin is None:
                    todo[label] = spec
                else:
                    same[label] = twin
        df = compare_optimizers(todo, steps=args.steps,
                                warmup_steps=max(10, args.steps // 15), batch_size=args.batch_size,
                                seq_len=args.seq_len, max_tokens=None, eval_interval=args.steps,
                                eval_batches=16, seed=seed)
        base = df.loc["AdamW", "final_val_loss"] if "AdamW" in df.index else float("nan")
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s)")
        print(f"  {'optimizer':40s} {'val loss':>9s} {'vs AdamW':>9s} {'step ms':>8s}")
        for label, twin in same.items():                 # grid points that are a default run: its result
            lr = float(sweep_specs(args.rank, grid)[label][1]["lr"])
            grid_losses.setdefault(label.split(" lr=")[0], {}).setdefault(lr, []).append(
                float(df.loc[twin, "final_val_loss"]))
        for label, row in df.iterrows():
            if " lr=" in label:                          # a sweep run: kept for the sweep tables
                name = label.split(" lr=")[0]
                lr = float(todo[label][1]["lr"])
                grid_losses.setdefault(name, {}).setdefault(lr, []).append(float(row["final_val_loss"]))
                print(f"  {label:40s} {row['final_val_loss']:9.4f} {'':9s} {row['step_time_ms']:8.1f}")
                continue
            r = row["final_val_loss"] / base
            ratios.setdefault(label, []).append(r)
            losses.setdefault(label, []).append(row["final_val_loss"])
            print(f"  {label:40s} {row['final_val_loss']:9.4f} {r:9.4f} {row['step_time_ms']:8.1f}")
    print(f"\nover seeds {args.seeds}: final validation loss, and its ratio to AdamW's (target <= 1.02)")
    for label in ratios:
        sd = statistics.stdev(ratios[label]) if len(ratios[label]) > 1 else 0.0
        mean = statistics.mean(ratios[label])
        verdict = "" if label == "AdamW" else ("  within 2%" if mean <= 1.02 else "  NOT within 2%")
        print(f"  {label:40s} loss {statistics.mean(losses[label]):.4f}  ratio {mean:.4f} +- {sd:.4f}{verdict}")
    if args.sweep:
        print_sweep(grid, grid_losses, args.seeds, args.rank)


if __name__ == "__main__":
    main()
