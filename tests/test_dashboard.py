"""The dashboard's tabs driven from Python (the browser tests drive the same objects from a page).

Truth: the schedule's own LRs at the plotted steps, the run log on disk, a GainSampler draw, and
brute-force sparsity counts of a known perturbation.
"""
from __future__ import annotations

import html
import json
import os

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
    status = html.unescape(tab.status.object)                # user strings are escaped on the page
    assert "only in base (1): ['extra.weight']" in status and "only tensors in both" in status
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
# ====================================================================== the classroom server (issue 18)
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``workbench serve`` with the test tokens, one run at a time and one --data-dir."""
    from browser import ARTIFACTS, dashboard_cmd, free_port, server

    ws, data = tmp_path_factory.mktemp("served-ws"), tmp_path_factory.mktemp("served-data")
    port = free_port()
    with server(dashboard_cmd(port, ws, "--max-runs", "1", "--data-dir", str(data)),
                f"http://127.0.0.1:{port}/login", ARTIFACTS / "dashboard-served.log", timeout=240,
                env={"OMP_NUM_THREADS": "1"}):
        yield port, ws, data


def test_serve_needs_the_token(served):
    from browser import ADMIN_TOKEN, TOKEN, get_page, session_token

    port, _, _ = served
    base = f"http://127.0.0.1:{port}/"
    status, _, _ = get_page(base)
    assert status == 302                                  # to the login page, no dashboard
    status, body, _ = get_page(base + "login")
    assert status == 403 and "needs its token" in body and TOKEN not in body
    status, _, jar = get_page(base + "?token=wrong-token-value")
    assert status == 302 and "workbench-auth" not in jar
    status, body, jar = get_page(base + f"?token={TOKEN}")
    assert status == 200 and session_token(body) and "workbench-auth" in jar and "workbench-uid" in jar
    # the cookie alone lets the browser back in (no token in the URL any more)
    status, body, _ = get_page(base, cookie=jar)
    assert status == 200 and session_token(body)
    status, _, _ = get_page(base + f"?token={ADMIN_TOKEN}")
    assert status == 200


def test_websocket_checks_origin_and_token(served):
    from bokeh.util.token import generate_jwt_token, generate_session_id

    from browser import TOKEN, get_page, session_token, ws_handshake

    port, _, _ = served
    _, body, jar = get_page(f"http://127.0.0.1:{port}/?token={TOKEN}")
    tok = session_token(body)
    own = f"http://localhost:{port}"
    assert ws_handshake(port, own, tok, cookie=jar) == "accepted ACK"
    assert ws_handshake(port, own, tok, query=f"?token={TOKEN}") == "accepted ACK"
    # a page of another site, even with the token: refused (the origin check is always on)
    assert ws_handshake(port, "http://evil.example", tok, cookie=jar).startswith("refused 403")
    assert ws_handshake(port, "http://evil.example", tok, query=f"?token={TOKEN}").startswith("refused 403")
    # no token, a wrong token: refused
    assert ws_handshake(port, own, tok).startswith("refused 403")
    assert ws_handshake(port, own, tok, query="?token=wrong-token-value").startswith("refused 403")
    # a session token the client made itself (unsigned, claiming to be the teacher): refused
    forged = generate_jwt_token(generate_session_id(signed=False), signed=False,
                                extra_payload={"headers": {"X-Workbench-User": "x", "X-Workbench-Role": "admin"}})
    assert ws_handshake(port, own, forged, cookie=jar).startswith("refused")


def test_origin_list_never_takes_a_wildcard():
    from workbench.widgets.dashboard import serve
    from workbench.widgets.dashboard_server import origins

    assert origins("localhost", 5006) == ["127.0.0.1:5006", "localhost:5006"]
    assert "lab.example:5006" in origins("localhost", 5006, ["lab.example"])
    everywhere = origins("0.0.0.0", 5006)
    assert "0.0.0.0:5006" not in everywhere and "localhost:5006" in everywhere and len(everywhere) >= 3
    for bad in ("*", "*.example.com", ""):
        with pytest.raises(ValueError, match="no wildcards"):
            origins("0.0.0.0", 5006, [bad])
    with pytest.raises(ValueError, match="cannot be turned off"):
        serve(websocket_origin="*")


def test_token_auth_roles():
    from workbench.widgets.dashboard_server import TokenAuth

    auth = TokenAuth("student-token", "teacher-token")
    assert [auth.role_for(t) for t in ("student-token", "teacher-token", "student-toke", "", None)] == \
        ["student", "admin", None, None, None]
    assert TokenAuth(None).role_for("anything") is None           # --no-token: nobody is admin by token
    with pytest.raises(ValueError, match="differ"):
        TokenAuth("same-token", "same-token")
    with pytest.raises(ValueError, match="at least 8"):
        TokenAuth("short")


def _fast_config(steps=30, **kw):
    from workbench.train import TrainConfig

    base = dict(steps=steps, batch_size=2, seq_len=16, max_tokens=20_000, eval_interval=0, eval_batches=1,
                checkpoint_interval=5, schedule="constant", lr=1e-3)
    return TrainConfig(**{**base, **kw})


def _wait_step(ws, name, step, timeout=120):
    import time

    end = time.monotonic() + timeout
    while (ws.run_status(name)["step"] or -1) < step and time.monotonic() < end:
        time.sleep(0.05)


def test_runs_belong_to_their_owner(tmp_path, law_cache):
    from workbench.widgets.dashboard import Dashboard

    ws = Workspace(tmp_path)
    alice, bob = Dashboard(ws, user="alice"), Dashboard(ws, user="bob")
    teacher = Dashboard(ws, user="t", admin=True)
    t = alice.training
    t.run_name.value, t.sched.value = "alice-run", "cosine (default)"
    t.steps.value, t.batch.value, t.seq_len.value, t.eval_interval.value = 400, 2, 16, 50
    assert t.start() == "alice-run"
    assert ws.owner("alice-run") == "alice"
    _wait_step(ws, "alice-run", 1)
    bob.training.refresh()
    bob.training.runs.value = "alice-run"                  # bob can watch it ...
    assert bob.training.stop_button.disabled and bob.training.resume_button.disabled
    assert "read-only" in bob.training.status.object
    bob.training.stop()                                     # ... and a click (or a forged event) is refused
    assert "belongs to another user" in bob.training.status.object
    assert ws.run_status("alice-run")["state"] == "running"
    bob.training.resume()
    assert ws.run_status("alice-run")["state"] == "running"
    assert not alice.training.stop_button.disabled
    teacher.training.refresh()
    teacher.training.runs.value = "alice-run"
    assert not teacher.training.stop_button.disabled
    teacher.training.stop()                                 # the teacher may stop any run
    st = ws.wait("alice-run", timeout=120)
    assert st["state"] == "stopped" and st["step"] < 399
    assert not ws.can_control("alice-run", None) and not ws.can_control("alice-run", "bob")
    assert ws.can_control("alice-run", "alice") and ws.can_control("alice-run", "bob", admin=True)


def test_run_queue_caps_concurrent_runs(tmp_path):
    from workbench.widgets.dashboard import TrainingTab

    ws = Workspace(tmp_path, max_runs=1)
    try:
        ws.start_run("first", _fast_config(400), owner="a")
        ws.start_run("second", _fast_config(8), owner="b")
        ws.start_run("third", _fast_config(8), owner="c")
        _wait_step(ws, "first", 0)
        assert ws.run_status("first")["state"] == "running"
        assert [ws.run_status(n)["position"] for n in ("second", "third")] == [1, 2]
        assert ws.run_status("third")["state"] == "queued" and ws.running_count() == 1
        tab = TrainingTab(ws, user="c")
        tab.runs.value = "third"
        assert "position 2 in the queue" in tab.status.object
        ws.stop_run("third")                                   # a queued run is taken out of the queue
        assert "third" not in ws.names("runs") and ws.run_status("second")["position"] == 1
        ws.stop_run("first", wait=60)
        st = ws.wait("second", timeout=120)                    # the next in line starts when a slot frees
        assert st["state"] == "completed" and st["step"] == 7
        assert ws.run_status("first")["state"] == "stopped"
    finally:
        Workspace.max_runs = max(1, os.cpu_count() or 1)


def test_every_number_is_bounded_on_the_server(tmp_path, law_cache):
    import time

    from workbench.widgets.dashboard import LIMITS, Dashboard

    d = Dashboard(tmp_path)
    before = d.schedule.plot.object
    t0 = time.perf_counter()
    # a client can send any value over the websocket: set it past the widget's own bound
    d.schedule.controls["total_steps"].end = None
    d.schedule.controls["total_steps"].value = 50_000_000
    assert time.perf_counter() - t0 < 2.0
    assert "total steps must be between 1 and 1,000,000" in d.schedule.status.object
    assert d.schedule.plot.object is before
    t = d.training
    for widget, bad in ((t.steps, 10**9), (t.batch, 0), (t.seq_len, 100_000), (t.eval_interval, -1)):
        widget.end = widget.start = None
        good = widget.value
        widget.value = bad
        assert t.start() is None and "must be between" in t.status.object, widget.label
        widget.value = good
    assert d.ws.names("runs") == []
    assert LIMITS["train_steps"][1] == t.steps.end or t.steps.end is None
    angles = [obj for name, obj in d.tabs if name == "Data selection"][0]
    angles.n_examples.end = None
    angles.n_examples.value = 10**7
    angles.score()
    assert "prompts to score must be between" in angles.status.object and angles.scores is None


def test_idle_session_does_not_reread_the_log(tmp_path, law_cache, monkeypatch):
    from workbench import livefit, workspace
    from workbench.widgets.dashboard import Dashboard

    ws = Workspace(tmp_path)
    ws.start_run("done", _fast_config(30, eval_interval=10), owner="a")
    assert ws.wait("done", timeout=120)["state"] == "completed"
    d = Dashboard(ws, user="b")
    d.training.runs.value = "done"
    log = tmp_path / "runs" / "done" / "log.jsonl"
    assert len(d.training.plot.object.data[0].x) == 30
    opened, reports = [], []
    real_open, real_report = open, livefit.LiveFit.report
    monkeypatch.setattr(workspace, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k), raising=False)
    monkeypatch.setattr(livefit.LiveFit, "report", lambda self: reports.append(1) or real_report(self))
    for _ in range(20):
        d.refresh()
    assert opened == [] and reports == []           # nothing read, nothing refitted: only size checks
    with real_open(log, "a") as f:                  # a new line (e.g. a resumed run) is read, alone
        f.write(json.dumps({"step": 30, "loss": 1.0}) + "\n")
    d.refresh()
    # the session's tail and the shared status tail each read the appended bytes once, from their offsets
    assert opened == [str(log)] * 2 and 30 in d.training._by_step
    assert d.training._tail.offset == log.stat().st_size == workspace._TAILS[str(log)].offset


def test_sparsity_paths_only_inside_allowed_folders(tmp_path):
    from safetensors.torch import save_file

    from workbench.widgets.dashboard_tabs import SparsityTab

    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    w = {"model.layers.0.mlp.down_proj.weight": torch.ones(4, 4)}
    save_file(w, str(data / "a.safetensors"))
    save_file(w, str(outside / "secret.safetensors"))
    (data / "link.safetensors").symlink_to(outside / "secret.safetensors")
    tab = SparsityTab(Workspace(tmp_path / "ws", data_dirs=[data]))
    messages = []
    for typed in ("/etc/shadow", "/etc/nonexistent", str(outside / "secret.safetensors"),
                  str(outside / "missing.safetensors"), str(data / "../outside/secret.safetensors"),
                  str(data / "link.safetensors"), "~/.bashrc", "../../../../etc/passwd", XSS):
        tab.base_path.value = typed
        tab.tuned_path.value = str(data / "a.safetensors")
        assert tab.compute(name="x") is None, typed
        messages.append(tab.status.object)
    # the same words whether the path exists or not: nothing about the server's files leaks
    assert len(set(messages)) == 1, messages
    assert "not an allowed checkpoint" in messages[0] and "<img" not in messages[0]
    tab.base_path.value = str(data / "a.safetensors")
    assert tab.compute(name="ok") is not None                   # inside --data-dir: diffed
    tab.base_path.value = "a.safetensors"                       # relative to an allowed folder
    assert tab.compute(name="ok2") is not None
    with pytest.raises(ValueError, match="not a folder"):
        Workspace(tmp_path / "ws", data_dirs=[tmp_path / "nope"])


def test_user_strings_are_escaped(tmp_path, law_cache):
    from workbench.widgets.dashboard import Dashboard, esc

    d = Dashboard(tmp_path, user=XSS)
    d.schedule.name.value = XSS
    assert d.schedule.save() is None
    d.training.run_name.value = XSS
    assert d.training.start() is None
    for html_text in (d.schedule.status.object, d.training.status.object, d.layout[0].object):
        assert "<img" not in html_text and esc(XSS) in html_text or "&lt;img" in html_text
    assert esc("<b>&'\"") == "&lt;b&gt;&amp;&#x27;&quot;"


def test_interrupted_runs_resume_on_restart(tmp_path):
    from workbench.widgets.dashboard import _resume_interrupted

    ws = Workspace(tmp_path)
    def stop_at_12(rec):
        if rec.get("step") == 12:
            ws.stop_run("r", wait=None)

    ws.start_run("r", _fast_config(30), callbacks=[stop_at_12], owner="alice")
    assert ws.wait("r", timeout=120)["state"] == "stopped"
    (tmp_path / "runs" / "r" / "summary.json").unlink()     # what a kill leaves: log + checkpoint, no summary
    ws.start_run("fresh", _fast_config(30), owner="bob")
    ws.wait("fresh", timeout=120)
    (tmp_path / "runs" / "fresh" / "summary.json").unlink()
    import shutil

    for p in (tmp_path / "runs" / "fresh").iterdir():      # interrupted before any checkpoint
        if p.name not in ("log.jsonl", "config.json", "owner.json"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert sorted(ws.interrupted_runs()) == ["fresh", "r"]
    assert _resume_interrupted(ws) == ["r"]
    st = ws.wait("r", timeout=120)
    assert st["state"] == "completed" and st["step"] == 29 and ws.owner("r") == "alice"
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs" / "r" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 29 and set(range(30)) <= set(steps)
    assert ws.run_status("fresh")["state"] == "interrupted"


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


def test_stop_all_checkpoints_running_runs_and_empties_the_queue(tmp_path):
    from workbench import checkpoint

    ws = Workspace(tmp_path, max_runs=1)
    try:
        ws.start_run("long", _fast_config(4000, checkpoint_interval=100_000), owner="a")
        ws.start_run("waiting", _fast_config(8), owner="b")
        _wait_step(ws, "long", 3)
        assert ws.stop_all(wait=120) == ["long"]
        st = ws.run_status("long")
        assert st["state"] == "interrupted" and 3 <= st["step"] < 3999 and ws.interrupted_runs() == ["long"]
        assert checkpoint.has_checkpoint(tmp_path / "runs" / "long")    # the work since the start is kept
        assert ws.run_status("waiting")["state"] == "new" and ws.queue_position("waiting") is None
    finally:
        Workspace.max_runs = max(1, os.cpu_count() or 1)


def test_server_resumes_interrupted_runs_and_stops_them_cleanly_on_sigterm(tmp_path):
    import signal
    import time

    from browser import ARTIFACTS, dashboard_cmd, free_port, server

    ws = Workspace(tmp_path)

    def stop_at_12(rec):
        if rec.get("step") == 12:
            ws.stop_run("r", wait=None)

    ws.start_run("r", _fast_config(100_000, checkpoint_interval=100_000), callbacks=[stop_at_12], owner="alice")
    assert ws.wait("r", timeout=120)["state"] == "stopped"
    (tmp_path / "runs" / "r" / "summary.json").unlink()       # what a kill of the server leaves
    log = tmp_path / "runs" / "r" / "log.jsonl"
    port = free_port()
    with server(dashboard_cmd(port, tmp_path), f"http://127.0.0.1:{port}/login", ARTIFACTS / "dashboard-resume.log",
                timeout=240, env={"OMP_NUM_THREADS": "1"}) as proc:
        end = time.monotonic() + 180
        while json.loads(log.read_text().splitlines()[-1])["step"] < 20 and time.monotonic() < end:
            time.sleep(0.2)
        assert json.loads(log.read_text().splitlines()[-1])["step"] >= 20      # resumed by the restart
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) is not None                    # SIGTERM alone ended it (no SIGINT/SIGKILL)
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted"               # stopped with a checkpoint, not killed mid-step
    assert "interrupted runs r with a checkpoint" in (ARTIFACTS / "dashboard-resume.log").read_text()
    assert Workspace(tmp_path).owner("r") == "alice"
    assert Workspace(tmp_path).interrupted_runs() == ["r"]  # so the next start resumes it again


@pytest.mark.parametrize("args, says", [
    (["--allow-origin", "*"], "no wildcards"),
    (["--token", "short"], "at least 8 characters"),
    (["--token", "same-token-1", "--admin-token", "same-token-1"], "differ from --token"),
    (["--max-runs", "0"], "--max-runs must be at least 1"),
    (["--data-dir", "/nonexistent-folder-h18"], "is not a folder"),
])
def test_serve_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, says):
    from workbench.cli import main

    assert main(["serve", "--run-dir", str(tmp_path), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]


RUN_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "runs")


def _check_own_run_figure(own):
    """Observed points after warmup; the law drawn exactly as FittedLaw.predict where it may be shown."""
    c, f = own.curve, own.fitted
    obs, law = own.plot.object["data"][0], own.plot.object["data"][-1]
    keep = c.steps >= c.warmup
    assert obs["x"] == c.steps[keep].tolist() and obs["y"] == c.losses[keep].tolist()
    x = np.asarray(law["x"])
    assert x[0] >= c.warmup and x[-1] == c.total_steps - 1
    pred = f.predict(c, x)
    shown = np.array([v is not None for v in law["y"]])
    impossible = (pred <= 0) | (pred < f.floor)
    if f.cov is not None:                              # drawn with a band: hidden where it is wider than the loss
        _m, lo, hi = f.predict_band(c, x, level=0.9)
        impossible |= (hi - lo) > np.abs(pred)
    assert shown.any()
    np.testing.assert_array_equal(~shown, impossible)
    np.testing.assert_allclose([v for v in law["y"] if v is not None], pred[shown], rtol=1e-12)
    assert all(v > 0 for v in law["y"] if v is not None)


def test_fit_your_own_run_from_a_path_or_an_upload(tmp_path, law_cache):
    from workbench.widgets.dashboard import Dashboard
    from workbench.widgets.dashboard_tabs import OwnRunFit
    from workbench.workspace import UPLOAD_MAX_BYTES

    with open(os.path.join(RUN_FIXTURES, "truth.json")) as fh:
        truth = json.load(fh)
    ws = Workspace(tmp_path / "ws", data_dirs=[RUN_FIXTURES])
    d = Dashboard(ws)
    own = d.own_run
    assert isinstance(own, OwnRunFit)
    # an HF Trainer output folder inside a --data-dir folder, typed as an absolute path
    own.path.value = os.path.join(RUN_FIXTURES, "hf_output")
    own.fit_button.clicks += 1
    assert own.curve is not None, own.status.object
    assert own.curve.steps.tolist() == truth["hf_output"]["steps"]
    np.testing.assert_allclose(own.curve.losses, truth["hf_output"]["losses"])
    assert own.fitted.info["curves"] == ["hf_output"] and "annealing law fitted" in own.status.object
    _check_own_run_figure(own)
    # a nested TensorBoard logdir, relative to the --data-dir: several runs, so the user picks one
    own.path.value = "tensorboard"
    assert own.fit() is None and "holds 3 runs" in own.status.object
    assert list(own.run.options) == ["exp1/seed0", "exp1/seed1", "exp2"]
    own.run.value = "exp1/seed0"
    assert own.fit().steps.tolist() == truth["tensorboard/exp1/seed0"]["steps"]
    _check_own_run_figure(own)
    # an upload (a nanoGPT W&B export, step key 'iter'): kept in uploads/, never overwritten, and fitted
    data = open(os.path.join(RUN_FIXTURES, "wandb", "nanogpt_history.csv"), "rb").read()
    assert own.uploaded("nanogpt.csv", data) == "nanogpt.csv"
    assert own.path.value == "uploads/nanogpt.csv" and (ws.root / "uploads" / "nanogpt.csv").read_bytes() == data
    assert own.curve.steps.tolist() == truth["wandb"]["steps"]
    np.testing.assert_allclose(own.curve.losses, truth["wandb"]["losses"])
    _check_own_run_figure(own)
    own.upload.filename = "nanogpt.csv"
    own.upload.value = data                                      # what the FileInput sends
    assert (ws.root / "uploads" / "nanogpt-2.csv").read_bytes() == data
    assert own.path.value == "uploads/nanogpt-2.csv" and own.curve.name == "nanogpt-2"
    # refused uploads: one escaped line each, nothing written
    for name, body, says in ((XSS + ".csv", data, "not usable as a file name"),
                             ("run.exe", data, "only .csv, .jsonl, .json"),
                             ("big.csv", b"x" * (UPLOAD_MAX_BYTES + 1), "at most 10 MB"),
                             ("empty.csv", b"", "is empty")):
        assert own.uploaded(name, body) is None
        assert says in html.unescape(own.status.object) and "<img" not in own.status.object
        assert "<br>" not in own.status.object
    garbage = b"\x00\x01 not a log at all"
    assert own.uploaded("garbage.csv", garbage) is None                # kept, but says why it is no run
    assert "garbage.csv" in own.status.object and str(ws.root) not in own.status.object
    assert sorted(p.name for p in (ws.root / "uploads").iterdir()) == ["garbage.csv", "nanogpt-2.csv", "nanogpt.csv"]


def test_own_run_paths_only_inside_allowed_folders(tmp_path, law_cache):
    from workbench.widgets.dashboard_tabs import OwnRunFit

    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    log = "step,lr,loss\n" + "".join(f"{t},1e-3,{3.0 - t / 1000:.4f}\n" for t in range(0, 400, 10))
    (data / "mine.csv").write_text(log)
    (outside / "secret.csv").write_text(log)
    (data / "link.csv").symlink_to(outside / "secret.csv")
    ws = Workspace(tmp_path / "ws", data_dirs=[data])
    (ws.root / ".server-secret").write_text("s" * 64)
    own = OwnRunFit(ws)
    messages = []
    for typed in ("/etc/passwd", "/etc/nonexistent", str(outside / "secret.csv"), str(outside / "missing.csv"),
                  str(data / "../outside/secret.csv"), str(data / "link.csv"), "~/.bashrc", "../../../../etc/passwd",
                  str(ws.root / ".server-secret"), ".server-secret", "", XSS):
        own.path.value = typed
        assert own.fit() is None, typed
        messages.append(own.status.object)
    assert len(set(messages)) == 1, messages                 # the same words whether the path exists or not
    assert "not an allowed run log" in messages[0] and "<img" not in messages[0]
    own.path.value = "mine.csv"                              # relative to a --data-dir folder
    assert own.fit().name == "mine"
    own.path.value = "runs/cosine"                           # a bundled run
    assert own.fit().name == "cosine" and own.forecast.ok


def test_schedule_tab_predicts_with_the_law_fitted_to_your_run(tmp_path, law_cache):
    from workbench.widgets.dashboard import OWN, Dashboard

    d = Dashboard(tmp_path)
    own, tab = d.own_run, d.schedule
    assert own.use_button.disabled
    own.path.value = "runs/cosine"                                  # the bundled cosine run (peak 3e-3, 1000 steps)
    assert own.fit() is not None
    own.use_button.clicks += 1
    assert tab.source.value == OWN and tab.fitted_law() is own.fitted
    c = tab.controls
    c["total_steps"].value, c["warmup_steps"].value = 1000, 50
    trace = tab.plot.object["data"][3]                              # the designed schedule's predicted loss
    x = np.asarray(trace["x"])
    pred = own.fitted.predict(tab.current(), x)
    shown = np.array([v is not None for v in trace["y"]])
    assert shown.any()
    np.testing.assert_allclose([v for v in trace["y"] if v is not None], pred[shown], rtol=1e-12)
    np.testing.assert_array_equal(~shown, (pred <= 0) | (pred < own.fitted.floor))
    assert "law fitted to your run cosine" in tab.status.object
    tab.source.value = "124m"                                       # back to the 124M law
    assert tab.fitted_law() is not own.fitted and "124M" in tab.status.object
