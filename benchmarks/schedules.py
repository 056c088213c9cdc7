"""Time to evaluate a 1,000,000-step schedule: workbench (one vectorised call) vs a Python loop
over transformers' LR lambda (what LambdaLR calls each step). Prints the ratio.

    python benchmarks/schedules.py
"""
import time

import numpy as np
from transformers import optimization as hf

from _machine import describe
from workbench import schedules

N, W, D = 1_000_000, 10_000, 200_000


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    print(describe())
    steps = np.arange(N)
    cases = {
        "cosine": (schedules.cosine(peak_lr=1.0, total_steps=N, warmup_steps=W),
                   hf.partial(hf._get_cosine_schedule_with_warmup_lr_lambda, num_warmup_steps=W,
                              num_training_steps=N, num_cycles=0.5)),
        "wsd 1-sqrt": (schedules.wsd(peak_lr=1.0, total_steps=N, warmup_steps=W, decay_steps=D, decay="1-sqrt"),
                       hf.partial(hf._get_wsd_scheduler_lambda, num_warmup_steps=W, num_stable_steps=N - W - D,
                                  num_decay_steps=D, warmup_type="linear", decay_type="1-sqrt", min_lr_ratio=0.0,
                                  num_cycles=0.5)),
    }
    for name, (ours, lam) in cases.items():
        t_ours = best_of(lambda: ours(steps))
        t_loop = best_of(lambda: [lam(i) for i in range(N)], repeat=2)
        check = np.array([lam(i) for i in range(0, N, 997)])  # same values (a sample of steps)
        assert np.allclose(ours(steps[::997]), check, rtol=1e-12, atol=0)
        print(f"{name:12s} 1M steps: workbench {t_ours * 1e3:7.1f} ms   transformers loop {t_loop * 1e3:8.1f} ms   "
              f"speed-up x{t_loop / t_ours:6.1f}")


if __name__ == "__main__":
    main()
