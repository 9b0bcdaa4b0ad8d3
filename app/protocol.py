"""The worker protocol's request/response bodies and the run checklist.

The worker process imports this module, so it imports pydantic and nothing else
heavy (no FastAPI, no database, no torch). docs/worker-protocol.md describes the
endpoints that carry these bodies.
"""

from __future__ import annotations

import math
import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dlite.config import whole

# (key, label) in the order a run passes them. Labels may name config fields in braces;
# `checklist_label` fills them from the run's resolved config, so no default is copied here.
# A noun after the colon ("{num_envs:env}") is counted: "1 env", "50 envs".
CHECKLIST: tuple[tuple[str, str], ...] = (
    ("data.ready", "dataset downloaded and checked"),
    ("device.check", "fast paths verified against eager and timed on this device"),
    ("smoke.steps", "{smoke_steps:training step} done"),
    ("smoke.checkpoint", "checkpoint written"),
    ("smoke.reload", "checkpoint reloads"),
    ("smoke.backup", "backup to the Hub or backup folder done"),
    ("train.start", "training started"),
    ("train.done", "training done"),
    ("reflow.pairs", "{reflow_pairs_cond:,} + {reflow_pairs_uncond:reflow pair} generated"),
    ("reflow.done", "{reflow_gradient_steps:reflow step} done"),
    ("eval.done", "{num_envs:env} × {num_episodes:episode} done"),
    ("eval.score", "normalised score recorded"),
    ("eval.video", "an extra episode recorded as a video, with its plans"),
)
MAX_BODY_BYTES = 16 * 2**20
"""The server's request body limit unless its settings change it (Settings.max_body_bytes), so
also the largest episode video it takes: a worker keeps a larger one in its backups only."""
CHECKLIST_KEYS: tuple[str, ...] = tuple(key for key, _ in CHECKLIST)
R2_ONLY_KEYS = frozenset({"reflow.pairs", "reflow.done"})
"""Checklist items that only runs with variant R2 pass."""

Stage = Literal["data", "check", "smoke", "train", "reflow_pairs", "reflow_train", "eval"]
Variant = Literal["R1", "R2"]
FinalStatus = Literal["succeeded", "failed", "cancelled"]
BackupState = Literal["local", "uploading", "hub", "error"]
EventLevel = Literal["debug", "info", "warning", "error"]
NonFinite = Literal["nan", "inf", "-inf"]
CommandKind = Literal["backup", "cancel", "stop"]


def metric_point(key: str, step: int, value: float, wall_time: float) -> dict[str, Any]:
    """A metric point as the metrics endpoint takes it: JSON has no NaN or infinity, so a
    non-finite value travels as `value: null` with `nonfinite` naming it."""
    if math.isfinite(value):
        return {"key": key, "step": step, "value": value, "wall_time": wall_time}
    label = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return {"key": key, "step": step, "value": None, "nonfinite": label, "wall_time": wall_time}


def resumed_from(step: int, source: str) -> str:
    """The worker's words for an attempt that resumed from a checkpoint; its training and
    reflow events start with them ("training resumed from step 1200 (local checkpoint), …"),
    and the server reads them back with RESUMED to mark the resume on the charts."""
    return f"resumed from step {step} ({source})"


RESUMED = re.compile(r"^\w+ resumed from step (\d+) \(")
"""A worker event saying where an attempt resumed (`resumed_from` after the stage's word);
anchored at the start, so the checklist's echo ("✓ training started (resumed …)") is not a second one."""


def checklist_keys(config: dict[str, Any]) -> tuple[str, ...]:
    """The checklist of a run with this config: R1 runs skip the reflow items."""
    r2 = config.get("variant") == "R2"
    return tuple(k for k in CHECKLIST_KEYS if r2 or k not in R2_ONLY_KEYS)


