"""The bundled run logs (and checkpoint) are real, complete and what their README says."""
from __future__ import annotations

import numpy as np
import pytest

from workbench import assets
from workbench.runlog import read_json


@pytest.mark.parametrize("name", list(assets.RUNS))
def test_bundled_run_is_complete_and_follows_its_schedule(name):
    events = assets.read_run(name)
    assert [e["step"] for e in events] == list(range(assets.STEPS))
    lrs = np.array([e["lr"] for e in events])
    np.testing.assert_allclose(lrs, assets.RUNS[name](np.arange(assets.STEPS)), rtol=1e-12)
    val = [(e["step"], e["val_loss"]) for e in events if "val_loss" in e]
    assert [s for s, _ in val] == list(range(9, assets.STEPS, 10))     # dense enough to fit laws
    assert val[0][1] > 4.0 > 2.0 > val[-1][1]                             # it learned
    config = read_json(assets.run_dir(name) / "config.json")
    assert config["schedule"] == assets.RUNS[name].to_dict()
    assert all(config[k] == v for k, v in assets.RUN_SETTINGS.items())


def test_wsd_runs_share_the_constant_prefix_and_end_lower():
    const = assets.read_run("constant")
    for name, start in [("wsd10", 900), ("wsd20", 800)]:
        wsd = assets.read_run(name)
        assert [e["loss"] for e in wsd[:start]] == [e["loss"] for e in const[:start]]
        assert wsd[-1]["val_loss"] < const[-1]["val_loss"]


def test_package_data_is_small():
    size = sum(f.stat().st_size for f in assets.ASSETS_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20


def test_unknown_run_name():
    with pytest.raises(ValueError, match="unknown bundled run 'cosin'"):
        assets.run_dir("cosin")


def test_pretrained_checkpoint_loads_offline_and_is_trained():
    import torch
    import torch.nn.functional as F

    from workbench.data import load_blocks
    from workbench.models import build_model

    model = build_model(assets.pretrained_dir()).eval()
    fresh = build_model("tiny").eval()
    blocks = load_blocks("stdlib", split="val", block_size=128)[:16]
    x, y = blocks[:, :-1], blocks[:, 1:]
    with torch.no_grad():
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten()).item()
        loss0 = F.cross_entropy(fresh(input_ids=x).logits.flatten(0, 1), y.flatten()).item()
    assert loss0 > 5.0 and loss < 1.6          # random init ~ ln 256; trained: 1.0-1.4 nats/byte
    summary = read_json(assets.pretrained_dir() / "training.json")["summary"]
    assert summary["steps"] == assets.PRETRAINED_STEPS and summary["status"] == "completed"
