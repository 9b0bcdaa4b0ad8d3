"""The API's answers as the OpenAPI document states them, for Swagger, clients and the fuzz
test (tests/test_api_fuzz.py), which holds every answer to its schema. The worker's side of
the protocol is app/protocol.py; these are the dashboard's and scripts' side.

The services still build plain dicts (app/services/*): a route names one of these models as
its `response_model`, and FastAPI checks the dict against it and writes it in the model's
field order. So that naming a model changes no answer, every model here keeps three rules:

- It lists every key its service writes, in the service's order (a table row's in its
  columns' order: its model_dump order changed from one process to the next), and forbids
  others: a key added to a service but not here fails loudly (a 500 in the tests) instead of
  vanishing from the answer.
- A number that is not always an integer is `Number`, never `float`: pydantic would turn an
  int 5 into 5.0, and the answer's bytes with it.
- What is free-form stays free-form: a run's config (dlite.config owns its keys), the worker's
  device check report as it was stored (older workers' reports lack newer fields), a setting's
  value. A map keyed by metric names is a `dict` of the typed series.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, WithJsonSchema

from app.protocol import BackupState, EventLevel, NonFinite, Stage, Variant
from app.routes.run_list_query import STATUSES
from app.services.artifacts import ArtifactOut

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
"""A JSON number written as the service gave it (5 stays 5, 5.0 stays 5.0)."""
RunStatus = Literal[STATUSES]  # type: ignore[valid-type]
Config = dict[str, Any]
"""A run's (or a sweep's overrides of) dlite's config: GET /api/config/schema lists the keys."""


def _declared(shape: Any) -> Any:
    """`shape` in the document, unchecked at run time: for the answers with no bound on their
    size (a run's every metric point), whose checking would cost more than the read."""
    return Annotated[Any, WithJsonSchema(TypeAdapter(shape).json_schema())]


EveryPoint = _declared(dict[str, list[tuple[int, Number, Number]]])
EveryNonFinite = _declared(dict[str, list[tuple[int, NonFinite, Number]]])


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# Runs


class RunSummary(_Answer):
    """A run without its config or children: what the runs list, a sweep and a `run` stream
    message show (app.services.runs.run_summary)."""

    id: int
    uuid: str
    task: str
    name: str | None
    status: RunStatus
    stage: Stage | None
    step: int
    total_steps: int
    attempt: int
    worker_id: str | None
    lease_expires_at: Number | None
    created_at: Number
    started_at: Number | None
    finished_at: Number | None
    updated_at: Number
    error: str | None
    is_demo: bool
    steps_per_s: Number | None
    sweep_id: int | None
    tags: list[str]
    note: str | None
    archived: bool


class ChecklistEntry(_Answer):
    """Every key of the run's checklist, verified or not, so the page lists what is still to come."""

    key: str
    label: str
    detail: str | None
    verified_at: Number | None
    failed: bool
    skipped: str | None
    """Why the item will never be ticked (no backup target, record_video off)."""


class CheckpointOut(_Answer):
    id: int
    step: int
    size: int
    sha256: str
    backup_state: BackupState
    hub_url: str | None
    local_url: str | None
    backed_up_at: Number | None
    error: str | None
    pruned: bool
    download: str
    """Where it can be downloaded from (app.services.checkpoint_files.download_where)."""


class EvaluationOut(_Answer):
    id: int
    step: int
    kind: str
    variant: Variant
    score_mean: Number
    score_std: Number
    returns: list[Number]
    scores: list[Number]
    n_envs: int
    n_episodes: int
    latency_ms: Number | None
    latency_ms_1env: Number | None
    device: str | None
    created_at: Number


class RunCommand(_Answer):
    """A command the user gave a run's worker, as the user follows it (the worker hears of it
    as app.protocol.CommandOut)."""

    id: int
    run_id: int
    kind: str
    state: str
    detail: str | None
    created_at: Number
    updated_at: Number


class LatestPoint(_Answer):
    step: int
    value: Number
    wall_time: Number


class PaperScoreOut(_Answer):
    """A published score and where it was published (dlite.tasks.PaperScore)."""

    mean: Number
    sem: Number | None
    source: str


class PaperNumbers(_Answer):
    diffuser_lite_d: Number
    r1: PaperScoreOut
    r2: PaperScoreOut
    seed_readme_r1: PaperScoreOut | None


class RunDetail(RunSummary):
    """Everything the run page shows, in one answer."""

    config: Config
    checklist: list[ChecklistEntry]
    checkpoints: list[CheckpointOut]
    evaluations: list[EvaluationOut]
    artifacts: list[ArtifactOut]
    commands: list[RunCommand]
    metrics: dict[str, LatestPoint]
    """The newest point of every series, by metric key."""
    device_check: dict[str, Any] | None
    """The latest attempt's app.protocol.DeviceCheckRequest as its worker's version sent it."""
    paper: PaperNumbers
    change_id: int
    """The change feed's position when this was read: a stream from it misses nothing."""


