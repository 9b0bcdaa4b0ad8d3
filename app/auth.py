"""One shared token, and browser sessions derived from it.

Programs (workers, scripts) send `Authorization: Bearer <token>`. Browsers log in once
with the token and then hold a session cookie whose value is a random session id
signed with a key derived from the token (so the cookie never contains the token, and
changing the token logs every browser out). Cookie-authenticated requests that change
state must echo the `csrf` cookie in an `X-CSRF-Token` header or a `csrf` form field
(double submit; the value is itself bound to the session by an HMAC).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque

from fastapi import HTTPException, Request, Response

SESSION_COOKIE = "session"
CSRF_COOKIE = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GLOBAL_FAILURE_FACTOR = 6
"""Failed logins per minute from all clients together, as a multiple of the per-client limit."""


class LoginRequired(Exception):
    """Raised for a browser page without a session; answered with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Auth:
    """Token and session checks plus the failed-login limiter; one per app."""

    def __init__(self, token: str, failures_per_minute: int, session_days: float) -> None:
        self._token = token
        self._key = hmac.new(token.encode(), b"dlite-session-v1", hashlib.sha256).digest()
        self._session_seconds = session_days * 86400
        self._limit = failures_per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        # Behind a tunnel every client may share an address, and forwarded addresses can be
        # forged: a global cap bounds guessing (and this table) whatever the address says.
        self._global_limit = GLOBAL_FAILURE_FACTOR * failures_per_minute
        self._all_failures: deque[float] = deque()

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(credential.strip())

    def session_id(self, request: Request) -> str | None:
        """The session id of a valid, unexpired session cookie."""
        sid, _, rest = request.cookies.get(SESSION_COOKIE, "").partition(".")
        issued, _, signature = rest.partition(".")
        if not (sid and issued.isdigit() and signature):
            return None
        if not hmac.compare_digest(signature.encode(), _sign(self._key, f"{sid}.{issued}").encode()):
            return None
        return sid if time.time() - int(issued) < self._session_seconds else None

    def csrf_for(self, sid: str) -> str:
        return _sign(self._key, f"csrf:{sid}")

    async def csrf_ok(self, request: Request, sid: str) -> bool:
        expected = self.csrf_for(sid)
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            sent = (await request.form()).get("csrf")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), cookie.encode()) \
            and hmac.compare_digest(cookie.encode(), expected.encode())

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

    def start_session(self, request: Request, response: Response) -> None:
        sid = secrets.token_urlsafe(24)
        issued = str(int(time.time()))
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        common = dict(max_age=int(self._session_seconds), path="/", samesite="strict", secure=secure)
        response.set_cookie(SESSION_COOKIE, f"{sid}.{issued}.{_sign(self._key, f'{sid}.{issued}')}",
                            httponly=True, **common)
        response.set_cookie(CSRF_COOKIE, self.csrf_for(sid), httponly=False, **common)

    @staticmethod
    def end_session(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

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
        return (len(self._failures.get(client, ())) >= self._limit
                or len(self._all_failures) >= self._global_limit)

    def login_failed(self, client: str) -> None:
        self._failures[client].append(time.monotonic())
        self._all_failures.append(time.monotonic())

    def login_succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def _auth(request: Request) -> Auth:
    return request.app.state.auth


async def require_api(request: Request) -> None:
    """Dependency of every /api route: bearer or session (+CSRF), else 401 JSON."""
    if not await _auth(request).authenticate(request):
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})


async def require_page(request: Request) -> None:
    """Dependency of every HTML page: a browser without a session goes to /login."""
    if not await _auth(request).authenticate(request):
        raise LoginRequired(request.url.path)
