"""Does the angle-concentration signal work on a learnable task? (issue 6)

Task: ``arithmetic_examples`` (2-digit addition, "Compute: 23+58=81\\n"), a training pool, a
held-out evaluation set and a small disjoint target (validation) set for LESS; the model
starts from the bundled pretrained tiny checkpoint (Llama, 4 layers, hidden 128, bytes).

1. Signal. Spearman correlation (``scipy.stats.spearmanr``, two-sided p-value) between each
   prompt's angle concentration (``prompt_angles``: score = intra + 8 * inter, and the two
   parts) and its per-example gradient norm (loss on the answer tokens, all parameters), for
   the pretrained model and for a copy warmed on the task (``--warm`` uniform steps). GAIN-RL's
   claim: higher concentration -> larger gradient norm (rho > 0). Also rho against the number
   of carries (a difficulty label) and the per-example loss.
2. Training. Same steps, batch, lr and seed for each method, from the pretrained checkpoint:

   * ``uniform``: random permutations of the whole pool;
   * ``gain``: ``GainSampler`` over the pool ranked by the pretrained model's angle score,
     ``subset_size = pool / 4`` per epoch, ``mu``/``sigma``/``n``/``adj_max`` = REFERENCE.md's
     defaults (sigma 1000, n 500, clamp [0, 1000], a 2, beta 0.5) scaled by pool / 7500 (the
     paper's ~7.5k-item pools), updated after each epoch with the rollout accuracy on the
     drawn items (angle_signal 0);
   * ``less``: LESS gradient alignment -- a copy warmed for ``--warm`` uniform steps (AdamW),
     Adam-preconditioned features of the pool vs plain-gradient features of the target set
     (params: the last block's MLP, Rademacher projection to ``--less-d``), ``select_top`` of
     ``pool / 4`` items, then training from the pretrained checkpoint on those items.

   Exact match on the evaluation set every ``--eval-every`` steps: steps and time (training
   seconds, the sampler's rollout decoding included, evaluation excluded) to reach
   ``--target``, final accuracy; mean and spread over ``--seeds``. Selection overheads (angle
   scoring; LESS warm-up + features) are reported separately, and so is the make-up of the
   training items (mean carries, share of 3-digit answers) of LESS's subset and of the GAIN
   sampler's first draw.

    python benchmarks/selection.py                 # defaults: 3 seeds, ~27 min wall on a loaded
                                                   # 2-core CPU (about 1/3 with --seeds 0)
    python benchmarks/selection.py --quick         # smoke run (~1.5 min): 256 items, 60 steps
    python benchmarks/selection.py --seeds 0 1 2 --json /tmp/selection.json
    python benchmarks/selection.py --skip-signal --steps 1 --methods gain less   # subsets only

Measured numbers and their reading: ``benchmarks/notes/selection.md``.
"""
import argparse
import statistics
import time

import torch
from scipy.stats import spearmanr

from _machine import describe
from workbench.assets import pretrained_dir
from workbench.data import (GainSampler, alignment_scores, arithmetic_examples, encode_examples,
                            first_step_reaching, gradient_features, per_example_grad_norms,
                            per_example_losses, prompt_angles, select_top, train_on_task)
from workbench.models import build_model

LESS_PARAMS = ["model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.up_proj.weight",
               "model.layers.3.mlp.down_proj.weight"]


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--pool", type=int, default=None, help="training pool size")
    p.add_argument("--eval", type=int, default=150, help="held-out evaluation examples")
    p.add_argument("--signal-n", type=int, default=None, help="samples for the correlations")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target", type=float, default=0.3, help="exact-match target")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--warm", type=int, default=None, help="warm-up steps (signal + LESS)")
    p.add_argument("--less-d", type=int, default=2048)
    p.add_argument("--methods", nargs="+", default=["uniform", "gain", "less"])
    p.add_argument("--skip-signal", action="store_true", help="skip part 1 (the correlations)")
    p.add_argument("--json", default=None, help="also write all numbers here")
    a = p.parse_args()
    q = a.quick
    a.seeds = a.seeds if a.seeds is not None else ([0] if q else [0, 1, 2])
    a.pool = a.pool or (256 if q else 1024)
    a.signal_n = a.signal_n or (128 if q else 512)
    a.steps = a.steps or (60 if q else 400)
    a.warm = a.warm if a.warm is not None else (20 if q else 100)
    if q:
        a.eval = min(a.eval, 64)
        a.less_d = min(a.less_d, 512)
        a.eval_every = min(a.eval_every, 20)
    return a


