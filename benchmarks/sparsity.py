"""diff_checkpoints on a pair of safetensors checkpoints: time against just reading them, and peak memory.

Writes a base checkpoint (a few large 2-D tensors holding ~80% of the bytes, many small 1-D tensors for the
rest) and tuned = base + a sparse delta (``--density`` of the entries changed) to a temporary directory.
Times ``diff_checkpoints(base, tuned)`` against reading every tensor of both files with
``safetensors.safe_open(...).get_tensor(...).clone()`` (the clone makes the read touch every byte even
where get_tensor returns a memory-mapped view; best of ``--repeats``, files already in the page cache; the
read runs first as a warm-up), and prints ``read / diff`` (target >= 0.5: the diff costs at most twice a
plain read). Peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the diff is measured in a fresh
child process and compared with ``3 x the largest tensor + the fixed overhead`` (the peak RSS of a child
that only imports torch and workbench.sparsity and opens nothing). RSS counts the file-backed pages of
the memory maps that a safetensors handle has touched, so the peak of a child that only reads both files
is printed next to it; diff_checkpoints itself reads byte ranges with plain file reads (no memory map), in
chunks, so its RSS stays near the overhead. Torch runs ``--threads`` threads (default 1) in every child.

    python benchmarks/sparsity.py                  # ~1 GB per checkpoint
    python benchmarks/sparsity.py --size-mb 100    # quicker
    python benchmarks/sparsity.py --dtype bfloat16

``--prune`` instead measures pruning quality on the bundled pretrained model (``workbench/assets/pretrained``,
4-layer Llama, 3000 steps on stdlib): validation loss (mean token cross-entropy on stdlib ``val`` blocks) and
perplexity after Wanda with sequential calibration (the reference code's order, the default) vs one-shot
calibration, at several sparsities, and after FLAP at several ratios with its three structures (``al-am``
the official default, ``head``, ``channel``). Same calibration blocks (stdlib train) for every method.

    python benchmarks/sparsity.py --prune                        # ~1 min on one CPU thread
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

THREADS = 1


def make_pair(directory, size_mb, dtype, density, n_large=4, small_numel=65536, seed=0):
    """Write base.safetensors and tuned.safetensors; returns (paths, largest tensor bytes, tensor count)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    elem = torch.empty((), dtype=dtype).element_size()
    total = size_mb * 2**20 // elem
    cols = 4096
    large_numel = max(cols, int(0.8 * total / n_large) // cols * cols)
    n_small = max(1, int(total - n_large * large_numel) // small_numel)
    base = {}
    for i in range(n_large):
        base[f"model.layers.{i}.mlp.up_proj.weight"] = (torch.randn(large_numel // cols, cols, generator=g)
                                                         * 0.02).to(dtype)
    for i in range(n_small):
        base[f"model.layers.{i // 2}.norm{i % 2}.weight"] = (1 + 0.1 * torch.randn(small_numel, generator=g)).to(dtype)
    paths = [os.path.join(directory, "base.safetensors"), os.path.join(directory, "tuned.safetensors")]
    save_file(base, paths[0])
    for k, v in base.items():   # in place: tuned = base + sparse delta, large enough to survive the dtype
        mask = torch.rand(v.shape, generator=g) < density
        v[mask] = (v[mask].float() + 0.05 * (1 + torch.rand(int(mask.sum()), generator=g))).to(dtype)
    save_file(base, paths[1])
    largest = large_numel * elem
    del base
    return paths, largest, n_large + n_small


def read_both(paths):
    from safetensors import safe_open

    with safe_open(paths[0], framework="pt") as fb, safe_open(paths[1], framework="pt") as ft:
        for name in fb.keys():
            b, t = fb.get_tensor(name).clone(), ft.get_tensor(name).clone()   # clone: touch every byte
            del b, t


def child(*args):
    """Run this script in a fresh process (mode + arguments); returns the JSON it prints. The parent never
    imports torch, so the children's ru_maxrss (inherited across fork/exec) starts from a small process."""
    env = dict(os.environ, WB_BENCH_THREADS=str(THREADS), PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *map(str, args)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(mode, args):
    import torch

    torch.set_num_threads(int(os.environ.get("WB_BENCH_THREADS", "1")))
    if mode == "make":
        paths, largest, n = make_pair(args[0], int(args[1]), getattr(torch, args[2]), float(args[3]))
        res = {"paths": paths, "largest": largest, "n": n}
    elif mode == "time":
        from _machine import describe
        from workbench.sparsity import diff_checkpoints

        paths, repeats, max_rank = args[:2], int(args[2]), int(args[3])
        read_both(paths)   # warm-up
        t_read, t_diff = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_both(paths)
            t_read.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            d = diff_checkpoints(paths[0], paths[1], max_rank_numel=max_rank)
            t_diff.append(time.perf_counter() - t0)
        res = {"read": min(t_read), "diff": min(t_diff), "sparsity": d.overall["sparsity"],
               "machine": describe()}
    elif mode == "diff":
        from workbench.sparsity import diff_checkpoints

        diff_checkpoints(args[0], args[1], max_rank_numel=int(args[2]))
        res = {}
    elif mode == "read":
        read_both(args[:2])
        res = {}
    else:   # "import": the fixed overhead
        import workbench.sparsity  # noqa: F401
        res = {}
    res["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
    print(json.dumps(res))


def prune_quality(sparsities=(0.3, 0.5, 0.7), ratios=(0.2, 0.4), n_calib=32, n_val=64, block=128, draws=3):
    """Print the Wanda (sequential vs one-shot) and FLAP (per structure) validation-loss tables: means over
    ``draws`` disjoint calibration sets (and, for Wanda, the spread of the paired difference)."""
    import math
    import statistics

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()

    from _machine import describe
    from workbench.data import load_blocks
    from workbench.models import build_model
    from workbench.sparsity import FLAP_STRUCTURES, flap_prune, wanda_prune

    torch.set_num_threads(THREADS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "workbench", "assets", "pretrained")
    train = load_blocks("stdlib", split="train", block_size=block)[:, :-1]
    val = load_blocks("stdlib", split="val", block_size=block)[:n_val]
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    sets = []
    for d in range(draws):                      # disjoint random calibration sets, batches of 8 blocks
        calib = train[perm[d * n_calib:(d + 1) * n_calib]]
        sets.append([calib[i:i + 8] for i in range(0, len(calib), 8)])

    @torch.no_grad()
    def val_loss(model):
        model.eval()
        tot = 0.0
        for i in range(0, len(val), 16):
            b = val[i:i + 16]
            logits = model(b[:, :-1]).logits
            tot += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           b[:, 1:].reshape(-1), reduction="sum"))
        return tot / val[:, 1:].numel()

    print(describe())
    print(f"model {path}; calibration {draws} disjoint random sets of {n_calib} x {block} stdlib train tokens; "
          f"validation {n_val} x {block} stdlib val tokens; {THREADS} thread(s); loss = mean over the sets")
    dense = val_loss(build_model(path))
    print(f"dense: val loss {dense:.4f} (ppl {math.exp(dense):.2f})")
    print("Wanda (per output row)   sequential loss (ppl)   one-shot loss (ppl)   one-shot - sequential "
          "(mean +- sd over sets)")
    for sp in sparsities:
        res = {True: [], False: []}
        for batches in sets:
            for seq in (True, False):
                model = build_model(path)
                wanda_prune(model, batches, sp, sequential=seq)
                res[seq].append(val_loss(model))
        a, b = statistics.mean(res[True]), statistics.mean(res[False])
        diff = [o - q for o, q in zip(res[False], res[True])]
        sd = statistics.stdev(diff) if len(diff) > 1 else float("nan")
        print(f"  sparsity {sp:.1f}             {a:.4f} ({math.exp(a):7.2f})     "
              f"{b:.4f} ({math.exp(b):7.2f})   {statistics.mean(diff):+.4f} +- {sd:.4f}")
    print("FLAP (bias compensation)  " + "   ".join(f"{s:>15}" for s in FLAP_STRUCTURES))
    for r in ratios:
        cells = []
        for st in FLAP_STRUCTURES:
            losses = []
            for batches in sets:
                model = build_model(path)
                flap_prune(model, batches, r, structure=st)
                losses.append(val_loss(model))
            loss = statistics.mean(losses)
            cells.append(f"{loss:.4f} ({math.exp(loss):6.2f})")
        print(f"  ratio {r:.1f}                " + "   ".join(f"{c:>15}" for c in cells))
    print("(al-am: ratio = fraction of attention+MLP parameters; head/channel: fraction of input channels of "
          "o_proj + down_proj)")


def main():
    global THREADS
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return run_child(sys.argv[2], sys.argv[3:])
    if "--prune" in sys.argv:
        THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        return prune_quality()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1000, help="size of each checkpoint (default 1000)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--density", type=float, default=0.01, help="fraction of entries changed (default 0.01)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-rank-numel", type=int, default=1 << 22,
                    help="diff_checkpoints' SVD limit (default 2**22, the library default)")
    ap.add_argument("--dir", default=None, help="where to write the pair (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1)")
    args = ap.parse_args()
    THREADS = args.threads
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        made = child("make", tmp, args.size_mb, args.dtype, args.density)
        paths, largest = made["paths"], made["largest"]
        size = os.path.getsize(paths[0])
        t = child("time", *paths, args.repeats, args.max_rank_numel)
        print(t["machine"])
        print(f"pair: 2 x {size / 2**20:.0f} MiB {args.dtype}, {made['n']} tensors, largest "
              f"{largest / 2**20:.0f} MiB, density {args.density} (written in {time.perf_counter() - t0:.1f} s)")
        r, df = t["read"], t["diff"]
        print(f"read both: {r:.2f} s ({2 * size / 2**30 / r:.2f} GiB/s); diff_checkpoints: {df:.2f} s; "
              f"ratio read/diff {r / df:.2f} (target >= 0.5: {'ok' if r / df >= 0.5 else 'MISSED'}); "
              f"sparsity {t['sparsity']:.4f}")
        base_rss = child("import")["maxrss"]
        peak = child("diff", *paths, args.max_rank_numel)["maxrss"]
        read_rss = child("read", *paths)["maxrss"]
        bound = 3 * largest + base_rss
        print(f"peak RSS of the diff: {peak / 2**20:.0f} MiB; fixed overhead (imports only) {base_rss / 2**20:.0f} "
              f"MiB; bound 3 x largest + overhead = {bound / 2**20:.0f} MiB "
              f"({'ok' if peak <= bound else 'OVER'}; diff above overhead = {(peak - base_rss) / largest:.2f} x "
              f"largest tensor)")
        print(f"peak RSS of just reading both files with safe_open: {read_rss / 2**20:.0f} MiB (memory-mapped "
              f"pages a handle has touched count in RSS while it is open)")


if __name__ == "__main__":
    main()