def plural(n: int, noun: str) -> str:
    """'1 env', '50 envs', '1,000,000 steps': counts as people write them."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class _CountFormatter(string.Formatter):
    """str.format, except that a format spec of letters is a noun to count (see `plural`)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec.replace(" ", "").isalpha() and isinstance(value, int):
            return plural(value, format_spec)
        return super().format_field(value, format_spec)


def checklist_label(key: str, config: dict[str, Any]) -> str:
    """The human label of a checklist key, with config values filled in."""
    label = dict(CHECKLIST)[key]
    try:
        return _CountFormatter().format(label, **config)
    except (KeyError, IndexError, ValueError):
        return label


MAX_INT = 10**18
"""Largest integer (id, step, size) the API takes: bigger ones are refused at the edge with a
422 naming the field, before a query fails on them (the database holds up to 2**63 - 1).
Exact as a float, so JSON Schema readers that parse `maximum` as a double see it right."""
SHORT_TEXT = 200
"""Longest name, host, device or key: one line on a page."""
LONG_TEXT = 20_000
"""Longest free text (an error with its traceback, an event message)."""
MAX_SCORES = 100_000
"""Most episodes one evaluation may report (dlite.config bounds envs x episodes below it)."""
MAX_SCORE = 1e6
"""Largest normalised score (real ones lie within about ±200): a bigger one is a bug, and
drawing it would only break the score figure."""
MAX_RETURN = 1e9
"""Largest episode return (MuJoCo returns stay below 1e5)."""
MAX_LATENCY_MS = 3_600_000.0
"""Slowest planning decision taken (an hour)."""
Score = Annotated[float, Field(ge=-MAX_SCORE, le=MAX_SCORE)]


Integer = Annotated[int, BeforeValidator(whole)]
"""A request body's integer: JSON Schema's integers include 1.0, so a strict body takes it as 1
(and still not "1" or true)."""
STRICT_BODY = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
"""Every request body's: unknown fields, NaN and infinity are refused (422), since JSON readers
accept `NaN` but nothing downstream can store or send it back; and values are taken only in
the JSON type the OpenAPI document gives (no "5" for 5, no 0 for false), as it promises."""


class _Body(BaseModel):
    model_config = STRICT_BODY


class _Fenced(_Body):
    """Every write names the attempt it belongs to; the server refuses stale attempts (409)."""

    attempt: Integer = Field(ge=1, le=MAX_INT)


class RegisterRequest(_Body):
    name: str = Field(min_length=1, max_length=SHORT_TEXT)
    host: str | None = Field(default=None, max_length=SHORT_TEXT)
    device: str | None = Field(default=None, max_length=SHORT_TEXT)
    gpu_name: str | None = Field(default=None, max_length=SHORT_TEXT)
    provider: str | None = Field(
        default=None,
        max_length=SHORT_TEXT,
        description="where it runs, when it can tell: colab, or skypilot:<cloud>/<region>",
    )


class RegisterResponse(BaseModel):
    worker_id: str


class ChecklistRecord(BaseModel):
    """A checklist item an attempt of the run has verified (✓, or ✗ when `failed`)."""

    key: str
    failed: bool
    attempt: int | None
    """The attempt that verified it; null for an item verified before the server recorded it."""


class ClaimResponse(BaseModel):
    run_id: int
    run_uuid: str
    attempt: int
    task: str
    name: str | None
    config: dict[str, Any]
    lease_seconds: float
    lease_expires_at: float
    is_demo: bool
    checklist: list[ChecklistRecord] = Field(default_factory=list)
    """What earlier attempts verified: a new attempt skips a smoke test one of them passed."""


class HeartbeatRequest(_Fenced):
    step: Integer = Field(ge=0, le=MAX_INT)
    steps_per_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class CommandOut(BaseModel):
    id: int
    kind: CommandKind
    """stop: checkpoint, report the command done (the run is requeued at once), and exit."""


class HeartbeatResponse(BaseModel):
    lease_expires_at: float
    commands: list[CommandOut]


