"""transformers bridge: a tiny offline Trainer run produces workbench events and a run log."""
from __future__ import annotations

import contextlib
import io
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from workbench import schedules  # noqa: E402
from workbench.integrations.hf import WorkbenchCallback, build_optimizers, hf_log_to_event  # noqa: E402
from workbench.runlog import read_run_log  # noqa: E402


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (n, 12), generator=g)
    return [{"input_ids": x, "labels": x} for x in ids]


def test_trainer_logs_become_workbench_events(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=12, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    sched = schedules.wsd(peak_lr=3e-3, total_steps=10, warmup_steps=2, decay_fraction=0.3)
    seen = []
    cb = WorkbenchCallback(tmp_path / "run", subscribers=[seen.append])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4,
                             logging_steps=1, eval_strategy="steps", eval_steps=5, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_data(40, 0), eval_dataset=_data(8, 1),
                      callbacks=[cb], optimizers=build_optimizers(model, sched, optimizer="adamw"))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    train_events = [e for e in cb.events if "loss" in e]
    assert [e["step"] for e in train_events] == list(range(10))
    assert [e["lr"] for e in train_events] == [sched(t) for t in range(10)]
    assert all(e["grad_norm"] > 0 for e in train_events)
    evals = [e for e in cb.events if "val_loss" in e]
    assert [e["step"] for e in evals] == [4, 9]           # after 5 and 10 updates
    assert seen == cb.events
    log = read_run_log(tmp_path / "run")
    assert log == cb.events                                # the run log holds exactly the events
    # the logged val_loss is the Trainer's own evaluation of the final model
    with contextlib.redirect_stdout(io.StringIO()):
        assert evals[-1]["val_loss"] == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-6)


def test_log_mapping_and_bad_input():
    e = hf_log_to_event({"loss": 2.5, "learning_rate": 1e-3, "eval_loss": 2.0, "num_input_tokens_seen": 99,
                         "train_runtime": 3.0}, global_step=7)
    assert e == {"step": 6, "loss": 2.5, "lr": 1e-3, "val_loss": 2.0, "tokens": 99}
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="workbench Schedule"):
        build_optimizers(model, lambda t: 1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizers(model, schedules.constant(peak_lr=1.0, total_steps=3), optimizer="lion")
    opt, sch = build_optimizers(model, schedules.constant(peak_lr=0.5, total_steps=3),
                                optimizer=lambda p: torch.optim.SGD(p, lr=9.0))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5
