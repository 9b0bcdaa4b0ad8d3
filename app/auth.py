"""One shared token, and browser sessions derived from it.

Programs (workers, scripts) send `Authorization: Bearer <token>`. Browsers log in once
with the token and then hold a session cookie whose value is a random secret; the server
keeps the session (its sha256) in the database, so logging out revokes it on the server,
and a new token ends every session opened with the old one. Cookie-authenticated requests
that change state must echo the `csrf` cookie in an `X-CSRF-Token` header or a `csrf`
form field (double submit; the value is itself bound to the session by an HMAC).

Cookies are SameSite=Strict on the dashboard's own path, Secure when the connection is
HTTPS as uvicorn sees it (a proxy's X-Forwarded-Proto counts only from DLITE_TRUSTED_PROXIES)
or DLITE_SECURE_COOKIES says so. A login inside an iframe (Colab's output frame is
cross-site) gets SameSite=None; Secure; Partitioned instead, since a Strict cookie is never
sent there and every page would ask for the login again; the HMAC-bound CSRF token, not
SameSite, is what stops cross-site requests.

Failed logins are limited per client and for all clients together, but a correct token
always gets in: anyone who can reach the login form could otherwise lock the owner out.
The token (at least 24 random characters) is what keeps guessers out; the limiter only
slows them down. The client address is the TCP peer's, unless the server was told to
trust forwarded headers from its proxies (app.settings, DLITE_TRUSTED_PROXIES).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Any

from fastapi import HTTPException, Request, Response
from sqlmodel import col, delete
from starlette.datastructures import UploadFile

from app.db import Database
from app.models import BrowserSession
from app.urls import app_path, root

SESSION_COOKIE = "session"
CSRF_COOKIE = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_LINK_SECONDS = 600
"""How long a one-time login link works: long enough to click, too short to matter in a saved notebook."""
MAX_LOGIN_LINKS = 32
"""Outstanding links at most; issuing one more forgets the one that expires first."""
GLOBAL_FAILURE_FACTOR = 6
"""Failed logins per minute from all clients together, as a multiple of the per-client limit."""


class LoginRequired(Exception):
    """Raised for a browser page without a session; answered with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def in_iframe(request: Request) -> bool:
    """The browser says the request loads a frame (Sec-Fetch-Dest: no page script can set it)."""
    return request.headers.get("sec-fetch-dest") == "iframe"


def _put_cookie(response: Response, key: str, value: str, partitioned: bool, **attributes: Any) -> None:
    """Starlette's set_cookie, with Partitioned added by hand: its own flag needs Python 3.14."""
    response.set_cookie(key, value, **attributes)
    if partitioned:
        name, header = response.raw_headers[-1]
        response.raw_headers[-1] = (name, header + b"; Partitioned")


