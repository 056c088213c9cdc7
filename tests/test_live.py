"""LiveTraining: events become plot data; a background run can be paused and stopped."""
from __future__ import annotations

import time

import numpy as np
import pytest

from workbench.train import TrainConfig
from workbench.widgets import LiveTraining


def test_events_become_traces_with_throttle():
    live = LiveTraining(min_interval=3600)       # only the first event draws by itself
    for t in range(50):
        ev = {"step": t, "lr": 1e-3 * (t + 1), "loss": 5.0 - 0.05 * t, "grad_norm": 1.0 + t,
              "tokens_per_s": 1000.0 + t}
        if t % 10 == 9:
            ev["val_loss"] = 4.0 - 0.01 * t
        live.update(ev)
    loss, val, lr, gn, tps = live.figure.data
    assert list(loss.x) == [0]                    # throttled: nothing redrawn after the first event
    live.redraw()
    assert list(loss.x) == list(range(50)) and loss.y[-1] == pytest.approx(5.0 - 0.05 * 49)
    assert list(val.x) == [9, 19, 29, 39, 49] and val.y[0] == pytest.approx(3.91)
    assert lr.y[10] == pytest.approx(1.1e-2) and gn.y[3] == 4.0 and tps.y[-1] == 1049.0
    steps, values = live.series("val_loss")
    np.testing.assert_array_equal(steps, [9, 19, 29, 39, 49])
    assert "step <b>50</b>" in live.status.value and "val 3.5100" in live.status.value


def test_long_runs_are_drawn_decimated_but_kept_whole():
    live = LiveTraining(min_interval=3600)
    for t in range(20_000):
        live.update({"step": t, "loss": 1.0 / (t + 1)})
    live.redraw()
    assert len(live.events) == 20_000
    x = live.figure.data[0].x
    assert len(x) <= 4_001 + 1 and x[0] == 0 and x[-1] == 19_999


def test_background_run_pause_and_stop(tmp_path):
    cfg = TrainConfig(steps=400, batch_size=2, seq_len=16, max_tokens=20_000, eval_interval=0,
                      progress=False, run_dir=str(tmp_path / "run"), checkpoint_interval=0)
    live = LiveTraining(min_interval=0.05).start(cfg)
    deadline = time.time() + 60
    while len(live.events) < 3 and time.time() < deadline:
        time.sleep(0.02)
    live.pause()
    time.sleep(0.3)
    n = len(live.events)
    time.sleep(0.5)
    assert len(live.events) == n and live.running          # paused: no progress, thread alive
    live.pause(False)
    while len(live.events) < n + 3 and time.time() < deadline:
        time.sleep(0.02)
    live.stop()
    summary = live.wait(timeout=60)
    assert summary["status"] == "stopped" and 3 <= summary["steps"] < 400
    assert not live.running and live.stop_button.disabled
    assert (tmp_path / "run" / "model.safetensors").exists()   # stopped runs keep a checkpoint
    with pytest.raises(ValueError, match="Trainer or a TrainConfig"):
        LiveTraining().start({"steps": 3})


# --------------------------------------------------------------------------- what a forecast may show
from workbench import assets, laws, schedules  # noqa: E402
from workbench.livefit import LiveFit, forecast  # noqa: E402


def _law(**p):
    base = dict(L0=1.5, A=0.5, alpha=0.5, C=0.3, lam=0.999)
    base.update(p)
    return laws.FittedLaw("annealing", base, eta_ref=1e-3, cov=np.eye(4) * 1e-8,
                          info={"domain": {"peak_lr": [1e-3, 1e-3], "total_steps": [2000, 2000]}})


