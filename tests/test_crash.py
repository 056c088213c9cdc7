"""Crash safety of runs: kill -9 at random instants, one writer per run directory, SIGINT/SIGTERM, default intervals.

The kill test forks trainers from a forkserver that has imported torch once, so 50 kills take
seconds: each child trains (or resumes) a tiny model with a checkpoint after every step, and is
killed at a random instant (while starting, resuming, cleaning up, training or checkpointing).
"""
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings

import pytest
import torch
from safetensors.torch import load_file

from workbench import checkpoint as ckpt
from workbench.runlock import RunLock, RunLocked
from workbench.runlog import read_run_log
from workbench.train import TrainConfig, Trainer, resume, train

STEPS = 10
KILLS = 50


def _blocks():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (48, 17), generator=g), torch.randint(0, 256, (8, 17), generator=g)


def _config(run_dir, **kw):
    from workbench import schedules

    base = dict(model="tiny", run_dir=run_dir, steps=STEPS, batch_size=2, seq_len=16, eval_interval=4,
                eval_batches=1, checkpoint_interval=1, progress=False, device="cpu", seed=0,
                schedule=schedules.make("cosine", peak_lr=3e-3, total_steps=STEPS, warmup_steps=2).to_dict())
    base.update(kw)
    return TrainConfig(**base)


def _child(run_dir, conn):
    """Train (or resume) the run; tell the parent when the first step is done. Exit 0 when complete."""
    try:
        torch.set_num_threads(1)
        train_blocks, val_blocks = _blocks()
        ready = [False]

        def notify(event):
            if not ready[0]:
                ready[0] = True
                conn.send("step")

        warnings.simplefilter("ignore")
        if os.path.exists(os.path.join(run_dir, "config.json")):
            resume(run_dir, train_data=train_blocks, val_data=val_blocks, callbacks=[notify])
        else:
            train(_config(run_dir), train_data=train_blocks, val_data=val_blocks, callbacks=[notify])
        conn.send("done")
    except BaseException:
        conn.send("error: " + traceback.format_exc())
        os._exit(1)


@pytest.fixture(scope="module")
def forkserver():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "workbench.train", "workbench.data", "workbench.models", "workbench.schedules",
                               "safetensors.torch", "transformers.models.llama.modeling_llama"])
    return ctx


def _start(ctx, run_dir):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(run_dir, child))
    p.start()
    child.close()
    return p, parent


def _drain(conn):
    msgs = []
    try:
        while conn.poll():
            msgs.append(conn.recv())
    except EOFError:
        pass
    return msgs


def _finish(p, conn, timeout=120):
    p.join(timeout)
    msgs = _drain(conn)
    assert p.exitcode == 0, f"exit {p.exitcode}: {msgs}"


def _temp_dirs(run_dir):
    """(name, inode) of the checkpoint temp directories: a new one means a kill while checkpointing."""
    cdir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(cdir):
        return set()
    return {(f, os.stat(os.path.join(cdir, f)).st_ino) for f in os.listdir(cdir) if f.startswith(".tmp-step")}


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model.safetensors"))


def test_kill9_at_random_instants_always_resumable_and_bit_exact(tmp_path, forkserver):
    rng = random.Random(1234)
    truth = str(tmp_path / "truth")
    p, conn = _start(forkserver, truth)
    _finish(p, conn)
    want = [(r["step"], r["loss"], r.get("val_loss")) for r in read_run_log(truth)]
    want_w = _weights(truth)
    assert len(want) == STEPS

    kills, chains, phases = 0, 0, {"starting": 0, "training": 0, "mid-checkpoint": 0}
    while kills < KILLS:
        chains += 1
        run_dir = str(tmp_path / f"chain{chains}")
        while True:
            temps_before = _temp_dirs(run_dir)
            p, conn = _start(forkserver, run_dir)
            if kills >= KILLS:                        # the budget is spent: let this chain finish
                _finish(p, conn)
                break
            if rng.random() < 0.2:                    # while forking, building, cleaning up, loading
                time.sleep(rng.uniform(0.0, 0.4))
                phase = "starting"
            else:                                     # while training and checkpointing
                assert conn.poll(120), "the child never reached its first step"
                msg = conn.recv()
                assert not msg.startswith("error"), msg
                time.sleep(rng.uniform(0.0, 0.15))
                phase = "training"
            if p.exitcode is None or p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(30)
            if p.exitcode == -signal.SIGKILL:
                kills += 1
                phases[phase] += 1
                if _temp_dirs(run_dir) - temps_before:
                    phases["mid-checkpoint"] += 1             # killed while writing a checkpoint
                # after any kill the run directory names a complete checkpoint or none at all
                latest = ckpt.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
                if latest is not None:
                    ckpt.load_checkpoint(latest)
                continue
            msgs = _drain(conn)
            assert p.exitcode == 0, f"a resume failed (exit {p.exitcode}): {msgs}"
            break                                     # finished before the kill
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # a line cut by a kill is skipped with a warning
            got = [(r["step"], r["loss"], r.get("val_loss")) for r in read_run_log(run_dir, dedupe=True)]
        assert got == want, f"chain {chains} differs from the uninterrupted run"
        w = _weights(run_dir)
        assert w.keys() == want_w.keys() and all(torch.equal(w[k], want_w[k]) for k in w)
        leftovers = [f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if f.startswith(".tmp")]
        assert leftovers == [] and os.listdir(os.path.join(run_dir, "checkpoints")).count("latest") == 1
    assert kills == KILLS and phases["training"] >= 30 and phases["mid-checkpoint"] >= 1
    print(f"{kills} kills ({phases}) over {chains} runs, every one resumed bit-exact")


