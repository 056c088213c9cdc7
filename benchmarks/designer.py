"""ScheduleDesigner redraw latency: from a slider change to updated figure data, for a 100k-step
schedule (target: under 50 ms). Python side only: the time the kernel spends before the update
message leaves for the browser. Prints the median and the ratio to the target.

    python benchmarks/designer.py
"""
import statistics
import time

from _machine import describe
from workbench import schedules
from workbench.widgets import ScheduleDesigner

TARGET_MS = 50.0


def main():
    print(describe())
    for family in ("cosine", "wsd", "infinite"):
        d = ScheduleDesigner([schedules.make(family, peak_lr=3e-4, total_steps=100_000, warmup_steps=2000)])
        d.add(schedules.cosine(peak_lr=3e-4, total_steps=100_000, warmup_steps=2000))
        d.select(0)
        slider = d.controls["peak_lr"]
        times = []
        for i in range(30):
            t0 = time.perf_counter()
            slider.value = 1e-4 * (1 + i % 10)
            times.append((time.perf_counter() - t0) * 1e3)
        assert d.schedules[0].peak_lr == slider.value
        med = statistics.median(times)
        print(f"{family:9s} 100k steps: median redraw {med:6.2f} ms  (target {TARGET_MS:.0f} ms, "
              f"{med / TARGET_MS:.2f}x of budget)")


if __name__ == "__main__":
    main()