def test_forecast_hides_losses_below_the_floor_or_zero():
    s = schedules.wsd(peak_lr=1e-3, total_steps=2000, warmup_steps=100, decay_fraction=0.5)
    f = _law(C=40.0)                                   # a huge annealing term: the loss dives below 0
    pred = f.predict(s)
    assert pred.min() < 0                              # what the law says ...
    fc = forecast(f, s)
    impossible = (pred <= 0) | (pred < f.floor)
    np.testing.assert_array_equal(np.isnan(fc.mean), impossible)      # ... is never shown there
    np.testing.assert_allclose(fc.mean[~impossible], pred[~impossible])
    assert not fc.ok and fc.final is None and fc.hidden == int(impossible.sum())
    assert any("negative loss" in p for p in fc.problems)
    assert fc.shown()[-1] is None
    ok = forecast(_law(), schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100))
    assert ok.ok and ok.problems == [] and ok.final == pytest.approx(float(_law().predict(
        schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100), [1999])[0]))


def test_forecast_hides_a_band_wider_than_the_loss_and_flags_the_domain():
    s = schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100)
    wide = _law()
    wide.cov = np.eye(4) * 4.0                         # parameters barely known: a band wider than the loss
    fc = forecast(wide, s, [500, 1000, 1999], band=True)
    mean, lo, hi = wide.predict(s, [500, 1000, 1999], band=True, level=0.9)
    np.testing.assert_array_equal(np.isnan(fc.mean), (hi - lo) > mean)
    assert np.isnan(fc.mean).all() and any("wider than the loss" in p for p in fc.problems)
    far = forecast(_law(), schedules.cosine(peak_lr=8e-3, total_steps=20_000, warmup_steps=100), [19_999])
    assert not far.ok and any("peak LR 0.008" in p for p in far.problems)
    assert any("20000 steps is 10.0x" in p for p in far.problems)


def test_livefit_says_why_there_is_no_forecast_in_warmup():
    # the dashboard Training tab's default: 200 steps of a 10k-step design with 500 warmup steps
    s = schedules.cosine(peak_lr=3e-3, total_steps=10_000, warmup_steps=500, min_lr=3e-4)
    live = LiveFit(s, law="multipower", min_points=8, min_interval_s=0)
    for t in range(200):
        live({"step": t, "lr": s(t), "loss": 5.0 - 0.01 * t, **({"val_loss": 5.0 - 0.01 * t} if t % 10 == 9 else {})})
    r = live.report()
    assert r["fitted"] is False and r["forecast"] is False and r["final_loss"] is None
    assert r["reason"] == ("fit needs 8 points after warmup (step 500); 0 so far "
                           "(the run is at step 199, still in warmup)")


def test_livefit_stopped_early_never_reports_an_impossible_forecast():
    # a cosine run stopped at step 26 (the Training tab's default cosine: 200 steps, 10 warmup), fed with
    # the real train losses of the bundled cosine run's first steps: whatever the fit says, the report
    # never gives a loss below 0 or below the fit's floor, nor a band wider than the loss
    s = schedules.cosine(peak_lr=3e-3, total_steps=200, warmup_steps=10, min_lr=3e-4)
    events = [e for e in assets.read_run("cosine") if e["step"] <= 26]
    live = LiveFit(s, law="multipower", min_points=8, refit_every=5, min_interval_s=0)
    for e in events:
        live({"step": e["step"], "lr": s(e["step"]), "loss": e["loss"]})
    r = live.report()
    assert r["fitted"]                                  # a fit exists (16 train-loss points after warmup)
    raw = live.fitted.predict(s, [199], band=True, level=r["level"])
    impossible = raw[0][0] <= 0 or raw[0][0] < live.fitted.floor or raw[2][0] - raw[1][0] > raw[0][0]
    assert r["forecast"] is (not impossible and not live.fitted.check_domain(s))
    if r["forecast"]:
        assert 0 < r["final_low"] <= r["final_loss"] <= r["final_high"]
        assert r["final_high"] - r["final_low"] < r["final_loss"] and r["final_loss"] >= live.fitted.floor
    else:
        assert r["final_loss"] is None and r["reason"]
