"""The trainer, its checkpoints and the `workbench train` / `runs show` CLI (tiny model, CPU)."""
import json
import os
import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from workbench import schedules
from workbench.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from workbench.cli import main
from workbench.data import BlockLoader, load_blocks
from workbench.models import build_model
from workbench.runlog import read_run_log
from workbench.train import (EVENT_KEYS, TrainConfig, Trainer, TrainingDiverged, resume, run_summary,
                             train)

BASE = dict(model="tiny", data="stdlib", batch_size=4, seq_len=32, max_tokens=20_000, eval_batches=2,
            eval_interval=5, checkpoint_interval=0, progress=False, seed=0)


def cfg(tmp_path=None, name="run", **kw) -> TrainConfig:
    run_dir = str(tmp_path / name) if tmp_path is not None else None
    return TrainConfig(**{**BASE, "run_dir": run_dir, **kw})


def horizon(steps, **kw):
    """A schedule dict with its own horizon, so runs can stop early and resume on the same LRs."""
    return schedules.cosine(peak_lr=3e-3, total_steps=steps, warmup_steps=2, min_lr=3e-4, **kw).to_dict()


def weights(run_dir):
    return load_file(f"{run_dir}/model.safetensors")


# --------------------------------------------------------------------------- learning & the log
def test_loss_falls_on_tiny_model():
    s = train(cfg(steps=30, lr=3e-3, warmup_steps=3, eval_interval=10))
    # byte-level text starts near ln(256) = 5.55
    assert s["status"] == "completed" and s["steps"] == 30
    assert s["final_train_loss"] < 3.6                      # well below the 5.5 of a uniform guess
    assert s["final_val_loss"] < math.log(256) - 1.5


def test_log_keys_lr_tokens_and_eval_steps(tmp_path):
    sched = schedules.wsd(peak_lr=2e-3, total_steps=12, warmup_steps=3, decay_fraction=0.5)
    train(cfg(tmp_path, schedule=sched.to_dict()))
    log = read_run_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(12))
    for r in log:
        assert set(EVENT_KEYS) <= set(r)
        assert r["lr"] == sched(r["step"])                   # the LR that update used
        assert r["tokens"] == (r["step"] + 1) * 4 * 32
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem"] > 0
    assert log[0]["lr"] == 0.0 and log[0]["update_norm"] == 0.0   # warmup starts at lr 0: no update
    assert log[1]["update_norm"] > 0
    assert [r["step"] for r in log if "val_loss" in r] == [4, 9, 11]   # every 5 updates + the last
    times = [r["time"] for r in log]
    assert all(b > a for a, b in zip(times, times[1:]))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 128
    assert summary["final_val_loss"] == log[-1]["val_loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in log if "val_loss" in r)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert schedules.schedule_from_dict(saved["schedule"]) == sched


def test_first_step_matches_a_hand_written_step():
    """loss, grad_norm and update_norm of step 0 against an independent computation."""
    blocks = load_blocks("stdlib", "train", block_size=32, max_tokens=20_000)
    model = build_model("tiny", vocab_size=256, seed=3, max_seq_len=32)
    ref = build_model("tiny", vocab_size=256, seed=3, max_seq_len=32)
    before = [p.detach().clone() for p in ref.parameters()]
    x, y = next(BlockLoader(blocks, 4, seed=3))
    loss = F.cross_entropy(ref(input_ids=x).logits.reshape(-1, 256), y.reshape(-1))
    loss.backward()
    gnorm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ref.parameters()))

    tr = Trainer(cfg(seed=3, steps=1, schedule=schedules.constant(peak_lr=1e-3, total_steps=1).to_dict(),
                     eval_batches=0), model=model, train_data=blocks)
    tr.run()
    ev = tr.history[0]
    assert ev["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert ev["grad_norm"] == pytest.approx(gnorm, rel=1e-4)
    moved = math.sqrt(sum(float(((p.detach() - b).double() ** 2).sum()) for p, b in zip(model.parameters(), before)))
    assert ev["update_norm"] == pytest.approx(moved, rel=1e-4)
    assert 0 < moved


def test_grad_accumulation_equals_larger_batch():
    a = Trainer(cfg(steps=5, batch_size=2, grad_accum=2, eval_batches=0))
    a.run()
    b = Trainer(cfg(steps=5, batch_size=4, grad_accum=1, eval_batches=0))
    b.run()
    np.testing.assert_allclose([e["loss"] for e in a.history], [e["loss"] for e in b.history], rtol=1e-5)
    np.testing.assert_allclose([e["grad_norm"] for e in a.history], [e["grad_norm"] for e in b.history], rtol=1e-4)
    assert a.history[-1]["tokens"] == b.history[-1]["tokens"] == 5 * 4 * 32


# --------------------------------------------------------------------------- checkpoints and resume
def test_resume_after_crash_is_bit_identical(tmp_path):
    sched = horizon(10)
    train(cfg(tmp_path, "full", schedule=sched))

    def crash(event):
        if event["step"] == 6:
            raise KeyboardInterrupt   # like a kill: no checkpoint at this point

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, "crashed", schedule=sched, checkpoint_interval=4), callbacks=[crash])
    state = torch.load(os.path.join(latest_checkpoint(tmp_path / "crashed"), STATE_FILE), weights_only=True)
    assert state["step"] == 4 and state["loader"]["position"] == 16
    resume(tmp_path / "crashed")

    full = read_run_log(tmp_path / "full")
    raw = read_run_log(tmp_path / "crashed")
    assert [r["step"] for r in raw] == [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]   # steps 4-6 repeated
    crashed = read_run_log(tmp_path / "crashed", dedupe=True)
    for key in ("loss", "grad_norm", "update_norm", "lr", "tokens"):
        assert [r[key] for r in crashed] == [r[key] for r in full], key       # exact, not approx
    assert [r["loss"] for r in raw[4:7]] == [r["loss"] for r in raw[7:10]]    # the repeat is the same
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "crashed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert crashed[-1]["val_loss"] == full[-1]["val_loss"]
    assert raw[7]["time"] > raw[3]["time"]          # train time carries over the resume