class Auth:
    """Token and session checks plus the failed-login limiter; one per app."""

    def __init__(
        self, db: Database, token: str, failures_per_minute: int, session_days: float, secure_cookies: bool
    ) -> None:
        self._db = db
        self._secure_cookies = secure_cookies
        self._token = token
        self._key = hmac.new(token.encode(), b"dlite-session-v1", hashlib.sha256).digest()
        self._token_id = _sign(self._key, "token-id")
        self._session_seconds = session_days * 86400
        self._limit = failures_per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        # Behind a tunnel every client may share an address, and forwarded addresses can be
        # forged: a global cap bounds guessing (and this table) whatever the address says.
        self._global_limit = GLOBAL_FAILURE_FACTOR * failures_per_minute
        self._all_failures: deque[float] = deque()
        self._links: dict[str, float] = {}
        """sha256 of each unused login link's code -> when it stops working (monotonic)."""
        self._links_lock = threading.Lock()
        """Sync routes run in a thread pool: a redeem popping a code while an issue rebuilds
        the table would otherwise let the rebuilt table bring the used code back."""

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(credential.strip())

    def session_id(self, request: Request) -> str | None:
        """The cookie's secret when the server holds an unexpired session for it."""
        sid = request.cookies.get(SESSION_COOKIE, "")
        if not sid or len(sid) > 100:
            return None
        with self._db.read() as session:
            row = session.get(BrowserSession, _digest(sid))
        ok = row is not None and row.token_id == self._token_id and row.expires_at > time.time()
        return sid if ok else None

    def drop_stale_sessions(self) -> None:
        """Sessions of an earlier token or past their time; run at start-up."""
        with self._db.write() as session:
            session.exec(
                delete(BrowserSession).where(
                    (col(BrowserSession.token_id) != self._token_id) | (col(BrowserSession.expires_at) <= time.time())
                )
            )

    def csrf_for(self, sid: str) -> str:
        return _sign(self._key, f"csrf:{sid}")

    async def csrf_ok(self, request: Request, sid: str) -> bool:
        expected = self.csrf_for(sid)
        sent: str | UploadFile | None = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            sent = (await request.form()).get("csrf")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return (
            isinstance(sent, str)
            and hmac.compare_digest(sent.encode(), cookie.encode())
            and hmac.compare_digest(cookie.encode(), expected.encode())
        )

    async def authenticate(self, request: Request) -> bool:
        """True for a bearer request, or a session whose unsafe requests carry CSRF.
        A session without CSRF on an unsafe request is a 403, not a login prompt."""
        if self.bearer_ok(request):
            return True
        sid = self.session_id(request)
        if sid is None:
            return False
        if request.method not in SAFE_METHODS and not await self.csrf_ok(request, sid):
            raise HTTPException(403, "missing or wrong CSRF token")
        return True

    def cookie_attributes(self, request: Request) -> dict[str, Any]:
        """Path, SameSite, Secure and Partitioned of both cookies (see the module's docstring);
        `request.url.scheme` is the connection's, never a header an untrusted client sent."""
        framed = in_iframe(request)
        return {
            "path": root(request) or "/",
            "samesite": "none" if framed else "strict",
            "secure": framed or self._secure_cookies or request.url.scheme == "https",
            "partitioned": framed,
        }

    def start_session(self, request: Request, response: Response) -> None:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._db.write() as session:
            session.add(
                BrowserSession(
                    id=_digest(sid), token_id=self._token_id, created_at=now, expires_at=now + self._session_seconds
                )
            )
        common = {"max_age": int(self._session_seconds), **self.cookie_attributes(request)}
        _put_cookie(response, SESSION_COOKIE, sid, httponly=True, **common)
        _put_cookie(response, CSRF_COOKIE, self.csrf_for(sid), httponly=False, **common)

    def end_session(self, request: Request, response: Response) -> None:
        """Revokes the session on the server too: a copy of the cookie stops working. The
        cookies are cleared with the attributes they were set with (a partitioned cookie is
        only cleared by a Partitioned one)."""
        sid = request.cookies.get(SESSION_COOKIE, "")
        with self._db.write() as session:
            session.exec(delete(BrowserSession).where(col(BrowserSession.id) == _digest(sid)))
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            _put_cookie(
                response,
                name,
                "",
                max_age=0,
                expires=0,
                httponly=name == SESSION_COOKIE,
                **self.cookie_attributes(request),
            )

    def login_blocked(self, client: str) -> bool:
        """True when `client`, or all clients together, failed too often in the last minute."""
        cutoff = time.monotonic() - 60
        for key in list(self._failures):
            window = self._failures[key]
            while window and window[0] < cutoff:
                window.popleft()
            if not window:
                del self._failures[key]
        while self._all_failures and self._all_failures[0] < cutoff:
            self._all_failures.popleft()
        return len(self._failures.get(client, ())) >= self._limit or len(self._all_failures) >= self._global_limit

    def login_failed(self, client: str) -> None:
        self._failures[client].append(time.monotonic())
        self._all_failures.append(time.monotonic())

    def login_succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def issue_login_link(self) -> str:
        """A code that opens one session, once, within LOGIN_LINK_SECONDS: a notebook can show
        a link that logs its user in without printing the token into its saved output. Codes
        live in memory only: a restarted server forgets them, as it should."""
        code = secrets.token_urlsafe(32)
        with self._links_lock:
            now = time.monotonic()
            self._links = {k: t for k, t in self._links.items() if t > now}
            while len(self._links) >= MAX_LOGIN_LINKS:
                del self._links[min(self._links, key=self._links.__getitem__)]
            self._links[_digest(code)] = now + LOGIN_LINK_SECONDS
        return code

    def redeem_login_link(self, code: str) -> bool:
        """True once for a code issued here that has not expired; it is used up either way."""
        with self._links_lock:
            expires = self._links.pop(_digest(code), None)
        return expires is not None and expires > time.monotonic()


def _auth(request: Request) -> Auth:
    return request.app.state.auth


async def require_api(request: Request) -> None:
    """Dependency of every /api route: bearer or session (+CSRF), else 401 JSON."""
    if not await _auth(request).authenticate(request):
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})


async def require_page(request: Request) -> None:
    """Dependency of every HTML page: a browser without a session goes to /login, and back
    to the same page (query included: /compare?runs=...) after it."""
    if not await _auth(request).authenticate(request):
        query = request.url.query
        raise LoginRequired(app_path(request) + (f"?{query}" if query else ""))