class MetricPointIn(_Body):
    model_config = ConfigDict(
        **STRICT_BODY,
        json_schema_extra={
            "oneOf": [
                {"required": ["value"], "properties": {"value": {"type": "number"}, "nonfinite": {"type": "null"}}},
                {"required": ["nonfinite"], "properties": {"value": {"type": "null"}, "nonfinite": {"type": "string"}}},
            ]
        },
    )

    key: str = Field(min_length=1, max_length=SHORT_TEXT)
    step: Integer = Field(ge=0, le=MAX_INT)
    value: float | None = Field(default=None, allow_inf_nan=False)
    nonfinite: NonFinite | None = None
    wall_time: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _value_or_nonfinite(self) -> MetricPointIn:
        if (self.value is None) == (self.nonfinite is None):
            raise ValueError("give either a finite `value` or `nonfinite` ('nan', 'inf' or '-inf') with `value` null")
        return self


class MetricsRequest(_Fenced):
    points: list[MetricPointIn] = Field(max_length=50_000)


class MetricsResponse(BaseModel):
    accepted: int
    stale: bool = False
    """The attempt was fenced off: its points were kept only where the run had none (see
    docs/worker-protocol.md); the worker should stop working on the run."""


class StageRequest(_Fenced):
    stage: Stage


class ChecklistRequest(_Fenced):
    key: str = Field(json_schema_extra={"enum": list(CHECKLIST_KEYS)})
    detail: str | None = Field(default=None, max_length=LONG_TEXT)
    failed: bool = False
    """The check ran and failed: the item shows ✗, with `detail` saying what to do next."""

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        if key not in CHECKLIST_KEYS:
            raise ValueError(f"unknown checklist key; expected one of: {', '.join(CHECKLIST_KEYS)}")
        return key


class CheckpointRequest(_Fenced):
    step: Integer = Field(ge=0, le=MAX_INT)
    size: Integer = Field(ge=0, le=MAX_INT)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backup_state: BackupState = "local"
    hub_url: str | None = Field(default=None, max_length=LONG_TEXT, pattern=r"^(https://huggingface\.co/|file:///)")
    """Where the backed-up checkpoint is: a Hub URL, or a file:// URL in the run's backup_dir."""
    local_url: str | None = Field(default=None, max_length=LONG_TEXT, pattern=r"^file:///")
    """Where the worker saved it on its own disk, for a server on the same machine to serve."""
    error: str | None = Field(default=None, max_length=LONG_TEXT)
    pruned: bool = False


class EvaluationRequest(_Fenced):
    step: Integer = Field(ge=0, le=MAX_INT)
    kind: Literal["quick", "final"]
    variant: Variant = "R1"
    score_mean: Score
    score_std: float = Field(ge=0, le=MAX_SCORE)
    returns: list[Annotated[float, Field(ge=-MAX_RETURN, le=MAX_RETURN)]] = Field(max_length=MAX_SCORES)
    scores: list[Score] = Field(max_length=MAX_SCORES)
    n_envs: Integer = Field(ge=1, le=MAX_INT)
    n_episodes: Integer = Field(ge=1, le=MAX_INT)
    latency_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    latency_ms_1env: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    device: str | None = Field(default=None, max_length=SHORT_TEXT)


CheckStatus = Literal["reference", "ok", "failed", "skipped"]
"""A path's outcome in the device check: the plain path others are held to, verified,
refused (raised or differed beyond its tolerance), or not measured (with the reason)."""
MAX_CHECK_PATHS = 64


