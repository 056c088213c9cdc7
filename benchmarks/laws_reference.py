"""The multi-power paper's own fitting recipe vs ``laws.fit``, on the bundled 124M split, same data.

The recipe of the public multi-power-law code (read, not copied): (1) initialise ``L0, A, alpha, B``
with a simplified law ``L0 + A*S1^-alpha - B*(eta_peak - eta_t)`` fitted by L-BFGS-B from a
5x3x3x3 grid (L0 around the lowest loss, A and alpha from a log-log regression, B in 100..1000);
(2) AdamW on the Huber loss of log residuals (delta 1e-3) from those values with ``C = 1``,
``beta = gamma = 0.5`` (raw LR units), step sizes 5e-2 for ``L0, A, B, C`` and 5e-3 for
``alpha, beta, gamma``, keeping the iterate with the lowest training cost in ``--steps`` steps.
Prints the pooled mean relative error on the 27 test curves (all points after warmup, and the
cooldown points alone) per peak LR, with ``laws.fit``'s numbers from the same process.

    python benchmarks/laws_reference.py                  # peak LRs 1e-3, 5e-4, 2e-3, 1e-4 (~15 min on 2 cores)
    python benchmarks/laws_reference.py --lrs 1e-3 --steps 200
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import linregress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

from workbench import assets, laws  # noqa: E402
from workbench.laws.evaluate import _law  # noqa: E402
from workbench.laws.fitting import _dedupe, _Problem  # noqa: E402

NAMES = ["L0", "A", "alpha", "B", "C", "beta", "gamma"]
DELTA = 1e-3
STEP_SIZES = np.array([5e-2, 5e-2, 5e-3, 5e-2, 5e-2, 5e-3, 5e-3])


def huber(r):
    a = np.abs(r)
    return float(np.where(a <= DELTA, 0.5 * r * r, DELTA * (a - 0.5 * DELTA)).sum())


def stage1(data) -> np.ndarray:
    peak = max(d.lrs.max() for d in data)
    lowest = min(d.y.min() for d in data)
    lx = np.concatenate([np.log(np.cumsum(d.lrs)[d.steps]) for d in data])
    ly = np.concatenate([np.log(d.y - lowest + 0.01) for d in data])
    slope, icpt, *_ = linregress(lx, ly)
    pre = [(np.cumsum(d.lrs)[d.steps], peak - d.lrs[d.steps], np.log(d.y)) for d in data]

    def cost(p):
        L0, A, al, B = p
        tot = 0.0
        for S, drop, logy in pre:
            pred = L0 + A * S ** (-al) - B * drop
            if not np.all(pred > 0):
                return 1e9
            tot += huber(logy - np.log(pred))
        return tot

    best = (np.inf, None)
    for start in itertools.product(np.linspace(lowest - .2, lowest + .2, 5),
                                   np.linspace(np.exp(icpt) - .1, np.exp(icpt) + .1, 3),
                                   np.linspace(-slope - .1, -slope + .1, 3), np.linspace(100, 1000, 3)):
        r = minimize(cost, start, method="L-BFGS-B", bounds=[(0, np.inf)] * 4)
        if r.fun < best[0]:
            best = (r.fun, r.x)
    return np.r_[best[1], 1.0, 0.5, 0.5]


def reference_fit(curves, steps: int) -> dict:
    lw = _law("multipower")
    data, _ = _dedupe(curves, 1.0, 1000)          # raw LR units, as the recipe's initial values assume
    for d in data:
        d.struct = lw.prepare(d.lrs, d.steps, d.warmup)
    prob = _Problem(lw, data)
    p = stage1(data)
    m, v = np.zeros(7), np.zeros(7)
    best = (np.inf, p.copy())
    for k in range(steps + 1):
        th = lw.to_theta(dict(zip(NAMES, p)), 1.0)   # theta = (L0, log A, log alpha, ...) at ref 1
        r = prob.residuals(th)
        f = huber(r)
        if f < best[0]:
            best = (f, p.copy())
        g_theta = prob.jacobian(th).T @ np.clip(r, -DELTA, DELTA)
        g = g_theta / np.r_[1.0, p[1:]]                  # d theta / d p = diag(1, 1/p_i)
        p = p * (1 - STEP_SIZES * 0.01)                  # AdamW's default decoupled weight decay
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - STEP_SIZES * (m / (1 - 0.9 ** (k + 1))) / (np.sqrt(v / (1 - 0.999 ** (k + 1))) + 1e-8)
        p = np.maximum(p, 1e-8)
    return dict(zip(NAMES, best[1].tolist()))


def errors(params: dict, test) -> tuple[float, float]:
    allp, cool = [], []
    for c in test:
        keep = c.steps >= c.warmup
        pred = laws.multipower(c.lrs, c.steps[keep], **params, warmup_steps=c.warmup)
        e = np.abs(pred - c.losses[keep]) / c.losses[keep]
        allp.append(e)
        cool.append(e[assets.cooldown_mask(c)[keep]])
    return float(np.mean(np.concatenate(allp))), float(np.mean(np.concatenate(cool)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrs", default="1e-3,5e-4,2e-3,1e-4")
    ap.add_argument("--steps", type=int, default=400, help="AdamW steps of the recipe [400]")
    args = ap.parse_args()
    print(describe())
    print("| peak LR | recipe: all / cooldown | recipe fit time | laws.fit: all / cooldown | laws.fit time |")
    print("|---|---|---|---|---|")
    for lr in (float(x) for x in args.lrs.split(",")):
        train = assets.curves("124m", lr=lr, split="train")
        test = assets.curves("124m", lr=lr, split="test")
        t = time.perf_counter()
        ref = reference_fit(train, args.steps)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        ours = laws.fit(train, law="multipower")
        t_ours = time.perf_counter() - t
        (ra, rc), (oa, oc) = errors(ref, test), errors(ours.params, test)
        print(f"| {lr:g} | {100 * ra:.3f}% / {100 * rc:.3f}% | {t_ref:.1f} s | {100 * oa:.3f}% / {100 * oc:.3f}% | "
              f"{t_ours:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
