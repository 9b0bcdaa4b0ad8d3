"""The worker protocol's request/response bodies and the run checklist.

The worker process imports this module, so it imports pydantic and nothing else
heavy (no FastAPI, no database, no torch). docs/worker-protocol.md describes the
endpoints that carry these bodies.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

# (key, label) in the order a run passes them. Labels may name config fields in braces;
# `checklist_label` fills them from the run's resolved config, so no default is copied here.
CHECKLIST: tuple[tuple[str, str], ...] = (
    ("data.ready", "dataset downloaded and checked"),
    ("smoke.steps", "{smoke_steps} training steps done"),
    ("smoke.checkpoint", "checkpoint written"),
    ("smoke.reload", "checkpoint reloads"),
    ("smoke.backup", "backup to the Hub done"),
    ("train.start", "training started (resumed from step N / started fresh)"),
    ("train.done", "training done"),
    ("reflow.pairs", "{reflow_pairs_cond} + {reflow_pairs_uncond} reflow pairs generated"),
    ("reflow.done", "{reflow_gradient_steps} reflow steps done"),
    ("eval.done", "{num_envs} envs × {num_episodes} episodes done"),
    ("eval.score", "normalised score recorded"),
)
CHECKLIST_KEYS: tuple[str, ...] = tuple(key for key, _ in CHECKLIST)
R2_ONLY_KEYS = frozenset({"reflow.pairs", "reflow.done"})
"""Checklist items that only runs with variant R2 pass."""

Stage = Literal["data", "smoke", "train", "reflow_pairs", "reflow_train", "eval"]
Variant = Literal["R1", "R2"]
FinalStatus = Literal["succeeded", "failed", "cancelled"]
BackupState = Literal["local", "uploading", "hub", "error"]
EventLevel = Literal["debug", "info", "warning", "error"]


def checklist_keys(config: dict[str, Any]) -> tuple[str, ...]:
    """The checklist of a run with this config: R1 runs skip the reflow items."""
    r2 = config.get("variant") == "R2"
    return tuple(k for k in CHECKLIST_KEYS if r2 or k not in R2_ONLY_KEYS)


def checklist_label(key: str, config: dict[str, Any]) -> str:
    """The human label of a checklist key, with config values filled in."""
    label = dict(CHECKLIST)[key]
    try:
        return label.format(**config)
    except (KeyError, IndexError):
        return label


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Fenced(_Body):
    """Every write names the attempt it belongs to; the server refuses stale attempts (409)."""

    attempt: int = Field(ge=1)


class RegisterRequest(_Body):
    name: str
    host: Optional[str] = None
    device: Optional[str] = None
    gpu_name: Optional[str] = None


class RegisterResponse(BaseModel):
    worker_id: str


class ClaimResponse(BaseModel):
    run_id: int
    attempt: int
    task: str
    name: Optional[str]
    config: dict[str, Any]
    lease_seconds: float
    lease_expires_at: float
    is_demo: bool


class HeartbeatRequest(_Fenced):
    step: int = Field(ge=0)
    steps_per_s: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False)


class CommandOut(BaseModel):
    id: int
    kind: Literal["backup", "cancel"]


class HeartbeatResponse(BaseModel):
    lease_expires_at: float
    commands: list[CommandOut]


class MetricPointIn(_Body):
    key: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    value: float = Field(allow_inf_nan=False)
    wall_time: float = Field(allow_inf_nan=False)


class MetricsRequest(_Fenced):
    points: list[MetricPointIn] = Field(max_length=50_000)


class MetricsResponse(BaseModel):
    accepted: int


class StageRequest(_Fenced):
    stage: Stage


class ChecklistRequest(_Fenced):
    key: str
    detail: Optional[str] = None

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        if key not in CHECKLIST_KEYS:
            raise ValueError(f"unknown checklist key; expected one of: {', '.join(CHECKLIST_KEYS)}")
        return key


class CheckpointRequest(_Fenced):
    step: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backup_state: BackupState = "local"
    hub_url: Optional[str] = Field(default=None, pattern=r"^https://huggingface\.co/")
    error: Optional[str] = None


class EvaluationRequest(_Fenced):
    step: int = Field(ge=0)
    kind: Literal["quick", "final"]
    variant: Variant = "R1"
    score_mean: float = Field(allow_inf_nan=False)
    score_std: float = Field(ge=0, allow_inf_nan=False)
    returns: list[float]
    scores: list[float]
    n_envs: int = Field(ge=1)
    n_episodes: int = Field(ge=1)
    latency_ms: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False)
    latency_ms_1env: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False)
    device: Optional[str] = Field(default=None, max_length=200)


class EventRequest(_Fenced):
    level: EventLevel = "info"
    message: str = Field(min_length=1, max_length=20_000)


class CommandUpdateRequest(_Fenced):
    state: Literal["uploading", "done", "error"]
    detail: Optional[str] = None


class FinishRequest(_Fenced):
    status: FinalStatus
    error: Optional[str] = None


class Ok(BaseModel):
    ok: bool = True
