"""Real-browser tests: the dashboard served by ``workbench serve`` and tutorial 01 in JupyterLab,
both driven in headless Chromium with Playwright. Every server started here is stopped (its whole
process group) whatever happens. Screenshots go to ``test-artifacts/`` (``$WORKBENCH_ARTIFACTS``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from browser import (ADMIN_TOKEN, ARTIFACTS, CHANGE_AND_TIME, CHROMIUM_ARGS, IGNORED_CONSOLE, TOKEN,
                     chromium_path, dashboard_cmd, dashboard_url, free_port, server, why_no_browser)

REASON = why_no_browser()
if REASON and os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"browser tests required (WORKBENCH_REQUIRE_BROWSER=1) but {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _console_errors(page) -> list[str]:
    errors: list[str] = []

    def keep(msg):
        if msg.type == "error" and not any(s in msg.text for s in IGNORED_CONSOLE):
            errors.append(msg.text)

    page.on("console", keep)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    return errors


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("workspace")
    port = free_port()
    with server(dashboard_cmd(port, run_dir), f"http://localhost:{port}/login", ARTIFACTS / "dashboard-server.log",
                timeout=240):
        yield dashboard_url(port), run_dir


def _open(browser, url: str, height: int = 900):
    """A new page on the dashboard, with its console errors collected."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    errors = _console_errors(page)
    page.goto(url, wait_until="networkidle")
    return page, errors


def _plot(page, index: int = 0):
    loc = page.locator(".js-plotly-plot").nth(index)
    loc.wait_for(timeout=60_000)
    return loc


def test_dashboard_schedule_parameter_redraws_plot(browser, dashboard):
    url, run_dir = dashboard
    page, errors = _open(browser, url)
    plot = _plot(page)
    assert plot.evaluate("el => el.data[0].x[el.data[0].x.length - 1]") == 9999   # default 10k steps
    lr_before = plot.evaluate("el => Array.from(el.data[0].y)")

    steps = page.get_by_label("total steps")
    steps.fill("20000")
    steps.press("Enter")
    page.wait_for_function("el => el.data[0].x[el.data[0].x.length - 1] == 19999",
                           arg=plot.element_handle(), timeout=30_000)
    # a change of warmup, timed the way benchmarks/dashboard.py times it
    ms = page.evaluate(CHANGE_AND_TIME, [page.get_by_label("warmup steps").element_handle(),
                                         plot.element_handle(), 2000])
    assert ms > 0, "the plot did not change after the warmup input changed"
    lr_after = plot.evaluate("el => Array.from(el.data[0].y)")
    assert lr_after != lr_before
    # warmup 2000 of 20000 steps: the LR peaks at step ~2000 (the first display step at or after it)
    x = plot.evaluate("el => Array.from(el.data[0].x)")
    peak_at = x[max(range(len(lr_after)), key=lambda i: lr_after[i])]
    assert 1990 <= peak_at <= 2030, peak_at
    # the predicted-loss panel is drawn (a non-empty trace)
    assert plot.evaluate("el => el.data[3].y.length") > 100
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-schedule.png"), full_page=True)
    assert not errors, errors
    page.close()


def _readout(page, label: str) -> float:
    """The number a slider shows next to its label ("peak LR: 2.5e-04")."""
    text = page.locator(f"text=/^{label}:/").first.inner_text()
    return float(text.split(":", 1)[1])


def _press(page, handle, key: str, times: int) -> None:
    handle.focus()
    for _ in range(times):
        handle.press(key)
        page.wait_for_timeout(300)


def _wait_readout(page, label: str, value: float, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s * 5)):
        if _readout(page, label) == value:
            return
        page.wait_for_timeout(200)
    assert _readout(page, label) == value


