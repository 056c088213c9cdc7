"""Dashboard latency in a real browser: from a parameter change in the page to the redrawn plot, for a
100k-step schedule (target: median under 200 ms). Starts ``workbench serve`` on a free port, drives
headless Chromium with Playwright (Debian's chromium), sets the designer to 100k steps, then changes
the warmup input N times; each sample is the time in the page from the input's change event to the
first animation frame after the plot's data changed (the server round trip, the figure rebuild with
the predicted-loss panel, and plotly's redraw). Prints the median, p90 and the ratio to the target,
and the server-side share (the same redraw timed in-process).

    python benchmarks/dashboard.py [--n 30] [--family cosine]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _machine import describe  # noqa: E402
from browser import (ARTIFACTS, CHANGE_AND_TIME, CHROMIUM_ARGS, chromium_path, dashboard_cmd, free_port,  # noqa: E402
                     server, why_no_browser)

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
    args = ap.parse_args()
    why = why_no_browser()
    if why:
        sys.exit(f"benchmarks/dashboard.py: {why}")
    print(describe())
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://localhost:{port}/"
    with tempfile.TemporaryDirectory() as ws, server(dashboard_cmd(port, ws), url,
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


if __name__ == "__main__":
    main()
