"""Trainer overhead: median step time of ``workbench.train.Trainer`` vs a bare PyTorch loop.

Same model preset and seed, same data order, same optimizer (built by the trainer's own
``build_optimizer``), same schedule, same process and thread; the two loops alternate step by step
(the trainer driven through ``Trainer.iter_run()``), so drifts of a busy machine hit both alike;
the first steps of each round are warmup. The bare loop does what any loop
must: forward, cross-entropy, backward, clip, step, scheduler, ``loss.item()``. The trainer
adds the run log (a flushed JSONL line per step), grad/update norms, the NaN guard and events.
Prints the machine and ``ratio = trainer / bare`` (target: <= 1.05).

    python benchmarks/trainer.py                        # tiny model on this machine
    python benchmarks/trainer.py --model llama-10m --batch-size 16 --seq-len 256 --steps 50
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from workbench import schedules
from workbench.data import BlockLoader, load_blocks
from workbench.models import build_model
from workbench.train import TrainConfig, Trainer, build_optimizer


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    desc = f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc


def bare_steps(config: TrainConfig, blocks: torch.Tensor, device: torch.device):
    """A generator: each ``next()`` runs one plain training step and returns its seconds."""
    model = build_model(config.model, vocab_size=256, seed=config.seed, max_seq_len=config.seq_len).to(device)
    opt = build_optimizer("adamw", model, config)
    sched = schedules.schedule_from_dict(config.schedule).torch_scheduler(opt)
    loader = BlockLoader(blocks, config.batch_size, seed=config.seed)
    use_bf16 = device.type == "cuda"
    while True:
        t0 = time.perf_counter()
        x, y = next(loader)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        yield time.perf_counter() - t0


def lockstep(config: TrainConfig, blocks: torch.Tensor, device: torch.device, steps: int):
    """Alternate one bare step and one trainer step, ``steps`` times; returns both lists of seconds.

    The trainer is driven through ``Trainer.iter_run()`` (one ``next()`` = one step with its run-log
    line, events and end-of-step bookkeeping), in the same thread as the bare loop.
    """
    bare = bare_steps(config, blocks, device)
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(**{**config.to_dict(), "run_dir": os.path.join(d, "run"), "steps": steps})
        model = build_model(config.model, vocab_size=256, seed=config.seed, max_seq_len=config.seq_len)
        loop = Trainer(cfg, model=model, train_data=blocks).iter_run()
        bare_times, ours = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            next(loop)
            ours.append(time.perf_counter() - t0)
            bare_times.append(next(bare))
        for _ in loop:   # finish: final checkpoint, summary, close the log
            pass
    return bare_times, ours


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round (after warmup)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU) [torch's default]")
    p.add_argument("--no-update-norm", action="store_true",
                   help="TrainConfig(track_update_norm=False): skip the per-step copy of the weights")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    total = args.warmup + args.steps
    config = TrainConfig(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len, device=args.device,
                         schedule=schedules.cosine(peak_lr=1e-3, total_steps=total, warmup_steps=2).to_dict(),
                         eval_batches=0, eval_interval=0, checkpoint_interval=0, progress=False,
                         track_update_norm=not args.no_update_norm)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    blocks = load_blocks("stdlib", "train", block_size=args.seq_len,
                         max_tokens=max(200_000, 2 * total * args.batch_size * (args.seq_len + 1)))
    print(f"machine: {machine(device)}")
    print(f"model {args.model}, batch {args.batch_size} x seq {args.seq_len}, {args.rounds} rounds x "
          f"{args.steps} timed steps (+{args.warmup} warmup), device {device}, "
          f"update_norm {'off' if args.no_update_norm else 'on'}")
    bare, ours = [], []
    for r in range(args.rounds):
        b, t = lockstep(config, blocks, device, total)
        bare += b[args.warmup:]
        ours += t[args.warmup:]
        print(f"  round {r + 1}: bare {statistics.median(b[args.warmup:]) * 1e3:.2f} ms, "
              f"trainer {statistics.median(t[args.warmup:]) * 1e3:.2f} ms (median step)")
    b, t = statistics.median(bare), statistics.median(ours)
    paired = statistics.median(o / x for o, x in zip(ours, bare))
    print(f"median step: bare {b * 1e3:.2f} ms, trainer {t * 1e3:.2f} ms; ratio trainer/bare = {t / b:.3f} "
          f"(median of paired step ratios {paired:.3f}; {'within' if t / b <= 1.05 else 'OVER'} the 5% target)")

if __name__ == "__main__":
    main()
