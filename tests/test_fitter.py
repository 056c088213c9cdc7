"""CurveFitter: drive the controls as a user would and check what the figure and tables show."""
from __future__ import annotations

import html
import json
import os

import numpy as np
import pytest

from workbench import assets, laws, schedules
from workbench.curves import LossCurve, read_curve
from workbench.livefit import LiveFit
from workbench.widgets import CurveFitter, ScheduleDesigner
from workbench.widgets.fitter import TRACES_PER_CURVE


@pytest.fixture(scope="module")
def runs():
    return {n: read_curve(assets.run_dir(n)) for n in ("constant", "cosine", "wsd20")}


def _traces(f, i):
    return f.figure.data[TRACES_PER_CURVE * i: TRACES_PER_CURVE * (i + 1)]


def _check_figure(f):
    """Every curve: observed points after warmup; law and band equal FittedLaw.predict_band at the plotted steps."""
    for i, c in enumerate(f.curves):
        obs, low, high, law = _traces(f, i)
        keep = c.steps >= c.warmup
        np.testing.assert_array_equal(obs.x, c.steps[keep])
        np.testing.assert_array_equal(obs.y, c.losses[keep])
        x = np.asarray(law.x)
        assert x[0] >= c.warmup and x[-1] == c.total_steps - 1          # extrapolated over the whole schedule
        pred = f.fitted.predict(c, x)
        mean, lo, hi = f.fitted.predict_band(c, x, level=f.level)
        # drawn where it may be shown: hidden exactly where the loss is below the floor (or 0) or the
        # band is wider than the loss itself
        shown = np.isfinite(np.asarray(law.y, dtype=float))
        impossible = (pred <= 0) | (pred < f.fitted.floor) | ((hi - lo) > np.abs(pred))
        np.testing.assert_array_equal(~shown, impossible)
        np.testing.assert_allclose(np.asarray(law.y, dtype=float)[shown], pred[shown], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(low.y, dtype=float)[shown], lo[shown], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(high.y, dtype=float)[shown], hi[shown], rtol=1e-12)
        assert high.fill == "tonexty" and np.all(np.asarray(low.y)[shown] <= np.asarray(high.y)[shown])


def _check_metrics(f):
    for c in f.curves:
        s = f.fitted.score(c)
        assert f.scores[c.name] == s
        for k in ("r2", "pred_err", "worst_err"):
            assert f.format_metric(k, s[k]) in f.metrics_html.value


def test_fit_hold_out_and_switch_law(runs):
    f = CurveFitter(list(runs.values()), fit_on=["constant", "cosine"], autofit=False)
    assert f.fitted is None and len(f.figure.data) == 3 * TRACES_PER_CURVE
    f.fit_button.click()
    assert f.fitted.law == "annealing" and f.fitted.info["curves"] == ["constant", "cosine"]
    _check_figure(f)
    _check_metrics(f)
    assert "held out" in f.metrics_html.value and "alpha" in f.params_html.value
    assert f"{f.fitted.params['alpha']:.4g}" in f.params_html.value
    assert _traces(f, 2)[3].line.dash == "dash"                          # held out: dashed
    # tick wsd20 too: refit on all three
    f.checkboxes["wsd20"].value = True
    f.fit_button.click()
    assert f.fitted.info["curves"] == ["constant", "cosine", "wsd20"]
    _check_figure(f)
    # multi-power law (few points and evaluations, to be quick)
    f.fit_kwargs = dict(max_points=40, max_nfev=20)
    f.law.value = "multipower"
    f.fit_button.click()
    assert f.fitted.law == "multipower" and "gamma" in f.params_html.value
    _check_figure(f)
    _check_metrics(f)


def test_no_curve_ticked_shows_a_message(runs):
    f = CurveFitter([runs["constant"]], autofit=False)
    f.checkboxes["constant"].value = False
    f.fit_button.click()
    assert f.fitted is None and "tick at least one" in f.message.value
    with pytest.raises(ValueError, match="fit_on"):
        CurveFitter([runs["constant"]], fit_on=["nope"])


def test_from_files_and_duplicate_names(tmp_path, runs):
    p = tmp_path / "c.csv"
    runs["cosine"].to_csv(p)
    f = CurveFitter.from_files([assets.run_dir("constant"), p])
    assert [c.name for c in f.curves] == ["constant", "c"] and f.fitted is not None
    _check_figure(f)
    g = CurveFitter([runs["constant"], runs["constant"]], autofit=False)
    assert list(g.checkboxes) == ["constant", "constant (2)"]


