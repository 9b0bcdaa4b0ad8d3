"""`python -m app.server`: run the dashboard and worker API with uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from app.main import create_app
from app.settings import settings_from_env, token_source


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path | None = None) -> None:
    """Migrate, print where to go and the token (once, on its own line), then serve.
    The token never goes into a URL, where it would end up in histories and logs."""
    settings = settings_from_env(data_dir)
    app = create_app(settings)
    print(f"DiffuserLite Lab: http://{host}:{port}{settings.root_path}/", flush=True)
    print(f"Log in with this token (from {token_source(settings)}):", flush=True)
    print(settings.token, flush=True)
    # Forwarded headers only from the proxies named in DLITE_TRUSTED_PROXIES: uvicorn's default
    # trusts 127.0.0.1, where a local tunnel hands every visitor's forged header on.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None, help="default: $DLITE_DATA_DIR or ~/.dlite")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.data_dir)


if __name__ == "__main__":
    main()
