"""The trainer with the workbench.optim optimizers by name: TrainConfig(optimizer="apollo-mini", ...),
`workbench train --optimizer NAME`, optimizer_kwargs passed through, exact resume (tiny model, CPU)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench import schedules
from workbench.cli import main
from workbench.optim import Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, ZeroOrderSGD
from workbench.runlog import read_run_log
from workbench.train import TrainConfig, Trainer, resume, train

BASE = dict(model="tiny", data="stdlib", batch_size=4, seq_len=32, max_tokens=20_000, eval_batches=2,
            eval_interval=0, checkpoint_interval=0, progress=False, seed=0)
NAMES = {"apollo": Apollo, "apollo-mini": ApolloMini, "galore": GaLore, "frugal": Frugal, "lamb": Lamb,
         "lion": Lion}


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path=None, name="run", **kw) -> TrainConfig:
    run_dir = str(tmp_path / name) if tmp_path is not None else None
    return TrainConfig(**{**BASE, "run_dir": run_dir, **kw})


@pytest.mark.parametrize("name", list(NAMES))
def test_each_name_builds_its_optimizer_and_the_loss_falls(name):
    lr = {"lamb": 1e-2, "lion": 1e-3, "frugal": 3e-3}.get(name, 1e-2)
    trainer = Trainer(cfg(steps=8, lr=lr, optimizer=name, optimizer_kwargs={"update_proj_gap": 4}
                          if name in ("apollo", "apollo-mini", "galore", "frugal") else {}))
    assert type(trainer.optimizer) is NAMES[name]
    s = trainer.run()
    first = trainer.history[0]["loss"]
    assert s["status"] == "completed" and s["final_train_loss"] < first - 0.5, (name, first, s)


def test_lowrank_names_project_only_attention_and_mlp_weights():
    trainer = Trainer(cfg(steps=1, optimizer="apollo", optimizer_kwargs={"rank": 4}, weight_decay=0.05))
    names = {id(p): n for n, p in trainer.raw_model.named_parameters()}
    low, *plain = trainer.optimizer.param_groups
    assert low["rank"] == 4 and low.get("lowrank", True) and low["weight_decay"] == 0.05
    assert all(g["lowrank"] is False for g in plain)
    projected = [names[id(p)] for p in low["params"]]
    assert projected and all(("attn" in n or "mlp" in n) and n.endswith("weight") for n in projected)
    others = [names[id(p)] for g in plain for p in g["params"]]
    assert any("embed" in n for n in others) and any("norm" in n for n in others)
    vectors = [g for g in plain if all(p.dim() == 1 for p in g["params"])]
    assert vectors and vectors[0]["weight_decay"] == 0.0          # norms are not decayed


def test_old_names_still_work_and_bad_names_are_refused():
    assert isinstance(Trainer(cfg(steps=1, optimizer="adamw")).optimizer, torch.optim.AdamW)
    assert isinstance(Trainer(cfg(steps=1, optimizer="SGD")).optimizer, torch.optim.SGD)
    assert type(Trainer(cfg(steps=1, optimizer="Apollo_Mini")).optimizer) is ApolloMini
    with pytest.raises(ValueError, match="use one of adamw, adam, sgd, apollo, apollo-mini, galore, frugal, "
                                         "lamb, lion"):
        TrainConfig(optimizer="adafactor")
    with pytest.raises(ValueError, match="needs a closure"):
        TrainConfig(optimizer="zero-order")
    with pytest.raises(ValueError, match="needs a closure"):
        Trainer(cfg(steps=1), optimizer=lambda params: ZeroOrderSGD(params))
    with pytest.raises(ValueError, match="unknown hyperparameter.*rank"):
        Trainer(cfg(steps=1, optimizer="lion", optimizer_kwargs={"rank": 4}))
    with pytest.raises(ValueError, match="optimizer_kwargs must be a dict"):
        TrainConfig(optimizer_kwargs=[("rank", 4)])


def test_apollo_mini_resume_after_crash_is_bit_identical(tmp_path):
    # projection refreshed every 3 steps: the resumed run must redraw the same projections
    sched = schedules.cosine(peak_lr=1e-2, total_steps=8, warmup_steps=2).to_dict()
    kw = dict(schedule=sched, optimizer="apollo-mini", optimizer_kwargs={"update_proj_gap": 3,
                                                                         "betas": [0.9, 0.99]})
    train(cfg(tmp_path, "full", **kw))

    def crash(event):
        if event["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, "crashed", checkpoint_interval=4, **kw), callbacks=[crash])
    resume(tmp_path / "crashed")                    # config.json: betas came back as a list
    full = read_run_log(tmp_path / "full")
    crashed = read_run_log(tmp_path / "crashed", dedupe=True)
    for key in ("loss", "grad_norm", "update_norm", "lr"):
        assert [r[key] for r in crashed] == [r[key] for r in full], key
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "crashed" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_train_with_a_workbench_optimizer(tmp_path, capsys):
    run = str(tmp_path / "cli")
    args = ["--batch-size", "4", "--seq-len", "32", "--max-tokens", "20000", "--eval-batches", "1", "--no-progress"]
    assert main(["train", "--model", "tiny", "--steps", "4", "--lr", "1e-2", "--optimizer", "apollo",
                 "--optimizer-kwargs", '{"rank": 8, "update_proj_gap": 2}', "--run-dir", run, *args]) == 0
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["optimizer"] == "apollo" and saved["optimizer_kwargs"] == {"rank": 8, "update_proj_gap": 2}
    capsys.readouterr()
    assert main(["train", "--model", "tiny", "--steps", "2", "--optimizer", "zero-order",
                 "--run-dir", str(tmp_path / "zo"), *args]) == 2
    assert "needs a closure" in capsys.readouterr().err