def test_designer_uses_the_fitted_law(runs):
    f = CurveFitter([runs["constant"], runs["cosine"]])
    d = f.designer()
    assert isinstance(d, ScheduleDesigner) and len(d.schedules) == 2
    for i, s in enumerate(d.schedules):
        loss = d.figure.data[4 * i + 3]
        x = np.asarray(loss.x)
        assert len(x) > 0
        np.testing.assert_allclose(loss.y, f.fitted.predict(s, x), rtol=1e-9)
    d.select(1)                                                            # the WSD one
    d.controls["decay_fraction"].value = 0.5                              # a what-if schedule
    s = d.schedules[-1]
    loss = d.figure.data[4 * (len(d.schedules) - 1) + 3]
    np.testing.assert_allclose(loss.y, f.fitted.predict(s, np.asarray(loss.x)), rtol=1e-9)
    # a refit updates the designer's predictor
    f.law.value = "annealing"
    f.fit_kwargs = dict(lam=0.99)
    f.fit_button.click()
    np.testing.assert_allclose(d.figure.data[3].y, f.fitted.predict(d.schedules[0], np.asarray(d.figure.data[3].x)),
                               rtol=1e-9)


def test_live_follows_a_livefit():
    s = schedules.cosine(peak_lr=1e-3, total_steps=400, warmup_steps=20)
    y = laws.annealing(s, L0=2.0, A=0.6, alpha=0.5, C=0.4, lam=0.999)
    live = LiveFit(s, law="annealing", min_points=5, refit_every=5, min_interval_s=0)
    f = CurveFitter.live(live, min_interval=0)
    assert f.fitted is None and all(len(t.x) == 0 for t in f.figure.data)
    for t in range(0, 200, 5):
        f({"step": t, "lr": s(t), "loss": 9.9, "val_loss": float(y[t])})   # forwarded to the LiveFit
    assert live.refits > 0 and f.fitted is live.fitted
    assert f.curves[0].steps[-1] == live.fitted.info["live_step"]           # drawn at the last refit
    f.refresh(force=True)
    assert f.curves[0].steps[-1] == 195
    _check_figure(f)
    assert np.asarray(_traces(f, 0)[3].x)[-1] == 399                         # forecast to the end of the run
    d = f.designer()
    assert d.schedules == [s]
    with pytest.raises(ValueError, match="attach"):
        CurveFitter([LossCurve.from_schedule(s, [100, 200], [3.0, 2.9])], autofit=False).update({})


def test_legend_names_every_trace_and_redraws_send_no_unnamed_trace(runs, monkeypatch):
    """The browser builds the plot from the widget's initial state plus restyle messages: every trace
    must be named there, and no batched restyle may carry a name for only some traces (the legend
    then read "trace 0", "trace 1", ...)."""
    import plotly.basewidget as bw
    from plotly.basedatatypes import Undefined

    sent = []
    orig = bw.BaseFigureWidget._send_update_msg

    def spy(self, restyle_data, relayout_data, trace_indexes=None, source_view_id=None):
        sent.append((dict(restyle_data), list(trace_indexes or [])))
        return orig(self, restyle_data, relayout_data, trace_indexes, source_view_id)

    monkeypatch.setattr(bw.BaseFigureWidget, "_send_update_msg", spy)
    f = CurveFitter(list(runs.values()), fit_on=["constant", "cosine"], autofit=False)
    initial = f.figure._widget_data                                   # what the browser starts from
    assert len(initial) == 3 * TRACES_PER_CURVE and all(t.get("name") for t in initial)
    legend = [t["name"] for t in initial if t.get("showlegend") is not False]
    assert legend == [f"{n} {what}" for n, role in (("constant", "fit"), ("cosine", "fit"), ("wsd20", "held out"))
                      for what in ("(observed)", "90% band", f"(law, {role})")]
    f.fit_button.click()
    f.checkboxes["wsd20"].value = True
    f.fit_button.click()
    assert [t.name for t in f.figure.data[3::4]] == ["constant (law, fit)", "cosine (law, fit)", "wsd20 (law, fit)"]
    assert sent                                                      # redraws went out as restyles ...
    for restyle, _idx in sent:                                       # ... none with a partial name list
        for key, vals in restyle.items():
            if key in ("name", "showlegend", "legendgroup"):
                assert not any(v is Undefined for v in (vals if isinstance(vals, list) else [vals])), restyle


