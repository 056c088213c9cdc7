"""ScheduleDesigner: drive the controls as a user would and check what the figure shows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench import laws, plots, schedules
from workbench.widgets import ScheduleDesigner


def _traces(d, i):
    return d.figure.data[4 * i: 4 * i + 4]


def test_initial_figure_shows_lr_s1_s2():
    s = schedules.cosine(peak_lr=1e-3, total_steps=5000, warmup_steps=100, min_lr=1e-4)
    d = ScheduleDesigner([s])
    lr, s1, s2, loss = _traces(d, 0)
    x = np.asarray(lr.x)
    np.testing.assert_array_equal(lr.y, s(x))
    ref1, ref2 = laws.areas(s.lrs(), warmup_steps=100)
    np.testing.assert_allclose(s1.y, ref1[x])
    np.testing.assert_allclose(s2.y, ref2[x])
    assert len(loss.y) == 0          # no predictor: empty loss panel


def test_slider_changes_redraw_the_right_schedule():
    d = ScheduleDesigner()  # cosine + wsd
    before = np.asarray(_traces(d, 0)[0].y).copy()
    d.select(1)
    d.controls["peak_lr"].value = 1e-3
    assert d.schedules[1].peak_lr == pytest.approx(1e-3)
    np.testing.assert_array_equal(_traces(d, 0)[0].y, before)          # the other schedule is untouched
    assert max(_traces(d, 1)[0].y) == pytest.approx(1e-3)
    d.controls["decay"].value = "1-sqrt"
    d.controls["decay_fraction"].value = 0.5
    s = d.schedules[1]
    assert (s.decay, s.decay_fraction) == ("1-sqrt", 0.5)
    x = np.asarray(_traces(d, 1)[0].x)
    np.testing.assert_array_equal(_traces(d, 1)[0].y, s(x))
    d.controls["total_steps"].value = 100_000
    assert d.schedules[1].total_steps == 100_000
    assert _traces(d, 1)[0].x[-1] == 99_999 and len(_traces(d, 1)[0].x) <= 2001


def test_min_lr_left_end_means_zero_and_bad_values_show_a_message():
    d = ScheduleDesigner([schedules.cosine(peak_lr=1e-3, total_steps=1000, min_lr=0.0)])
    assert d.controls["min_lr"].value == 0.0 and d.controls["min_lr"].label == "0"   # the left end is 0
    d.controls["warmup_steps"].value = 10
    assert d.schedules[0].min_lr == 0.0
    d.controls["total_steps"].value = 5        # warmup 10 > total: keep the old schedule, say why
    assert "warmup_steps" in d.message.value and d.schedules[0].total_steps == 1000


def test_family_switch_add_remove_and_export(tmp_path):
    d = ScheduleDesigner([schedules.cosine(peak_lr=2e-3, total_steps=2000, warmup_steps=100)])
    d.family.value = "wsd"
    assert d.schedules[0].family == "wsd" and d.schedules[0].peak_lr == 2e-3
    d.add("infinite")
    d.add(schedules.refined(grad_norms=np.linspace(1, 2, 50), peak_lr=1e-3, total_steps=2000))
    assert [s.family for s in d.schedules] == ["wsd", "infinite", "refined"]
    assert len(d.figure.data) == 12
    assert len({t.line.color for t in d.figure.data[::4]}) == 3        # distinct colours
    d.remove(1)
    assert [t.name for t in d.figure.data[::4]] == ["1: wsd", "2: refined"]
    specs = json.loads(d.to_json())
    assert [schedules.schedule_from_dict(x) for x in specs] == d.schedules
    ns = {}
    exec(d.to_python(), ns)
    assert ns["designed"] == d.schedules
    d.save(tmp_path / "s.json", index=0)
    assert schedules.load_schedule(tmp_path / "s.json") == d.schedules[0]


def test_predictor_draws_loss_curves():
    def predictor(s):  # a stand-in law: loss falls with the LR area
        s1, _ = laws.areas(s.lrs())
        return 2.0 + 1.0 / (1.0 + s1)

    s = schedules.wsd(peak_lr=1e-2, total_steps=3000, decay_fraction=0.2)
    d = ScheduleDesigner([s], predictor=predictor)
    loss = _traces(d, 0)[3]
    x = np.asarray(loss.x)
    np.testing.assert_allclose(loss.y, predictor(s)[x])
    old_final = loss.y[-1]
    d.controls["peak_lr"].value = 1e-1
    assert _traces(d, 0)[3].y[-1] < old_final            # more LR area, lower predicted loss
    np.testing.assert_allclose(_traces(d, 0)[3].y, predictor(d.schedules[0])[x])
    d.set_predictor(None)
    assert len(_traces(d, 0)[3].y) == 0
    with pytest.raises(ValueError, match="one predicted loss per step"):
        plots.schedule_curves(s, predictor=lambda s: [1.0, 2.0])
