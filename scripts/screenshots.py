"""Take the README's screenshots of a real run with headless chromium (Playwright).

Start a server with a run first, e.g. `dlite up --demo --data-dir /tmp/shots`, and let
the demo finish; then

    python scripts/screenshots.py --url http://127.0.0.1:8000 --data-dir /tmp/shots --run 1

writes docs/run-page.png (1280 px wide), docs/run-page-phone.png (390 px wide) and
docs/run-page-episode.png (the evaluation episode's video, playing, and its plan chart).
The token is read from DLITE_TOKEN or <data-dir>/token, as `dlite up` writes it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = (("run-page.png", 1280, 1500), ("run-page-phone.png", 390, 1700))
"""(file, viewport width, height): the top of the run page, where status, charts and scores are."""
EPISODE_SHOT = "run-page-episode.png"


def _shoot(page: Page, url: str, token: str, run_id: int, out: Path, width: int, height: int) -> None:
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"{url}/runs/{run_id}")
    if "/login" in page.url:
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
    page.wait_for_function("[...document.querySelectorAll('.plot')].every(d => d._fullLayout)")
    page.wait_for_timeout(500)  # Plotly's responsive resize after the layout settles
    page.screenshot(path=str(out))


def _shoot_episode(page: Page, out: Path) -> None:
    """The episode panel with its video a few seconds in, so the picture shows a playing agent."""
    page.set_viewport_size({"width": 1280, "height": 1500})
    page.wait_for_selector("#episode-video:not([hidden])")
    page.evaluate("document.getElementById('episode-video').play()")
    page.wait_for_function("document.getElementById('episode-video').currentTime > 3")
    page.evaluate("document.getElementById('episode-video').pause()")
    page.locator("#episode").scroll_into_view_if_needed()
    page.locator("#episode").screenshot(path=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".dlite")
    parser.add_argument("--run", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    token = os.environ.get("DLITE_TOKEN") or (args.data_dir / "token").read_text().strip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        for name, width, height in SHOTS:
            _shoot(page, args.url.rstrip("/"), token, args.run, args.out / name, width, height)
            print(f"wrote {args.out / name}")
        _shoot_episode(page, args.out / EPISODE_SHOT)
        print(f"wrote {args.out / EPISODE_SHOT}")
        browser.close()


if __name__ == "__main__":
    main()