# ---------------------------------------------------------------------------------------- layout
def test_checkpoint_is_one_unit_and_leftovers_are_cleaned(tmp_path):
    net = torch.nn.Linear(3, 2)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run, net, step=1)
    first = ckpt.latest_checkpoint(run)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="died"):
        with ckpt.checkpoint_writer(run, 2) as tmp:       # a writer that dies half-way
            open(os.path.join(tmp, ckpt.MODEL_FILE), "wb").write(b"partial")
            raise RuntimeError("died")
    assert ckpt.latest_checkpoint(run) == first            # the previous one is still the latest
    # what a kill -9 leaves: a half-written temp dir, an unreferenced step dir, a temp file at the root
    os.makedirs(run / "checkpoints" / ".tmp-step-00000003")
    os.makedirs(run / "checkpoints" / "step-00000009")
    (run / ".tmp-abc-config.json").write_text("{")
    removed = ckpt.clean_checkpoints(run)
    assert sorted(os.path.basename(r) for r in removed) == [".tmp-abc-config.json", ".tmp-step-00000003",
                                                            "step-00000009"]
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step-00000001"]
    ckpt.save_checkpoint(run, net, step=2)
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step-00000002"]    # step 1 deleted after
    root, inner = run / "model.safetensors", run / "checkpoints" / "step-00000002" / "model.safetensors"
    assert os.path.samefile(root, inner)                   # the export is the committed file
    assert torch.equal(load_file(root)["weight"], net.weight.detach())


def test_old_layout_run_still_resumes_and_moves_to_the_new_one(tmp_path):
    train_blocks, val_blocks = _blocks()
    full = train(_config(str(tmp_path / "full")), train_data=train_blocks, val_data=val_blocks)
    old = tmp_path / "old"
    train(_config(str(old), steps=4), train_data=train_blocks, val_data=val_blocks)
    # rewrite it as the old layout: both files at the root, no checkpoints/ folder
    latest = ckpt.latest_checkpoint(old)
    os.replace(os.path.join(latest, ckpt.STATE_FILE), old / "state.pt")
    os.remove(old / "model.safetensors")
    os.replace(os.path.join(latest, ckpt.MODEL_FILE), old / "model.safetensors")
    shutil.rmtree(old / "checkpoints")
    assert ckpt.latest_checkpoint(old) == str(old)
    s = resume(old, steps=STEPS, train_data=train_blocks, val_data=val_blocks)
    assert s["final_val_loss"] == full["final_val_loss"] and s["steps"] == STEPS
    assert not (old / "state.pt").exists() and ckpt.latest_checkpoint(old).endswith("step-00000010")


# ---------------------------------------------------------------------------------------- the lock
def test_second_writer_is_refused_naming_the_pid(tmp_path):
    run = str(tmp_path / "run")
    train_blocks, val_blocks = _blocks()
    first = Trainer(_config(run), train_data=train_blocks, val_data=val_blocks)
    with pytest.raises(RunLocked, match=f"PID {os.getpid()}"):
        Trainer(_config(run), train_data=train_blocks, val_data=val_blocks)
    with pytest.raises(RunLocked, match="in use by PID"):
        resume(run, train_data=train_blocks, val_data=val_blocks)
    assert first.run()["status"] == "completed"            # the lock is released at the end
    resume(run, steps=STEPS, train_data=train_blocks, val_data=val_blocks)


