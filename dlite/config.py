"""One typed config for a DiffuserLite run.

Defaults are the seed's hyper-parameters; task-dependent ones (target return,
guidance weight) default to the task table. The server validates run configs with
this same class, so it must stay importable without torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from dlite.tasks import UnknownTaskError, get_task


class ConfigError(ValueError):
    """A bad config value; `field` names the offending key so a form can show it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None,
       lo_open: bool = False, group: str = "training", choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "group": group, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of a run. Field metadata carries the dashboard's help text."""

    task: str = _f("halfcheetah-medium-expert-v2", "D4RL MuJoCo task", group="task")
    seed: int = _f(0, "random seed for data sampling, initialisation and evaluation", 0, group="task")

    discount: float = _f(0.997, "discount of the segment value used as condition", 0, 1, True, "data")
    terminal_penalty: float = _f(-100.0, "reward substituted at a true terminal", group="data")
    horizons: tuple[int, ...] = _f((5, 5, 9), "points per plan level, coarse to fine", 2, group="model")

    block: str = _f("reference", "DiT block: 'reference' (the paper's code: the residual stream is replaced "
                    "by the modulated norm before attention) or 'dit' (textbook adaLN-Zero)", group="model",
                    choices=("reference", "dit"))
    emb_dim: int = _f(256, "width of the time/condition embedding", 8, group="model")
    d_model: int = _f(256, "transformer width of each DiT-1d", 8, group="model")
    n_heads: int = _f(8, "attention heads of each DiT-1d", 1, group="model")
    depth: int = _f(2, "transformer blocks of each DiT-1d", 1, group="model")
    label_dropout: float = _f(0.25, "probability of dropping the condition (classifier-free guidance)", 0, 1, group="model")
    next_obs_loss_weight: float = _f(10.0, "loss weight of the point after the current state", 0, group="model")

    batch_size: int = _f(256, "windows per gradient step and level", 1)
    diffusion_gradient_steps: int = _f(1_000_000, "gradient steps of the three level models", 1)
    invdyn_gradient_steps: int = _f(1_000_000, "gradient steps of the inverse-dynamics model", 0)
    diffusion_lr: float = _f(2e-4, "AdamW learning rate of the level models (cosine annealed)", 0, lo_open=True)
    weight_decay: float = _f(1e-5, "AdamW weight decay of the level models", 0)
    ema_rate: float = _f(0.9999, "EMA rate of the level models' weights used for planning", 0, 1)
    invdyn_lr: float = _f(1e-3, "Adam learning rate of inverse dynamics (the reference's effective 1e-3)", 0, lo_open=True)
    invdyn_hidden: int = _f(256, "hidden width of the inverse-dynamics MLP", 1)
    invdyn_dropout: float = _f(0.1, "dropout after the inverse-dynamics MLP's first layer", 0, 1)
    log_interval: int = _f(1000, "steps between loss read-backs and reports", 1)
    save_interval: int = _f(10_000, "steps between local checkpoints", 1)

    sampling_steps: int = _f(3, "Euler steps per level when planning (R1: 3)", 1, group="planning")
    temperature: float = _f(0.5, "scale of the initial noise when planning", 0, group="planning")
    target_return: float | None = _f(None, "value condition when planning (task table if empty)", group="planning")
    w_cfg: float | None = _f(None, "classifier-free guidance weight (task table if empty)", group="planning")

    num_envs: int = _f(50, "parallel environments in the final evaluation", 1, group="evaluation")
    num_episodes: int = _f(3, "episodes per environment in the final evaluation", 1, group="evaluation")
    max_episode_steps: int = _f(1000, "step limit of an evaluation episode", 1, group="evaluation")
    eval_every: int = _f(10_000, "steps between quick evaluations while training (0: none)", 0, group="evaluation")
    eval_envs: int = _f(10, "environments of a quick evaluation", 1, group="evaluation")
    eval_episodes: int = _f(1, "episodes per environment of a quick evaluation", 1, group="evaluation")

    variant: str = _f("R1", "R1: train and plan with 3 steps; R2: then reflow and also plan with 1 step",
                      group="reflow", choices=("R1", "R2"))
    reflow_pairs_cond: int = _f(1_600_000, "conditional (noise, plan) pairs drawn from the R1 model", 1, group="reflow")
    reflow_pairs_uncond: int = _f(400_000, "unconditional pairs drawn from the R1 model", 0, group="reflow")
    reflow_pair_steps: int = _f(20, "Euler steps that turn noise into a plan for a pair", 1, group="reflow")
    reflow_pair_batch: int = _f(5000, "pairs generated per batch", 1, group="reflow")
    reflow_gradient_steps: int = _f(200_000, "reflow fine-tuning steps of the three level models", 1, group="reflow")
    reflow_lr: float = _f(2e-4, "constant AdamW learning rate of reflow (the reference's effective 2e-4)", 0,
                          lo_open=True, group="reflow")
    reflow_uncond_every: int = _f(5, "every n-th reflow step trains on an unconditional batch", 1, group="reflow")
    r2_sampling_steps: int = _f(1, "Euler steps per level when planning with R2", 1, group="reflow")
    r2_target_return: float | None = _f(None, "R2 value condition (task table if empty)", group="reflow")
    r2_w_cfg: float | None = _f(None, "R2 guidance weight (task table if empty)", group="reflow")

    smoke_steps: int = _f(500, "training steps of the stage-0 smoke test", 1, group="backup")
    hub_repo: str | None = _f(None, "Hugging Face repo for backups, e.g. user/diffuserlite-results", group="backup")
    backup_every: int = _f(50_000, "steps between automatic Hub backups (0: none)", 0, group="backup")
    keep_every: int = _f(5_000, "on the Hub, also keep checkpoints at multiples of this step", 1, group="backup")
    keep_local: int = _f(3, "newest checkpoints kept on local disk", 1, group="backup")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        try:
            get_task(self.task)
        except UnknownTaskError as e:
            raise ConfigError("task", str(e)) from None
        if self.d_model % self.n_heads:
            raise ConfigError("n_heads", f"must divide d_model ({self.d_model})")
        if self.emb_dim % 8:
            raise ConfigError("emb_dim", "must be a multiple of 8 (Fourier features use emb_dim/8)")
        # backups go out at checkpoints and quick evaluations at log steps, so other
        # intervals would silently happen less often than asked
        if self.backup_every % self.save_interval:
            raise ConfigError("backup_every", f"must be a multiple of save_interval ({self.save_interval})")
        if self.eval_every % self.log_interval:
            raise ConfigError("eval_every", f"must be a multiple of log_interval ({self.log_interval})")

    @property
    def total_steps(self) -> int:
        return max(self.diffusion_gradient_steps, self.invdyn_gradient_steps)

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
    def return_scale(self) -> float:
        return get_task(self.task).return_scale

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["horizons"] = list(self.horizons)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_HINTS = typing.get_type_hints(Config)


