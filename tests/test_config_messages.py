"""Config and plan errors a person can act on: the file, the key and the fix, all at once.

- A negative duration says it must be positive; an empty `command` says what to write.
- A `state_dir` that cannot be used is blamed on `state_dir`, naming the config file.
- `default_worker` naming no profile is an error even where no profile is defined.
- A plan file's errors come in one pass: schema errors, duplicate phase ids and unknown
  prerequisites together.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import make_config, phase, run_cli

from orchestrd.config import load_config
from orchestrd.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"policy": {"stop_grace": "-1s"}},
            "policy.stop_grace: '-1s': a duration must be positive",
        ),
        (
            {"policy": {"poll_interval": "- 5m"}},
            "policy.poll_interval: '- 5m': a duration must be positive",
        ),
        (
            {"workers": {"x": {"command": []}}},
            "workers.x.command: is empty; give the program and its arguments",
        ),
        (
            {"workers": {}, "default_worker": "codex"},
            "default_worker = 'codex' names no [workers.*] profile; define [workers.codex]",
        ),
    ],
)
def test_config_messages_say_the_fix(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    path = make_config(tmp_path)
    data = {**tomllib.loads(path.read_text()), **overrides}
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert message in str(exc.value)
    assert "List should have" not in str(exc.value)


def test_an_unusable_state_dir_is_blamed_on_state_dir_in_the_config_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    config = make_config(tmp_path, state_dir=str(blocker / "state"))
    (tmp_path / "repo").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps({"id": "T", "repo": "repo", "phases": [phase()]}))
    for args in (("run", plan), ("daemon",)):
        result = run_cli(*args, "--config", config, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"orchestrd: {config}: state_dir: " in result.stderr, result.stderr
        assert "audit" not in result.stderr
        assert "Traceback" not in result.stderr


def test_a_plan_files_errors_come_all_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "repo").mkdir()
    plan = tmp_path / "plan.toml"
    phases = [
        phase("P01", verify=[{"run": "x", "expect": "red"}]),
        phase("P01"),
        phase("P02", prerequisites=["P09"]),
    ]
    plan.write_text(tomli_w.dumps({"id": "T", "repo": "repo", "phases": phases}))
    result = run_cli("validate", plan, "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr
    assert "phases[0].verify[0].expect: must be 'pass' or 'fail'" in err
    assert "phases[1].id: phase id 'P01' appears twice" in err
    assert "phases[2].prerequisites: 'P09' is no phase" in err