def pretrained():
    return build_model(pretrained_dir())


def warmed(pool, args, seed):
    """Pretrained copy trained ``args.warm`` uniform steps; returns (model, optimizer, seconds)."""
    model = pretrained()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    t0 = time.perf_counter()
    train_on_task(model, pool, steps=args.warm, batch_size=args.batch, seed=1000 + seed,
                  eval_every=max(1, args.warm), optimizer=opt)
    return model, opt, time.perf_counter() - t0


def rho(x, y):
    r = spearmanr(torch.as_tensor(x).tolist(), torch.as_tensor(y).tolist())
    return float(r.statistic), float(r.pvalue)


def signal(pool, args):
    sub = pool[:args.signal_n]
    rows = []
    models = [("pretrained", pretrained())]
    if args.warm:
        models.append((f"warmed {args.warm} steps", warmed(pool, args, 0)[0]))
    carries = [e["carries"] for e in sub]
    for name, model in models:
        ang = prompt_angles(model, sub)
        gn = per_example_grad_norms(model, sub)
        loss = per_example_losses(model, sub)
        for feat in ("score", "intra", "inter"):
            rows.append({"model": name, "x": f"angle {feat}", "y": "grad norm",
                         "rho_p": rho(ang[feat], gn), "n": len(sub)})
        rows.append({"model": name, "x": "angle score", "y": "carries",
                     "rho_p": rho(ang["score"], carries), "n": len(sub)})
        rows.append({"model": name, "x": "answer loss", "y": "grad norm",
                     "rho_p": rho(loss, gn), "n": len(sub)})
    return rows


def gain_sampler(scores, n_items, seed):
    k = n_items / 7500.0  # REFERENCE defaults are for ~7.5k-item pools
    return GainSampler(scores, subset_size=max(1, n_items // 4), sigma=1000.0 * k, n=500.0 * k,
                       adj_max=1000.0 * k, a=2.0, beta=0.5, seed=seed)


def less_indices(pool, target_set, args, seed):
    model, opt, t_warm = warmed(pool, args, seed)
    t0 = time.perf_counter()
    enc = encode_examples(pool)
    batches = [{k: enc[k][s:s + 256] for k in ("input_ids", "attention_mask", "labels")}
               for s in range(0, len(pool), 256)]
    train = gradient_features(model, batches, d=args.less_d, seed=seed, optimizer_state=opt,
                              params=LESS_PARAMS)
    tenc = encode_examples(target_set)
    tgt = gradient_features(model, [{k: tenc[k] for k in ("input_ids", "attention_mask",
                                                          "labels")}],
                            d=args.less_d, seed=seed, params=LESS_PARAMS)
    scores = alignment_scores(train, {"target": tgt})
    idx = select_top(scores, 0.25)
    return idx, t_warm + time.perf_counter() - t0


def composition(pool, idx):
    """Mean carries and share of 3-digit answers among ``pool[idx]``."""
    sub = [pool[i] for i in idx]
    return {"mean_carries": round(statistics.mean(e["carries"] for e in sub), 3),
            "share_3digit_answers": round(statistics.mean(len(e["answer"]) == 3 for e in sub), 3)}


def run(method, pool, evalset, target_set, scores, args, seed):
    model = pretrained()
    overhead = 0.0
    sampler = None
    subset = None
    if method == "gain":
        sampler = gain_sampler(scores, len(pool), seed)
        subset = composition(pool, list(sampler))  # epoch 0's draw (mu = 0)
    elif method == "less":
        sampler, overhead = less_indices(pool, target_set, args, seed)
        sampler = sampler.tolist()
        subset = composition(pool, sampler)
    hist = train_on_task(model, pool, steps=args.steps, batch_size=args.batch, lr=args.lr,
                         sampler=sampler, eval_examples=evalset, eval_every=args.eval_every,
                         seed=seed)
    step, t = first_step_reaching(hist, args.target)
    return {"method": method, "seed": seed, "steps_to_target": step, "time_to_target": t,
            "final_accuracy": hist[-1]["accuracy"],
            "best_accuracy": max(h["accuracy"] for h in hist),
            "train_time": hist[-1]["time"], "selection_overhead_s": overhead,
            "final_mu": hist[-1].get("mu"), "subset": subset, "history": hist}


def fmt_ms(vals, digits=3):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    m = statistics.mean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:.{digits}g} ± {sd:.2g}"