def _check(f: dataclasses.Field, value: Any) -> None:
    """Type and range check of one field, with a message fit for a form."""
    hint = _HINTS[f.name]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return
        raise ConfigError(f.name, "must not be empty")
    base = next(a for a in args if a is not type(None)) if optional else hint
    if typing.get_origin(base) is tuple:
        if not isinstance(value, tuple) or len(value) < 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f.name, "must be a list of at least two integers")
        items = value
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f.name, f"must be an integer, got {value!r}")
        items = (value,)
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f.name, f"must be a finite number, got {value!r}")
        items = (value,)
    else:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f.name, f"must be a non-empty string, got {value!r}")
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise ConfigError(f.name, f"must be one of {', '.join(choices)}, got {value!r}")
        return
    lo, hi, lo_open = f.metadata["lo"], f.metadata["hi"], f.metadata["lo_open"]
    for v in items:
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ConfigError(f.name, f"must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
        if hi is not None and v > hi:
            raise ConfigError(f.name, f"must be <= {hi:g}, got {v!r}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}


def from_dict(values: dict[str, Any]) -> Config:
    """Build a config from JSON-like overrides; unknown keys and bad values raise ConfigError."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting; known settings: {', '.join(FIELDS)}")
    clean = dict(values)
    if isinstance(clean.get("horizons"), list):
        clean["horizons"] = tuple(clean["horizons"])
    for name, value in clean.items():
        if _base_type(name) is float and isinstance(value, int) and not isinstance(value, bool):
            clean[name] = float(value)
    return Config(**clean)


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


def schema() -> list[dict[str, Any]]:
    """Field descriptions for forms and the hyper-parameter table."""
    default = Config()
    out = []
    for f in dataclasses.fields(Config):
        hint = _HINTS[f.name]
        kind = {int: "int", float: "float", str: "str"}.get(_base_type(f.name), "int_list")
        value = getattr(default, f.name)
        out.append({"name": f.name, "type": kind, "optional": type(None) in typing.get_args(hint),
                    "default": list(value) if isinstance(value, tuple) else value,
                    "help": f.metadata["help"], "group": f.metadata["group"],
                    "min": f.metadata["lo"], "max": f.metadata["hi"],
                    "exclusive_min": f.metadata["lo_open"], "choices": list(f.metadata["choices"] or []) or None})
    return out