class CheckedPath(_Body):
    """One execution path of the device check (dlite.device_check.PathResult)."""

    stage: Literal["train", "plan"]
    name: str = Field(min_length=1, max_length=SHORT_TEXT)
    status: CheckStatus
    ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    """Median ms of one training step, or of one planning decision for one environment."""
    ms_batch: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    """Planning only: median ms of one decision for the whole evaluation batch."""
    ms_reflow: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    """Training only, R2 runs: median ms of one reflow step."""
    warmup_s: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    """The untimed first calls (compilation, graph capture, allocator), apart from `ms`."""
    max_diff: float | None = Field(default=None, ge=0)
    """Largest difference from the reference: relative for losses, absolute for actions."""
    tolerance: float | None = Field(default=None, ge=0)
    detail: str | None = Field(default=None, max_length=LONG_TEXT)
    """Why it failed or was skipped (the error's first line), or what it was held to."""


class Projection(_Body):
    """What the rest of the run costs at the chosen paths' measured rates."""

    train_steps: Integer = Field(ge=0, le=MAX_INT)
    train_s: float = Field(ge=0)
    reflow_pairs_s: float = Field(default=0.0, ge=0)
    reflow_s: float = Field(default=0.0, ge=0)
    eval_s: float = Field(ge=0)
    """Planning time of the quick and final evaluations (the simulator's own time excluded)."""
    quick_eval_s: float | None = Field(default=None, ge=0)
    """The part of `eval_s` spent in quick evaluations along training (null from older workers)."""
    final_eval_s: float | None = Field(default=None, ge=0)
    """The part of `eval_s` spent in the final evaluation, R1's and R2's (null from older workers)."""
    total_s: float = Field(ge=0)


class DeviceCheckRequest(_Fenced):
    """The device check's report (dlite.device_check.CheckReport.to_dict()), stored with the run."""

    device: str = Field(max_length=SHORT_TEXT)
    device_name: str = Field(max_length=SHORT_TEXT)
    memory_gb: float | None = Field(default=None, ge=0)
    peak_memory_gb: float | None = Field(default=None, ge=0)
    torch: str = Field(max_length=SHORT_TEXT)
    cuda: str | None = Field(default=None, max_length=SHORT_TEXT)
    cpu_capability: str | None = Field(default=None, max_length=SHORT_TEXT)
    requested: dict[Literal["train", "plan"], Annotated[str, Field(max_length=SHORT_TEXT)]]
    """The run's train_accel and plan_accel settings."""
    chosen: dict[Literal["train", "plan"], Annotated[str, Field(max_length=SHORT_TEXT)]]
    """The paths the run uses: the fastest verified one for `auto`."""
    paths: list[CheckedPath] = Field(max_length=MAX_CHECK_PATHS)
    projection: Projection
    check_s: float = Field(ge=0)


class EventRequest(_Fenced):
    level: EventLevel = "info"
    message: str = Field(min_length=1, max_length=LONG_TEXT)


class CommandUpdateRequest(_Fenced):
    state: Literal["uploading", "done", "error"]
    detail: str | None = Field(default=None, max_length=LONG_TEXT)


class FinishRequest(_Fenced):
    status: FinalStatus
    error: str | None = Field(default=None, max_length=LONG_TEXT)


class Ok(BaseModel):
    ok: bool = True


SYSTEM_PREFIX = "system/"
"""Metric keys of the worker's system metrics (worker/system_metrics.py). Their `step` is the
sample's Unix second, not a training step: samples go on while the step stands still (the
device check, evaluation), and a later attempt never overwrites an earlier one's samples."""
SYSTEM_KEYS: tuple[str, ...] = tuple(
    SYSTEM_PREFIX + name
    for name in (
        "cpu_percent",
        "ram_used_gib",
        "disk_used_gib",
        "gpu_util_percent",
        "gpu_mem_allocated_gib",
        "gpu_mem_reserved_gib",
    )
)
CONSOLE_TEXT = 8_000
"""Longest console entry: a log line, or a whole traceback folded into one entry."""
CONSOLE_BATCH = 100


