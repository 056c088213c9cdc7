"""FSDP2 training under torchrun (2 gloo processes on CPU): the same run as one process, sharded
DCP checkpoints that resume on a different number of processes, and a kill -9 mid-save.

One uninterrupted 2-process run of 20 steps is the reference; a single process with the same
global batch (2 ranks x 2 sequences = 4) must give the same losses, gradient and update norms
(fp32, rtol 1e-5); a run stopped at step 10 and resumed on 1 and on 2 processes must continue
exactly as the uninterrupted one.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from workbench import schedules
from workbench.checkpoint import step_dir_name
from workbench.distributed import latest_checkpoint
from workbench.runlog import read_run_log
from workbench.train import TrainConfig, train

STEPS = 20
TRAIN = ["--model", "tiny", "--data", "stdlib", "--batch-size", "2", "--seq-len", "32", "--max-tokens", "20000",
         "--eval-interval", "5", "--eval-batches", "2", "--device", "cpu", "--no-progress", "--parallel", "fsdp"]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _cmd(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "workbench.cli", "train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "workbench.cli", "train", *args]


def workbench_train(nproc: int, *args: str, timeout: int = 150) -> None:
    proc = subprocess.run(_cmd(nproc, *args), env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "address already in use" in (proc.stdout + proc.stderr).lower():
        proc = subprocess.run(_cmd(nproc, *args), env=_env(), capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert proc.returncode == 0, proc.stdout[-1000:] + "\n".join(lines[-60:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp_train")
    spec = tmp / "spec.json"
    schedules.save_schedule(schedules.cosine(peak_lr=3e-3, total_steps=STEPS, warmup_steps=2), spec)
    workbench_train(2, "--run-dir", str(tmp / "full"), "--schedule", str(spec), "--checkpoint-interval", "10", *TRAIN)
    workbench_train(2, "--run-dir", str(tmp / "part"), "--schedule", str(spec), "--steps", "10", *TRAIN)
    return tmp, spec


def assert_same_steps(log_a, log_b, steps):
    a = {r["step"]: r for r in log_a}
    b = {r["step"]: r for r in log_b}
    for key in ("loss", "grad_norm", "update_norm"):
        np.testing.assert_allclose([a[t][key] for t in steps], [b[t][key] for t in steps], rtol=1e-5, err_msg=key)
    assert [a[t]["tokens"] for t in steps] == [b[t]["tokens"] for t in steps]
    vals = [t for t in steps if "val_loss" in b[t]]
    assert vals and all("val_loss" in a[t] for t in vals)
    np.testing.assert_allclose([a[t]["val_loss"] for t in vals], [b[t]["val_loss"] for t in vals], rtol=1e-5)


@pytest.mark.timeout(300)
def test_fsdp_matches_one_process(runs):
    tmp, spec = runs
    train(TrainConfig(model="tiny", data="stdlib", schedule=schedules.load_schedule(spec).to_dict(), batch_size=4,
                      seq_len=32, max_tokens=20_000, eval_interval=5, eval_batches=2, device="cpu", progress=False,
                      run_dir=str(tmp / "single")))
    fsdp = read_run_log(tmp / "full")
    assert [r["step"] for r in fsdp] == list(range(STEPS))        # rank 0 alone wrote the log
    assert_same_steps(fsdp, read_run_log(tmp / "single"), range(STEPS))
    summary = json.loads((tmp / "full" / "summary.json").read_text())
    assert summary["parallel"] == "fsdp" and summary["world_size"] == 2
    # the gathered single-file export holds the same weights as the one-process run
    from safetensors.torch import load_file

    a, b = load_file(tmp / "full" / "model.safetensors"), load_file(tmp / "single" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_on_other_process_counts(runs, nproc):
    tmp, _ = runs
    run = tmp / f"resume{nproc}"
    shutil.copytree(tmp / "part", run)
    assert latest_checkpoint(run).endswith(step_dir_name(10))
    workbench_train(nproc, "--resume", str(run), "--steps", str(STEPS), "--no-progress")
    resumed = read_run_log(run, dedupe=True)
    assert [r["step"] for r in resumed] == list(range(STEPS))
    assert_same_steps(resumed, read_run_log(tmp / "full"), range(10, STEPS))


@pytest.mark.timeout(300)
def test_kill_during_save_leaves_a_resumable_run(runs):
    tmp, spec = runs
    run = tmp / "killed"
    ckpts = run / "checkpoints"
    proc = subprocess.Popen(_cmd(2, "--run-dir", str(run), "--schedule", str(spec), "--checkpoint-interval", "1",
                                 *TRAIN), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    mid_save = False
    try:    # once a few checkpoints exist, kill while a .tmp-step-N is being written (or within 1 s anyway)
        deadline, seen = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            latest = ckpts / "latest"
            if seen is None and latest.exists() and int(latest.read_text().strip()[5:] or 0) >= 3:
                seen = time.time()
            if seen is not None and any(p.name.startswith(".tmp-") for p in ckpts.iterdir()):
                mid_save = True
                break
            if seen is not None and time.time() - seen > 1.0:
                break
            time.sleep(0.001)
    finally:   # kill -9 torchrun and its workers (they run in sessions of their own)
        import psutil

        alive = proc.poll() is None
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
    assert alive, "the run ended before it could be killed"
    last = latest_checkpoint(run)                   # names a complete checkpoint
    step = int(os.path.basename(last)[5:])
    assert step < STEPS
    # whatever the kill hit, also leave a torn save of the next step behind, as a crash mid-write would
    torn = ckpts / f".tmp-{step_dir_name(step + 1)}"
    torn.mkdir(exist_ok=True)
    (torn / "__0_0.distcp").write_bytes(b"\0" * 100)
    workbench_train(2, "--resume", str(run), "--no-progress")
    resumed = read_run_log(run, dedupe=True)
    assert [r["step"] for r in resumed] == list(range(STEPS))
    assert_same_steps(resumed, read_run_log(tmp / "full"), range(STEPS))
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
    assert latest_checkpoint(run).endswith(step_dir_name(STEPS)), mid_save


def test_parallel_setting_is_checked():
    with pytest.raises(ValueError, match="parallel must be"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="yes")


def test_transformer_blocks_finds_the_decoder_layers():
    import torch

    from workbench.distributed import transformer_blocks
    from workbench.models import build_model

    model = build_model("tiny")
    assert transformer_blocks(model) == list(model.model.layers) and len(model.model.layers) == 4
    with pytest.raises(ValueError, match="no nn.ModuleList"):
        transformer_blocks(torch.nn.Linear(2, 2))


@pytest.mark.timeout(120)
def test_one_process_fsdp_with_activation_checkpointing(tmp_path):
    # FSDP on a one-rank group (no torchrun); recomputing activations changes no number
    common = dict(model="tiny", steps=3, batch_size=2, seq_len=32, max_tokens=20_000, eval_batches=1, device="cpu",
                  progress=False, parallel="fsdp")
    train(TrainConfig(run_dir=str(tmp_path / "ac"), activation_checkpointing=True, **common))
    train(TrainConfig(run_dir=str(tmp_path / "plain"), **common))
    ac, plain = read_run_log(tmp_path / "ac"), read_run_log(tmp_path / "plain")
    assert len(ac) == 3 and [r["loss"] for r in ac] == [r["loss"] for r in plain]
    assert ac[-1]["loss"] < ac[0]["loss"]


@pytest.mark.timeout(120)
def test_fsdp_refuses_a_prebuilt_optimizer_and_leaves_no_process_group(tmp_path):
    import torch
    import torch.distributed as dist

    from workbench.models import build_model
    from workbench.train import Trainer

    model = build_model("tiny")
    with pytest.raises(ValueError, match="FSDP2 replaces the parameters"):
        Trainer(TrainConfig(parallel="fsdp", device="cpu", steps=1, batch_size=2, seq_len=16, max_tokens=4000,
                            eval_batches=0, progress=False), model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert not dist.is_initialized()
