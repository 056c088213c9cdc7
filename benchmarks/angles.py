"""Data-selection scoring costs.

1. Angle-concentration throughput (GAIN-RL): ``angle_concentration`` vs a plain
   ``torch.no_grad`` forward pass of the same model over the same batches (the cheapest thing a
   scorer could do). Prints samples/s of each and the ratio angles/forward (target >= 0.8).
2. LESS gradient-feature memory: peak extra memory while ``RademacherProjector.project`` maps
   ``[n, dim]`` gradients to ``d = 8192`` for two chunk sizes (each in a fresh process; on CPU
   the resident set sampled every ms, on CUDA ``max_memory_allocated``), next to ``chunk x d``
   float32 bytes (the projector's design peak is ~5 * chunk * d bytes: a float32 block and
   its uint8 bits) and to what the full ``dim x d`` float32 matrix would take.

    python benchmarks/angles.py            # tiny model, CPU unless CUDA is available
"""
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch

from _machine import describe
from workbench.data import RademacherProjector, angle_concentration
from workbench.models import build_model

TARGET_RATIO = 0.8
BATCHES, BATCH, SEQ, TEMPLATE = 6, 8, 256, 32
D = 8192


def throughput(preset, device):
    model = build_model(preset, seed=0).to(device).eval()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(BATCHES):
        ids = torch.randint(1, 256, (BATCH, SEQ), generator=g).to(device)
        attn = torch.ones(BATCH, SEQ, dtype=torch.bool, device=device)
        attn[::2, SEQ * 3 // 4:] = False  # right padding on half the rows
        tmpl = torch.zeros_like(attn)
        tmpl[:, :TEMPLATE] = True
        batches.append((ids, attn, tmpl))

    def forward():
        with torch.no_grad():
            for ids, attn, _ in batches:
                model(input_ids=ids, attention_mask=attn.long(), use_cache=False)

    def angles():
        for ids, attn, tmpl in batches:
            angle_concentration(model, ids, attention_mask=attn, prompt_mask=attn & ~tmpl,
                                template_mask=tmpl, chunk_size=BATCH)

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    forward(), angles()  # warm-up
    fwd, ang = [], []
    for _ in range(3):  # interleaved, so load from other processes hits both alike
        fwd.append(timed(forward))
        ang.append(timed(angles))
    t_fwd, t_ang = statistics.median(fwd), statistics.median(ang)
    n = BATCHES * BATCH
    ratio = t_fwd / t_ang
    print(f"{preset:8s} {n} samples x {SEQ} tokens: forward {n / t_fwd:8.1f} samples/s, "
          f"angles {n / t_ang:8.1f} samples/s, ratio {ratio:.2f} (target >= {TARGET_RATIO}) "
          f"{'OK' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(dim, chunk, device):
    x = torch.randn(8, dim, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss()
        high = [base]
        stop = threading.Event()

        def sample():  # current resident set every ms (the max-RSS mark is set by imports)
            while not stop.is_set():
                high[0] = max(high[0], _rss())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
    t0 = time.perf_counter()
    RademacherProjector(dim, d=D, seed=0, chunk=chunk).project(x)
    dt = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        stop.set()
        sampler.join()
        peak = high[0] - base
    print(json.dumps({"peak": peak, "seconds": dt}))


def memory(dim, device):
    for chunk in (256, 2048):
        out = subprocess.run([sys.executable, __file__, "--mem-child", str(dim), str(chunk), device],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"projector dim {dim:,} -> d {D}, chunk {chunk:5d}: peak extra "
              f"{r['peak'] / 2**20:7.1f} MiB (chunk x d float32 = {chunk * D * 4 / 2**20:5.1f} MiB; "
              f"full matrix would be {dim * D * 4 / 2**30:.1f} GiB), {r['seconds']:.1f} s")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--mem-child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(describe(), f"| device {device}, torch threads {torch.get_num_threads()}")
    if "--mem-only" not in sys.argv:
        throughput("tiny", device)
    # CPU: 2^16 gradient entries (the tiny model's last MLP block); CUDA: all of tiny's ~1.08M
    dim = sum(p.numel() for p in build_model("tiny").parameters()) if device == "cuda" else 1 << 16
    memory(dim, device)


if __name__ == "__main__":
    main()