def test_dashboard_min_lr_follows_peak_lr_and_the_page_recovers(browser, dashboard):
    url, run_dir = dashboard
    page, errors = _open(browser, url)
    plot = _plot(page)
    peak, low = page.locator(".noUi-handle").nth(0), page.locator(".noUi-handle").nth(1)
    assert (_readout(page, "peak LR"), _readout(page, "min LR")) == (3e-3, 3e-4)
    # drag peak LR one notch below min LR (3e-3 -> 2.5e-4 in 10 notches of the 1-1.5-2-2.5-3-4-5-6-8 grid)
    _press(page, peak, "ArrowLeft", 10)
    page.wait_for_function("el => Math.abs(Math.max(...el.data[0].y) - 2.5e-4) < 1e-12", arg=plot.element_handle(),
                           timeout=60_000)
    _wait_readout(page, "min LR", 2.5e-4)
    lrs = plot.evaluate("el => Array.from(el.data[0].y)")
    # the sliders show the values the drawn schedule holds: its peak and its final (min) LR
    assert _readout(page, "peak LR") == pytest.approx(max(lrs), rel=1e-12) == 2.5e-4
    assert _readout(page, "min LR") == pytest.approx(lrs[-1], rel=1e-9) == 2.5e-4
    assert page.locator("span[style*='#b42318']").count() == 0, "an error is shown"
    page.screenshot(path=str(ARTIFACTS / "dashboard-min-lr-clamp.png"), full_page=True)
    # min LR dragged above peak LR pushes peak LR up with it (2.5e-4 -> 4e-4 in 2 notches)
    _press(page, low, "ArrowRight", 2)
    _wait_readout(page, "peak LR", 4e-4)
    page.wait_for_function("el => Math.abs(Math.max(...el.data[0].y) - 4e-4) < 1e-12", arg=plot.element_handle(),
                           timeout=60_000)
    assert _readout(page, "min LR") == 4e-4
    # the page still follows every control
    _press(page, peak, "ArrowRight", 8)          # 4e-4 -> 3e-3
    page.wait_for_function("el => Math.abs(Math.max(...el.data[0].y) - 3e-3) < 1e-12", arg=plot.element_handle(),
                           timeout=60_000)
    _press(page, low, "ArrowLeft", 2)            # 4e-4 -> 2.5e-4
    page.wait_for_function("el => Math.abs(el.data[0].y[el.data[0].y.length - 1] - 2.5e-4) < 1e-9",
                           arg=plot.element_handle(), timeout=60_000)
    cosine_mid = plot.evaluate("el => el.data[0].y[Math.floor(el.data[0].y.length / 2)]")
    page.get_by_label("family", exact=True).select_option("wsd")
    page.wait_for_function(f"el => el.data[0].y[Math.floor(el.data[0].y.length / 2)] != {cosine_mid}",
                           arg=plot.element_handle(), timeout=60_000)
    page.get_by_label("save as").fill("clamped")
    page.get_by_label("save as").press("Enter")
    page.get_by_role("button", name="Save schedule").click()
    saved = Path(run_dir) / "schedules" / "clamped.json"
    for _ in range(100):
        if saved.exists():
            break
        page.wait_for_timeout(100)
    spec = json.loads(saved.read_text())
    assert (spec["family"], spec["peak_lr"], spec["min_lr"]) == ("wsd", 3e-3, 2.5e-4)
    assert not errors, errors
    page.close()


