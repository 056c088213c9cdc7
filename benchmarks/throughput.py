"""Tokens/s and MFU of the trainer against a bare nanoGPT-style loop, in one process.

For each preset: the bare loop (forward under bf16 autocast on CUDA, cross-entropy, backward,
clip, fused AdamW step, ``loss.item()``) and ``workbench.train.Trainer`` (the same model, data,
optimizer and schedule, with its run log, norms and NaN guard), each eager and ``torch.compile``-d.
Runs alternate bare / trainer per round so a drifting machine hits both alike. MFU = tokens/s x
``model_flops_per_token`` (6 N + attention) / the GPU's peak dense bf16 FLOP/s (a table of known
GPUs, or ``--peak-tflops``); on CPU only tokens/s is printed.

    python benchmarks/throughput.py --device cuda --models llama-30m,llama-100m --batch-size 16 --seq-len 1024
    python benchmarks/throughput.py --device cpu --models tiny --steps 6          # a smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from workbench import schedules  # noqa: E402
from workbench.data import BlockLoader, load_blocks  # noqa: E402
from workbench.models import build_model, model_flops_per_token  # noqa: E402
from workbench.train import TrainConfig, Trainer, build_optimizer  # noqa: E402

#: peak dense bf16 tensor-core FLOP/s by device-name substring (vendor datasheets, no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
             "RTX 4090": 165e12, "A6000": 155e12}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_tokens_per_s(cfg: TrainConfig, blocks, device, steps: int, warmup: int) -> float:
    model = build_model(cfg.model, vocab_size=256, seed=cfg.seed, max_seq_len=cfg.seq_len).to(device)
    opt = build_optimizer("adamw", model, cfg)            # fused=True on CUDA
    sched = schedules.schedule_from_dict(cfg.schedule).torch_scheduler(opt)
    step_model = torch.compile(model) if cfg.compile else model
    loader = BlockLoader(blocks, cfg.batch_size, seed=cfg.seed)
    bf16 = device.type == "cuda"
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        x, y = next(loader)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return cfg.batch_size * cfg.seq_len / statistics.median(times)


def trainer_tokens_per_s(cfg: TrainConfig, blocks, device, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        run = TrainConfig(**{**cfg.to_dict(), "run_dir": os.path.join(d, "run"), "steps": warmup + steps})
        model = build_model(cfg.model, vocab_size=256, seed=cfg.seed, max_seq_len=cfg.seq_len)
        events = list(Trainer(run, model=model, train_data=blocks).iter_run())
    return statistics.median(e["tokens_per_s"] for e in events[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama-30m,llama-100m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    args = ap.parse_args()
    from _machine import describe

    device = torch.device(args.device)
    peak = peak_flops(device, args.peak_tflops)
    total = args.warmup + args.steps
    blocks = load_blocks("stdlib", "train", block_size=args.seq_len,
                         max_tokens=max(200_000, 2 * total * args.batch_size * (args.seq_len + 1)))
    print(f"machine: {describe()}")
    print(f"batch {args.batch_size} x {args.seq_len} tokens, {args.rounds} rounds x {args.steps} timed steps "
          f"(+{args.warmup} warmup), AdamW, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; "
          f"peak {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (no MFU)'}\n")
    print("| model | compiled | bare loop tokens/s | trainer tokens/s | trainer / bare | MFU bare | MFU trainer |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        flops = model_flops_per_token(build_model(name, vocab_size=256, max_seq_len=args.seq_len), args.seq_len)
        for compiled in ([False] if args.no_compile else [False, True]):
            cfg = TrainConfig(model=name, batch_size=args.batch_size, seq_len=args.seq_len, device=args.device,
                              schedule=schedules.cosine(peak_lr=1e-3, total_steps=total, warmup_steps=2).to_dict(),
                              eval_batches=0, eval_interval=0, checkpoint_interval=0, progress=False,
                              compile=compiled)
            bare, ours = [], []
            for _ in range(args.rounds):
                bare.append(bare_tokens_per_s(cfg, blocks, device, args.steps, args.warmup))
                ours.append(trainer_tokens_per_s(cfg, blocks, device, args.steps, args.warmup))
            b, o = statistics.median(bare), statistics.median(ours)
            mfu = (lambda t: f"{100 * t * flops / peak:.1f}%") if peak else (lambda t: "-")
            print(f"| {name} | {'yes' if compiled else 'no'} | {b:,.0f} | {o:,.0f} | {o / b:.3f} | {mfu(b)} | {mfu(o)} |",
                  flush=True)


if __name__ == "__main__":
    main()
