"""ScheduleDesigner: drive the controls as a user would and check what the figure shows."""
from __future__ import annotations

import html
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


def test_lr_sliders_show_the_value_the_schedule_holds():
    d = ScheduleDesigner([schedules.cosine(peak_lr=3e-4, total_steps=10_000, warmup_steps=500, min_lr=3e-5)])
    peak, low = d.controls["peak_lr"], d.controls["min_lr"]
    assert (peak.value, peak.label) == (3e-4, "3e-04")        # not the log grid's 3.02e-04
    assert (low.value, low.label) == (3e-5, "3e-05")
    d.controls["warmup_steps"].value = 400                     # an unrelated edit keeps the exact LRs
    assert d.schedules[0].peak_lr == 3e-4 and d.schedules[0].min_lr == 3e-5
    odd = ScheduleDesigner([schedules.constant(peak_lr=3.3e-4, total_steps=1000)])
    assert odd.controls["peak_lr"].label == "3.3e-04" and odd.schedules[0].peak_lr == 3.3e-4
    peak.value = 2.5e-3
    assert d.schedules[0].peak_lr == 2.5e-3 and peak.label == "2.5e-03"


def test_empty_loss_panel_says_how_to_attach_a_law():
    d = ScheduleDesigner([schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100)])
    notes = [a for a in d.figure.layout.annotations if a.name == "no-law"]
    assert len(notes) == 1 and "attach_law('124m')" in notes[0].text
    assert (notes[0].xref, notes[0].yref) == ("x4 domain", "y4 domain")          # inside the loss panel
    assert d.figure.layout.yaxis4.visible is False and d.figure.layout.xaxis4.visible is False
    d.attach_law("124m")
    assert not [a for a in d.figure.layout.annotations if a.name == "no-law"]
    assert d.figure.layout.yaxis4.visible is True
    loss = _traces(d, 0)[3]
    np.testing.assert_allclose(loss.y, d.law.predict(d.schedules[0], np.asarray(loss.x)), rtol=1e-12)
    d.attach_law(None)
    assert [a for a in d.figure.layout.annotations if a.name == "no-law"] and len(_traces(d, 0)[3].y) == 0
    with pytest.raises(ValueError, match="attach a FittedLaw"):
        d.attach_law("gpt-5")


@pytest.fixture(scope="module")
def tiny_law():
    from workbench import assets
    from workbench.curves import read_curve

    return laws.fit([read_curve(assets.run_dir(n)) for n in assets.RUNS], law="annealing")


def test_prediction_outside_the_domain_is_greyed_and_explained(tiny_law):
    # the case: WSD at peak 8e-3 over 10k steps with the law fitted to the tiny runs (3e-3, 1000 steps)
    far = schedules.wsd(peak_lr=8e-3, total_steps=10_000, warmup_steps=500, decay_fraction=0.2, min_lr=3e-5)
    home = schedules.wsd(peak_lr=3e-3, total_steps=1000, warmup_steps=50, decay_fraction=0.2, min_lr=3e-4)
    d = ScheduleDesigner([home, far], law=tiny_law)
    ok, bad = d.forecasts
    assert ok.ok and not bad.ok
    raw = tiny_law.predict(far, bad.steps)
    assert raw.min() < 0                                            # what the law alone would draw
    y = np.asarray(_traces(d, 1)[3].y, dtype=float)
    shown = np.isfinite(y)
    assert np.all(y[shown] > 0) and np.all(y[shown] >= tiny_law.floor)
    assert not shown[-1]                                           # the final loss is not drawn
    line = _traces(d, 1)[3].line
    assert (line.color, line.dash) == ("#9aa5b1", "dot")           # greyed out
    assert _traces(d, 0)[3].line.dash == "solid" and _traces(d, 0)[3].line.color != "#9aa5b1"
    msg = d.law_message.value
    assert "2: wsd: no trustworthy prediction" in msg and "peak LR 0.008 is outside" in msg
    assert "10.0x the longest fitted curve" in msg and "2: wsd: predicted final loss" not in msg
    assert "predicted final loss" in msg.split("<br>")[0]         # the in-domain one is stated
    for w in tiny_law.warnings:                                     # the fit's own warnings are on screen
        assert html.escape(w) in msg
    d.select(1)                                                     # editing back into the domain ...
    d.controls["peak_lr"].value = 3e-3
    d.controls["total_steps"].value = 1000
    d.controls["warmup_steps"].value = 50
    assert d.forecasts[1].ok and _traces(d, 1)[3].line.dash == "solid"   # ... un-greys it