def test_stop_early_then_resume_with_more_steps(tmp_path):
    sched = horizon(8)
    train(cfg(tmp_path, "full", schedule=sched))
    s = train(cfg(tmp_path, "cut", schedule=sched, steps=3))
    assert s["steps"] == 3 and s["total_steps"] == 8
    s = resume(tmp_path / "cut", steps=8)
    assert s["steps"] == 8 and s["status"] == "completed"
    assert [r["loss"] for r in read_run_log(tmp_path / "cut", dedupe=True)] == [
        r["loss"] for r in read_run_log(tmp_path / "full")]
    assert s["tokens"] == 8 * 128


def test_stop_event_checkpoints_and_pause_excludes_time(tmp_path):
    stop, pause = threading.Event(), threading.Event()

    def control(event):
        if event["step"] == 1:
            pause.set()
            threading.Timer(0.5, pause.clear).start()
        if event["step"] == 3:
            stop.set()

    t0 = time.perf_counter()
    s = train(cfg(tmp_path, steps=10), callbacks=[control], stop_event=stop, pause_event=pause)
    wall = time.perf_counter() - t0
    assert s["status"] == "stopped" and s["steps"] == 4
    assert torch.load(os.path.join(latest_checkpoint(tmp_path / "run"), STATE_FILE), weights_only=True)["step"] == 4
    log = read_run_log(tmp_path / "run")
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    assert log[2]["time"] - log[1]["time"] < 0.45          # the 0.5 s pause is not train time
    assert wall > 0.5
    assert resume(tmp_path / "run")["steps"] == 10


def test_nan_loss_stops_with_checkpoint_of_last_good_step(tmp_path):
    sched = horizon(10)
    train(cfg(tmp_path, "clean", schedule=sched, steps=3))           # the truth: 3 good updates

    model = build_model("tiny", vocab_size=256, seed=0, max_seq_len=32)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 4 else output

    model.get_output_embeddings().register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="step 3.*lower peak LR"):
        train(cfg(tmp_path, "bad", schedule=sched, eval_interval=0), model=model)
    state = torch.load(os.path.join(latest_checkpoint(tmp_path / "bad"), STATE_FILE), weights_only=True)
    assert state["step"] == 3 and state["loader"]["position"] == 12      # the bad batch not consumed
    good, bad = weights(tmp_path / "clean"), weights(tmp_path / "bad")
    assert all(torch.equal(good[k], bad[k]) for k in good)
    assert [r["step"] for r in read_run_log(tmp_path / "bad")] == [0, 1, 2]
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 3


def test_checkpoint_roundtrip_with_tied_weights_and_weights_only(tmp_path):
    model = build_model("gpt2-1m", vocab_size=256, seed=1, max_seq_len=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 16))
    model(input_ids=x).logits.sum().backward()
    opt.step()
    loader = BlockLoader(torch.arange(40).reshape(10, 4), 2, seed=5)
    next(loader)
    torch.manual_seed(123)
    save_checkpoint(tmp_path, model, step=7, optimizer=opt, loader=loader, trainer={"tokens": 99})
    expected_draw = torch.rand(3)
    state = torch.load(os.path.join(latest_checkpoint(tmp_path), STATE_FILE), weights_only=True)       # no pickle execution needed
    assert state["step"] == 7 and state["trainer"] == {"tokens": 99}

    fresh = build_model("gpt2-1m", vocab_size=256, seed=2, max_seq_len=32)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_loader = BlockLoader(torch.arange(40).reshape(10, 4), 2, seed=5)
    torch.manual_seed(0)
    load_checkpoint(tmp_path, fresh, optimizer=fresh_opt, loader=fresh_loader)
    assert torch.equal(torch.rand(3), expected_draw)                    # RNG restored
    assert fresh.get_output_embeddings().weight is fresh.get_input_embeddings().weight   # still tied
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=x).logits, model(input_ids=x).logits)
    assert torch.equal(next(fresh_loader)[0], next(loader)[0])
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


