"""Colab's output helpers: `eval_js` runs JavaScript in the browser tab. The notebook asks
for the port proxy's URL of the dashboard; without a browser that URL is the port itself."""

from __future__ import annotations

import re


def eval_js(script: str) -> str:
    port = re.fullmatch(r"google\.colab\.kernel\.proxyPort\((\d+)\)", script)
    if port is None:
        raise NotImplementedError(f"the fake google.colab only answers proxyPort(...), not {script!r}")
    return f"http://127.0.0.1:{port.group(1)}/"
