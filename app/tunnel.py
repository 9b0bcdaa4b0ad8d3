"""Public URLs for a server running on Colab or a remote box.

Each provider is a function that takes the local port and returns a URL or raises
TunnelError with a message that says what to do; `open_tunnel` never takes the
server down, so a failed tunnel leaves a working local dashboard.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path


class TunnelError(RuntimeError):
    """The tunnel could not start; the message says why and what to do."""


def colab(port: int) -> str:
    """Colab's own port proxy: works only inside a Colab kernel."""
    try:
        from google.colab.output import eval_js
    except ImportError:
        raise TunnelError(
            "--tunnel colab works only inside a Colab notebook; run the notebook's "
            "dashboard cell (2) there, or use --tunnel cloudflared"
        ) from None
    try:
        return str(eval_js(f"google.colab.kernel.proxyPort({port})"))
    except Exception as e:  # eval_js fails outside the kernel's main thread
        raise TunnelError(
            f"Colab's port proxy did not answer ({e}); run the notebook's "
            f"dashboard cell (2), which asks for it from the kernel"
        ) from None


CLOUDFLARE_URL = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")


def cloudflared(port: int, binary: str | None = None, timeout: float = 30.0) -> str:
    """A quick Cloudflare tunnel; needs the `cloudflared` binary on PATH."""
    binary = binary or shutil.which("cloudflared")
    if not binary:
        raise TunnelError(
            "cloudflared is not installed: see https://developers.cloudflare.com/"
            "cloudflare-one/connections/connect-networks/downloads/ or use --tunnel ngrok"
        )
    proc = subprocess.Popen(
        [binary, "tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    found: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:  # keeps draining so the pipe never blocks cloudflared
            match = CLOUDFLARE_URL.search(line)
            if match and not found:
                found.append(match.group(0))
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    if not found:
        proc.kill()
        raise TunnelError(f"cloudflared printed no trycloudflare.com URL within {timeout:.0f} s")
    return found[0]


def ngrok(port: int) -> str:
    """An ngrok tunnel through pyngrok; needs NGROK_AUTHTOKEN."""
    try:
        from pyngrok import conf
        from pyngrok import ngrok as pyngrok
    except ImportError:
        raise TunnelError("--tunnel ngrok needs pyngrok: pip install pyngrok") from None
    token = os.environ.get("NGROK_AUTHTOKEN")
    if not token:
        raise TunnelError(
            "--tunnel ngrok needs an authtoken in NGROK_AUTHTOKEN "
            "(https://dashboard.ngrok.com/get-started/your-authtoken)"
        )
    conf.get_default().auth_token = token
    try:
        return pyngrok.connect(port, "http").public_url
    except Exception as e:
        raise TunnelError(f"ngrok did not start: {e}") from None


PROVIDERS: dict[str, Callable[[int], str]] = {"colab": colab, "cloudflared": cloudflared, "ngrok": ngrok}


def open_tunnel(
    kind: str, port: int, data_dir: Path, providers: dict[str, Callable[[int], str]] | None = None
) -> str | None:
    """Start the tunnel, print and store its URL (data_dir/tunnel_url); None when it failed."""
    providers = PROVIDERS if providers is None else providers
    if kind not in providers:
        print(f"unknown tunnel {kind!r}; choose one of: {', '.join(providers)}", flush=True)
        return None
    try:
        url = providers[kind](port)
    except TunnelError as e:
        print(f"tunnel {kind} did not start: {e}\nthe dashboard still runs locally on port {port}", flush=True)
        return None
    (data_dir / "tunnel_url").write_text(url + "\n")
    print(f"public dashboard URL ({kind}): {url}", flush=True)
    return url