class ConsoleLineIn(_Body):
    uid: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Chosen by the worker, so a replayed journal entry is stored once."""
    ts: float = Field(allow_inf_nan=False)
    level: EventLevel
    text: str = Field(min_length=1, max_length=CONSOLE_TEXT)


class ConsoleRequest(_Fenced):
    """Recent lines of the worker's log for the run page's console; already redacted."""

    lines: list[ConsoleLineIn] = Field(min_length=1, max_length=CONSOLE_BATCH)


ARTIFACT_NAME = re.compile(r"^(R1|R2)-(final|quick)-(\d{1,12})\.(webm|plans\.json)$")
"""An evaluation artifact's file name: variant, evaluation kind, checkpoint step and what it
is (the episode's video, or its plans). The server stores and serves nothing else."""
MAX_PLANS_BYTES = 4 * 2**20
"""Largest plans JSON; a video may be as large as any request body (16 MiB by default)."""
MAX_PLAN_DIMS = 512
MAX_PLAN_STATES = 20_000
MAX_PLAN_DECISIONS = 64
MAX_PLAN_LEVELS = 10
MAX_PLAN_POINTS = 1_024
"""Most points of one level of one decision: a level plans a handful over its horizon."""
Vector = Annotated[list[float], Field(min_length=1, max_length=MAX_PLAN_DIMS)]


class PlanDim(_Body):
    index: Integer = Field(ge=0, lt=MAX_PLAN_DIMS)
    name: str = Field(min_length=1, max_length=SHORT_TEXT)


class PlanLevel(_Body):
    level: Integer = Field(ge=0, lt=MAX_PLAN_LEVELS)
    times: list[Integer] = Field(min_length=1, max_length=MAX_PLAN_POINTS)
    """The env step each point is planned for."""
    points: list[Vector] = Field(min_length=1, max_length=MAX_PLAN_POINTS)

    @model_validator(mode="after")
    def _a_time_per_point(self) -> PlanLevel:
        if len(self.times) != len(self.points):
            raise ValueError(f"level {self.level} has {len(self.times)} times but {len(self.points)} points")
        return self


class PlanDecision(_Body):
    t: Integer = Field(ge=0, le=MAX_INT)
    """The env step the decision was taken at."""
    levels: list[PlanLevel] = Field(min_length=1, max_length=MAX_PLAN_LEVELS)


class Plans(_Body):
    """An evaluation episode's plans (`<variant>-<kind>-<step>.plans.json`): the states it
    reached and, for some decisions, what each plan level proposed, for the run page's plan
    chart. Every state and point has one value per entry of `dims`."""

    version: Literal[1]
    task: str = Field(min_length=1, max_length=SHORT_TEXT)
    variant: Variant
    checkpoint_step: Integer = Field(ge=0, le=MAX_INT)
    seed: Integer = Field(ge=-MAX_INT, le=MAX_INT)
    dims: list[PlanDim] = Field(min_length=1, max_length=MAX_PLAN_DIMS)
    default_dim: Integer = Field(ge=0, lt=MAX_PLAN_DIMS)
    states: list[Vector] = Field(max_length=MAX_PLAN_STATES)
    decisions: list[PlanDecision] = Field(max_length=MAX_PLAN_DECISIONS)
    episode_return: float = Field(ge=-MAX_RETURN, le=MAX_RETURN)
    score: Score

    @model_validator(mode="after")
    def _vectors_match_dims(self) -> Plans:
        """The chart reads dimension `i` of every vector: a shorter one would draw nothing."""
        n = len(self.dims)
        if [d.index for d in self.dims] != list(range(n)):
            raise ValueError("dims must be listed in order, their `index` 0, 1, 2, ...")
        if self.default_dim >= n:
            raise ValueError(f"default_dim {self.default_dim} is not one of the {n} dims")
        if any(len(s) != n for s in self.states):
            raise ValueError(f"every state must have {n} values, one per dim")
        for d in self.decisions:
            if any(len(p) != n for level in d.levels for p in level.points):
                raise ValueError(f"every point of the decision at t={d.t} must have {n} values, one per dim")
        return self
