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


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return run_child(sys.argv[2], sys.argv[3:])
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
    global THREADS
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
