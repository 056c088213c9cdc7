"""Corpora bigger than memory: `workbench data prepare` on a generated corpus, then training from it.

Generates a text corpus of ``--gb`` GB (random words, one paragraph per document), prepares it
(byte tokenizer, ``--num-proc`` processes), then trains the ``tiny`` model for ``--steps`` steps from
(a) a 10 MB prepared corpus and (b) the full one, each in a fresh process, and prints the peak
resident memory (VmHWM) of both: the ratio should be ~1 whatever the corpus size. Also prints how
fast rows are read back at random from the memory-mapped shards, and checks that a loader resumed
mid-epoch gives the same batches.

    python benchmarks/data_prepare.py            # 1 GB, ~5-10 min on 2 cores, ~3.5 GB of disk in a temp dir
    python benchmarks/data_prepare.py --gb 0.1   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

WORDS = np.array("the of and to in is that for it as with was on be by this are from at or an which "
                 "loss schedule warmup decay token model learning rate gradient optimizer batch".split())

_TRAIN = """
import sys, json, time
from workbench.train import TrainConfig, train
t = time.perf_counter()
s = train(TrainConfig(model="tiny", data=sys.argv[1], steps=int(sys.argv[3]), batch_size=8, seq_len=128,
                      eval_interval=0, eval_batches=4, progress=False, run_dir=sys.argv[2]))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024, "seconds": time.perf_counter() - t,
                  "final_val_loss": s["final_val_loss"]}))
"""


def generate(path: Path, n_bytes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w") as f:
        while written < n_bytes:
            words = WORDS[rng.integers(0, len(WORDS), 400_000)]
            lengths = rng.integers(20, 400, 4000)
            cuts = np.minimum(np.cumsum(lengths), len(words))
            docs = [" ".join(words[a:b]) for a, b in zip(np.r_[0, cuts[:-1]], cuts) if b > a]
            chunk = "\n\n".join(docs) + "\n\n"
            f.write(chunk)
            written += len(chunk)


def train_peak(prepared: Path, run_dir: Path, steps: int) -> dict:
    res = subprocess.run([sys.executable, "-c", _TRAIN, str(prepared), str(run_dir), str(steps)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed at the end)")
    args = ap.parse_args()

    from workbench.data import BlockLoader
    from workbench.data.shards import TokenBlocks, prepare_shards

    work = Path(args.dir or tempfile.mkdtemp(prefix="wb-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(describe())
        rows = {}
        for name, gb in (("small", 0.01), ("full", args.gb)):
            src = work / f"{name}.txt"
            t = time.perf_counter()
            generate(src, int(gb * 1e9))
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            m = prepare_shards(src, work / f"{name}-prep", num_proc=args.num_proc, progress=name == "full")
            prep_s = time.perf_counter() - t
            tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
            src.unlink()
            tr = train_peak(work / f"{name}-prep", work / f"{name}-run", args.steps)
            rows[name] = {"corpus_gb": round(tokens / 1e9, 3), "tokens": tokens,
                          "generate_s": round(gen_s, 1), "prepare_s": round(prep_s, 1),
                          "prepare_mtok_per_s": round(tokens / prep_s / 1e6, 2),
                          "shards": len(m["splits"]["train"]["shards"]) + len(m["splits"]["val"]["shards"]),
                          "train_peak_rss_mb": round(tr["peak_rss_mb"], 1), "train_s": round(tr["seconds"], 1)}
            print(name, json.dumps(rows[name]))
        blocks = TokenBlocks(work / "full-prep", "train", 128)
        loader = BlockLoader(blocks, batch_size=64, seed=0)
        t = time.perf_counter()
        for _ in range(50):
            next(loader)
        read_s = (time.perf_counter() - t) / 50
        state = loader.state_dict()
        expect = [next(loader)[0] for _ in range(3)]
        again = BlockLoader(TokenBlocks(work / "full-prep", "train", 128), batch_size=64, seed=0)
        again.load_state_dict(state)
        same = all(bool((next(again)[0] == e).all()) for e in expect)
        ratio = rows["full"]["train_peak_rss_mb"] / rows["small"]["train_peak_rss_mb"]
        print(f"\nblocks in the full corpus: {len(blocks):,}; random batch of 64x129 read in {read_s * 1e3:.2f} ms")
        print(f"resumed loader gives the same batches: {same}")
        print(f"training peak RSS: {rows['small']['train_peak_rss_mb']:.0f} MB (10 MB corpus) vs "
              f"{rows['full']['train_peak_rss_mb']:.0f} MB ({rows['full']['corpus_gb']} G tokens): ratio {ratio:.3f}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
