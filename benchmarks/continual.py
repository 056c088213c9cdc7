"""Continual pre-training at small scale: the four claims of issue 9 on stdlib -> docs.

1. re-warm + re-decay + 0/5/25% replay vs re-training from scratch on A+B (same total compute)
   and vs B from scratch (same compute as phase B) - grid ``replay``;
2. infinite schedule (constant phase reused, anneal at each phase end) vs repeated (re-warmed)
   cosine over three phases stdlib -> docstrings -> topics (``docs`` split into its API
   docstrings and its language-reference topics), 0 and 10% replay - grid ``three-phase``;
3. the stability gap (depth/duration of the rise of A's and B's loss after the shift) with B's
   full data vs a 20k-token subset of B seen for several epochs, plus a MER row - grid ``stability``;
4. the annealing law fitted on the first 60% of phase B of the claim-1 runs (LRs of the whole
   run: S1 counts phase A, S2 goes negative in the re-warm) and its prediction of the second half.

The tiny model (1.08M parameters, byte vocabulary), batch 8 x 64 tokens, AdamW, peak LR 3e-3,
evaluation every 10 steps on 4 batches of every domain's validation split. One thread.

    .venv/bin/python benchmarks/continual.py                 # 100 steps per phase, seeds 0 1
    .venv/bin/python benchmarks/continual.py --quick         # a smoke test (~1 min)

Resumable: results go to --out (one directory per grid; finished runs are skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workbench import continual as C  # noqa: E402


def _fmt_table(table, cols):
    agg = C.aggregate_table(table)
    lines = []
    head = ["run"] + cols + ["n"]
    lines.append(" | ".join(head))
    lines.append(" | ".join("---" for _ in head))
    for run in agg.index:
        cells = [run]
        for c in cols:
            if (c, "mean") not in agg.columns:
                cells.append("")
                continue
            m, s = agg.loc[run, (c, "mean")], agg.loc[run, (c, "std")]
            cells.append("" if np.isnan(m) else (f"{m:.4f}" + ("" if np.isnan(s) else f" ± {s:.4f}")))
        cells.append(str(int(agg.loc[run, ("seed", "count")])))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _paired(table, ref: str, cols):
    """Per-seed differences run - ref (paired by seed: same init and data order), mean ± std."""
    lines = []
    t = table.set_index(["run", "seed"])
    for run in dict.fromkeys(table["run"]):
        if run == ref:
            continue
        diffs = {c: [] for c in cols}
        for seed in sorted(set(table["seed"])):
            if (run, seed) in t.index and (ref, seed) in t.index:
                for c in cols:
                    if c in t.columns:
                        diffs[c].append(float(t.loc[(run, seed), c]) - float(t.loc[(ref, seed), c]))
        cells = []
        for c in cols:
            d = np.array(diffs[c])
            if d.size:
                cells.append(f"{c} {d.mean():+.4f}" + (f" ± {d.std(ddof=1):.4f}" if d.size > 1 else "")
                             + f" (per seed {', '.join(f'{x:+.3f}' for x in d)})")
        lines.append(f"{run} - {ref}: " + "; ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/workbench-continual-bench")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=100, help="steps per phase (multiple of 10)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--claims", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = None if args.quick else args.steps
    seeds = args.seeds[:1] if args.quick else args.seeds
    suffix = "-quick" if args.quick else f"-{args.steps}"
    results = {"seeds": seeds, "steps_per_phase": steps, "quick": args.quick}
    t0 = time.perf_counter()

    if 1 in args.claims or 4 in args.claims:
        out = os.path.join(args.out, "replay" + suffix)
        table = C.run_grid("replay", out, seeds=seeds, quick=args.quick, steps=steps)
        print("\n## claim 1: re-warm + re-decay + replay vs re-training (stdlib -> docs)\n")
        print(_fmt_table(table, ["final_stdlib", "final_docs", "forgetting_stdlib", "vs_retrain_stdlib",
                                 "vs_retrain_docs", "adapt_vs_scratch", "frac_to_retrain"]))
        print("\npaired by seed, vs rewarm-r00:")
        print(_paired(table[table["kind"] == "continual"], "rewarm-r00", ["final_stdlib", "final_docs"]))
        print("\npaired by seed, vs retrain-AB:")
        print(_paired(table[table["run"] != "scratch-B"], "retrain-AB", ["final_stdlib", "final_docs"]))
        results["claim1"] = table.to_dict(orient="records")
    if 2 in args.claims:
        out = os.path.join(args.out, "three" + suffix)
        table = C.run_grid("three-phase", out, seeds=seeds, quick=args.quick, steps=steps)
        print("\n## claim 2: infinite vs repeated cosine, stdlib -> docstrings -> topics\n")
        print(_fmt_table(table, ["final_stdlib", "final_docstrings", "final_topics", "forgetting_stdlib"]))
        # loss at every phase end (the anneal of the infinite schedule included)
        ends = []
        for cell in C.grid_runs("three-phase", args.quick, steps):
            for s in seeds:
                d = os.path.join(out, cell.name, f"seed{s}", C.CONTINUAL_FILE)
                if os.path.exists(d):
                    summ = json.load(open(d))
                    for ph in summ["phases"]:
                        ends.append({"run": cell.name, "seed": s, "phase": ph["phase"], **ph["val_losses"]})
        import pandas as pd

        pe = pd.DataFrame(ends)
        if len(pe):
            mean = pe.drop(columns="seed").groupby(["run", "phase"], sort=False).mean()
            std = pe.drop(columns="seed").groupby(["run", "phase"], sort=False).std()
            print("\nval loss at each phase end (mean over seeds; std in brackets)\n")
            for idx in mean.index:
                print(f"{idx[0]:>14} phase {idx[1]}: " + "  ".join(
                    f"{k} {mean.loc[idx, k]:.4f} ({std.loc[idx, k]:.4f})" for k in mean.columns))
        print("\npaired by seed, vs rewarm-r00 (final losses):")
        print(_paired(table, "rewarm-r00", ["final_stdlib", "final_docstrings", "final_topics"]))
        results["claim2"] = table.to_dict(orient="records")
        results["claim2_phase_ends"] = ends
    if 3 in args.claims:
        out = os.path.join(args.out, "stability" + suffix)
        table = C.run_grid("stability", out, seeds=seeds, quick=args.quick, steps=steps)
        print("\n## claim 3: stability gap, full B vs a small B subset (multi-epoch), MER\n")
        print(_fmt_table(table, ["final_stdlib", "final_docs", "forgetting_stdlib", "gap_depth_stdlib",
                                 "gap_duration_stdlib", "gap_depth_docs", "gap_duration_docs"]))
        print("\npaired by seed, vs rewarm-full:")
        print(_paired(table, "rewarm-full", ["final_stdlib", "final_docs", "gap_depth_stdlib"]))
        results["claim3"] = table.to_dict(orient="records")
        # the same question at a finer resolution: A trained 3x longer, evaluation every 2 steps
        n_a, n_b = (3 * args.steps, args.steps) if not args.quick else (12, 4)
        fine = dict(batch_size=8, seq_len=64, max_tokens=200_000, eval_interval=2, eval_batches=4)
        if args.quick:
            fine.update(batch_size=4, seq_len=32, max_tokens=20_000, eval_batches=1)
        sub = 20_000 if not args.quick else 4_000
        runs = [C.GridRun("fine-full", C.ContinualConfig([C.Phase("stdlib", n_a), C.Phase("docs", n_b)], **fine),
                          "rewarm", 0.0, labels={"subset_tokens": None}),
                C.GridRun("fine-subset", C.ContinualConfig([C.Phase("stdlib", n_a),
                                                            C.Phase("docs", n_b, max_tokens=sub)], **fine),
                          "rewarm", 0.0, labels={"subset_tokens": sub})]
        out = os.path.join(args.out, "stability-fine" + suffix)
        table = C.run_grid("stability-fine", out, seeds=seeds, runs=runs)
        print(f"\n### claim 3b: A {n_a} steps, B {n_b} steps, evaluation every 2 steps\n")
        print(_fmt_table(table, ["final_stdlib", "final_docs", "forgetting_stdlib", "gap_depth_stdlib",
                                 "gap_duration_stdlib", "gap_depth_docs", "gap_duration_docs"]))
        print("\npaired by seed, vs fine-full:")
        print(_paired(table, "fine-full", ["final_stdlib", "final_docs", "gap_depth_stdlib", "gap_duration_stdlib"]))
        # docs loss in the first evaluations after the shift (where a gap would show)
        for cell in runs:
            for sd in seeds:
                d = os.path.join(out, cell.name, f"seed{sd}")
                if os.path.exists(os.path.join(d, C.CONTINUAL_FILE)):
                    st, va = C.domain_losses(d, "stdlib")
                    keep = (st >= n_a - 3) & (st < n_a + 30)
                    print(f"{cell.name} seed {sd} stdlib loss around the shift: " +
                          ", ".join(f"{a}:{b:.3f}" for a, b in zip(st[keep], va[keep])))
        results["claim3b"] = table.to_dict(orient="records")
    if 4 in args.claims:
        out = os.path.join(args.out, "replay" + suffix)
        print("\n## claim 4: annealing law across the re-warm, fit on the first 60% of phase B\n")
        rows = []
        for cell in C.grid_runs("replay", args.quick, steps):
            if cell.kind != "continual":
                continue
            for s in seeds:
                d = os.path.join(out, cell.name, f"seed{s}")
                import dataclasses

                cfg = dataclasses.replace(cell.config, seed=s)
                try:
                    r = C.fit_continuation(d, cfg, "docs")
                except ValueError as exc:
                    print(f"{cell.name} seed {s}: {exc}")
                    continue
                rows.append({"run": cell.name, "seed": s, "pred_err": r["pred_err"], "worst_err": r["worst_err"],
                             "m_min": r["m_min"], "S2_drop": r["S2_drop"], **{k: float(v) for k, v in r["params"].items()}})
                print(f"{cell.name} seed {s}: mean rel. error {r['pred_err']:.4f}, worst {r['worst_err']:.4f}, "
                      f"min momentum m in phase B {r['m_min']:.3g}, S2 drop {r['S2_drop']:.3g}, params " +
                      ", ".join(f"{k}={float(v):.4g}" for k, v in r["params"].items()))
        if rows:
            errs = np.array([r["pred_err"] for r in rows])
            print(f"\nmean relative prediction error over {len(rows)} runs: {errs.mean():.4f} ± {errs.std(ddof=1) if len(rows) > 1 else 0:.4f}")
        results["claim4"] = rows
    results["wall_s"] = time.perf_counter() - t0
    path = os.path.join(args.out, f"results{suffix}.json")
    os.makedirs(args.out, exist_ok=True)
    from workbench.runlog import write_json_atomic

    write_json_atomic(path, results)
    print(f"\nwall {results['wall_s']:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
