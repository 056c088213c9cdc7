"""Can the bundled tiny runs rank schedules? The val-loss noise floor vs the differences between
schedules, and what ``laws.compare_schedules`` says about the order wsd20 < wsd10 < linear < cosine.

    python benchmarks/tiny_ranking.py [--eval-tokens]

* noise floor: per run, the SD of the val loss around a quadratic over its last 200 steps, and the same
  for the difference of two runs (what a ranking needs);
* measured order: final val loss, and the mean of the last 5 evaluations (steps 959-999);
* every fit (both laws; on all six runs, on constant + cosine, on constant + cosine + wsd10): the
  predicted order with 90% intervals, which pairs it calls resolved, and any pair it resolves in the
  wrong order (a "confident wrong order": must be none);
* ``--eval-tokens`` (~10 min): does more validation data lower the noise? Trains the tiny model 400
  steps at the runs' constant LR (3e-3) and evaluates every 10 steps on 8 and on 64 batches.
"""
import argparse
import tempfile
import time

import numpy as np

from _machine import describe
from workbench import assets, laws
from workbench.curves import read_curve

ORDER = ["wsd20", "wsd10", "linear", "cosine"]      # the measured order (lowest final loss first)


def resid_sd(steps, y, since):
    k = steps >= since
    p = np.polyfit(steps[k], y[k], 2)
    return float(np.std(y[k] - np.polyval(p, steps[k]), ddof=3))


def noise_and_gaps(curves):
    print("run        final   last-5 mean  noise SD (last 200 steps)")
    for n, c in curves.items():
        print(f"{n:10s} {c.losses[-1]:.4f}  {c.losses[-5:].mean():.4f}       {resid_sd(c.steps, c.losses, 800):.4f}")
    print("pair (b - a)      final diff  last-5 diff  noise SD of the difference  final diff / SD")
    for a, b in zip(ORDER, ORDER[1:]):
        d = curves[b].losses - curves[a].losses
        sd = resid_sd(curves[a].steps, d, 800)
        print(f"{b:6s} - {a:6s}   {d[-1]:+.4f}     {d[-5:].mean():+.4f}      {sd:.4f}                      "
              f"{d[-1] / sd:.1f}")


def rankings(curves):
    for train in (list(assets.RUNS), ["constant", "cosine"], ["constant", "cosine", "wsd10"]):
        for law in ("annealing", "multipower"):
            t = time.time()
            f = laws.fit([curves[n] for n in train], law=law)
            cmp = laws.compare_schedules(f, [assets.RUNS[n] for n in ORDER], names=ORDER, level=0.9)
            wrong = [(a, b) for (a, b), r in cmp.resolved.items() if r and ORDER.index(a) > ORDER.index(b)]
            right = [(a, b) for (a, b), r in cmp.resolved.items() if r and ORDER.index(a) < ORDER.index(b)]
            print(f"\n== {law} fitted on {' + '.join(train)} ({time.time() - t:.1f} s, {len(f.warnings)} warnings): "
                  f"predicted order {' < '.join(cmp.order)}; resolved right: {right or 'none'}; "
                  f"CONFIDENT WRONG: {wrong or 'none'}")
            print(cmp.summary())


def eval_tokens():
    from workbench import schedules
    from workbench.train import TrainConfig, Trainer

    s = schedules.constant(peak_lr=3e-3, total_steps=400, warmup_steps=50)
    kw = dict(assets.RUN_SETTINGS, eval_batches=64)
    tr = Trainer(TrainConfig(schedule=s.to_dict(), steps=400, run_dir=tempfile.mkdtemp(), progress=False, **kw))
    rows = []

    def cb(e):
        if e.get("val_loss") is not None:
            object.__setattr__(tr.config, "eval_batches", 8)
            v8 = tr.evaluate()
            object.__setattr__(tr.config, "eval_batches", 64)
            rows.append((e["step"], v8, e["val_loss"]))
    tr.subscribe(cb)
    tr.run()
    st, v8, v64 = np.array(rows).T
    for name, v in (("8 batches (8k tokens)", v8), ("64 batches (65k tokens)", v64)):
        k = st >= 150
        p = np.polyfit(st[k], v[k], 3)
        print(f"{name}: val noise SD {np.std(v[k] - np.polyval(p, st[k]), ddof=4):.4f} (steps 150-399)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-tokens", action="store_true", help="also measure the noise vs validation size (~10 min)")
    args = ap.parse_args()
    print(describe())
    curves = {n: read_curve(assets.run_dir(n)) for n in assets.RUNS}
    noise_and_gaps(curves)
    rankings(curves)
    if args.eval_tokens:
        eval_tokens()
