"""Liveness probe for tunnels and process supervisors; deliberately unauthenticated."""

from fastapi import APIRouter

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
