"""One typed config for a DiffuserLite run.

Defaults are the seed's hyper-parameters; task-dependent ones (target return,
guidance weight) default to the task table. The server validates run configs with
this same class, so it must stay importable without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlite.tasks import UnknownTaskError, get_task


class ConfigError(ValueError):
    """A bad config value; `field` names the offending key so a form can show it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Every (field, message) found; one here, all of them in `ConfigErrors`."""
        return [(self.field, self.message)]


class ConfigErrors(ConfigError):
    """All bad values of one config at once, so a form can mark every bad field in one
    round trip; `field` and `message` are the first, for callers that show only one."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(*errors[0])
        self._errors = list(errors)
        self.args = ("; ".join(f"{f}: {m}" for f, m in errors),)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return list(self._errors)


MAX_STEPS = 100_000_000
"""Upper bound of every step count and interval: 100x the paper's million steps."""
MAX_REPO_ID = 96 * 2 + 1
"""Longest Hugging Face repo id: a namespace and a name of at most 96 characters each."""
MAX_LEVELS = 8
"""Most plan levels `horizons` may list (the paper uses 3)."""
D4RL_EPISODE_STEPS = 1000
"""Steps of a full D4RL MuJoCo episode: episodes are padded to it, as in the reference, and
no plan may span more (its windows would lie mostly in the padding past every episode)."""


TRAIN_ACCEL = ("auto", "eager", "fused", "batched", "compile", "amp", "compile_amp")
"""Settings of `train_accel`: auto, then the training paths the device check knows."""
PLAN_ACCEL = ("auto", "eager", "packed", "cuda_graph", "compile", "bf16")
"""Settings of `plan_accel`: auto, then the planning paths the device check knows."""


def level_loss_keys(levels: int) -> tuple[str, ...]:
    """`loss0` (the coarsest level) to `loss<levels-1>` (the finest): the keys training logs
    and the dashboard charts, here because the server reads them without torch."""
    return tuple(f"loss{i}" for i in range(levels))


