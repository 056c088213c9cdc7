"""accelerate and Lightning recipes: one schedule step per optimizer update on 1 and 2 processes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from workbench import schedules
from workbench.integrations.recipes import accelerate_scheduler, lightning_scheduler, scheduler_calls_per_update

SCHED = schedules.cosine(peak_lr=1e-2, total_steps=8, warmup_steps=2)

LOOP = r'''
import json, os, sys
import torch
from accelerate import Accelerator
from workbench import schedules
from workbench.integrations.recipes import accelerate_scheduler

out, sched = sys.argv[1], schedules.load_schedule(sys.argv[2])
acc = Accelerator(cpu=True, gradient_accumulation_steps=2)


def run(naive):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=sched.peak_lr)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1)),
                                       batch_size=2)
    model, opt, data = acc.prepare(model, opt, data)
    sch = acc.prepare_scheduler(sched.torch_scheduler(opt)) if naive else accelerate_scheduler(sched, opt, acc)
    lrs = []
    for x, y in data:
        with acc.accumulate(model):
            if acc.sync_gradients:
                lrs.append(opt.param_groups[0]["lr"])     # the LR this update uses
            acc.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.step(); sch.step(); opt.zero_grad()
        if len(lrs) == sched.total_steps and acc.sync_gradients:
            break
    acc.free_memory()
    return lrs


res = {"recipe": run(False), "naive": run(True), "processes": acc.num_processes}
if acc.is_main_process:
    json.dump(res, open(out, "w"))
'''


def _run(tmp_path, procs):
    script, spec, out = tmp_path / "loop.py", tmp_path / "spec.json", tmp_path / f"{procs}.json"
    script.write_text(LOOP)
    schedules.save_schedule(SCHED, spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(k, None)
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
           if procs > 1 else [sys.executable]) + [str(script), str(out), str(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.load(open(out))
    assert res["processes"] == procs
    return res


@pytest.mark.timeout(240)
def test_accelerate_same_lrs_per_update_on_1_and_2_gloo_processes(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    np.testing.assert_allclose(one["recipe"], SCHED.lrs(), rtol=1e-12)
    np.testing.assert_allclose(two["recipe"], one["recipe"], rtol=1e-12)
    # what the recipe prevents: a plainly prepared scheduler runs twice as fast on 2 processes
    np.testing.assert_allclose(one["naive"], SCHED.lrs(), rtol=1e-12)
    np.testing.assert_allclose(two["naive"][:4], SCHED(np.arange(0, 8, 2)), rtol=1e-12)


def test_scheduler_calls_per_update():
    class Acc:
        step_scheduler_with_optimizer, split_batches, num_processes = True, False, 4
    assert scheduler_calls_per_update(Acc()) == 4
    Acc.split_batches = True
    assert scheduler_calls_per_update(Acc()) == 1
    Acc.split_batches, Acc.step_scheduler_with_optimizer = False, False
    assert scheduler_calls_per_update(Acc()) == 1


def test_lightning_recipe_steps_every_update():
    """Without lightning installed: the config Lightning reads (interval="step", frequency=1), stepped
    as Lightning's loop does (scheduler.step() after every optimizer step)."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=SCHED.peak_lr)
    cfg = lightning_scheduler(SCHED, opt)
    assert (cfg["interval"], cfg["frequency"]) == ("step", 1)
    got = []
    for _ in range(SCHED.total_steps):
        got.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        cfg["scheduler"].step()
    np.testing.assert_allclose(got, SCHED.lrs(), rtol=1e-12)


def test_lightning_trainer_if_installed(tmp_path):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.lrs = []

        def training_step(self, batch, i):
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=SCHED.peak_lr)
            return {"optimizer": opt, "lr_scheduler": lightning_scheduler(SCHED, opt)}

    m = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1)),
                                       batch_size=4)
    L.Trainer(max_steps=SCHED.total_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path)).fit(m, data)
    np.testing.assert_allclose(m.lrs, SCHED.lrs(), rtol=1e-12)
