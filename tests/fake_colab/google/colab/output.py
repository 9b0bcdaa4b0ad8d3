"""Colab's output helpers. `eval_js` runs JavaScript in the browser tab: the notebook asks
for the port proxy's URL of the dashboard, which without a browser is the port itself.
`serve_kernel_port_as_iframe` shows a port in an iframe in the cell's output: here the
same iframe as HTML, so the test can open what the frame would."""

from __future__ import annotations

import html
import re

from IPython.display import HTML, display


def eval_js(script: str) -> str:
    port = re.fullmatch(r"google\.colab\.kernel\.proxyPort\((\d+)\)", script)
    if port is None:
        raise NotImplementedError(f"the fake google.colab only answers proxyPort(...), not {script!r}")
    return f"http://127.0.0.1:{port.group(1)}/"


def serve_kernel_port_as_iframe(
    port: int, path: str = "/", height: str | int = "500", cache_in_notebook: bool = False
) -> None:
    src = html.escape(f"http://127.0.0.1:{port}{path}")
    display(HTML(f'<iframe src="{src}" height="{height}" width="100%" frameborder="0"></iframe>'))
