"""Whether a run used the paper's settings, and where it did not, in words.

A score or a planning speed is compared with the paper's only when the run that made it
used the settings the paper's number was made with; any other run is shown with what it
changed ("d_model 64 (paper 256)") and claims no agreement, so a 200-step demo cannot sit
beside 90.8 as if it reproduced it. The paper's settings are the defaults of `dlite.config`
(the reference pipeline's) with the task table's values for settings
left empty; a run's *fingerprint* is its resolved config without the settings that never
change what it measures, so the runs of one fingerprint are one experiment over seeds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from dlite.config import Config, ConfigError, from_dict, schema

_GROUPS = {f["name"]: f["group"] for f in schema()}

NEUTRAL: frozenset[str] = frozenset(
    {
        "seed",
        "log_interval",
        "save_interval",
        "eval_every",
        "eval_envs",
        "eval_episodes",
        "record_video",
        "video_every_quick",
        "train_accel",
        "plan_accel",
    }
    | {name for name, group in _GROUPS.items() if group == "backup"}
)
"""Settings that change how a run is seeded, logged, checkpointed, backed up or looked at on the
way (quick evaluations, recorded episodes), never what its final evaluation measures. The speed paths are verified
against the reference before a run uses them (dlite.device_check); the reduced-precision ones
are kept apart in the fingerprint as `train_precision` / `plan_precision`."""

R2_ONLY: frozenset[str] = frozenset(name for name, group in _GROUPS.items() if group == "reflow") - {"variant"}
"""Reflow's settings: an R2 run's R1 evaluation comes before reflow, so they do not touch it."""

SPEED: tuple[str, ...] = ("horizons", "emb_dim", "d_model", "n_heads", "depth", "block", "plan_precision")
"""What sets the cost of one planning decision, besides the sampling steps of the variant."""

_SAMPLING_STEPS = {"R1": "sampling_steps", "R2": "r2_sampling_steps"}
_REDUCED_TRAINING = ("amp", "compile_amp")


def fingerprint(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """The settings of `config` that change a `variant` evaluation's result, resolved (a setting
    left to the task table counts as the table's value, so both spellings are one experiment)."""
    try:
        cfg = from_dict(config)
        values: dict[str, Any] = {**cfg.to_dict(), **cfg.resolved}
    except ConfigError:  # a config from an older version: compared as stored, missing keys at their defaults
        values = {**Config().to_dict(), **config}
    values["train_precision"] = "mixed" if values.get("train_accel") in _REDUCED_TRAINING else "fp32"
    values["plan_precision"] = "bf16" if values.get("plan_accel") == "bf16" else "fp32"
    dropped = NEUTRAL | {"variant"} | (R2_ONLY if variant == "R1" else frozenset())
    return {k: _plain(v) for k, v in values.items() if k not in dropped}


def fingerprint_key(config: dict[str, Any], variant: str) -> str:
    """`fingerprint` as a string that groups: equal for runs that differ only in neutral settings."""
    return json.dumps(fingerprint(config, variant), sort_keys=True)


@functools.cache
def paper_fingerprint(task: str, variant: str) -> dict[str, Any]:
    """Cached: every row of every results page compares with one of these few (read only)."""
    return fingerprint(Config(task=task, variant=variant).to_dict(), variant)


def departures(
    config: dict[str, Any], variant: str, keys: tuple[str, ...] | None = None, ignore: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Each setting (of `keys`, else all but `ignore`) whose value is not the paper's, with both."""
    mine, paper = fingerprint(config, variant), paper_fingerprint(str(config.get("task")), variant)
    names = keys if keys is not None else sorted(set(mine) | set(paper))
    return [
        {"name": k, "value": mine.get(k), "paper": paper.get(k)}
        for k in names
        if k not in ignore and mine.get(k) != paper.get(k)
    ]


def speed_departures(config: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """Where the planning model or its sampling steps differ from the paper's, which makes its
    planning frequency a different measurement from the paper's."""
    return departures(config, variant, SPEED + (_SAMPLING_STEPS[variant],))


def speed_caption(config: dict[str, Any], variant: str, *, devices: Iterable[str] = ()) -> str | None:
    """Why one-environment planning frequencies measured on `devices` are not the paper's
    measurement, or None when they are comparable. The paper's figure is per action on hardware
    it does not state (docs/method.md §9), so only what is known is said: another planner, or a
    device that is not a CUDA GPU (what the lab is for; a CPU's Hz beside the paper's would read
    as a reproduction of it). The batch is not judged: the figure set beside the paper's is one
    environment's, whatever the evaluation's batch; the batched decisions per second are never
    compared. Devices the evaluation did not name are not judged."""
    reasons = []
    changed = speed_departures(config, variant)
    if changed:
        reasons.append(f"a different planner from the paper's: {describe(changed)}")
    other = sorted({d for d in devices if not d.startswith("cuda")})
    if other:
        reasons.append(f"measured on {', '.join(other)}, not a CUDA GPU (the paper does not state its hardware)")
    return "; ".join(reasons) or None


def describe(changed: list[dict[str, Any]]) -> str:
    """'d_model 64 (paper 256), diffusion_gradient_steps 200 (paper 1,000,000)'."""
    return ", ".join(f"{d['name']} {_text(d['value'])} (paper {_text(d['paper'])})" for d in changed)


def not_the_papers(changed: list[dict[str, Any]]) -> str | None:
    """The caption of a result made with other settings than the paper's; None for the paper's."""
    return f"not the paper's settings: {describe(changed)}" if changed else None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _text(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,g}" if abs(value) >= 1 else f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)
