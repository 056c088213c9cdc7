"""The dashboard's tabs driven from Python (the browser tests drive the same objects from a page).

Truth: the schedule's own LRs at the plotted steps, the run log on disk, a GainSampler draw, and
brute-force sparsity counts of a known perturbation.
"""
from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch

from workbench import plots, schedules
from workbench.workspace import Workspace, check_name

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def law_cache(tmp_path_factory):
    """Fit the default law once for the module (every Dashboard asks its workspace for it)."""
    ws = Workspace(tmp_path_factory.mktemp("law"))
    return ws.law("annealing")


def _dash(tmp_path, law_cache):
    from workbench.widgets.dashboard import Dashboard

    return Dashboard(tmp_path)


def test_schedule_tab_draws_the_designed_schedule(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    c = d.schedule.controls
    c["family"].value = "wsd"
    c["total_steps"].value = 100_000
    c["warmup_steps"].value = 1000
    c["decay_fraction"].value = 0.1
    c["peak_lr"].value = 3e-3
    fig = d.schedule.plot.object
    sched = schedules.wsd(peak_lr=3e-3, total_steps=100_000, warmup_steps=1000, decay_fraction=0.1,
                          min_lr=c["min_lr"].value, decay="linear")
    x = np.asarray(fig["data"][0]["x"])
    assert x[-1] == 99_999 and x.size <= 1001
    np.testing.assert_allclose(fig["data"][0]["y"], sched(x), rtol=1e-12)
    # predicted loss with the tiny-run law: the workspace law's prediction at those steps (annealing by
    # default), drawn where it may be shown (100x the fitted length: greyed, nothing below its floor)
    d.schedule.source.value = "tiny"

    def drawn(law):
        y = np.array([np.nan if v is None else v for v in d.schedule.plot.object["data"][3]["y"]])
        pred = law.predict(sched, x)
        np.testing.assert_array_equal(np.isnan(y), (pred <= 0) | (pred < law.floor))
        return y[~np.isnan(y)], pred[~np.isnan(y)]

    np.testing.assert_allclose(*drawn(law_cache), rtol=1e-9)
    assert "no trustworthy prediction" in d.schedule.status.object and "100.0x" in d.schedule.status.object
    d.schedule.law.value = "multipower"
    np.testing.assert_allclose(*drawn(d.ws.law("multipower")), rtol=2e-3)


def test_schedule_figure_dict_matches_the_plotly_figure():
    s = schedules.cosine(peak_lr=1e-3, total_steps=5000, warmup_steps=100)
    a = plots.schedule_figure_dict([s], max_points=300)
    b = plots.schedule_figure([s], max_points=300)
    assert len(a["data"]) == len(b.data) == 4
    for ta, tb in zip(a["data"], b.data):
        assert (ta["xaxis"], ta["yaxis"]) == (tb.xaxis, tb.yaxis)
        np.testing.assert_array_equal(ta["y"], tb.y if tb.y is not None else [])
    assert [x["text"] for x in a["layout"]["annotations"]] == [x.text for x in b.layout.annotations]


def test_bad_schedule_shows_an_error_and_keeps_the_plot(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    before = d.schedule.plot.object
    d.schedule.controls["warmup_steps"].value = 50_000     # longer than the 10k-step horizon
    assert "warmup" in d.schedule.status.object and "#b42318" in d.schedule.status.object
    assert d.schedule.plot.object is before


def test_saved_schedule_survives_a_restart_and_sessions_are_separate(tmp_path, law_cache):
    a, b = _dash(tmp_path, law_cache), _dash(tmp_path, law_cache)
    a.schedule.controls["total_steps"].value = 3000
    assert b.schedule.current().total_steps == 10_000          # b's controls are its own
    assert a.schedule.save("short") == "short"
    spec = json.loads((tmp_path / "schedules" / "short.json").read_text())
    assert spec["total_steps"] == 3000 and spec["family"] == "cosine"
    again = _dash(tmp_path, law_cache)                          # a "restart": a new session on the same dir
    assert "short" in again.schedule.compare.options
    again.schedule.compare.value = ["short"]
    assert len(again.schedule.plot.object["data"]) == 8         # designed + the saved one
    assert a.schedule.save("../escape") is None and "not usable" in a.schedule.status.object


def test_training_tab_runs_and_shows_the_log(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    t = d.training
    t.run_name.value = "tiny-run"
    t.sched.value = "cosine (default)"
    t.steps.value, t.batch.value, t.seq_len.value, t.eval_interval.value = 12, 2, 16, 4
    assert t.start() == "tiny-run"
    status = d.ws.wait("tiny-run", timeout=120)
    assert status["state"] == "completed", status
    t.refresh()
    log = [json.loads(x) for x in (tmp_path / "runs" / "tiny-run" / "log.jsonl").read_text().splitlines()]
    fig = t.plot.object
    assert list(fig.data[0].x) == [r["step"] for r in log] == list(range(12))
    assert list(fig.data[0].y) == pytest.approx([r["loss"] for r in log])
    assert [p for p in fig.data[1].x] == [3, 7, 11]                # val loss every 4 steps
    from workbench.laws import FittedLaw

    saved = FittedLaw.load(tmp_path / "fits" / "tiny-run.json")     # the forecast's fit is kept on disk
    assert saved.params == t._fit.fitted.params
    # the same name again: a second run, never an overwrite
    t.run_name.value = "tiny-run"
    assert t.start() == "tiny-run-2"
    d.ws.wait("tiny-run-2", timeout=120)
    assert sorted(d.ws.names("runs")) == ["tiny-run", "tiny-run-2"]


def test_training_tab_rejects_steps_past_the_schedule(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    d.schedule.controls["total_steps"].value = 10
    d.schedule.controls["warmup_steps"].value = 0
    d.training.steps.value = 50
    assert d.training.start() is None
    assert "past the schedule" in d.training.status.object
    assert d.ws.names("runs") == []


def test_workspace_stop_and_resume(tmp_path):
    from workbench.train import TrainConfig

    ws = Workspace(tmp_path)
    cfg = TrainConfig(steps=400, batch_size=2, seq_len=16, max_tokens=20_000, eval_interval=0, eval_batches=1,
                      checkpoint_interval=1000, schedule="constant", lr=1e-3)
    ws.start_run("r", cfg)
    import time

    end = time.monotonic() + 120
    while (ws.run_status("r")["step"] or 0) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    ws.stop_run("r", wait=60)
    st = ws.run_status("r")
    assert st["state"] == "stopped" and st["step"] < 399
    stopped_at = st["step"]
    ws.resume_run("r", steps=stopped_at + 4)
    st = ws.wait("r", timeout=120)
    assert st["state"] == "completed" and st["step"] == stopped_at + 3
    with pytest.raises(ValueError, match="already exists"):
        ws.start_run("r", cfg)


def test_check_name():
    assert check_name("wsd-0.2_a") == "wsd-0.2_a"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="file name"):
            check_name(bad)


def test_angles_tab_subset_is_the_gain_sampler_draw(tmp_path):
    from workbench.data import GainSampler
    from workbench.widgets.dashboard_tabs import AnglesTab

    tab = AnglesTab(Workspace(tmp_path), n=32)
    tab.score()
    assert tab.scores.shape == (32,) and np.isfinite(tab.losses).all()
    tab.sigma.value, tab.subset_size.value, tab.mu.value = 2.0, 5, 10
    want = np.sort(list(GainSampler(tab.scores, 5, mu=10.0, sigma=2.0, seed=0)))
    np.testing.assert_array_equal(tab.selected, want)
    chosen = tab.scatter.object["data"][1]
    np.testing.assert_array_equal(chosen["customdata"], want)
    np.testing.assert_allclose(chosen["x"], tab.scores[want])
    tab.sigma.value, tab.mu.value = 0.5, 0                     # narrow, at the top: the 5 highest scores
    np.testing.assert_array_equal(tab.selected, np.sort(np.argsort(-tab.scores, kind="stable")[:5]))
    tab.show(int(want[0]))
    assert tab.examples[int(want[0])]["question"] in tab.sample.object
    path = tab.export("top5")
    saved = json.loads(path.read_text())
    assert saved["indices"] == tab.selected.tolist() and saved["subset_size"] == 5


def test_sparsity_tab_matches_brute_force(tmp_path):
    from safetensors.torch import save_file

    from workbench.widgets.dashboard_tabs import SparsityTab

    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(16, 16, generator=g) for i in range(2)}
    base["model.layers.0.mlp.down_proj.weight"] = torch.randn(16, 32, generator=g)
    tuned = {}
    for k, w in base.items():
        change = (torch.rand(w.shape, generator=g) < 0.3) * 1e-3 * torch.randn(w.shape, generator=g)
        tuned[k] = w + change
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    tab = SparsityTab(Workspace(tmp_path / "ws"))
    tab.compute(str(tmp_path / "base.safetensors"), str(tmp_path / "tuned.safetensors"), name="d")
    assert (tmp_path / "ws" / "diffs" / "d.json").exists()
    z = tab.heatmap.object["data"][0]
    cols, rows = z["x"], z["y"]
    for i, layer in enumerate(rows):
        for j, col in enumerate(cols):
            names = [k for k in base if f"layers.{layer}." in k and col in k]
            if not names:
                assert z["z"][i][j] is None
                continue
            changed = sum(int(((tuned[k] - base[k]).abs() > 1e-5).sum()) for k in names)
            numel = sum(base[k].numel() for k in names)
            assert z["z"][i][j] == pytest.approx(1 - changed / numel)
    tab.select("model.layers.0.mlp.down_proj.weight")
    delta = (tuned["model.layers.0.mlp.down_proj.weight"] - base["model.layers.0.mlp.down_proj.weight"]).double()
    sv = [t for t in tab.detail.object["data"] if t["name"] == "singular values"][0]["y"]
    np.testing.assert_allclose(sv, torch.linalg.svdvals(delta).numpy(), rtol=1e-4, atol=1e-9)
    # a second session sees the saved diff
    other = SparsityTab(Workspace(tmp_path / "ws"))
    assert other.diffs.options == ["d"] and other.diff is not None


def test_min_lr_follows_peak_lr_and_the_page_recovers(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    c = d.schedule.controls
    c["min_lr"].value = 1e-3
    c["peak_lr"].value = 4e-4                       # dragged below min LR: min LR follows it down
    assert c["min_lr"].value == 4e-4
    fig = d.schedule.plot.object
    lrs = np.asarray(fig["data"][0]["y"])
    assert lrs.max() == pytest.approx(4e-4) and lrs[-1] == pytest.approx(4e-4)   # cosine from 4e-4 to 4e-4
    assert "#b42318" not in d.schedule.status.object
    c["min_lr"].value = 1e-2                        # min LR dragged above peak LR pushes peak LR up
    assert (c["peak_lr"].value, c["min_lr"].value) == (1e-2, 1e-2)
    assert np.asarray(d.schedule.plot.object["data"][0]["y"]).max() == pytest.approx(1e-2)
    c["min_lr"].value = 4e-4
    c["family"].value = "wsd"                       # the family switch still redraws
    assert d.schedule.plot.object is not fig and d.schedule.current().family == "wsd"
    c["peak_lr"].value = 3e-3
    assert d.schedule.save("after-clamp") == "after-clamp"
    saved = d.ws.load_schedule("after-clamp")
    assert (saved.family, saved.peak_lr, saved.min_lr) == ("wsd", 3e-3, 4e-4)


def test_sparsity_drill_down_follows_the_tolerance_slider(tmp_path):
    from safetensors.torch import save_file

    from workbench.sparsity.diff import snap_tolerance
    from workbench.widgets.dashboard_tabs import SparsityTab

    g = torch.Generator().manual_seed(1)
    name = "model.layers.0.mlp.down_proj.weight"
    base = {name: torch.randn(16, 32, generator=g)}
    tuned = {name: base[name] + (torch.rand(16, 32, generator=g) < 0.5) * 10 ** (-6 + 4 * torch.rand(16, 32,
                                                                                                      generator=g))}
    save_file(base, str(tmp_path / "b.safetensors"))
    save_file(tuned, str(tmp_path / "t.safetensors"))
    tab = SparsityTab(Workspace(tmp_path / "ws"))
    tab.compute(str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"), name="d")
    tab.select(name)
    delta = (tuned[name] - base[name]).abs()
    for shown, tol in (("1e-05", 1e-5), ("1e-03", 1e-3)):
        tab.tolerance.value = tol                      # the slider moves; the drill-down follows
        ch = (delta > snap_tolerance(tol)).numpy()
        title = tab.detail.object["layout"]["title"]
        assert f"sparsity {1 - ch.mean():.4f} at atol={shown}" in title, title
        rows = [t for t in tab.detail.object["data"] if t["name"] == "row sparsity"][0]["y"]
        np.testing.assert_allclose(rows, 1 - ch.sum(axis=1) / 32)
    assert (ch != (delta > 1e-5).numpy()).any()        # the two tolerances really differ here


def test_sparsity_tab_can_skip_tensors_that_do_not_line_up(tmp_path):
    from safetensors.torch import save_file

    from workbench.widgets.dashboard_tabs import SparsityTab

    w = torch.arange(12.0).reshape(3, 4)
    save_file({"model.layers.0.mlp.up_proj.weight": w, "extra.weight": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    tuned = w.clone()
    tuned[0, 0] += 1.0
    save_file({"model.layers.0.mlp.up_proj.weight": tuned}, str(tmp_path / "t.safetensors"))
    tab = SparsityTab(Workspace(tmp_path / "ws"))
    assert tab.compute(str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"), name="x") is None
    assert "only in base (1): ['extra.weight']" in tab.status.object and "only tensors in both" in tab.status.object
    tab.intersect.value = True
    d = tab.compute(str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"), name="x")
    assert d.overall == {"sparsity": 11 / 12, "numel": 12, "changed": 1} and d.skipped == ["extra.weight"]
    assert "skipped 1 tensor(s) not in both: extra.weight" in tab.status.object


def test_training_tab_says_a_run_short_of_its_schedule_stopped_there(tmp_path, law_cache):
    d = _dash(tmp_path, law_cache)
    t = d.training
    t.run_name.value = "short"
    t.sched.value = t.DESIGNED                      # the designer's 10,000-step cosine
    t.steps.value, t.batch.value, t.seq_len.value, t.eval_interval.value = 5, 2, 16, 5
    assert t.start() == "short"
    assert d.ws.wait("short", timeout=120)["state"] == "completed"
    t.refresh()
    summary = json.loads((tmp_path / "runs" / "short" / "summary.json").read_text())
    assert (summary["steps"], summary["total_steps"]) == (5, 10_000)
    assert "short</b>: stopped at 5 of 10,000 (resumable), step 4" in t.status.object


def test_schedule_tab_predicts_with_the_124m_law_by_default(tmp_path, law_cache):
    from workbench.livefit import forecast
    from workbench.workspace import default_law

    d = _dash(tmp_path, law_cache)
    tab = d.schedule
    assert tab.source.value == "124m" and "tiny" in tab.source.options.values()
    c = tab.controls
    c["peak_lr"].value = 1e-3                       # inside the 124M runs' LR: a forecast it can make
    real = default_law("annealing", source="124m")
    assert real.info["curves"] and tab.fitted_law() is real
    fig = tab.plot.object
    sched = tab.current()
    x = np.asarray(fig["data"][0]["x"])
    np.testing.assert_allclose(fig["data"][3]["y"], real.predict(sched, x), rtol=1e-9)
    final = float(real.predict(sched, [sched.total_steps - 1])[0])
    assert f"predicted final loss {final:.4f}" in tab.status.object
    assert "law fitted to real 124M runs" in tab.status.object
    c["peak_lr"].value = 3e-3                       # 3x the fitted LR: greyed, with the reason
    assert "no trustworthy prediction" in tab.status.object and "peak LR 0.003 is outside" in tab.status.object
    assert tab.plot.object["data"][3]["line"] == {"color": "#9aa5b1", "dash": "dot"}
    assert forecast(real, tab.current()).problems and not tab.forecasts[0].ok


def test_schedule_tab_never_shows_a_negative_predicted_loss(tmp_path, law_cache):
    # the case: the tiny-run law, WSD at peak 8e-3 over the default 10k steps predicted -0.1958
    d = _dash(tmp_path, law_cache)
    tab = d.schedule
    tab.source.value = "tiny"
    tab.controls["family"].value = "wsd"
    tab.controls["peak_lr"].value = 8e-3
    raw = tab.fitted_law().predict(tab.current(), [9_999])[0]
    assert raw < 0                                  # the law's own number ...
    status = tab.status.object
    assert f"{raw:.4f}" not in status.split("negative loss")[0] and "predicted final loss" not in status
    assert "no trustworthy prediction" in status and "impossible, so no forecast" in status
    y = [v for v in tab.plot.object["data"][3]["y"] if v is not None]
    assert all(v > 0 and v >= tab.fitted_law().floor for v in y)     # ... is never drawn
    assert tab.plot.object["data"][3]["y"][-1] is None
    for w in tab.fitted_law().warnings:                                # the fit's warnings are on screen
        assert html.escape(w) in status


def test_training_tab_says_why_there_is_no_forecast(tmp_path, law_cache):
    from workbench.livefit import LiveFit

    d = _dash(tmp_path, law_cache)
    t = d.training
    # the default: 200 steps of the designed 10k-step schedule with 500 warmup steps
    sched = d.schedule.current()
    assert (sched.total_steps, sched.warmup, t.steps.value) == (10_000, 500, 200)
    live = LiveFit(sched, law="multipower", min_points=8)
    for s in range(200):
        live({"step": s, "lr": sched(s), "loss": 5.0 - 0.01 * s, **({"val_loss": 4.0} if s % 10 == 9 else {})})
    t._fit, t._followed = live, "demo"
    text = t._status_text({"state": "completed", "step": 200})
    assert "no forecast: fit needs 8 points after warmup (step 500); 0 so far" in text
    assert "forecast final loss" not in text
