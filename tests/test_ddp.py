"""DDP under torchrun (2 gloo processes on CPU) trains exactly like one process with the same global batch."""
import os
import subprocess
import sys

import numpy as np
import pytest

from workbench import schedules
from workbench.runlog import read_run_log
from workbench.train import TrainConfig, train

STEPS = 6


@pytest.mark.timeout(90)
def test_two_gloo_ranks_match_one_process(tmp_path):
    spec = tmp_path / "spec.json"
    schedules.save_schedule(schedules.cosine(peak_lr=3e-3, total_steps=STEPS, warmup_steps=2), spec)
    ddp_dir = tmp_path / "ddp"
    # 2 ranks x batch 2 x 2 micro-steps (exercises no_sync) == 1 process x batch 8: the loader gives
    # each global micro-batch's consecutive permutation entries to the ranks in order.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "workbench.cli", "train", "--run-dir", str(ddp_dir), "--schedule", str(spec),
           "--model", "tiny", "--data", "stdlib", "--batch-size", "2", "--grad-accum", "2",
           "--seq-len", "32", "--max-tokens", "20000", "--eval-interval", "3", "--eval-batches", "2",
           "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    single = train(TrainConfig(model="tiny", data="stdlib", schedule=schedules.load_schedule(spec).to_dict(),
                               batch_size=8, seq_len=32, max_tokens=20_000, eval_interval=3, eval_batches=2,
                               device="cpu", progress=False, run_dir=str(tmp_path / "single")))
    ddp_log, one_log = read_run_log(ddp_dir), read_run_log(tmp_path / "single")
    assert [r["step"] for r in ddp_log] == list(range(STEPS))       # rank 0 alone wrote the log
    for key in ("loss", "grad_norm", "update_norm"):
        np.testing.assert_allclose([r[key] for r in ddp_log], [r[key] for r in one_log], rtol=1e-5, err_msg=key)
    assert [r["tokens"] for r in ddp_log] == [r["tokens"] for r in one_log]
    np.testing.assert_allclose([r["val_loss"] for r in ddp_log if "val_loss" in r],
                               [r["val_loss"] for r in one_log if "val_loss" in r], rtol=1e-5)
    assert single["steps"] == STEPS and (ddp_dir / "model.safetensors").exists()