class DeletedRun(_Answer):
    deleted: int
    removed_paths: list[str]
    """This machine's folders of the run that were removed; Hub and backup-folder copies stay."""


class CancelResult(_Answer):
    """A queued run is cancelled at once (no command); a running one is asked through its worker."""

    status: RunStatus
    command: RunCommand | None


class EventOut(_Answer):
    id: int
    run_id: int | None
    ts: Number
    level: EventLevel
    message: str


class ConsoleEntry(_Answer):
    """A line of the worker's log, or a traceback folded into one entry under `summary`."""

    id: int
    ts: Number
    attempt: int
    level: EventLevel
    text: str
    summary: str | None
    body: str | None


class FigureFile(_Answer):
    name: str
    url: str


class FigureFiles(_Answer):
    files: list[FigureFile]


class RunExport(_Answer):
    """Everything about one run, every metric point included, for keeping outside the lab."""

    run: RunSummary
    config: Config
    checklist: list[ChecklistEntry]
    metrics: EveryPoint  # type: ignore[valid-type]
    """By key: every finite point as [step, value, wall time]."""
    nonfinite_metrics: EveryNonFinite  # type: ignore[valid-type]
    """By key: every NaN or infinite point as [step, "nan" | "inf" | "-inf", wall time]."""
    checkpoints: list[CheckpointOut]
    evaluations: list[EvaluationOut]
    device_check: dict[str, Any] | None
    events: list[EventOut]


class ConfigField(_Answer):
    """One setting of dlite's config as the run form offers it (dlite.config.schema)."""

    name: str
    type: str
    optional: bool
    default: Any
    help: str
    group: str
    min: Number | None
    max: Number | None
    exclusive_min: bool
    choices: list[Any] | None


class ConfigSchema(_Answer):
    fields: list[ConfigField]
    tasks: list[str]


# Metrics and charts


class MetricKeys(_Answer):
    keys: list[str]


class NonFiniteSeries(_Answer):
    """JSON has no NaN or infinity, and min/max downsampling must not see them: a series'
    non-finite points travel apart, thinned evenly beyond max_points."""

    total: int
    steps: list[int]
    values: list[NonFinite]
    wall_times: list[Number]


class MetricSeries(_Answer):
    """One series, min/max downsampled to at most max_points, as columns."""

    key: str
    total: int
    downsampled: bool
    steps: list[int]
    values: list[Number]
    wall_times: list[Number]
    nonfinite: NonFiniteSeries


class StageMark(_Answer):
    """Where a curve changes for a reason it cannot show: reflow starts, or an attempt resumed."""

    kind: str
    step: int
    wall_time: Number
    label: str


class ChartData(_Answer):
    series: dict[str, MetricSeries]
    """By metric key; a series the run has not logged is absent."""
    marks: list[StageMark]


class SystemSeries(_Answer):
    series: dict[str, MetricSeries]
    """By key; each series' `steps` are the samples' Unix seconds, not training steps."""


class MetricChartTable(_Answer):
    """A metric chart's data for some runs, as the chart's CSV has it."""

    chart: str
    title: str
    columns: list[str]
    rows: list[tuple[int, str, str, int, Number, Number]]
    """[run id, run, key, step, value, wall time]"""
    log_y: bool
    y_title: str


class ScoreChartTable(_Answer):
    """The score chart's data: the runs' evaluations and, for a task that has one, the
    published reference curve (its rows have no run id, spread or episode count)."""

    chart: str
    title: str
    columns: list[str]
    rows: list[tuple[int | None, str, str, str, int, Number, Number | None, int | None, str]]
    """[run id, run, kind, variant, step, score mean, score std, episodes, source]"""
    y_title: str


ChartTable = MetricChartTable | ScoreChartTable


# Sweeps


class SweepAblation(_Answer):
    setting: str
    values: list[Any]
    """As the runs' configs store them ([9, 17] for horizons (9, 17))."""


class SweepProgress(_Answer):
    """`done` counts runs ended in any way, `succeeded` what a progress bar fills; the ETA
    counts everything the unfinished runs have left (app.services.sweeps._eta)."""

    total: int
    done: int
    succeeded: int
    running: int
    queued: int
    by_status: dict[str, int]
    steps_left: int
    steps_per_s: Number | None
    """The mean measured speed of one run (of the running runs, else of the finished ones)."""
    workers: int
    """Workers on the sweep's runs now."""
    combined_steps_per_s: Number | None
    """Their speeds added: the unfinished runs' work is shared over it (over steps_per_s when none works on it)."""
    eta_s: Number | None