# --------------------------------------------------------------------------- time to target
def test_time_to_target_excludes_evaluation(tmp_path, monkeypatch):
    original = Trainer.evaluate

    def slow_eval(self):
        time.sleep(0.3)
        return original(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_eval)
    t0 = time.perf_counter()
    s = train(cfg(tmp_path, steps=8, eval_interval=2, target_val_loss=5.0))
    wall = time.perf_counter() - t0
    log = read_run_log(tmp_path / "run")
    first = next(r for r in log if r.get("val_loss") is not None and r["val_loss"] <= 5.0)
    assert s["time_to_target"] == first["time"] and s["step_to_target"] == first["step"]
    assert s["train_time"] < wall - 4 * 0.3                 # 4 evaluations, none of it counted
    s2 = train(cfg(steps=4, eval_interval=2, target_val_loss=0.01))
    assert s2["time_to_target"] is None and s2["step_to_target"] is None


# --------------------------------------------------------------------------- misc behaviour
def test_refuses_a_directory_that_holds_a_run(tmp_path):
    train(cfg(tmp_path, steps=2))
    with pytest.raises(ValueError, match="already holds a run.*resume"):
        Trainer(cfg(tmp_path, steps=2))


def test_bad_input_raises_value_error_naming_the_fix():
    with pytest.raises(ValueError, match="unknown optimizer 'adafactor'; use one of adamw, .*apollo-mini"):
        TrainConfig(optimizer="adafactor")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="steps= .*required"):
        Trainer(cfg(steps=None, schedule="cosine"))


def test_optimizer_as_callable_and_broken_subscriber(tmp_path):
    seen = []
    with pytest.warns(RuntimeWarning, match="subscriber"):
        s = train(cfg(steps=3, eval_batches=0, track_update_norm=False),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.0), callbacks=[lambda e: 1 / 0, seen.append])
    assert s["steps"] == 3 and [e["step"] for e in seen] == [0, 1, 2]   # the run went on
    assert all(e["update_norm"] is None for e in seen)


# --------------------------------------------------------------------------- CLI
def test_cli_train_resume_and_runs_show(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    schedules.save_schedule(schedules.cosine(peak_lr=3e-3, total_steps=8, warmup_steps=2), spec)
    run = str(tmp_path / "cli")
    common = ["--batch-size", "4", "--seq-len", "32", "--max-tokens", "20000", "--eval-batches", "2"]
    assert main(["train", "--model", "tiny", "--data", "stdlib", "--schedule", str(spec), "--steps", "4",
                 "--run-dir", run, "--seed", "0", "--eval-interval", "2", "--target-val-loss", "5.0",
                 "--no-progress", *common]) == 0
    capsys.readouterr()
    assert main(["train", "--run-dir", run, "--steps", "4", "--no-progress", *common]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--lr", "1.0"]) == 2
    assert main(["train", "--resume", run, "--steps", "8", "--no-progress"]) == 0
    log = read_run_log(run, dedupe=True)
    sched = schedules.load_schedule(spec)
    assert [r["step"] for r in log] == list(range(8))
    assert [r["lr"] for r in log] == [sched(t) for t in range(8)]
    capsys.readouterr()
    assert main(["runs", "show", run]) == 0
    out = capsys.readouterr().out
    assert "best val loss" in out and "time to target" in out and "8 / 8" in out
    assert main(["runs", "show", run, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == run_summary(run)
    assert shown["steps"] == 8 and shown["status"] == "completed"
    assert shown["best_val_loss"] == min(r["val_loss"] for r in log if "val_loss" in r)
    assert shown["time_to_target"] is not None


def test_runs_show_on_a_run_without_summary(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "log.jsonl").write_text('{"step": 0, "loss": 5.0, "tokens": 10, "time": 1.0, "lr": 1}\n'
                                 '{"step": 1, "loss": 4.0, "tokens": 20, "time": 2.0, "lr": 1, "val_loss": 4.5}\n')
    assert main(["runs", "show", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["status"] == "incomplete" and s["steps"] == 2 and s["best_val_loss"] == 4.5
    assert s["tokens_per_s"] == 10.0
    assert main(["runs", "show", str(tmp_path / "missing")]) == 2
