"""Dashboard latency in a real browser: from a parameter change in the page to the redrawn plot, for a
100k-step schedule (target: median under 200 ms). Starts ``workbench serve`` on a free port, drives
headless Chromium with Playwright (Debian's chromium), sets the designer to 100k steps, then changes
the warmup input N times; each sample is the time in the page from the input's change event to the
first animation frame after the plot's data changed (the server round trip, the figure rebuild with
the predicted-loss panel, and plotly's redraw). Prints the median, p90 and the ratio to the target,
and the server-side share (the same redraw timed in-process).

``--load``: the classroom reliability table instead (loopback only, bounded loops). With the server
at ``--max-runs R``, it times a new page's load (from navigation to the Schedule plot drawn, median
of 3 fresh browsers) and the server's CPU over 10 s: (a) alone, (b) with S idle sessions showing a
finished 20k-step run, (c) with K runs started from K pages (the ones past R queue and show their
position), then stops the runs.

    python benchmarks/dashboard.py [--n 30] [--family cosine]
    python benchmarks/dashboard.py --load [--sessions 5] [--runs 5] [--max-runs 2]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _machine import describe  # noqa: E402
from browser import (ARTIFACTS, CHANGE_AND_TIME, CHROMIUM_ARGS, chromium_path, dashboard_cmd,  # noqa: E402
                     dashboard_url, free_port, server, why_no_browser)

TARGET_MS = 200.0


def in_process(family: str, n: int) -> float:
    from workbench.widgets.dashboard import ScheduleTab
    from workbench.workspace import Workspace

    tab = ScheduleTab(Workspace(tempfile.mkdtemp()))
    tab.controls["family"].value = family
    tab.controls["total_steps"].value = 100_000
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        tab.controls["warmup_steps"].value = 1000 + 10 * (i + 1)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="timed changes (default 30)")
    ap.add_argument("--family", default="cosine", help="schedule family in the designer (default cosine)")
    ap.add_argument("--load", action="store_true", help="the reliability table: sessions, runs, page loads")
    ap.add_argument("--sessions", type=int, default=5, help="--load: idle sessions (default 5)")
    ap.add_argument("--runs", type=int, default=5, help="--load: runs started from pages (default 5)")
    ap.add_argument("--max-runs", type=int, default=2, help="--load: the server's --max-runs (default 2)")
    args = ap.parse_args()
    why = why_no_browser()
    if why:
        sys.exit(f"benchmarks/dashboard.py: {why}")
    print(describe())
    if args.load:
        return load(args)
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = dashboard_url(port)
    with tempfile.TemporaryDirectory() as ws, server(dashboard_cmd(port, ws), f"http://localhost:{port}/login",
                                                      ARTIFACTS / "bench-dashboard-server.log", timeout=240):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, wait_until="networkidle")
            plot = page.locator(".js-plotly-plot").first
            plot.wait_for(timeout=60_000)
            page.get_by_label("family").select_option(args.family)
            steps = page.get_by_label("total steps")
            steps.fill("100000")
            steps.press("Enter")
            page.wait_for_function("el => el.data[0].x[el.data[0].x.length - 1] == 99999",
                                   arg=plot.element_handle(), timeout=60_000)
            warmup = page.get_by_label("warmup steps").element_handle()
            for i in range(3):        # warm the path (first plotly.react, JIT)
                page.evaluate(CHANGE_AND_TIME, [warmup, plot.element_handle(), 900 + i])
            times = [page.evaluate(CHANGE_AND_TIME, [warmup, plot.element_handle(), 1000 + 10 * (i + 1)])
                     for i in range(args.n)]
            browser.close()
    if min(times) < 0:
        sys.exit("a change did not redraw the plot within 20 s")
    times.sort()
    med, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
    server_ms = in_process(args.family, args.n)
    print(f"{args.family} 100k steps, browser change -> redrawn plot over {args.n} changes: median {med:.0f} ms, "
          f"p90 {p90:.0f} ms, min {times[0]:.0f} ms (target {TARGET_MS:.0f} ms: {med / TARGET_MS:.2f}x of budget)")
    print(f"of which the server-side rebuild (same redraw in-process): median {server_ms:.0f} ms")


# ---------------------------------------------------------------------- --load
def _finished_run(ws: Path, name: str = "finished-20k", steps: int = 20_000) -> None:
    """A finished 20k-step run in the workspace (config, log, summary), as the trainer leaves one."""
    import math

    from workbench.train import TrainConfig

    run = ws / "runs" / name
    run.mkdir(parents=True)
    cfg = TrainConfig(steps=steps, schedule="cosine", lr=3e-3, warmup_steps=500, run_dir=str(run))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    with open(run / "log.jsonl", "w") as f:
        for t in range(steps):
            rec = {"step": t, "loss": 2.5 + 3.0 / math.sqrt(1 + t / 50), "lr": 3e-3}
            if t % 500 == 499:
                rec["val_loss"] = rec["loss"] + 0.05
            f.write(json.dumps(rec) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": steps}))


def _page_load(browser, url: str) -> float:
    """Seconds from navigation to the Schedule plot drawn with data, in a fresh browser context."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    plot = page.locator(".js-plotly-plot").first            # locators see inside panel's shadow roots
    plot.wait_for(timeout=120_000)
    page.wait_for_function("el => el.data && el.data.length > 0", arg=plot.element_handle(), timeout=120_000,
                           polling=50)
    dt = time.perf_counter() - t0
    ctx.close()
    return dt


