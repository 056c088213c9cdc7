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
"""
import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rank", type=int, default=32, help="APOLLO's rank (the tiny model is 128 wide)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe())
    print(f"tiny model, stdlib corpus, {args.steps} steps of {args.batch_size} x {args.seq_len} tokens, "
          f"cosine, seeds {args.seeds}\n")
    ratios, losses = {}, {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        df = compare_optimizers(specs(args.rank, args.ablations), steps=args.steps,
                                warmup_steps=max(10, args.steps // 15), batch_size=args.batch_size,
                                seq_len=args.seq_len, max_tokens=None, eval_interval=args.steps,
                                eval_batches=16, seed=seed)
        base = df.loc["AdamW", "final_val_loss"]
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s)")
        print(f"  {'optimizer':40s} {'val loss':>9s} {'vs AdamW':>9s} {'step ms':>8s}")
        for label, row in df.iterrows():
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


if __name__ == "__main__":
    main()
