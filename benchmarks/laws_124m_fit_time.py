"""Fit time of both laws on 2 and 3 real 124M curves: wall time and CPU time (the wall time of an idle machine).

    OMP_NUM_THREADS=1 python benchmarks/laws_124m_fit_time.py
"""
import time
from workbench import assets, laws
for law in ("multipower", "annealing"):
    for split in ("2", "3"):
        runs = ["constant-50k_lr1e-3", "cosine-25k_lr1e-3"] + (["wsd-linear0.2-25k_lr1e-3"] if split == "3" else [])
        cs = assets.curves("124m", lr=1e-3, runs=runs)
        out = []
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time(); laws.fit(cs, law=law)
            out.append("%.2f wall / %.2f cpu" % (time.perf_counter() - t, time.process_time() - c))
        print(law, split, "curves:", out)
