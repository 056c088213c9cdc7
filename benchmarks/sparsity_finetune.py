"""Update sparsity of fine-tuning (Mukherjee et al. 2505.11711) and its bf16 caveat (Shenfeld et al. 2509.04259).

Fine-tunes the bundled pretrained tiny model (Llama, 4 layers, width 128, byte vocabulary) on the arithmetic
task of ``workbench.data.tasks`` two ways: SFT (answer-token NLL) and DPO (chosen = correct answer, rejected
= a wrong one, beta 0.1, reference = the base), each with the parameters stored in bf16 and in fp32, for two
seeds (the seed draws the training examples, the wrong answers and the minibatch order), at each LR in
``--lrs``. Same AdamW (betas (0.9, 0.999), eps 1e-8, no weight decay, fp32 moments), steps, batch size and
LR for every run. Then ``diff_checkpoints(base, tuned, atol=1e-5, rtol=2**-8)``:

* ``own``: compared in the run's own dtype (bf16 runs against the bf16 cast of the base they started from);
* ``as_bf16``: fp32 runs compared after casting base and tuned to bf16 (the paper's protocol on released
  bf16 checkpoints).

Reported per run: overall update sparsity at ``atol`` and at the relative tolerance ``rtol`` (changed when
``|delta| > rtol * |w_base|``; 2**-8 is about one bf16 spacing), spread of per-matrix sparsity over the 28
layer matrices (std / min / max), the norm weights' and the embedding's sparsity, the update rank (mean and
min of ``rank(delta W) / min(m, n)`` over the 2-D tensors), held-out answer NLL and greedy exact match; per
(LR, method, dtype, comparison) the overlap of the two seeds' changed sets (o1, o2 against chance). The
embedding is tied to the LM head: it is counted once.

    python benchmarks/sparsity_finetune.py                          # 16 runs, ~4-6 min on one core
    python benchmarks/sparsity_finetune.py --lrs 1e-5 --steps 100   # quicker
    python benchmarks/sparsity_finetune.py --json /tmp/sf.json      # also write every number as JSON
    python benchmarks/sparsity_finetune.py --methods grpo --steps 60  # GRPO from an SFT warm start
"""
import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unique_state(model):
    """The state dict with tied tensors (same storage) kept once, under their first name."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().clone()
    return out


def cast(state, dtype):
    return {k: v.to(dtype) for k, v in state.items()}


def summarize(d):
    """Overall / per-matrix / norm / rank figures of one SparsityDiff."""
    mats = [t for t in d.tensors if len(t["shape"]) == 2 and t["layer"] is not None]
    two_d = [t for t in d.tensors if len(t["shape"]) == 2]
    norms = [t for t in d.tensors if "norm" in t["type"]]
    embed = [t for t in d.tensors if "embed" in t["name"]]
    sp = [t["sparsity"] for t in mats]
    ranks = [t["rank"] / t["rank_max"] for t in two_d if t["rank"] is not None and t["rank_max"]]
    n_norm = sum(t["numel"] for t in norms)
    return {
        "sparsity": d.overall["sparsity"],
        "sparsity_rtol": d.overall_rtol["sparsity"] if d.overall_rtol else None,
        "matrix_sparsity_mean": statistics.fmean(sp), "matrix_sparsity_std": statistics.pstdev(sp),
        "matrix_sparsity_min": min(sp), "matrix_sparsity_max": max(sp),
        "norm_sparsity": 1 - sum(t["changed"] for t in norms) / n_norm if n_norm else None,
        "embed_sparsity": embed[0]["sparsity"] if embed else None,
        "rank_frac_mean": statistics.fmean(ranks) if ranks else None,
        "rank_frac_min": min(ranks) if ranks else None,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-eval", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=2.0 ** -8)
    p.add_argument("--methods", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo", "grpo"],
                   help="grpo: from an SFT warm start (fp32 SFT, 200 steps at 1e-3 on other examples), "
                        "compared against that warm start; G=8 samples for 8 prompts per step")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from _machine import describe
    from workbench.assets import pretrained_dir
    from workbench.data.tasks import arithmetic_examples, encode_examples, exact_match
    from workbench.models import build_model
    from workbench.sparsity import diff_checkpoints, overlap
    from workbench.sparsity.finetune import DTYPES, answer_loss, dpo, grpo, preference_pairs, sft

    base = build_model(pretrained_dir())
    base_state = unique_state(base)
    train = {s: arithmetic_examples(args.n_train, digits=2, seed=s) for s in args.seeds}
    held = arithmetic_examples(args.n_eval, digits=2, seed=10_000,
                               exclude=[e for ex in train.values() for e in ex])
    held_batch = encode_examples(held)
    print(f"# {describe()}")
    print(f"# tiny pretrained Llama ({sum(v.numel() for v in base_state.values()):,} parameters, tied "
          f"embedding counted once); {args.n_train} training examples per seed, {args.steps} steps of "
          f"{args.batch_size}, AdamW no weight decay, DPO beta {args.beta}; atol {args.atol:g}, "
          f"rtol {args.rtol:g}")
    with torch.no_grad():
        base_nll = float(answer_loss(base, held_batch))
    base_em = exact_match(base, held)
    print(f"# base: held-out answer NLL {base_nll:.3f}, exact match {base_em:.3f}")

    starts = {"sft": base_state, "dpo": base_state}
    if "grpo" in args.methods:
        t0 = time.perf_counter()
        warm_ex = arithmetic_examples(512, digits=2, seed=99, exclude=held)
        warm, _ = sft(copy.deepcopy(base), encode_examples(warm_ex), 200, 1e-3, batch_size=32, seed=0)
        starts["grpo"] = unique_state(warm)
        print(f"# GRPO warm start (SFT fp32, 200 steps, lr 1e-3, 512 other examples): held-out exact match "
              f"{exact_match(warm, held):.3f}, {time.perf_counter() - t0:.0f}s")

    runs, diffs = [], {}
    combos = [(lr, method) for lr in args.lrs for method in args.methods]
    for lr, method in combos:
        for dt in ("bf16", "fp32"):
            for seed in args.seeds:
                model = copy.deepcopy(base) if method != "grpo" else copy.deepcopy(warm)
                t0 = time.perf_counter()
                if method == "grpo":
                    ex = train[seed]
                    model, hist = grpo(model, [e["prompt"] for e in ex], [e["answer"] for e in ex],
                                       args.steps, lr, group_size=8, prompts_per_step=8, dtype=dt,
                                       seed=seed)
                    hist["loss"] = hist["reward"]          # reported as first -> last mean reward
                elif method == "sft":
                    model, hist = sft(model, encode_examples(train[seed]), args.steps, lr, dtype=dt,
                                      seed=seed, batch_size=args.batch_size)
                else:
                    chosen, rejected = preference_pairs(train[seed], seed=seed)
                    model, hist = dpo(model, base, encode_examples(chosen), encode_examples(rejected),
                                      beta=args.beta, steps=args.steps, lr=lr, dtype=dt, seed=seed,
                                      batch_size=args.batch_size)
                secs = time.perf_counter() - t0
                with torch.no_grad():
                    nll = float(answer_loss(model, held_batch))
                em = exact_match(model, held)
                tuned = unique_state(model)
                rec = {"lr": lr, "method": method, "dtype": dt, "seed": seed, "seconds": secs,
                       "first_loss": hist["loss"][0], "last_loss": hist["loss"][-1],
                       "heldout_nll": nll, "exact_match": em}
                start = starts[method]
                comps = {"own": (cast(start, DTYPES[dt]), tuned)}
                if dt == "fp32":
                    comps["as_bf16"] = (cast(start, torch.bfloat16), cast(tuned, torch.bfloat16))
                for comp, (b, t) in comps.items():
                    d = diff_checkpoints(b, t, atol=args.atol, rtol=args.rtol, keep_masks=True)
                    diffs[(lr, method, dt, comp, seed)] = d
                    rec[comp] = summarize(d)
                runs.append(rec)
                o = rec["own"]
                what = "reward" if method == "grpo" else "loss"
                print(f"  lr {lr:g} {method} {dt} seed {seed}: {secs:.1f}s, {what} {rec['first_loss']:.3f}"
                      f" -> {rec['last_loss']:.3f}, sparsity {o['sparsity']:.3f}", flush=True)

    print("\n## Update sparsity (fraction of entries unchanged), mean over seeds")
    head = (f"{'lr':>6} {'method':6} {'dtype':5} {'compared':8} {'sparsity':>8} {'rtol':>6} {'mat std':>7} "
            f"{'mat min':>7} {'mat max':>7} {'norms':>6} {'embed':>6} {'rank':>6} {'rankmin':>7} "
            f"{'NLL':>6} {'EM':>5}")
    print(head)
    table = []
    for lr, method in combos:
        for dt in ("bf16", "fp32"):
            for comp in (("own",) if dt == "bf16" else ("own", "as_bf16")):
                rs = [r for r in runs if (r["lr"], r["method"], r["dtype"]) == (lr, method, dt)]
                m = {k: statistics.fmean(r[comp][k] for r in rs) for k in rs[0][comp]}
                m.update(lr=lr, method=method, dtype=dt, compared=comp if comp == "as_bf16" else dt,
                         heldout_nll=statistics.fmean(r["heldout_nll"] for r in rs),
                         exact_match=statistics.fmean(r["exact_match"] for r in rs))
                table.append(m)
                print(f"{lr:>6g} {method:6} {dt:5} {m['compared'] if comp == 'own' else 'in bf16':8} "
                      f"{m['sparsity']:8.4f} {m['sparsity_rtol']:6.3f} {m['matrix_sparsity_std']:7.4f} "
                      f"{m['matrix_sparsity_min']:7.4f} {m['matrix_sparsity_max']:7.4f} "
                      f"{m['norm_sparsity']:6.3f} {m['embed_sparsity']:6.3f} {m['rank_frac_mean']:6.3f} "
                      f"{m['rank_frac_min']:7.3f} {m['heldout_nll']:6.3f} {m['exact_match']:5.3f}")

    s0, s1 = args.seeds
    print(f"\n## Seed-to-seed overlap of the changed entries (seed {s0} vs {s1}, at atol)")
    print(f"{'lr':>6} {'method':6} {'dtype':5} {'compared':8} {'o1':>6} {'chance':>6} {'o2':>6} {'chance':>6} "
          f"{'jaccard':>7} {'chance':>6}")
    overlaps = []
    for lr, method in combos:
        for dt in ("bf16", "fp32"):
            for comp in (("own",) if dt == "bf16" else ("own", "as_bf16")):
                o = overlap(diffs[(lr, method, dt, comp, s0)], diffs[(lr, method, dt, comp, s1)])["overall"]
                overlaps.append({"lr": lr, "method": method, "dtype": dt, "compared": comp, **o})
                f = lambda v: f"{v:6.3f}" if v is not None else "   n/a"   # noqa: E731
                print(f"{lr:>6g} {method:6} {dt:5} {dt if comp == 'own' else 'in bf16':8} {f(o['o1'])} "
                      f"{f(o['o1_chance'])} {f(o['o2'])} {f(o['o2_chance'])}  {f(o['jaccard'])} "
                      f"{f(o['jaccard_chance'])}")
    if args.json:
        from workbench.runlog import write_json_atomic

        write_json_atomic(args.json, {"args": vars(args), "machine": describe(), "base_heldout_nll": base_nll,
                                      "base_exact_match": base_em, "runs": runs, "table": table,
                                      "overlap": overlaps})
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
