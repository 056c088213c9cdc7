"""Serving the classroom dashboard safely on a network: token authentication, who is who, origin checks.

Modelled on Jupyter's server: every request needs the token (``?token=...`` once, then a signed
cookie), a wrong or missing token gets a small login page (HTTP 403 for a websocket), and the
websocket's ``Origin`` must be one of the server's own addresses or a host given explicitly
(``--allow-origin``); ``*`` is refused. Each browser gets a user id (a signed cookie that outlives
server restarts: the secret is kept in the workspace), which is what owns the runs it starts; the
holder of the admin token (``--admin``) is the teacher and may stop anyone's run.

Bokeh sessions are signed with the same secret, so a client cannot forge the identity that the
session carries (with unsigned sessions the request headers in a session token are the client's
to write).

Example:
    >>> auth = TokenAuth(token="student-token", admin_token="teacher-token", secret=b"x" * 32)
    >>> auth.role_for("student-token"), auth.role_for("teacher-token"), auth.role_for("wrong")
    ('student', 'admin', None)
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import uuid
from pathlib import Path

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler

__all__ = ["TokenAuth", "origins", "server_secret", "USER_HEADER", "ROLE_HEADER"]

USER_HEADER, ROLE_HEADER = "X-Workbench-User", "X-Workbench-Role"
_UID_COOKIE, _AUTH_COOKIE = "workbench-uid", "workbench-auth"
_LOCAL = ("localhost", "127.0.0.1")


def server_secret(root: str | os.PathLike) -> bytes:
    """The cookie/session signing secret kept in ``ROOT/.server-secret`` (created once, mode 0600),
    so user ids and run ownership survive a restart of the server."""
    path = Path(root) / ".server-secret"
    try:
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    data = secrets.token_hex(32).encode()
    tmp = path.with_name(f".server-secret.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return data


def _fingerprint(token: str | None) -> str:
    return hashlib.sha256((token or "").encode()).hexdigest()[:24]


def origins(address: str, port: int, extra=()) -> list[str]:
    """The websocket origins (``host:port``) the server accepts: its own names and addresses and
    the ``extra`` ones. Listening on all interfaces (``0.0.0.0``) adds this machine's host name and
    its addresses, so students can open the URL the teacher reads out, and nothing else."""
    extra = list(extra or ())
    for e in extra:
        if "*" in e or not e.strip():
            raise ValueError(f"--allow-origin {e!r}: give an exact host or host:port (no wildcards); "
                             "the origin check stays on")
    hosts = {*_LOCAL, address}
    if address in ("0.0.0.0", "::", ""):
        hosts.discard(address)
        name = socket.gethostname()
        hosts |= {name, socket.getfqdn(), f"{name}.local"}
        try:
            hosts |= {ai[4][0] for ai in socket.getaddrinfo(name, None)}
        except OSError:
            pass
        try:                                     # the address of the default route (no packet is sent)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("10.255.255.255", 1))
                hosts.add(s.getsockname()[0])
        except OSError:
            pass
    out = [f"{h}:{port}" for h in sorted(hosts) if h and ":" not in h]   # bokeh's allow-list takes no IPv6
    for e in extra:
        out.append(e if ":" in e.rsplit("]", 1)[-1] else f"{e}:{port}")
    return out


class TokenAuth(AuthProvider):
    """Bokeh auth provider: the student token (``None``: no token needed), the optional admin token,
    and a per-browser user id. Puts the user id and role in the request's ``X-Workbench-User`` /
    ``X-Workbench-Role`` headers (overwriting whatever the client sent) for the session to read."""

    def __init__(self, token: str | None, admin_token: str | None = None, secret: bytes | None = None):
        if token is not None and len(token) < 8:
            raise ValueError("--token must be at least 8 characters (or leave it out for a random one)")
        if admin_token is not None and (len(admin_token) < 8 or admin_token == token):
            raise ValueError("the admin token must be at least 8 characters and differ from --token")
        self.token, self.admin_token = token, admin_token
        self.secret = secret or secrets.token_bytes(32)
        self._tok = _fingerprint(token) + _fingerprint(admin_token)
        super().__init__()

    # -------------------------------------------------------------- AuthProvider interface
    @property
    def get_user(self):
        return self._get_user

    @property
    def login_url(self):
        return "/login"

    @property
    def login_handler(self):
        return _LoginHandler

    # -------------------------------------------------------------- the checks
    def role_for(self, presented: str | None) -> str | None:
        """``"admin"``, ``"student"`` or None for a presented token (constant-time comparisons)."""
        if not presented:
            return None
        p = presented.encode()
        if self.admin_token is not None and hmac.compare_digest(p, self.admin_token.encode()):
            return "admin"
        if self.token is not None and hmac.compare_digest(p, self.token.encode()):
            return "student"
        return None

    def _get_user(self, handler: RequestHandler) -> str | None:
        if not handler.application.settings.get("cookie_secret"):
            handler.application.settings["cookie_secret"] = self.secret
        handler.request.headers.pop(USER_HEADER, None)       # never trust the client's copies
        handler.request.headers.pop(ROLE_HEADER, None)
        uid = handler.get_signed_cookie(_UID_COOKIE, max_age_days=3650)
        uid = uid.decode() if uid else None
        role = self.role_for(handler.get_query_argument("token", None))
        if role is None:
            raw = handler.get_signed_cookie(_AUTH_COOKIE, max_age_days=31)
            try:
                rec = json.loads(raw) if raw else {}
            except ValueError:
                rec = {}
            if rec.get("tok") == self._tok and rec.get("role") in ("student", "admin"):
                role = rec["role"]
        if role is None and self.token is None:
            role = "student"
        if role is None:
            return None
        settable = not hasattr(handler, "ws_connection")         # no Set-Cookie on a websocket upgrade
        if uid is None:
            uid = uuid.uuid4().hex[:12]
            if settable:
                handler.set_signed_cookie(_UID_COOKIE, uid, expires_days=3650, httponly=True, samesite="Lax")
        if settable and handler.get_query_argument("token", None):
            handler.set_signed_cookie(_AUTH_COOKIE, json.dumps({"role": role, "tok": self._tok}),
                                      expires_days=30, httponly=True, samesite="Lax")
        handler.request.headers[USER_HEADER] = uid
        handler.request.headers[ROLE_HEADER] = role
        return uid


class _LoginHandler(RequestHandler):
    """The page a request without a valid token gets: where to find the token (like JupyterLab)."""

    def get(self):
        self.set_status(403)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write("<!doctype html><html><head><title>workbench: token needed</title></head>"
                   "<body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
                   "<h2>workbench dashboard</h2><p>This dashboard needs its token. Open the address "
                   "<code>workbench serve</code> printed (it ends in <code>?token=...</code>), or paste the "
                   "token here:</p><form method='get' action='./'><input name='token' type='password' "
                   "autofocus size='40'> <button type='submit'>Open</button></form></body></html>")