def test_lock_of_a_killed_process_is_released_by_the_os(tmp_path):
    code = ("import sys, time; from workbench.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"PID {p.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    with RunLock(tmp_path):                                # free again after kill -9
        pass


def test_two_cli_trainers_on_one_run_dir(tmp_path):
    """The second `workbench train` on a run dir in use exits 2 with one line naming the PID."""
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    try:
        r = subprocess.run([sys.executable, "-m", "workbench.cli", "train", "--run-dir", str(run), "--steps", "2"],
                           capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"in use by PID {os.getpid()}" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_stops_after_the_step_with_a_checkpoint(tmp_path, signame):
    train_blocks, val_blocks = _blocks()
    run = str(tmp_path / "run")

    def send(event):
        if event["step"] == 2:
            os.kill(os.getpid(), getattr(signal, signame))

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    s = train(_config(run, checkpoint_interval=0, checkpoint_minutes=0), train_data=train_blocks,
              val_data=val_blocks, callbacks=[send])
    assert s["status"] == "interrupted" and s["steps"] == 3
    assert torch.load(os.path.join(ckpt.latest_checkpoint(run), ckpt.STATE_FILE), weights_only=True)["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before   # handlers restored


def test_cli_sigterm_checkpoints_and_prints_one_line(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "workbench.cli", "train", "--run-dir", str(run), "--steps", "100000",
           "--batch-size", "2", "--seq-len", "16", "--max-tokens", "4000", "--eval-interval", "0",
           "--no-progress", "--device", "cpu"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "terminate called" not in err
    assert "SIGTERM" in err and f"--resume {run}" in out
    steps = read_run_log(run)[-1]["step"] + 1
    assert torch.load(os.path.join(ckpt.latest_checkpoint(run), ckpt.STATE_FILE), weights_only=True)["step"] == steps


def test_defaults_checkpoint_a_400_step_run_before_step_220(tmp_path):
    """The issue's case: --steps 400 with the old fixed interval 500 lost everything at a kill at 220."""
    train_blocks, val_blocks = _blocks()
    t = Trainer(_config(None, steps=400, checkpoint_interval=None, schedule="cosine"), train_data=train_blocks, val_data=val_blocks)
    assert t.config.checkpoint_minutes == 10 and t.checkpoint_every == 40      # 220 - 200 = 20 steps at risk
    t = Trainer(_config(None, steps=100_000, checkpoint_interval=None, schedule="cosine"), train_data=train_blocks)
    assert t.checkpoint_every == 500


def test_checkpoint_by_wall_time(tmp_path, monkeypatch):
    train_blocks, val_blocks = _blocks()
    run = str(tmp_path / "run")
    clock = [1000.0]
    monkeypatch.setattr("workbench.train._now", lambda: clock[0])
    saved = []

    def advance(event):                  # 4 simulated minutes per step
        clock[0] += 240
        saved.append(event["step"])

    t = Trainer(_config(run, steps=8, checkpoint_interval=0, checkpoint_minutes=10), train_data=train_blocks,
                val_data=val_blocks, callbacks=[advance])
    steps_at_save = []
    real_save = t.save_checkpoint
    monkeypatch.setattr(t, "save_checkpoint", lambda *a: (steps_at_save.append(t.step), real_save(*a)))
    t.run()
    assert steps_at_save == [3, 6, 8]    # 12 min after steps 3 and 6 (>= 10), then the end


def test_signal_stops_background_runs_like_a_server_would(tmp_path):
    """`workbench serve` trains in threads: the main thread's handler stops every run, each with a checkpoint."""
    from workbench import interrupts

    train_blocks, val_blocks = _blocks()
    started = threading.Event()
    trainers = [Trainer(_config(str(tmp_path / f"r{i}"), steps=10_000, checkpoint_interval=0, checkpoint_minutes=0,
                                schedule="cosine"),
                        train_data=train_blocks, val_data=val_blocks, callbacks=[lambda e: started.set()])
                for i in range(2)]
    with interrupts.stop_on_signals(message=False):
        threads = [threading.Thread(target=t.run) for t in trainers]
        for th in threads:
            th.start()
        assert started.wait(120)
        while interrupts.active_runs() < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.wait_for_runs(timeout=120)
    for th, t in zip(threads, trainers):
        th.join(30)
        assert t.status == "interrupted" and t.interrupted_by == "SIGTERM" and 0 < t.step < 10_000
        state = torch.load(os.path.join(ckpt.latest_checkpoint(t.run_dir), ckpt.STATE_FILE), weights_only=True)
        assert state["step"] == t.step


@pytest.mark.timeout(240)
def test_sigterm_to_torchrun_stops_both_ranks_at_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to every rank; the ranks agree on the step to stop at (one all-reduce per
    step), rank 0 checkpoints it and writes the summary, and nobody hangs in a collective."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "workbench.cli", "train", "--run-dir", str(run), "--steps", "100000", "--schedule", "constant",
           "--model", "tiny", "--data", "stdlib", "--batch-size", "2", "--seq-len", "16", "--max-tokens", "20000",
           "--eval-interval", "0", "--device", "cpu", "--no-progress", "--checkpoint-interval", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not (run / "log.jsonl").exists() and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    summary = json.loads((run / "summary.json").read_text())
    steps = read_run_log(run)[-1]["step"] + 1
    assert summary["status"] == "interrupted" and summary["steps"] == steps, err[-3000:]
    state = torch.load(os.path.join(ckpt.latest_checkpoint(run), ckpt.STATE_FILE), weights_only=True)
    assert state["step"] == steps
