"""FSDP2 vs DDP vs one process: step time and memory per rank of the trainer, same global batch.

Each configuration is a real ``workbench train`` run (under ``torchrun`` for DDP and FSDP) with
evaluation off and one checkpoint at the end; the numbers come from its ``log.jsonl``:
median step time (steps after the first two), and rank 0's peak memory (CUDA max allocated, or the
process's peak RSS on CPU, which includes the ~0.4 GB of the Python/torch runtime). Beside it, the
bytes of parameters + gradients + AdamW state that one rank holds (counted, not measured: all of it
on one process and under DDP, a 1/N share of it under FSDP2 plus one block's gathered weights).

Usage:
    python benchmarks/fsdp.py                                   # CPU: tiny and llama-30m on 2 ranks
    python benchmarks/fsdp.py --device cuda --nproc 8 --models llama-100m --batch-size 8 --seq-len 1024
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def run(mode: str, model: str, args, root: str) -> dict:
    run_dir = os.path.join(root, f"{model}-{mode}")
    nproc = 1 if mode == "single" else args.nproc
    batch = args.batch_size * (args.nproc if mode == "single" else 1)       # same global batch
    train = ["-m", "workbench.cli", "train", "--run-dir", run_dir, "--model", model, "--data", "stdlib",
             "--steps", str(args.steps), "--batch-size", str(batch), "--seq-len", str(args.seq_len),
             "--eval-batches", "0", "--checkpoint-interval", "0", "--device", args.device, "--no-progress",
             "--parallel", "none" if mode == "single" else mode, "--lr", "1e-3"]
    cmd = [sys.executable, *train] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.path.dirname(HERE)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {model} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    times = [b["time"] - a["time"] for a, b in zip(log, log[1:])][1:]
    return {"step_s": statistics.median(times), "peak_mem": log[-1]["peak_mem"],
            "tokens_per_s": log[-1]["tokens"] / log[-1]["time"]}


def held_bytes(model: str, mode: str, nproc: int) -> int:
    """Parameters + gradients + AdamW moments (fp32) one rank holds between steps."""
    from workbench.models import build_model

    m = build_model(model)
    total = sum(p.numel() for p in m.parameters()) * 4 * 4            # param, grad, exp_avg, exp_avg_sq
    return total // nproc if mode == "fsdp" else total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,llama-30m")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2, help="per rank (one process gets nproc x this)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = ap.parse_args()
    from _machine import describe

    print(f"machine: {describe()}")
    print(f"{args.nproc} ranks x batch {args.batch_size} x {args.seq_len} tokens (one process: batch "
          f"{args.batch_size * args.nproc}), {args.steps} steps, AdamW, {args.threads} thread(s) per process\n")
    print("| model | mode | step time (s) | vs one process | peak memory rank 0 (MB) | params+grads+AdamW per rank (MB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for model in args.models.split(","):
            base = None
            for mode in ("single", "ddp", "fsdp"):
                r = run(mode, model, args, root)
                base = base or r["step_s"]
                print(f"| {model} | {mode if mode != 'single' else 'one process'} | {r['step_s']:.3f} | "
                      f"{r['step_s'] / base:.2f}x | {r['peak_mem'] / 2**20:.0f} | "
                      f"{held_bytes(model, mode, args.nproc) / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