def main():
    args = parse()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    print(f"# {describe()}; torch threads 1")
    pool = arithmetic_examples(args.pool, digits=2, seed=0)
    evalset = arithmetic_examples(args.eval, digits=2, seed=1, exclude=pool)
    target_set = arithmetic_examples(64, digits=2, seed=2, exclude=pool + evalset)
    print(f"# pool {len(pool)}, eval {len(evalset)}, LESS target {len(target_set)}; steps "
          f"{args.steps}, batch {args.batch}, lr {args.lr}, target exact match {args.target}, "
          f"seeds {args.seeds}")

    sig = [] if args.skip_signal else signal(pool, args)
    if sig:
        print("\n## 1. Signal: Spearman rho (two-sided p), angle concentration vs per-example "
              "quantities")
        print(f"{'model':<20} {'x':<14} {'y':<10} {'rho':>7} {'p':>10} {'n':>5}")
    for r in sig:
        print(f"{r['model']:<20} {r['x']:<14} {r['y']:<10} {r['rho_p'][0]:>7.3f} "
              f"{r['rho_p'][1]:>10.2e} {r['n']:>5}")

    t0 = time.perf_counter()
    scores = prompt_angles(pretrained(), pool)["score"]
    t_scores = time.perf_counter() - t0
    results = []
    for seed in args.seeds:
        for method in args.methods:
            r = run(method, pool, evalset, target_set, scores, args, seed)
            if method == "gain":
                r["selection_overhead_s"] = t_scores
            results.append(r)
            print(f"# seed {seed} {method:<8} steps->target {r['steps_to_target']} final "
                  f"{r['final_accuracy']:.3f} train {r['train_time']:.1f}s", flush=True)

    print(f"\n## 2. Training to exact match >= {args.target} ({args.steps} steps, mean ± sd over "
          f"seeds {args.seeds}; time = training seconds, 1 thread, evaluation excluded)")
    print(f"{'method':<8} {'reached':>8} {'steps to target':>16} {'time to target s':>17} "
          f"{'final acc':>12} {'best acc':>12} {'train s':>10} {'selection s':>12}")
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        reached = sum(r["steps_to_target"] is not None for r in rs)
        print(f"{m:<8} {f'{reached}/{len(rs)}':>8} "
              f"{fmt_ms([r['steps_to_target'] for r in rs]):>16} "
              f"{fmt_ms([r['time_to_target'] for r in rs]):>17} "
              f"{fmt_ms([r['final_accuracy'] for r in rs]):>12} "
              f"{fmt_ms([r['best_accuracy'] for r in rs]):>12} "
              f"{fmt_ms([r['train_time'] for r in rs]):>10} "
              f"{fmt_ms([r['selection_overhead_s'] for r in rs]):>12}")
    print("per seed steps to target: " + "; ".join(
        f"{m}: {[r['steps_to_target'] for r in results if r['method'] == m]}"
        for m in args.methods))
    print("per seed final accuracy: " + "; ".join(
        f"{m}: {[round(r['final_accuracy'], 3) for r in results if r['method'] == m]}"
        for m in args.methods))
    if "gain" in args.methods:
        print("GainSampler final mu per seed: "
              f"{[round(r['final_mu'], 1) for r in results if r['method'] == 'gain']} "
              f"(pool {len(pool)}, subset {len(pool) // 4})")
    print(f"training items: pool {composition(pool, range(len(pool)))}; " + "; ".join(
        f"{r['method']} seed {r['seed']} {r['subset']}" for r in results if r["subset"]))
    print(f"\n# total {time.perf_counter() - t_all:.0f}s")
    if args.json:
        from workbench.runlog import write_json_atomic
        write_json_atomic(args.json, {"args": vars(args), "signal": sig, "runs": results})


if __name__ == "__main__":
    main()
