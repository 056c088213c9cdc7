"""Reading TensorBoard event files: the workbench's streaming reader vs TensorBoard's own
EventAccumulator on the same files, in one process. Prints time and peak traced memory, and the ratios.

    python benchmarks/tfevents.py            # needs tensorboard (the [tensorboard] extra)
"""
import os
import tempfile
import time
import tracemalloc

from _machine import describe
from workbench.curves import read_runs
from workbench.tfevents import encode_scalar_event, encode_varint as _varint, frame



def write_files(d):
    scal = os.path.join(d, "scalars", "events.out.tfevents.1.host")
    os.makedirs(os.path.dirname(scal))
    with open(scal, "wb") as f:                          # 50,000 steps x 2 tags, every step (6 MB)
        for t in range(50_000):
            f.write(frame(encode_scalar_event(t, "train/learning_rate", 1e-3)))
            f.write(frame(encode_scalar_event(t, "train/loss", 4.0 - t / 1e5)))
    big = os.path.join(d, "images", "events.out.tfevents.2.host")
    os.makedirs(os.path.dirname(big))
    # an image summary as add_image writes it: Event{step, summary{value{tag, image{h, w, c, 256 KiB png}}}}
    image = b"\x08\x80\x02\x10\x80\x02\x18\x03" + b"\x22" + _varint(262144) + bytes(262144)
    value = b"\x0a\x03img" + b"\x22" + _varint(len(image)) + image
    summary = b"\x0a" + _varint(len(value)) + value
    blob = frame(b"\x2a" + _varint(len(summary)) + summary)          # at step 0 (one CRC for all)
    with open(big, "wb") as f:                           # 100 MB: 400 image records, then 400 scalars
        for t in range(400):
            f.write(blob)
        for t in range(400):
            f.write(frame(encode_scalar_event(t, "train/loss", 4.0 - t / 1e3)))
    return {"50k steps x 2 scalars": os.path.dirname(scal), "100 MB, 400 images + scalars": os.path.dirname(big)}


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    n = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return n, dt, peak


def main():
    from tensorboard.backend.event_processing import event_accumulator as ea

    print(describe())
    with tempfile.TemporaryDirectory() as d:
        for name, path in write_files(d).items():
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6

            def ours():
                return len(read_runs(path)[0].records)

            def theirs():
                acc = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
                acc.Reload()
                return sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])

            n1, t1, m1 = measure(ours)
            n2, t2, m2 = measure(theirs)
            assert n1 == n2, (n1, n2)
            print(f"{name} ({size:.0f} MB, {n1} scalars): workbench {t1:.2f} s, peak {m1 / 1e6:.1f} MB; "
                  f"EventAccumulator {t2:.2f} s, peak {m2 / 1e6:.1f} MB; time ratio {t1 / t2:.2f}x, "
                  f"memory ratio {m1 / max(m2, 1):.3f}x")


if __name__ == "__main__":
    main()
