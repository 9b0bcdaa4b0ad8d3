"""The dashboard's own URLs, under the path prefix a reverse proxy may serve it at.

Nothing here builds an absolute URL from the request: `Host` and the scheme uvicorn sees
are the proxy's business (behind a TLS proxy the scheme is `http`, and an `http://` script
on an `https://` page is blocked as mixed content). Every URL the app hands out is
root-relative and starts with the prefix, DLITE_ROOT_PATH, which the app keeps in the
ASGI scope's `root_path`.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send


def root(request: HTTPConnection) -> str:
    """The prefix ("" at the root); inside a mount Starlette keeps the app's own in app_root_path."""
    scope = request.scope
    return str(scope.get("app_root_path", scope.get("root_path", ""))).rstrip("/")


def app_path(request: HTTPConnection) -> str:
    """The path inside the app, which routes and `next=` speak in."""
    path, prefix = request.scope["path"], root(request)
    return path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path


def url(request: HTTPConnection, path: str) -> str:
    """An app path (starting with "/") as the browser reaches it."""
    return root(request) + path


class RootPath:
    """Serves the app under `prefix` whether the proxy strips it or forwards the full path.

    Starlette routes on the path less `root_path` when the path starts with it, but its mounts
    (/static) need the prefix in the path, so a stripped path gets it back. The bare prefix
    is redirected to prefix + "/" with a relative Location (the router's own trailing-slash
    redirects are off: it builds them absolute from the request).
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path == self.prefix and scope["type"] == "http":
                query = scope.get("query_string", b"").decode("latin-1")
                await RedirectResponse(self.prefix + "/" + (f"?{query}" if query else ""))(scope, receive, send)
                return
            scope = {**scope, "root_path": self.prefix}
            if not path.startswith(self.prefix + "/"):
                raw = scope.get("raw_path") or path.encode()
                scope.update(path=self.prefix + path, raw_path=self.prefix.encode() + raw)
        await self.app(scope, receive, send)