def _f(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    group: str = "training",
    choices: tuple[str, ...] | None = None,
) -> Any:
    """`lo`/`hi` bound a number (each item of a list); `hi` of a text is its longest length."""
    return field(
        default=default,
        metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "group": group, "choices": choices},
    )


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of a run. Field metadata carries the dashboard's help text."""

    task: str = _f("halfcheetah-medium-expert-v2", "D4RL MuJoCo task", hi=100, group="task")
    seed: int = _f(0, "random seed for data sampling, initialisation and evaluation", lo=0, hi=2**32 - 1, group="task")

    discount: float = _f(
        0.997, "discount of the segment value used as condition", lo=0, hi=1, lo_open=True, group="data"
    )
    terminal_penalty: float = _f(-100.0, "reward substituted at a true terminal", lo=-1e6, hi=1e6, group="data")
    horizons: tuple[int, ...] = _f((5, 5, 9), "points per plan level, coarse to fine", lo=2, hi=129, group="model")

    block: str = _f(
        "reference",
        "DiT block: 'reference' (the paper's code: the residual stream is replaced "
        "by the modulated norm before attention) or 'dit' (textbook adaLN-Zero)",
        group="model",
        choices=("reference", "dit"),
    )
    emb_dim: int = _f(256, "width of the time/condition embedding", lo=8, hi=4096, group="model")
    d_model: int = _f(256, "transformer width of each DiT-1d", lo=8, hi=4096, group="model")
    n_heads: int = _f(8, "attention heads of each DiT-1d", lo=1, hi=64, group="model")
    depth: int = _f(2, "transformer blocks of each DiT-1d", lo=1, hi=64, group="model")
    label_dropout: float = _f(
        0.25, "probability of dropping the condition (classifier-free guidance)", lo=0, hi=1, group="model"
    )
    next_obs_loss_weight: float = _f(
        10.0, "loss weight of the point after the current state", lo=0, hi=1e6, group="model"
    )

    batch_size: int = _f(256, "windows per gradient step and level", lo=1, hi=65_536)
    diffusion_gradient_steps: int = _f(1_000_000, "gradient steps of the level models", lo=1, hi=MAX_STEPS)
    invdyn_gradient_steps: int = _f(1_000_000, "gradient steps of the inverse-dynamics model", lo=0, hi=MAX_STEPS)
    diffusion_lr: float = _f(
        2e-4, "AdamW learning rate of the level models (cosine annealed)", lo=0, hi=1, lo_open=True
    )
    weight_decay: float = _f(1e-5, "AdamW weight decay of the level models", lo=0, hi=10)
    ema_rate: float = _f(0.9999, "EMA rate of the level models' weights used for planning", lo=0, hi=1)
    invdyn_lr: float = _f(
        1e-3, "Adam learning rate of inverse dynamics (the reference's effective 1e-3)", lo=0, hi=1, lo_open=True
    )
    invdyn_hidden: int = _f(256, "hidden width of the inverse-dynamics MLP", lo=1, hi=16_384)
    invdyn_dropout: float = _f(0.1, "dropout after the inverse-dynamics MLP's first layer", lo=0, hi=1)
    train_accel: str = _f(
        "auto",
        "how a training step runs, verified against 'eager' and timed by the device check "
        "before training: 'auto' (the fastest verified full-precision path), "
        "'eager' (one level after "
        "the other), 'fused' (fused optimisers), 'batched' (all levels in one computation, fused "
        "optimisers), 'compile' (batched under torch.compile, with CUDA graphs on a GPU), 'amp' "
        "(batched in mixed precision: bf16, or fp16 with a grad scaler; not the paper's precision) "
        "or 'compile_amp'",
        choices=TRAIN_ACCEL,
    )
    log_interval: int = _f(1000, "steps between loss read-backs and reports", lo=1, hi=MAX_STEPS)
    save_interval: int = _f(10_000, "steps between local checkpoints", lo=1, hi=MAX_STEPS)
    on_nonfinite: str = _f(
        "stop",
        "when a logged loss is NaN or infinite: 'stop' (the run fails, naming the step "
        "and loss) or 'continue' (a warning event, training goes on)",
        choices=("stop", "continue"),
    )

    sampling_steps: int = _f(3, "Euler steps per level when planning (R1: 3)", lo=1, hi=1000, group="planning")
    temperature: float = _f(0.5, "scale of the initial noise when planning", lo=0, hi=100, group="planning")
    plan_accel: str = _f(
        "auto",
        "how a planning decision runs, verified against the textbook loop and timed by "
        "the device check: 'auto' (the fastest verified full-precision path), 'eager', 'packed' "
        "(oneDNN-packed weights, CPU), 'cuda_graph' (GPU), 'compile' (torch.compile) or 'bf16' "
        "(faster on some CPUs and GPUs; not the paper's precision)",
        group="planning",
        choices=PLAN_ACCEL,
    )
    target_return: float | None = _f(
        None, "value condition when planning (task table if empty)", lo=-10, hi=10, group="planning"
    )
    w_cfg: float | None = _f(
        None, "classifier-free guidance weight (task table if empty)", lo=0, hi=100, group="planning"
    )

    num_envs: int = _f(50, "parallel environments in the final evaluation", lo=1, hi=1000, group="evaluation")
    num_episodes: int = _f(3, "episodes per environment in the final evaluation", lo=1, hi=100, group="evaluation")
    max_episode_steps: int = _f(1000, "step limit of an evaluation episode", lo=1, hi=100_000, group="evaluation")
    eval_every: int = _f(
        10_000, "steps between quick evaluations while training (0: none)", lo=0, hi=MAX_STEPS, group="evaluation"
    )
    eval_envs: int = _f(10, "environments of a quick evaluation", lo=1, hi=1000, group="evaluation")
    eval_episodes: int = _f(1, "episodes per environment of a quick evaluation", lo=1, hi=100, group="evaluation")
    record_video: str = _f(
        "final",
        "'final': after each final evaluation, record one extra episode (its own seed, "
        "not scored) as a video with its plans; 'off': none",
        group="evaluation",
        choices=("final", "off"),
    )
    video_every_quick: int = _f(
        0,
        "also record every n-th quick evaluation (0: none; each costs one more episode)",
        lo=0,
        hi=1_000_000,
        group="evaluation",
    )

    variant: str = _f(
        "R1",
        "R1: train and plan with 3 steps; R2: then reflow and also plan with 1 step",
        group="reflow",
        choices=("R1", "R2"),
    )
    reflow_pairs_cond: int = _f(
        1_600_000, "conditional (noise, plan) pairs drawn from the R1 model", lo=1, hi=MAX_STEPS, group="reflow"
    )
    reflow_pairs_uncond: int = _f(
        400_000, "unconditional pairs drawn from the R1 model", lo=0, hi=MAX_STEPS, group="reflow"
    )
    reflow_pair_steps: int = _f(20, "Euler steps that turn noise into a plan for a pair", lo=1, hi=1000, group="reflow")
    reflow_pair_batch: int = _f(5000, "pairs generated per batch", lo=1, hi=1_000_000, group="reflow")
    reflow_gradient_steps: int = _f(
        200_000, "reflow fine-tuning steps of the level models", lo=1, hi=MAX_STEPS, group="reflow"
    )
    reflow_lr: float = _f(
        2e-4,
        "constant AdamW learning rate of reflow (the reference's effective 2e-4)",
        lo=0,
        hi=1,
        lo_open=True,
        group="reflow",
    )
    reflow_uncond_every: int = _f(
        5, "every n-th reflow step trains on an unconditional batch", lo=1, hi=1_000_000, group="reflow"
    )
    r2_sampling_steps: int = _f(1, "Euler steps per level when planning with R2", lo=1, hi=1000, group="reflow")
    r2_target_return: float | None = _f(None, "R2 value condition (task table if empty)", lo=-10, hi=10, group="reflow")
    r2_w_cfg: float | None = _f(None, "R2 guidance weight (task table if empty)", lo=0, hi=100, group="reflow")

    smoke_steps: int = _f(500, "training steps of the stage-0 smoke test", lo=1, hi=1_000_000, group="backup")
    hub_repo: str | None = _f(
        None, "Hugging Face repo for backups, e.g. user/diffuserlite-results", hi=MAX_REPO_ID, group="backup"
    )
    backup_dir: str | None = _f(
        None,
        "folder on the worker's machine for backups instead of the Hub, e.g. Google "
        "Drive in Colab: /content/drive/MyDrive/diffuserlite",
        hi=4096,
        group="backup",
    )
    backup_every: int = _f(50_000, "steps between automatic backups (0: none)", lo=0, hi=MAX_STEPS, group="backup")
    backup_every_minutes: int = _f(
        15,
        "minutes of training between automatic backups, whichever of this and backup_every comes first (0: none)",
        lo=0,
        hi=7 * 24 * 60,
        group="backup",
    )
    keep_every: int = _f(
        5_000, "in the backup, also keep checkpoints at multiples of this step", lo=1, hi=MAX_STEPS, group="backup"
    )
    keep_local: int = _f(3, "newest checkpoints kept on local disk", lo=1, hi=1000, group="backup")
    on_backup_failure: str = _f(
        "fail",
        "when the smoke test cannot back up: 'fail' stops the run there, 'warn' trains on without working backups",
        group="backup",
        choices=("fail", "warn"),
    )

    def __post_init__(self) -> None:
        errors = [
            (f.name, message)
            for f in dataclasses.fields(self)
            if (message := _check(f, getattr(self, f.name))) is not None
        ]
        bad = {name for name, _ in errors}
        if "task" not in bad:
            try:
                get_task(self.task)
            except UnknownTaskError as e:
                errors.append(("task", str(e)))
        # cross-field rules, each only between fields that are valid on their own
        rules: tuple[tuple[str, tuple[str, ...], Callable[[], object], Callable[[], str]], ...] = (
            (
                "n_heads",
                ("d_model",),
                lambda: self.d_model % self.n_heads,
                lambda: f"must divide d_model ({self.d_model})",
            ),
            # a finer level is given both ends (the coarser plan's neighbouring points)
            (
                "horizons",
                (),
                lambda: min(self.horizons[1:]) < 3,
                lambda: (
                    "every level after the first is given both its end points, so it needs at least 3 points "
                    f"(got {list(self.horizons)})"
                ),
            ),
            (
                "horizons",
                (),
                lambda: self.spans[0] > D4RL_EPISODE_STEPS,
                lambda: (
                    f"plans {self.spans[0]} steps ahead (spans {list(self.spans)}), longer than a D4RL episode "
                    f"({D4RL_EPISODE_STEPS} steps): use fewer levels or fewer points per level"
                ),
            ),
            (
                "emb_dim",
                (),
                lambda: self.emb_dim % 8,
                lambda: "must be a multiple of 8 (Fourier features use emb_dim/8)",
            ),
            # backups go out at checkpoints and quick evaluations at log steps, so other
            # intervals would silently happen less often than asked
            (
                "backup_every",
                ("save_interval",),
                lambda: self.backup_every % self.save_interval,
                lambda: f"must be a multiple of save_interval ({self.save_interval})",
            ),
            (
                "eval_every",
                ("log_interval",),
                lambda: self.eval_every % self.log_interval,
                lambda: f"must be a multiple of log_interval ({self.log_interval})",
            ),
            (
                "backup_dir",
                ("hub_repo",),
                lambda: self.backup_dir and self.hub_repo,
                lambda: "set either hub_repo or backup_dir, not both: a run backs up to one place",
            ),
            # a relative folder would depend on the worker's working directory
            (
                "backup_dir",
                (),
                lambda: self.backup_dir and not self.backup_dir.startswith(("/", "~")),
                lambda: "must be an absolute path (starting with / or ~)",
            ),
        )
        for name, others, broken, describe in rules:
            if not bad & {name, *others} and broken():
                errors.append((name, describe()))
        if errors:
            raise ConfigErrors(errors)

    @property
    def total_steps(self) -> int:
        return max(self.diffusion_gradient_steps, self.invdyn_gradient_steps)

    @property
    def run_steps(self) -> int:
        """Gradient steps of the whole run: R1's, then reflow's for R2 (its steps continue R1's)."""
        return self.total_steps + (self.reflow_gradient_steps if self.variant == "R2" else 0)

    @property
    def spans(self) -> tuple[int, ...]:
        """Temporal span of each level: the last level's points are 1 step apart."""
        spans = [self.horizons[-1]]
        for points in reversed(self.horizons[:-1]):
            spans.insert(0, (points - 1) * (spans[0] - 1) + 1)
        return tuple(spans)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple((s - 1) // (p - 1) for s, p in zip(self.spans, self.horizons))

    @property
    def planning_target_return(self) -> float:
        return get_task(self.task).target_return_r1 if self.target_return is None else self.target_return

    @property
    def planning_w_cfg(self) -> float:
        return get_task(self.task).guidance_r1 if self.w_cfg is None else self.w_cfg

    @property
    def r2_planning_target_return(self) -> float:
        return get_task(self.task).target_return_r2 if self.r2_target_return is None else self.r2_target_return

    @property
    def r2_planning_w_cfg(self) -> float:
        return get_task(self.task).guidance_r2 if self.r2_w_cfg is None else self.r2_w_cfg

    @property
    def resolved(self) -> dict[str, Any]:
        """The values the run uses for settings left empty to take the task table's."""
        return {
            "target_return": self.planning_target_return,
            "w_cfg": self.planning_w_cfg,
            "r2_target_return": self.r2_planning_target_return,
            "r2_w_cfg": self.r2_planning_w_cfg,
        }

    @property
    def return_scale(self) -> float:
        return get_task(self.task).return_scale

    def replace(self, **changes: Any) -> Config:
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["horizons"] = list(self.horizons)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_HINTS = typing.get_type_hints(Config)


def _show(value: Any, limit: int = 60) -> str:
    """A value quoted in a message, cut short so a huge input does not come back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _check(f: dataclasses.Field, value: Any) -> str | None:
    """Type and range check of one field: None when fine, else a message fit for a form."""
    hint = _HINTS[f.name]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        return None if optional else "must not be empty"
    base = next(a for a in args if a is not type(None)) if optional else hint
    lo, hi, lo_open = f.metadata["lo"], f.metadata["hi"], f.metadata["lo_open"]
    if typing.get_origin(base) is tuple:
        if (
            not isinstance(value, tuple)
            or not 2 <= len(value) <= MAX_LEVELS
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return f"must be a list of 2 to {MAX_LEVELS} integers"
        items = value
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {_show(value)}"
        items = (value,)
    elif base is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            return f"must be a finite number, got {_show(value)}"
        items = (value,)
    else:
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty string, got {_show(value)}"
        choices = f.metadata["choices"]
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}, got {_show(value)}"
        if hi is not None and len(value) > hi:
            return f"must be at most {_num(hi)} characters long, got {len(value):,}"
        return None
    for v in items:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {_num(lo)}, got {_show(v)}"
        if hi is not None and v > hi:
            return f"must be <= {_num(hi)}, got {_show(v)}"
    return None


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}


def from_dict(values: dict[str, Any]) -> Config:
    """Build a config from JSON-like overrides; unknown keys and bad values raise ConfigError."""
    errors = [
        (name, f"unknown setting; known settings: {', '.join(FIELDS)}")
        for name in sorted(set(values) - set(FIELDS), key=str)
    ]
    clean = {k: v for k, v in values.items() if k in FIELDS}
    if isinstance(clean.get("horizons"), list):
        clean["horizons"] = tuple(clean["horizons"])
    for name, value in clean.items():
        if _base_type(name) is float and isinstance(value, int) and not isinstance(value, bool):
            clean[name] = float(value) if abs(value) < 2**1023 else value  # too big for a float: `hi` refuses it
        elif _base_type(name) is int:
            clean[name] = whole(value)
        elif name == "horizons" and isinstance(value, tuple):
            clean[name] = tuple(map(whole, value))
    try:
        config = Config(**clean)
    except ConfigError as e:
        errors += e.errors
    if errors:
        raise ConfigErrors(errors)
    return config


def whole(value: Any) -> Any:
    """1.0 as 1: JSON Schema (the API's document) counts it an integer, so JSON writers may send it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn command-line `key=value` strings into typed overrides."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(key, "expected key=value")
        if key not in FIELDS:
            raise ConfigError(key, f"unknown setting; known settings: {', '.join(FIELDS)}")
        out[key] = _parse_value(key, raw.strip())
    return out


def _base_type(name: str) -> Any:
    """The field's type with Optional stripped: int, float, str or tuple[int, ...]."""
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _parse_value(key: str, raw: str) -> Any:
    base = _base_type(key)
    if raw.lower() in ("", "none", "null") and type(None) in typing.get_args(_HINTS[key]):
        return None
    try:
        if base in (int, float):
            return json.loads(raw.replace("_", ""))
        if typing.get_origin(base) is tuple:
            return tuple(int(v) for v in raw.strip("[]()").split(","))
    except ValueError:
        raise ConfigError(key, f"cannot read {raw!r} as {getattr(base, '__name__', 'a list of integers')}") from None
    return raw


@functools.cache
def not_blank() -> str:
    """JSON Schema pattern of a text with a character `str.strip` keeps (a text setting of only
    such characters is empty), spelled out: `\\S` means other characters in ECMA-262 regexes
    (JSON Schema's) than in Python's."""
    blank = (c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    return "[^" + "".join(f"\\u{ord(c):04x}" for c in blank) + "]"


JOINT_RULES = frozenset({"n_heads", "horizons", "backup_every", "eval_every"})
"""Settings with a rule `json_schema` cannot state: it ties them to another setting (n_heads
divides d_model, backup_every is a multiple of save_interval, eval_every of log_interval) or
multiplies the items (horizons' plan span). A 422 names them; clients read the rule there."""


def json_schema(exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides `from_dict` takes, as JSON Schema (for the API's OpenAPI document), less the
    `exclude`d settings (those a request sets elsewhere). Every rule is in it but JOINT_RULES."""
    kinds: dict[str, dict[str, Any]] = {
        "int": {"type": "integer"},
        "float": {"type": "number"},
        "str": {"type": "string", "pattern": not_blank()},
        "int_list": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": MAX_LEVELS},
    }
    rules: dict[str, dict[str, Any]] = {
        "emb_dim": {"multipleOf": 8},
        "backup_dir": {"pattern": "^[/~]"},
    }  # "^[/~]": absolute, so not blank
    props: dict[str, dict[str, Any]] = {}
    for f in schema():
        if f["name"] in exclude:
            continue
        value = dict(kinds[f["type"]])
        bounds = value.setdefault("items", {}) if f["type"] == "int_list" else value
        if f["min"] is not None:
            bounds["exclusiveMinimum" if f["exclusive_min"] else "minimum"] = f["min"]
        if f["max"] is not None:
            bounds["maxLength" if f["type"] == "str" else "maximum"] = f["max"]
        if f["choices"]:
            value["enum"] = f["choices"]
        value.update(rules.get(f["name"], {}))
        props[f["name"]] = {"anyOf": [value, {"type": "null"}]} if f["optional"] else value
        props[f["name"]]["description"] = f["help"]
    if "horizons" in props:  # every level after the first is given both its end points
        levels = props["horizons"]
        levels["prefixItems"], levels["items"] = [levels["items"]], {**levels["items"], "minimum": 3}
    one_target = {
        "not": {
            "required": ["hub_repo", "backup_dir"],
            "properties": {"hub_repo": {"type": "string"}, "backup_dir": {"type": "string"}},
        },
        "description": "set either hub_repo or backup_dir, not both: a run backs up to one place",
    }
    return {"type": "object", "properties": props, "additionalProperties": False, "allOf": [one_target]}


def schema() -> list[dict[str, Any]]:
    """Field descriptions for forms and the hyper-parameter table."""
    default = Config()
    out = []
    for f in dataclasses.fields(Config):
        hint = _HINTS[f.name]
        kind = {int: "int", float: "float", str: "str"}.get(_base_type(f.name), "int_list")
        value = getattr(default, f.name)
        out.append(
            {
                "name": f.name,
                "type": kind,
                "optional": type(None) in typing.get_args(hint),
                "default": list(value) if isinstance(value, tuple) else value,
                "help": f.metadata["help"],
                "group": f.metadata["group"],
                "min": f.metadata["lo"],
                "max": f.metadata["hi"],
                "exclusive_min": f.metadata["lo_open"],
                "choices": list(f.metadata["choices"] or []) or None,
            }
        )
    return out
