"""HTTP client for the worker protocol (docs/worker-protocol.md).

Network trouble and server errors become ServerUnavailable, which callers retry;
a 409 becomes StaleAttempt, which means this worker no longer owns the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from app.protocol import ClaimResponse, HeartbeatResponse

UPLOAD_TIMEOUT_S = 300.0


class ServerUnavailable(RuntimeError):
    """The server could not be reached or failed (5xx): try again later."""


class StaleAttempt(RuntimeError):
    """The server refused a write (409): the run moved on to another attempt."""


class RejectedWrite(RuntimeError):
    """The server refused a write as invalid (4xx other than 409): retrying cannot help."""


class Retired(RuntimeError):
    """The server will give this worker no more runs (410: the user stopped it, or it claimed
    its cap): the worker exits, which ends a SkyPilot managed job instead of relaunching it."""


class ServerClient:
    def __init__(self, url: str, token: str, timeout: float = 15.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **raw: Any) -> httpx.Response:
        """A call whose failures are sorted for the caller (module docstring); `raw` goes to
        httpx as is (an upload's `content`, `headers`, `params`, `timeout`)."""
        try:
            response = self.http.request(method, path, json=body, **raw)
        except httpx.HTTPError as e:
            raise ServerUnavailable(f"{method} {path}: {type(e).__name__}: {e}") from None
        if response.status_code == 409:
            raise StaleAttempt(f"{path}: {response.text[:300]}")
        if response.status_code == 410:
            raise Retired(_detail(response))
        if response.status_code >= 500:
            raise ServerUnavailable(f"{method} {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise RejectedWrite(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def register(self, name: str, host: str, device: str, gpu_name: str | None, provider: str | None = None) -> str:
        body = {"name": name, "host": host, "device": device, "gpu_name": gpu_name, "provider": provider}
        return self.request("POST", "/api/workers/register", body).json()["worker_id"]

    def exited(self, worker_id: str) -> None:
        """So the fleet shows this worker as gone on purpose, not lost."""
        self.request("POST", f"/api/workers/{worker_id}/exit")

    def claim(self, worker_id: str) -> ClaimResponse | None:
        response = self.request("POST", f"/api/workers/{worker_id}/claim")
        return None if response.status_code == 204 else ClaimResponse.model_validate(response.json())

    def heartbeat(self, run_id: int, attempt: int, step: int, steps_per_s: float | None) -> HeartbeatResponse:
        body = {"attempt": attempt, "step": step, "steps_per_s": steps_per_s}
        return HeartbeatResponse.model_validate(self.request("POST", f"/api/runs/{run_id}/heartbeat", body).json())

    def run(self, run_id: int) -> dict[str, Any]:
        """What the server holds of a run: its checkpoints (step, size, sha256, backup_state,
        pruned, ...), evaluations (step, kind, variant, scores, ...), checklist, ..."""
        return self.request("GET", f"/api/runs/{run_id}").json()

    def export(self, run_id: int) -> bytes:
        return self.request("GET", f"/api/runs/{run_id}/export").content

    def figures(self, run_id: int) -> dict[str, bytes]:
        """Has the server draw the run's figures now, and fetches them."""
        made = self.request("POST", f"/api/runs/{run_id}/figures").json()["files"]
        return {f["name"]: self.request("GET", f["url"]).content for f in made}

    def upload(self, path: str, file: Path, content_type: str, attempt: int) -> httpx.Response:
        """PUT a run artifact (a video, its plans) as the raw body; the time limit allows a
        16 MiB file over a slow link."""
        return self.request(
            "PUT",
            path,
            content=file.read_bytes(),
            headers={"Content-Type": content_type},
            params={"attempt": attempt},
            timeout=UPLOAD_TIMEOUT_S,
        )

    def close(self) -> None:
        self.http.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
