"""transformers bridge: a tiny offline Trainer run produces workbench events and a run log."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from workbench import schedules  # noqa: E402
from workbench.integrations.hf import WorkbenchCallback, build_optimizers, hf_log_to_event, to_hf  # noqa: E402
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
        build_optimizers(model, schedules.constant(peak_lr=1.0, total_steps=3), optimizer="adafactor")
    opt, sch = build_optimizers(model, schedules.constant(peak_lr=0.5, total_steps=3),
                                optimizer=lambda p: torch.optim.SGD(p, lr=9.0))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5


# ----------------------------------------------------------------------------- schedules both ways
def _tiny():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=12, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def _trainer_lrs(args, total):
    """The LR a Trainer built from ``args`` uses at each of ``total`` steps (its own scheduler)."""
    trainer = Trainer(model=_tiny(), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    opt, sch = trainer.optimizer, trainer.lr_scheduler
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return np.array(out)


HF_FAMILIES = [
    schedules.constant(peak_lr=1e-3, total_steps=40),
    schedules.constant(peak_lr=1e-3, total_steps=40, warmup_steps=7),
    schedules.linear(peak_lr=1e-3, total_steps=40, warmup_steps=5),
    schedules.linear(peak_lr=1e-3, total_steps=40, warmup_steps=5, min_lr=1e-4),
    schedules.cosine(peak_lr=2e-3, total_steps=40, warmup_steps=4),
    schedules.cosine(peak_lr=2e-3, total_steps=40, warmup_steps=4, min_lr=2e-4),
    schedules.inverse_sqrt(peak_lr=1e-3, total_steps=40, warmup_steps=6),
    schedules.inverse_sqrt(peak_lr=1e-3, total_steps=40, warmup_steps=6, timescale=13),
    schedules.wsd(peak_lr=1e-3, total_steps=40, warmup_steps=5, decay_steps=12),
    schedules.wsd(peak_lr=1e-3, total_steps=40, warmup_steps=5, decay_steps=12, decay="1-sqrt", min_lr=1e-4,
                  warmup_shape="cosine"),
    schedules.wsd(peak_lr=1e-3, total_steps=40, warmup_steps=5, decay_steps=12, decay="cosine", min_lr=5e-5,
                  num_cycles=1.0),
]


@pytest.mark.parametrize("sched", HF_FAMILIES, ids=repr)
def test_to_hf_runs_the_same_lrs_in_a_trainer_and_from_hf_inverts_it(sched, tmp_path):
    kw = to_hf(sched)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kw)
    np.testing.assert_allclose(_trainer_lrs(args, sched.total_steps), sched.lrs(), rtol=1e-10, atol=1e-15)
    back = schedules.Schedule.from_hf(args)
    np.testing.assert_allclose(back.lrs(), sched.lrs(), rtol=1e-12, atol=0)


def test_from_hf_reads_warmup_ratio_epochs_and_refuses_what_it_cannot(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, lr_scheduler_type="cosine_with_min_lr",
                             lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.1,    # a ratio
                             report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="set max_steps .* or pass total_steps="):
        schedules.Schedule.from_hf(args)
    s = schedules.Schedule.from_hf(args, total_steps=50)                # an epoch-based run of 50 updates
    np.testing.assert_allclose(s.lrs(), _trainer_lrs(args, 50), rtol=1e-10)
    assert s.warmup_steps == 5 and s.min_lr == pytest.approx(3e-5)
    for typ, kw in (("cosine_with_restarts", {"num_cycles": 3}), ("reduce_lr_on_plateau", {}),
                    ("polynomial", {"power": 2.0})):
        bad = {"learning_rate": 1e-3, "lr_scheduler_type": typ, "lr_scheduler_kwargs": kw, "max_steps": 10}
        with pytest.raises(ValueError, match="has no workbench family"):
            schedules.Schedule.from_hf(bad)


def test_to_hf_without_an_hf_family_gives_a_lambda_lr():
    s = schedules.multistep(peak_lr=1e-2, total_steps=30, warmup_steps=3, milestones=[10, 20])
    with pytest.raises(ValueError, match="transformers has no .*pass optimizer="):
        to_hf(s)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=s.peak_lr)
    sch = to_hf(s, opt)
    assert isinstance(sch, torch.optim.lr_scheduler.LambdaLR)
    got = []
    for _ in range(30):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    np.testing.assert_allclose(got, s.lrs(), rtol=1e-12)
    np.testing.assert_array_equal(s.to_numpy(30), s.lrs())


def test_schedule_lr_keeps_group_ratios_and_checks_the_saved_schedule():
    s = schedules.cosine(peak_lr=1e-3, total_steps=20, warmup_steps=2)
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a], "lr": 5e-4}, {"params": [b], "lr": 5e-5}])   # ratio 10
    sch = s.torch_scheduler(opt)
    for t in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(s(t), rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(s(t) / 10, rel=1e-12)
        opt.step()
        sch.step()
    opt2 = torch.optim.SGD([{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.5}], lr=9.0)
    s.torch_scheduler(opt2)
    assert [g["lr"] for g in opt2.param_groups] == [s(0), s(0) * 0.5]
    state = sch.state_dict()
    other = schedules.cosine(peak_lr=2e-3, total_steps=20, warmup_steps=2).torch_scheduler(
        torch.optim.SGD([a], lr=1.0))
    with pytest.raises(ValueError, match="saved with another schedule"):
        other.load_state_dict(state)
    same = s.torch_scheduler(torch.optim.SGD([a], lr=1.0))
    same.load_state_dict(state)
    assert same.last_epoch == 20


def test_as_optax_if_jax_is_installed():
    jnp = pytest.importorskip("jax.numpy")
    import jax

    s = schedules.wsd(peak_lr=1e-3, total_steps=50, warmup_steps=5, decay_steps=10)
    f = jax.jit(s.as_optax())
    np.testing.assert_allclose([float(f(jnp.asarray(t))) for t in range(60)], list(s.lrs()) + [s(49)] * 10,
                               rtol=1e-6)


# ----------------------------------------------------------------------------- optimizers in a Trainer
def test_trainer_with_build_optimizers_apollo_and_hf_decay_groups(tmp_path):
    from workbench.livefit import LiveFit

    model = _tiny()
    sched = schedules.cosine(peak_lr=1e-2, total_steps=24, warmup_steps=2)
    opt, sch = build_optimizers(model, sched, "apollo", weight_decay=0.1, rank=2)
    # HF's rule, checked by name: no decay on biases and LayerNorm weights
    names = {id(p): n for n, p in model.named_parameters()}
    nodecay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert nodecay == {n for n, _ in model.named_parameters() if n.endswith(".bias") or ".ln_" in n}
    assert any(g.get("lowrank", True) for g in opt.param_groups)
    run = tmp_path / "run"
    cb = WorkbenchCallback(run)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=24, per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    data = [{"input_ids": (torch.arange(12) + k) % 16, "labels": (torch.arange(12) + k) % 16} for k in range(16)]
    trainer = Trainer(model=model, args=args, train_dataset=data * 6, callbacks=[cb], optimizers=(opt, sch))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    ev = [e for e in cb.events if "loss" in e]
    assert [e["lr"] for e in ev] == [sched(t) for t in range(24)]
    losses = [e["loss"] for e in ev]
    assert all(np.isfinite(losses)) and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    # the schedule is saved next to the log: LiveFit and the readers need no extra argument
    assert schedules.load_schedule(run / "schedule.json") == sched
    assert LiveFit.from_run_log(run).schedule == sched
    for name in ("adamw", "adam", "sgd", "apollo-mini", "galore", "frugal", "lamb", "lion"):
        o, _ = build_optimizers(_tiny(), sched, name)
        assert sum(len(g["params"]) for g in o.param_groups) == len(list(_tiny().parameters())), name
