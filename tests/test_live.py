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
