"""The config's bounds and its one-pass validation (no torch needed)."""

from __future__ import annotations

import dataclasses

import pytest

from dlite.config import FIELDS, Config, ConfigError, ConfigErrors, from_dict, parse_overrides, schema


def test_every_setting_has_an_upper_bound_or_a_fixed_set_of_values() -> None:
    unbounded = [f.name for f in dataclasses.fields(Config) if f.metadata["hi"] is None and not f.metadata["choices"]]
    assert unbounded == []
    # the defaults sit inside the bounds, and the schema hands the bounds to forms
    by_name = {f["name"]: f for f in schema()}
    assert by_name["batch_size"]["max"] == FIELDS["batch_size"].metadata["hi"]
    Config()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"batch_size": 10**12}, "batch_size"),
        ({"d_model": 2**40}, "d_model"),
        ({"horizons": [2, 10**30]}, "horizons"),
        ({"horizons": [5] * 9}, "horizons"),
        ({"diffusion_lr": 1e308}, "diffusion_lr"),
        ({"w_cfg": 10**400}, "w_cfg"),
        ({"seed": 2**64}, "seed"),
        ({"hub_repo": "u/" + "x" * 300}, "hub_repo"),
        ({"task": "x" * 10_000}, "task"),
        ({"terminal_penalty": -1e300}, "terminal_penalty"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_out_of_range_values_name_their_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(overrides)
    assert [name for name, _ in e.value.errors] == [field]
    assert len(e.value.message) < 300  # a huge value is not echoed whole


def test_all_problems_are_reported_in_one_pass() -> None:
    with pytest.raises(ConfigErrors) as e:
        from_dict({"batch_size": 0, "n_heads": 7, "eval_every": 1500, "nope": 1, "hub_repo": " "})
    assert dict(e.value.errors) == {
        "nope": e.value.errors[0][1],
        "batch_size": "must be >= 1, got 0",
        "hub_repo": "must be a non-empty string, got ' '",
        "n_heads": "must divide d_model (256)",
        "eval_every": "must be a multiple of log_interval (1000)",
    }
    assert e.value.field == "nope"  # callers that show one problem get the first
    assert "batch_size: must be >= 1, got 0" in str(e.value)


def test_cross_field_rules_wait_for_their_fields_to_be_valid() -> None:
    """n_heads=7 with a broken d_model reports d_model, not a divisibility it cannot judge."""
    with pytest.raises(ConfigErrors) as e:
        from_dict({"d_model": 2**40, "n_heads": 7})
    assert [name for name, _ in e.value.errors] == ["d_model"]


def test_command_line_overrides_meet_the_same_bounds() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(parse_overrides(["batch_size=1_000_000_000_000"]))
    assert e.value.field == "batch_size"