class SweepSummary(_Answer):
    id: int
    name: str
    tasks: list[str]
    seeds: list[int]
    variants: list[Variant]
    config: Config
    ablation: SweepAblation | None
    created_at: Number
    cancelled_at: Number | None
    progress: SweepProgress


class SweepDetail(SweepSummary):
    runs: list[RunSummary]


class SweepCancelled(_Answer):
    cancelled: list[int]
    """Queued runs, cancelled at once."""
    asked_to_stop: list[int]
    """Running runs, asked through their workers."""


# Results


class Departure(_Answer):
    """A setting whose value is not the paper's, with both."""

    name: str
    value: Any
    paper: Any


class PerEpisode(_Answer):
    """One run's spread over its own episodes: not comparable with the paper's standard error."""

    mean: Number
    std: Number
    n_episodes: int
    label: str


class LabelledPaperScore(PaperScoreOut):
    label: str
    variant: str
    """The paper's variant compared with: an ablation's numbers are Lite-D's."""


class Agreement(_Answer):
    verdict: str
    text: str


class Planning(_Answer):
    """Planning frequency beside the paper's, with what makes it another measurement."""

    hz_1env: Number | None
    hz_1env_sem: Number | None
    decisions_per_s: Number | None
    n_envs: list[int]
    devices: list[str]
    paper_hz: Number | None
    paper_source: str
    not_comparable: str | None
    """What makes these another measurement than the paper's (app.services.paper_settings.speed_caption);
    None: the paper's planner, timed on a CUDA GPU (or a device not named)."""


class SeedStats(_Answer):
    """Mean ± s.e. over seeds beside the paper's (app.services.results._stats). A row's
    bases are this, then its key: pydantic puts the last base's fields first, which is the
    order the service writes (the key, then these)."""

    n: int
    seeds: list[int | None]
    run_ids: list[int]
    mean: Number | None
    sem: Number | None
    label: str | None
    """What the ± is: s.e. over seeds, or one run's std over episodes."""
    per_episode: PerEpisode | None
    paper: LabelledPaperScore | None
    paper_settings: bool
    departures: list[Departure]
    settings_caption: str | None
    difference: Number | None
    """Only at the paper's settings."""
    agreement: Agreement
    differing_config_keys: list[str]
    planning: Planning


class _ResultKey(_Answer):
    task: str
    variant: Variant


class _AblationKey(_Answer):
    value: Any
    value_text: str
    variant: Variant


class ResultRow(SeedStats, _ResultKey):
    pass


class AblationRow(SeedStats, _AblationKey):
    pass


class AblationView(_Answer):
    """An ablation sweep's runs by the value of the setting it varies."""

    sweep_id: int
    sweep_name: str
    task: str
    setting: str
    values: list[Any]
    variants: list[Variant]
    rows: list[AblationRow]
    paper_variant: str | None
    paper_source: str | None
    caveat: str | None
    compare_run_ids: list[int]
    """Runs for the comparison page, as many of each value as fit."""


class ResultsTable(_Answer):
    rows: list[ResultRow]
    """By task, variant and settings; ablation sweeps' runs are in `ablations` instead."""
    ablations: list[AblationView]


# Comparison


class ComparedRun(RunSummary):
    label: str
    config: Config
    group: int
    """The id of its seed group."""
    marks: list[StageMark]


class SeedGroup(_Answer):
    """Runs that differ only by seed, drawn as one mean line and band."""

    id: int
    run_ids: list[int]
    seeds: list[int | None]
    label: str


class ConfigDifference(_Answer):
    key: str
    values: list[Any]
    """One per compared run, in their order."""


class Comparison(_Answer):
    runs: list[ComparedRun]
    groups: list[SeedGroup]
    config_diff: list[ConfigDifference]
    charts: dict[str, ChartTable]
    """By chart id (app.services.compare.COMPARED)."""


# The fleet


class WorkerRun(_Answer):
    id: int
    name: str | None
    step: int
    total_steps: int
    steps_per_s: Number | None
    sweep_id: int | None
    stage: Stage | None


class WorkerOut(_Answer):
    """A worker as the workers page shows it (app.services.workers.worker_row)."""

    id: str
    name: str
    host: str | None
    provider: str | None
    """colab, or skypilot:<cloud>/<region>, when the worker could tell."""
    device: str | None
    gpu_name: str | None
    last_seen: float
    seen_ago_s: float
    status: Literal["working", "idle", "stopping", "lost", "exited"]
    """lost: silent for a whole lease; exited: it said so, or was told to (stop, cap)."""
    runs_claimed: int
    max_runs: int | None
    stop_requested_at: float | None
    exited_at: float | None
    run: WorkerRun | None
    """The running run holding its lease."""


class FleetStopped(_Answer):
    stopped: list[str]
    """The workers asked to stop (those that had exited or were asked before are left out)."""