def _cpu(pid: int, seconds: float = 10.0) -> float:
    import psutil

    proc = psutil.Process(pid)
    proc.cpu_percent(None)
    time.sleep(seconds)
    return proc.cpu_percent(None)


def load(args) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = dashboard_url(port)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        for kind in ("runs",):
            (ws / kind).mkdir()
        _finished_run(ws)
        cmd = dashboard_cmd(port, ws, "--max-runs", str(args.max_runs))
        with server(cmd, f"http://localhost:{port}/login", ARTIFACTS / "bench-dashboard-load.log",
                    timeout=240) as proc, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            _page_load(browser, url)                                   # warm the server's first page

            def measure(state: str, sessions: int, runs: str):
                loads = sorted(_page_load(browser, url) for _ in range(3))
                cpu = _cpu(proc.pid)
                rows.append((state, sessions, runs, loads[1], loads[-1], cpu))
                print(f"{state}: page load median {loads[1]:.2f} s (max {loads[-1]:.2f} s), server CPU {cpu:.0f}%",
                      flush=True)

            measure("alone", 0, "0")
            idle = []
            for _ in range(args.sessions):                             # idle sessions on the finished run
                page = browser.new_context().new_page()
                page.goto(url, wait_until="networkidle")
                page.locator(".bk-tab", has_text="Training").first.click()
                page.get_by_label("show run").select_option("finished-20k")
                page.locator("b", has_text="finished-20k").first.wait_for(timeout=60_000)
                idle.append(page)
            time.sleep(3)
            measure(f"{args.sessions} idle sessions showing a finished 20k-step run", args.sessions, "0")
            starters = []
            for i in range(args.runs):                                 # runs started from pages
                page = browser.new_context().new_page()
                page.goto(url, wait_until="networkidle")
                page.locator(".bk-tab", has_text="Training").first.click()
                page.get_by_label("run name").fill(f"load-{i}")
                page.get_by_label("run name").press("Enter")
                for label, value in (("steps", "5000"), ("evaluate every", "100")):
                    box = page.get_by_label(label, exact=True)
                    box.fill(value)
                    box.press("Enter")
                page.get_by_label("schedule", exact=True).select_option("cosine (default)")
                page.get_by_role("button", name="Start training").click()
                page.locator("b", has_text=f"load-{i}").first.wait_for(timeout=60_000)
                starters.append(page)
            time.sleep(5)
            queued = sum(1 for i in range(args.runs) if starters[i].get_by_text("in the queue").count())
            measure(f"{args.sessions} idle sessions + {args.runs} runs started (max-runs {args.max_runs}, "
                    f"{queued} shown queued)", args.sessions + args.runs, f"{min(args.runs, args.max_runs)} "
                    f"training + {args.runs - min(args.runs, args.max_runs)} queued")
            for page in starters:                                      # the owners stop their runs
                page.get_by_role("button", name="Stop").click()
            browser.close()
    print("\n| state | sessions | runs | new page load (median of 3) | max | server CPU over 10 s |")
    print("|---|---|---|---|---|---|")
    for state, sessions, runs, med, mx, cpu in rows:
        print(f"| {state} | {sessions} | {runs} | {med:.2f} s | {mx:.2f} s | {cpu:.0f}% |")


if __name__ == "__main__":
    main()