def test_dashboard_training_run_from_the_page(browser, dashboard):
    url, run_dir = dashboard
    page, errors = _open(browser, url)
    page.locator(".bk-tab", has_text="Training").first.click()
    page.get_by_label("run name").fill("from-browser")
    page.get_by_label("run name").press("Enter")
    for label, value in (("steps", "40"), ("batch size", "4"), ("sequence length", "32"), ("evaluate every", "5")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
    page.get_by_label("schedule", exact=True).select_option("cosine (default)")
    page.get_by_role("button", name="Start training").click()

    plot = _plot(page, 1)     # the Training tab's plot (the Schedule tab's is index 0)
    page.wait_for_function("el => el.data.length > 0 && el.data[0].x.length >= 3",
                           arg=plot.element_handle(), timeout=120_000)
    n1 = plot.evaluate("el => el.data[0].x.length")
    page.wait_for_function(f"el => el.data[0].x.length > {n1}", arg=plot.element_handle(), timeout=120_000)
    page.wait_for_function("el => el.data[0].x.length >= 40", arg=plot.element_handle(), timeout=240_000)
    # the page shows what the run log holds
    log = [json.loads(line) for line in (Path(run_dir) / "runs" / "from-browser" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(40))
    shown = plot.evaluate("el => Array.from(el.data[0].y)")
    assert shown == pytest.approx([r["loss"] for r in log])
    page.screenshot(path=str(ARTIFACTS / "dashboard-training.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_dashboard_sessions_do_not_share_controls(browser, dashboard):
    url, _ = dashboard
    a = browser.new_page()
    b = browser.new_page()
    for p in (a, b):
        p.goto(url, wait_until="networkidle")
    pa, pb = _plot(a), _plot(b)
    steps = a.get_by_label("total steps")
    steps.fill("3000")
    steps.press("Enter")
    a.wait_for_function("el => el.data[0].x[el.data[0].x.length - 1] == 2999", arg=pa.element_handle(),
                        timeout=30_000)
    b.wait_for_timeout(1500)
    assert pb.evaluate("el => el.data[0].x[el.data[0].x.length - 1]") == 9999
    a.close()
    b.close()


def _jupyter_env(home: Path) -> dict:
    return {"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_DATA_DIR": os.environ.get("JUPYTER_DATA_DIR", ""), "HOME": str(home),
            "IPYTHONDIR": str(home / "ipython"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


_CELLS = "const w = (window.jupyterapp || window.jupyterlab).shell.currentWidget; const cells = w.content.model.cells;"
_ALL_RAN = ("() => { " + _CELLS + " const k = w.sessionContext.session.kernel; let errors = 0, pending = 0;"
            " for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type !== 'code') continue;"
            " if (!c.executionCount) pending++; for (let j = 0; j < c.outputs.length; j++)"
            " if (c.outputs.get(j).type === 'error') errors++; }"
            " return (pending === 0 || errors > 0) && k.status === 'idle'; }")
_ERRORS = ("() => { " + _CELLS + " const out = []; for (let i = 0; i < cells.length; i++) { const c = cells.get(i);"
           " if (c.type !== 'code') continue; for (let j = 0; j < c.outputs.length; j++) { const x = c.outputs.get(j).toJSON();"
           " if (x.output_type === 'error') out.push(`cell ${i}: ${x.ename}: ${x.evalue}`); } } return out; }")


@contextlib.contextmanager
def _jupyterlab_run_all(browser, tmp_path, nb_dir, notebook: str, log: str):
    """Serve ``nb_dir`` with JupyterLab, open ``notebook``, run every cell; yields ``(page, errors)`` once all
    ran (every output rendered: no windowing, no "news" pop-up over the screenshots)."""
    port, token = free_port(), "workbench-test-token"
    env = {k: v for k, v in _jupyter_env(tmp_path).items() if v}
    settings = tmp_path / "config" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (tmp_path / "config" / "labconfig").mkdir(parents=True)
    (tmp_path / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={nb_dir}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.disable_check_xsrf=True", "--LabServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/api/status?token={token}", ARTIFACTS / log, timeout=180, env=env):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = _console_errors(page)
        page.goto(f"{base}/lab/tree/{notebook}?token={token}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.jupyterapp || window.jupyterlab", timeout=120_000)
        # wait for the notebook's kernel, then run every cell
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        page.wait_for_function(
            "() => { const app = window.jupyterapp || window.jupyterlab;"
            " const w = app.shell.currentWidget; return w && w.sessionContext && w.sessionContext.session"
            " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
            timeout=120_000)
        page.evaluate("() => (window.jupyterapp || window.jupyterlab).commands.execute('notebook:run-all-cells')")
        # every code cell ran (run-all stops at the first error)
        page.wait_for_function(_ALL_RAN, timeout=300_000)
        yield page, errors


def test_jupyterlab_renders_schedule_designer(browser, tmp_path):
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    shutil.copy(ROOT / "notebooks" / "01_schedules.ipynb", nb_dir / "01_schedules.ipynb")
    with _jupyterlab_run_all(browser, tmp_path, nb_dir, "01_schedules.ipynb",
                             "jupyterlab-server.log") as (page, errors):
        failed = page.evaluate(_ERRORS)
        assert not failed, failed
        # the ScheduleDesigner (an ipywidgets VBox) holds a FigureWidget: a plotly plot inside the
        # widget whose SVG has drawn lines
        designer = ".widget-vbox .js-plotly-plot"
        page.wait_for_function(
            f"() => Array.from(document.querySelectorAll('{designer}'))"
            ".some(el => el.querySelectorAll('.scatterlayer .trace path.js-line').length > 0)",
            timeout=240_000)
        plot = page.locator(designer).first
        plot.scroll_into_view_if_needed()
        paths = plot.evaluate(
            "el => Array.from(el.querySelectorAll('.scatterlayer .trace path.js-line'))"
            ".map(p => (p.getAttribute('d') || '').length)")
        assert paths and max(paths) > 100, paths     # non-empty line geometry in the SVG
        titles = plot.evaluate("el => Array.from(el.querySelectorAll('.annotation-text')).map(t => t.textContent)")
        assert "learning rate" in titles, titles     # the designer's own panels, not another plot
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-01-schedules.png"))
        page.close()
    fatal = [e for e in errors if "Uncaught" in e or "page error" in e]
    assert not fatal, fatal


def test_dashboard_data_selection_and_sparsity_tabs(browser, dashboard):
    url, run_dir = dashboard
    page, errors = _open(browser, url, 1000)

    # data selection: score a small set of prompts, then the chosen subset follows the size slider
    page.locator(".bk-tab", has_text="Data selection").first.click()
    box = page.get_by_label("prompts to score")
    box.fill("64")
    box.press("Enter")
    page.get_by_role("button", name="Score prompts").click()
    scatter = page.locator(".js-plotly-plot").nth(2)          # after the Schedule and Training plots
    scatter.wait_for(timeout=60_000)
    page.wait_for_function("el => el.data.length == 2 && el.data[0].x.length == 64", arg=scatter.element_handle(),
                           timeout=180_000)
    n_chosen = scatter.evaluate("el => el.data[1].x.length")
    assert 1 <= n_chosen <= 64
    page.get_by_label("export as").fill("from-browser")
    page.get_by_label("export as").press("Enter")
    page.get_by_role("button", name="Export indices").click()
    saved = Path(run_dir) / "selections" / "from-browser.json"
    for _ in range(100):
        if saved.exists():
            break
        page.wait_for_timeout(100)
    assert len(json.loads(saved.read_text())["indices"]) == n_chosen
    page.screenshot(path=str(ARTIFACTS / "dashboard-data-selection.png"), full_page=True)

    # sparsity: diff the bundled pretrained model with itself -> nothing changed, sparsity 1 everywhere
    page.locator(".bk-tab", has_text="Sparsity").first.click()
    page.get_by_label("save diff as").fill("self")
    page.get_by_label("save diff as").press("Enter")
    page.get_by_role("button", name="Diff checkpoints").click()
    heat = page.locator(".js-plotly-plot").nth(4)             # after the angle scatter and histogram
    heat.wait_for(timeout=60_000)
    page.wait_for_function("el => el.data.length == 1 && el.data[0].type == 'heatmap'", arg=heat.element_handle(),
                           timeout=180_000)
    z = heat.evaluate("el => el.data[0].z.flat().filter(v => v !== null)")
    assert z and all(v == 1.0 for v in z), z
    assert (Path(run_dir) / "diffs" / "self.json").exists()
    page.screenshot(path=str(ARTIFACTS / "dashboard-sparsity.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_dashboard_sparsity_pretrained_vs_a_run_and_drill_down_at_the_slider(browser, dashboard):
    """The README's fine-tune-then-diff on the page: the bundled pretrained model against a run fine-tuned
    from it (tied embeddings named alike), then a drill-down that follows the tolerance slider."""
    import numpy as np
    from safetensors.torch import load_file

    from workbench import assets
    from workbench.sparsity.diff import snap_tolerance
    from workbench.train import TrainConfig, train

    url, run_dir = dashboard
    run = Path(run_dir) / "runs" / "ft-browser"
    train(TrainConfig(model=str(assets.pretrained_dir()), data="stdlib", steps=3, batch_size=2, seq_len=32,
                      eval_interval=0, run_dir=str(run), progress=False, device="cpu"))
    page, errors = _open(browser, url, 1100)
    page.locator(".bk-tab", has_text="Sparsity").first.click()
    tuned = page.get_by_label("tuned checkpoint")
    page.wait_for_function("el => Array.from(el.options).some(o => o.value.includes('ft-browser'))",
                           arg=tuned.element_handle(), timeout=30_000)
    tuned.select_option(label="run: ft-browser")
    page.get_by_label("save diff as").fill("ft-browser")
    page.get_by_label("save diff as").press("Enter")
    page.get_by_role("button", name="Diff checkpoints").click()
    saved = Path(run_dir) / "diffs" / "ft-browser.json"
    for _ in range(600):
        if saved.exists():
            break
        page.wait_for_timeout(200)
    assert saved.exists(), page.locator("span[style*='#b42318']").all_inner_texts()
    diff = json.loads(saved.read_text())
    assert diff["overall"]["numel"] == 1_082_496 and not diff["skipped"]   # every tensor once, none left out

    name = "model.layers.0.mlp.down_proj.weight"
    page.get_by_label("drill down").select_option(name)
    detail = page.locator(".js-plotly-plot").nth(5)              # after the sparsity heatmap
    page.wait_for_function("el => el.layout.title && (el.layout.title.text || el.layout.title).includes('atol=1e-05')",
                           arg=detail.element_handle(), timeout=60_000)
    sliders = page.locator(".noUi-handle:visible")
    _press(page, sliders.nth(1), "ArrowRight", 2)                # "changed if |delta| >": 1e-05 -> 1e-03
    _wait_readout(page, "changed if \\|delta\\| >", 1e-3)
    page.wait_for_function("el => (el.layout.title.text || el.layout.title).includes('atol=1e-03')",
                           arg=detail.element_handle(), timeout=60_000)
    base_w = load_file(str(assets.pretrained_dir() / "model.safetensors"))[name]
    tuned_w = load_file(str(run / "model.safetensors"))[name]
    ch = ((tuned_w - base_w).abs() > snap_tolerance(1e-3)).numpy()
    title = detail.evaluate("el => el.layout.title.text || el.layout.title")
    assert f"sparsity {1 - ch.mean():.4f} at atol=1e-03" in title, title
    rows = detail.evaluate("el => Array.from(el.data.find(t => t.name === 'row sparsity').y)")
    np.testing.assert_allclose(rows, 1 - ch.sum(axis=1) / ch.shape[1])
    page.screenshot(path=str(ARTIFACTS / "dashboard-sparsity-drill-down.png"), full_page=True)
    assert not errors, errors
    page.close()


# ---------------------------------------------------------------------- the classroom server (issue 18)
XSS = '<img src=x onerror="window.__xss = (window.__xss || 0) + 1">'

# JS: open the dashboard's websocket from the current page; resolves "open" or "refused"
OPEN_WS = """([url, token]) => new Promise((resolve) => {
  const ws = new WebSocket(url, ["bokeh", token]);
  const t = setTimeout(() => resolve("timeout"), 20000);
  ws.onopen = () => { clearTimeout(t); ws.close(); resolve("open"); };
  ws.onerror = () => { clearTimeout(t); resolve("refused"); };
})"""


def _session_token(page) -> str:
    import re

    m = re.search(r'"token":\s*"([^"]+)"', page.content())
    assert m, "no bokeh session token in the page"
    return m.group(1)


def test_dashboard_token_and_origin_in_the_browser(browser, dashboard):
    url, _ = dashboard
    base = url.split("?")[0]
    port = int(base.rstrip("/").rsplit(":", 1)[1])
    # no token: the login page, no dashboard; a wrong token: the same
    for address in (base, base + "?token=not-the-token"):
        page = browser.new_page()
        page.goto(address, wait_until="domcontentloaded")
        assert "needs its token" in page.content()
        assert page.locator(".js-plotly-plot").count() == 0
        page.close()
    # the token once, then the cookie: the dashboard
    page, errors = _open(browser, url)
    _plot(page)
    page.goto(base, wait_until="networkidle")
    _plot(page)
    token = _session_token(page)
    assert page.evaluate(OPEN_WS, [f"ws://localhost:{port}/ws", token]) == "open"
    assert not errors, errors
    # a page of another origin (a local web server on another port: Chromium's own local-network
    # checks do not apply, so the dashboard's origin check is what answers) with the token: refused
    with _other_origin() as evil:
        page.goto(evil, wait_until="domcontentloaded")
        assert page.evaluate(OPEN_WS, [f"ws://localhost:{port}/ws?token={TOKEN}", token]) == "refused"
        assert page.evaluate(OPEN_WS, [f"ws://127.0.0.1:{port}/ws?token={TOKEN}", token]) == "refused"
    page.close()


@contextlib.contextmanager
def _other_origin():
    """A web page at http://127.0.0.1:OTHER_PORT/ (another origin than the dashboard's)."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>another site</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_dashboard_escapes_what_users_type(browser, dashboard):
    url, _ = dashboard
    page, errors = _open(browser, url, 1000)
    _plot(page)
    page.get_by_label("save as").fill(XSS)
    page.get_by_label("save as").press("Enter")
    page.get_by_role("button", name="Save schedule").click()
    page.get_by_text("is not usable as a file name").first.wait_for(timeout=30_000)

    page.locator(".bk-tab", has_text="Training").first.click()
    page.get_by_label("run name").fill(XSS)
    page.get_by_label("run name").press("Enter")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("is not usable as a file name").nth(1).wait_for(timeout=30_000)

    page.locator(".bk-tab", has_text="Sparsity").first.click()
    for label in ("... or base path", "save diff as"):
        page.get_by_label(label).fill(XSS)
        page.get_by_label(label).press("Enter")
    page.get_by_role("button", name="Diff checkpoints").click()
    page.get_by_text("is not an allowed checkpoint").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    # the typed markup is shown as text, and its script never ran
    assert page.get_by_text('<img src=x onerror=', exact=False).count() >= 1
    assert page.evaluate("() => window.__xss") is None
    page.screenshot(path=str(ARTIFACTS / "dashboard-escaped.png"), full_page=True)
    page.close()
    assert not errors, errors


def test_dashboard_runs_belong_to_their_owner(browser, dashboard):
    url, run_dir = dashboard
    base = url.split("?")[0]
    alice, _ = _open(browser, url)
    alice.locator(".bk-tab", has_text="Training").first.click()
    alice.get_by_label("run name").fill("alices-run")
    alice.get_by_label("run name").press("Enter")
    for label, value in (("steps", "2000"), ("batch size", "2"), ("sequence length", "16"),
                         ("evaluate every", "500")):
        box = alice.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
    alice.get_by_label("schedule", exact=True).select_option("cosine (default)")
    alice.get_by_role("button", name="Start training").click()
    log = Path(run_dir) / "runs" / "alices-run" / "log.jsonl"
    for _ in range(1200):
        if log.exists():
            break
        alice.wait_for_timeout(100)
    assert log.exists() and alice.get_by_role("button", name="Stop").is_enabled()

    # another browser (its own cookies: another user) sees the run read-only
    bob, _ = _open(browser, url)
    bob.locator(".bk-tab", has_text="Training").first.click()
    bob.get_by_label("show run").select_option("alices-run")
    bob.locator("b", has_text="alices-run").first.wait_for(timeout=30_000)     # the status of alices-run
    bob.get_by_text("read-only").first.wait_for(timeout=30_000)
    assert bob.get_by_role("button", name="Stop").is_disabled()
    assert bob.get_by_role("button", name="Resume").is_disabled()
    assert not (Path(run_dir) / "runs" / "alices-run" / "summary.json").exists()

    # the teacher (admin token) may stop it
    teacher, _ = _open(browser, base + f"?token={ADMIN_TOKEN}")
    _plot(teacher)
    assert teacher.get_by_text("teacher").count() >= 1 and bob.get_by_text("teacher").count() == 0
    teacher.locator(".bk-tab", has_text="Training").first.click()
    teacher.get_by_label("show run").select_option("alices-run")
    teacher.locator("b", has_text="alices-run").first.wait_for(timeout=30_000)
    stop = teacher.get_by_role("button", name="Stop")
    stop.wait_for(timeout=30_000)
    assert stop.is_enabled()
    stop.click()
    summary = Path(run_dir) / "runs" / "alices-run" / "summary.json"
    for _ in range(1800):
        if summary.exists():
            break
        teacher.wait_for_timeout(100)
    assert summary.exists(), (f"not stopped after 180 s; {len(log.read_text().splitlines())} steps logged; "
                              f"teacher's status: {teacher.locator('b', has_text='alices-run').first.inner_text()}")
    assert json.loads(summary.read_text())["status"] == "stopped"
    assert len(log.read_text().splitlines()) < 2000
    for p in (alice, bob, teacher):
        p.close()


def test_dashboard_schedule_tab_greys_a_prediction_outside_the_fit_and_says_why(browser, dashboard):
    url, _run_dir = dashboard
    page, errors = _open(browser, url)
    plot = _plot(page)
    # the default predictor is the law fitted to real 124M runs (peak LR 1e-3); the default design is at 3e-3
    # (panel renders inside shadow roots: Playwright's text locators pierce them)
    status = page.get_by_text("(annealing law fitted to real 124M runs)").first
    status.wait_for(timeout=30_000)
    page.get_by_text("peak LR 0.003 is outside the fitted curves", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("no trustworthy prediction", exact=False).count() >= 1
    assert page.get_by_text("predicted final loss", exact=False).count() == 0
    assert plot.evaluate("el => el.data[3].line.dash") == "dot"              # greyed out
    from workbench import assets

    floor = assets.fitted_law("124m", law="multipower").floor              # the dashboard's default law
    ys = plot.evaluate("el => Array.from(el.data[3].y).filter(v => v !== null)")
    assert ys and all(v >= floor for v in ys), (min(ys), floor)            # nothing below the fit's floor drawn
    # the tiny-run law, chosen on the page, is in its own LR range at 3e-3 but 10x its runs' length
    page.get_by_label("predicted by").select_option(label="law fitted to the bundled tiny-model runs")
    page.get_by_text("10.0x the longest fitted curve", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("fit warning", exact=False).count() >= 1
    page.screenshot(path=str(ARTIFACTS / "dashboard-schedule-law.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_jupyterlab_curve_fitter_legend_names_every_trace(browser, tmp_path):
    """Issue 15: the Curve Fitter's legend read "trace 0" ... "trace 22" in JupyterLab. Run a fitter, refit
    with a changed role (the restyle that renamed traces), and read the legend the browser drew."""
    import nbformat

    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "from workbench import assets\nfrom workbench.curves import read_curve\n"
            "from workbench.widgets import CurveFitter\n"
            "curves = [read_curve(assets.run_dir(n)) for n in ('constant', 'cosine', 'wsd20')]\n"
            "fitter = CurveFitter(curves, law='annealing', fit_on=['constant', 'cosine'])\nfitter"),
        nbformat.v4.new_code_cell("fitter.checkboxes['wsd20'].value = True\nfitter.fit_button.click()"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nb_dir / "fitter.ipynb")
    with _jupyterlab_run_all(browser, tmp_path, nb_dir, "fitter.ipynb", "jupyterlab-fitter.log") as (page, errors):
        assert not page.evaluate(_ERRORS)
        plot = ".widget-vbox .js-plotly-plot"
        page.wait_for_function(f"() => Array.from(document.querySelectorAll('{plot} .legendtext'))"
                               ".some(t => t.textContent.includes('wsd20 (law, fit)'))", timeout=120_000)
        legend = page.locator(plot).first.evaluate(
            "el => Array.from(el.querySelectorAll('.legendtext')).map(t => t.textContent)")
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-curve-fitter.png"))
        page.close()
    assert legend and not [t for t in legend if t.startswith("trace")], legend
    expected = {f"{n} {what}" for n in ("constant", "cosine", "wsd20") for what in ("(observed)", "90% band", "(law, fit)")}
    assert set(legend) == expected, legend
    fatal = [e for e in errors if "Uncaught" in e or "page error" in e]
    assert not fatal, fatal


def test_dashboard_fits_your_own_run_typed_or_uploaded(browser, dashboard):
    url, run_dir = dashboard
    page, errors = _open(browser, url, 1200)
    _plot(page)
    plots_before = page.locator(".js-plotly-plot").count()
    page.get_by_text("Fit your own run").first.click()                  # the collapsed section under the designer
    field = page.get_by_label("your run: a log file or folder")
    field.fill(XSS)                                                      # refused, shown as text, never run
    field.press("Enter")
    page.get_by_role("button", name="Fit the law").click()
    page.get_by_text("is not an allowed run log").first.wait_for(timeout=30_000)
    assert page.evaluate("() => window.__xss") is None
    field.fill("runs/cosine")                                            # a bundled run
    field.press("Enter")
    page.get_by_role("button", name="Fit the law").click()
    page.get_by_text("points of cosine", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("your run: cosine").first.wait_for(timeout=30_000)   # the plot's title
    assert page.locator(".js-plotly-plot").count() == plots_before + 1
    page.get_by_role("button", name="Predict the designed schedule with this fit").click()
    page.get_by_text("(annealing law fitted to your run cosine)").first.wait_for(timeout=30_000)
    # an upload through the FileInput: kept in the workspace's uploads/ and fitted
    csv = ROOT / "tests" / "fixtures" / "runs" / "wandb" / "nanogpt_history.csv"
    page.locator("input[type=file]").first.set_input_files(str(csv))
    page.get_by_text("your run: nanogpt_history").first.wait_for(timeout=60_000)
    assert (Path(run_dir) / "uploads" / "nanogpt_history.csv").read_bytes() == csv.read_bytes()
    page.screenshot(path=str(ARTIFACTS / "dashboard-own-run.png"), full_page=True)
    page.close()
    assert not errors, errors
