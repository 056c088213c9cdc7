"""Shared helpers for the real-browser tests and the dashboard benchmark (headless Debian Chromium
driven by Playwright; Playwright's own browser download does not work offline).

``.ci/run`` installs the Debian packages ``chromium`` and ``chromium-driver`` when they are missing
and sets ``WORKBENCH_REQUIRE_BROWSER=1``, so in CI a missing browser fails instead of skipping.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("WORKBENCH_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))

# "tracker" helper: every console message of level error goes here, except known noise
IGNORED_CONSOLE = ("favicon.ico", "allowHTML")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def why_no_browser() -> str | None:
    """None when Playwright and a Chromium binary are available, else the reason."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e .[dev])"
    if chromium_path() is None:
        return "no Chromium binary: apt-get install chromium chromium-driver (.ci/run does this)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:       # an answer (e.g. 403 without a token): the server is up
            if e.code < 500:
                return
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s:\n" + log.read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def server(cmd: list[str], url: str, log: Path, timeout: float = 180, env: dict | None = None):
    """Start ``cmd`` in its own process group, wait for ``url``, yield; always kill the whole group."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        wait_http(url, proc, timeout, log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def dashboard_cmd(port: int, run_dir: str | os.PathLike, *extra: str) -> list[str]:
    """``workbench serve`` with the test tokens (open ``dashboard_url(port)``)."""
    return [sys.executable, "-m", "workbench.cli", "serve", "--port", str(port), "--run-dir", str(run_dir),
            "--token", TOKEN, "--admin-token", ADMIN_TOKEN, *extra]


def dashboard_url(port: int, token: str | None = None, host: str = "localhost") -> str:
    return f"http://{host}:{port}/?token={token or TOKEN}"


# JS: change an <input>'s value, then resolve with the ms until the plot's data differs and has been
# drawn (the next animation frame after the change)
CHANGE_AND_TIME = """([inp, plot, val]) => new Promise((resolve) => {
  const sig = () => JSON.stringify(plot.data.map(t => [t.x ? t.x.length : 0,
                                                       t.y ? Array.from(t.y).slice(0, 80) : []]));
  const before = sig();
  const t0 = performance.now();
  inp.value = String(val);
  inp.dispatchEvent(new Event('change', {bubbles: true}));
  const check = () => {
    if (sig() !== before) { requestAnimationFrame(() => resolve(performance.now() - t0)); return; }
    if (performance.now() - t0 > 20000) { resolve(-1); return; }
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})"""


# ------------------------------------------------------------------ the dashboard without a browser
TOKEN = "workbench-test-token"          # the student token the tests serve with
ADMIN_TOKEN = "workbench-test-admin"    # the teacher's (admin) token


def get_page(url: str, cookie: str | None = None) -> tuple[int, str, str]:
    """(status, body, Set-Cookie header joined as a Cookie header) of a GET without following redirects."""
    import urllib.error

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=120) as r:
            status, body, headers = r.status, r.read().decode("utf-8", "replace"), r.headers
    except urllib.error.HTTPError as e:
        status, body, headers = e.code, e.read().decode("utf-8", "replace"), e.headers
    jar = "; ".join(c.split(";", 1)[0] for c in headers.get_all("Set-Cookie") or [])
    return status, body, jar


def session_token(body: str) -> str:
    """The signed bokeh session token embedded in a dashboard page."""
    import re

    m = re.search(r'"token":\s*"([^"]+)"', body)
    if not m:
        raise ValueError("no session token in the page (not a dashboard page?)")
    return m.group(1)


def ws_handshake(port: int, origin: str, token: str | None, cookie: str | None = None, query: str = "",
                 host: str = "127.0.0.1") -> str:
    """A raw websocket handshake on the bokeh endpoint: ``"accepted MSGTYPE"`` with the first message's
    type (the server's ACK), or ``"refused CODE"``."""
    import asyncio
    import json as _json

    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import WebSocketClosedError, websocket_connect

    async def go():
        headers = {"Origin": origin}
        if cookie:
            headers["Cookie"] = cookie
        req = HTTPRequest(f"ws://{host}:{port}/ws{query}", headers=headers, request_timeout=60)
        try:
            conn = await websocket_connect(req, subprotocols=["bokeh", token] if token else None)
        except HTTPClientError as e:
            return f"refused {e.code}"
        except (WebSocketClosedError, ConnectionError, OSError) as e:
            return f"refused {type(e).__name__}"
        try:
            msg = await asyncio.wait_for(conn.read_message(), 60)
        finally:
            conn.close()
        if msg is None:
            return "refused closed"
        return f"accepted {_json.loads(msg).get('msgtype')}"

    return asyncio.run(go())
