"""Daemon settings: durations in their accepted spellings, defaults, and validation errors that
name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

from orchestrd.config import (
    BUNDLED_CONFIG,
    Config,
    Policy,
    PolicyOverride,
    load_config,
    parse_duration,
)
from orchestrd.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("0.2s", 0.2),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        ("30", 30.0),
        (".5s", 0.5),
        (30, 30.0),
        (0.05, 0.05),
    ],
)
def test_duration_accepts_units_and_plain_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [0, 0.0, "0", "0s", "0ms", -1, -0.5, float("inf"), float("nan")])
def test_duration_must_be_greater_than_zero(value: object) -> None:
    with pytest.raises(ValueError, match="greater than zero|not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "- 1x", "5x", "", "m", True, None])
def test_duration_rejects_garbage_with_an_example_of_what_to_write(value: object) -> None:
    with pytest.raises(ValueError, match="duration") as exc:
        parse_duration(value)
    if value is not True:
        assert '"250ms"' in str(exc.value) and '"5m"' in str(exc.value)


def test_policy_defaults_are_the_manual_procedure_numbers() -> None:
    policy = Policy()
    assert (policy.poll_interval, policy.max_polls) == (300.0, 6)
    assert policy.stop_grace == 10.0
    assert policy.max_remediations == 2


def test_policy_overrides_apply_in_order_later_ones_winning(tmp_path: Path) -> None:
    config, _ = load_config(make_config(tmp_path, policy={"poll_interval": "5m"}))
    plan = PolicyOverride(poll_interval="10m", max_polls=3)  # type: ignore[arg-type]
    phase = PolicyOverride(max_polls=12)
    merged = config.policy_for(plan, None, phase)
    assert merged.poll_interval == 600.0
    assert merged.max_polls == 12
    assert merged.stop_grace == config.policy.stop_grace


def test_config_file_durations_are_read_in_seconds(tmp_path: Path) -> None:
    config, path = load_config(
        make_config(tmp_path, policy={"poll_interval": "250ms", "stop_grace": 2, "max_polls": 3})
    )
    assert path == tmp_path / "orchestrd.toml"
    assert config.policy.poll_interval == 0.25
    assert config.policy.stop_grace == 2.0
    assert config.audit_path == tmp_path / "state" / "audit.jsonl"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"policy": {"stop_grace": "-3s"}},
            "policy.stop_grace: '-3s': a duration must be positive",
        ),
        ({"policy": {"poll_interval": 0}}, "policy.poll_interval: 0: a duration must be greater"),
        ({"policy": {"max_remediations": -1}}, "policy.max_remediations: must be greater than"),
        (
            {"policy": {"max_pols": 3}},
            "policy.max_pols: unknown key; check its spelling "
            "(allowed here: poll_interval, max_polls, stop_grace, max_remediations, "
            "silence_timeout, exit_grace)",
        ),
        ({"max_workers": "eight"}, "max_workers: must be a valid integer"),
        ({"default_worker": "nope"}, "default_worker = 'nope' names no [workers.*] profile"),
        (
            {"checks": {"log_error_patterns": ["("]}},
            "checks.log_error_patterns: '(' is not a valid regex",
        ),
        ({"workers": {"x": {"command": []}}}, "workers.x.command: "),
        ({"workers": {"x": {"command": ["x"], "envv": {}}}}, "workers.x.envv: unknown key"),
    ],
)
def test_config_error_names_the_file_and_the_key(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    path = make_config(tmp_path, **overrides)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert message in str(exc.value)


def test_bundled_local_default_config_is_valid() -> None:
    config, path = load_config(BUNDLED_CONFIG)
    assert isinstance(config, Config)
    assert config.default_worker in config.workers
