"""Cost of the crash-safe checkpoint layout vs the old two-file one, in the same process.

The baseline is what the trainer did before issue 18: ``model.safetensors`` and ``state.pt`` each
written to a temp file, fsynced and ``os.replace``-d at the run directory's root (two units: a kill
between the renames left them at different steps). The new layout writes both into
``checkpoints/.tmp-step-N``, fsyncs the files and the directory, renames it, replaces the ``latest``
pointer, hard-links the root export and deletes the previous step. The two alternate round by
round; prints the median of each and ``ratio = new / old``.

    python benchmarks/checkpoint.py                         # tiny and gpt2-30m with AdamW state
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from safetensors.torch import save_model

from _machine import describe
from workbench import checkpoint as ckpt
from workbench.files import atomic_write
from workbench.models import build_model


def old_layout(run_dir, model, step, opt):
    state = {"format": 1, "step": step, "optimizer": opt.state_dict(), "rng": ckpt.get_rng_state()}
    atomic_write(os.path.join(run_dir, ckpt.MODEL_FILE), lambda p: save_model(model, p, metadata={"step": str(step)}))
    atomic_write(os.path.join(run_dir, ckpt.STATE_FILE), lambda p: torch.save(state, p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "gpt2-30m"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(describe())
    for name in args.models:
        model = build_model(name, vocab_size=256, seed=0, max_seq_len=64)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(input_ids=torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
        opt.step()                                         # AdamW moments exist, as in a real checkpoint
        old_t, new_t = [], []
        with tempfile.TemporaryDirectory() as d:
            for step in range(args.rounds + 1):
                t0 = time.perf_counter()
                old_layout(os.path.join(d, "old"), model, step, opt)
                t1 = time.perf_counter()
                ckpt.save_checkpoint(os.path.join(d, "new"), model, step=step, optimizer=opt)
                t2 = time.perf_counter()
                if step:                                   # round 0 is warmup
                    old_t.append(t1 - t0)
                    new_t.append(t2 - t1)
            mb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, "old")) for f in fs)
        old_m, new_m = statistics.median(old_t), statistics.median(new_t)
        print(f"{name}: checkpoint {mb / 2**20:.0f} MiB, old two-file {old_m * 1e3:.0f} ms, "
              f"new step-dir {new_m * 1e3:.0f} ms, ratio {new_m / old_m:.2f}")


if __name__ == "__main__":
    main()