def test_fitter_shows_the_fits_warnings(runs):
    f = CurveFitter([runs["constant"], runs["cosine"]], law="annealing", fit_on=["constant"])
    assert f.fitted.warnings                                          # one constant run: no decay to see
    assert any("add a run with a decay" in w for w in f.fitted.warnings)
    for w in f.fitted.warnings:
        assert html.escape(w) in f.warnings_html.value
    f.checkboxes["cosine"].value = True
    f.fit_button.click()
    assert all(html.escape(w) in f.warnings_html.value for w in f.fitted.warnings)
    assert not any("add a run with a decay" in w for w in f.fitted.warnings)


def test_live_view_says_why_there_is_no_forecast_yet():
    s = schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100)
    live = LiveFit(s, law="annealing", min_points=5, min_interval_s=0)
    f = CurveFitter.live(live, min_interval=0)
    for t in range(0, 60, 10):                                   # all inside the warmup
        f({"step": t, "lr": s(t), "loss": 5.0, "val_loss": 5.0})
    f.refresh(force=True)
    assert f.fitted is None
    assert "no forecast yet: fit needs 5 points after warmup (step 100); 0 so far" in f.message.value
    assert all(len(t.x) == 0 for t in f.figure.data[1:])          # no band, no law curve


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "runs")


def _truth():
    with open(os.path.join(FIXTURES, "truth.json")) as fh:
        return json.load(fh)


def test_add_a_users_runs_by_path_from_the_text_boxes():
    """HF output folder (fit), one run of a nested TensorBoard logdir (held out), a Lightning
    metrics.csv folder (fit): each read with read_curve, drawn, fitted or scored as chosen."""
    truth = _truth()
    f = CurveFitter([read_curve(os.path.join(FIXTURES, "hf_output"))], autofit=False)
    f.path_text.value = os.path.join(FIXTURES, "tensorboard")
    f.run_text.value = "exp1/seed0"
    f.side.value = "held out"
    f.add_button.click()
    f.path_text.value, f.run_text.value, f.side.value = os.path.join(FIXTURES, "lightning"), "", "fit"
    f.add_button.click()
    names = [c.name for c in f.curves]
    assert names == ["hf_output", "exp1/seed0", "lightning_logs/version_0"], f.message.value
    assert "added lightning_logs/version_0" in f.message.value and "step key" in f.message.value
    for c, key in zip(f.curves, ("hf_output", "tensorboard/exp1/seed0", "lightning")):
        assert c.steps.tolist() == truth[key]["steps"]
        np.testing.assert_allclose(c.losses, truth[key]["losses"], rtol=1e-6)
    assert [cb.value for cb in f.checkboxes.values()] == [True, False, True]
    assert len(f.figure.data) == 3 * TRACES_PER_CURVE
    assert f.fitted.info["curves"] == ["hf_output", "lightning_logs/version_0"]   # fitted on the ticked ones
    assert set(f.scores) == set(names)                                         # the held-out one scored
    _check_figure(f)
    _check_metrics(f)
    assert _traces(f, 1)[3].name.startswith("exp1/seed0 (law, held out")


def test_add_path_bad_input_is_one_line_and_adds_nothing(tmp_path, runs):
    f = CurveFitter([runs["constant"]], autofit=False)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01\x02 not a log")
    cases = [("", None, "type the path"), (str(tmp_path / "missing"), None, "does not exist"),
             (os.path.join(FIXTURES, "tensorboard"), None, "exp1/seed0"),          # several runs: lists them
             (os.path.join(FIXTURES, "tensorboard"), "nope", "no run 'nope'"), (str(garbage), None, "garbage.csv")]
    for path, run, says in cases:
        f.path_text.value, f.run_text.value = path, run or ""
        f.add_button.click()
        assert says in html.unescape(f.message.value), (path, f.message.value)
        assert "<br>" not in f.message.value and "Traceback" not in f.message.value
        assert [c.name for c in f.curves] == ["constant"]
    live = CurveFitter.live(LiveFit(schedules.cosine(peak_lr=1e-3, total_steps=100), law="annealing"))
    with pytest.raises(ValueError, match="LiveFit"):
        live.add_path(assets.run_dir("cosine"))
