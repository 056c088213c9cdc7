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


# ---------------------------------------------------------------------------- real 124M curves
def test_124m_lr_rebuilt_from_config_matches_the_logged_train_lr():
    specs = assets.curve_specs("124m")
    assert len(specs) == 105
    for run, spec in specs.items():
        steps, logged = assets.logged_lrs(run)
        assert steps.size >= 20, run
        rebuilt = assets.lr_124m(spec, steps)
        # the logged values are kept to 6 significant digits
        np.testing.assert_allclose(rebuilt, logged, rtol=5.01e-6, atol=1e-12 * spec["peak_lr"], err_msg=run)


def test_124m_lr_formulas_by_hand():
    cos = dict(scheduler="cos", peak_lr=1e-3, total_steps=25000, warmup_steps=300, cos_final_lr=1e-7,
               decay="linear", decay_fraction=0.0)
    e1, e2 = 299, 24999
    assert assets.lr_124m(cos, [0])[0] == pytest.approx(1e-5)                      # warmup starts at peak/100
    assert assets.lr_124m(cos, [e1])[0] == pytest.approx(1e-3)
    assert assets.lr_124m(cos, [(e1 + e2) / 2])[0] == pytest.approx((1e-3 + 1e-7) / 2)
    wsd = dict(scheduler="wsd", peak_lr=2e-3, total_steps=50000, warmup_steps=300, cos_final_lr=0.0,
               decay="sqrt", decay_fraction=0.2)
    assert assets.lr_124m(wsd, [150])[0] == pytest.approx(2e-3 * (0.5 + 0.5 / 100))
    assert assets.lr_124m(wsd, [39999, 40000])[0] == 2e-3
    assert assets.lr_124m(wsd, [45000])[0] == pytest.approx(2e-3 * (1 - np.sqrt(0.5)))


def test_124m_split_and_joined_curves():
    train = assets.curves("124m", lr=1e-3, split="train")
    test = assets.curves("124m", lr=1e-3, split="test")
    assert [c.name for c in train] == ["constant-50k_lr1e-3", "cosine-25k_lr1e-3"]
    assert len(test) == 27 and sum(c.name.startswith("wsd-") for c in test) == 26
    assert "cosine-50k_lr1e-3" in [c.name for c in test]
    const = train[0]
    by_name = {c.name: c for c in test}
    for c in test + train:
        assert c.total_steps == c.meta["spec"]["total_steps"] and c.warmup == 300
        assert np.all(np.diff(c.steps) > 0) and c.steps[-1] == c.total_steps - 201    # last eval: iteration T-200
        assert np.all((c.losses > 2.5) & (c.losses < 11.0))
    # a cooldown log (from iteration 40000) joined with the constant run before it
    w = by_name["wsd-linear0.1-50k_lr1e-3"]
    pre = w.steps < 39999
    np.testing.assert_array_equal(w.steps[pre], const.steps[const.steps < 39999])
    np.testing.assert_array_equal(w.losses[pre], const.losses[const.steps < 39999])
    assert w.lrs[44999] == 1e-3 and w.lrs[45000] == 1e-3 and w.lrs[47500] == pytest.approx(5e-4)
    m = assets.cooldown_mask(w)
    assert m.sum() == np.sum(w.steps >= 45000) and w.losses[m][-1] < const.losses[-1] - 0.05
    assert not assets.cooldown_mask(const).any()
    # every peak LR is there
    assert {c.peak_lr for c in assets.curves("124m", lr=None)} == {1e-4, 5e-4, 1e-3, 2e-3, 5e-3}


def test_124m_bad_requests_say_what_exists():
    with pytest.raises(ValueError, match="peak LRs available"):
        assets.curves("124m", lr=3e-3)
    with pytest.raises(ValueError, match="unknown curve set"):
        assets.curves("350m")
    with pytest.raises(ValueError, match="assets:SET/RUN"):
        assets.resolve_curve("assets:124m")
    assert assets.resolve_curve("assets:124m/cosine-25k_lr1e-3").name == "cosine-25k_lr1e-3"


def test_124m_set_is_compact_and_licensed():
    d = assets.ASSETS_DIR / "curves-124m"
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size < 600_000
    assert "MIT License" in (d / "LICENSE").read_text() and "Schaipp" in (d / "README.md").read_text()


@pytest.mark.parametrize("law", ["annealing", "multipower"])
def test_bundled_fit_equals_a_fresh_fit(law):
    from workbench import laws

    bundled = assets.fitted_law("124m", law=law)
    fresh = laws.fit(assets.curves("124m", lr=1e-3, split="train"), law=law)
    for k, v in fresh.params.items():
        assert bundled.params[k] == pytest.approx(v, rel=1e-6), k
    assert bundled.warnings == fresh.warnings
    assert bundled.info["calibration"]["scale"] == pytest.approx(fresh.info["calibration"]["scale"], rel=1e-6)
