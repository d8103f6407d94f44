"""`orchestrd validate` and `orchestrd run` as a person runs them: a real subprocess, exit codes
0 / 1 / 2, and errors that name the file, the key and the fix (never a traceback)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import alive, make_config, make_plan, phase, read_events, run_cli


def write_plan(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "repo").mkdir(exist_ok=True)
    path = tmp_path / "plan.toml"
    path.write_text(tomli_w.dumps({"id": "T", "repo": "repo", **data}))
    return path


def test_validate_accepts_a_good_plan_with_exit_0(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    make_plan(tmp_path, phases=[phase("P01"), phase("P02", kind="test")])
    result = run_cli("validate", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan.toml: ok")
    assert "plan T, 2 phases" in result.stdout
    assert result.stderr == ""


def test_validate_rejects_a_bad_expect_with_exit_2_naming_the_key(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_plan(
        tmp_path,
        {
            "phases": [
                phase("P01"),
                phase("P02", verify=[{"run": "npm test", "expect": "red"}]),
            ]
        },
    )
    result = run_cli("validate", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "orchestrd: plan.toml: phases[1].verify[0].expect: must be 'pass' or 'fail'"
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"phases": [{"id": "P01"}]},
            "plan.toml: phases[0]: give exactly one of prompt",
            id="no-prompt",
        ),
        pytest.param(
            {"phases": [phase("P01"), phase("P01")]},
            "phase id 'P01' appears twice",
            id="duplicate-phase",
        ),
        pytest.param({"id": "bad id!", "phases": [phase()]}, "plan.toml: id: ", id="bad-id"),
        pytest.param(
            {"phases": [phase("P01", kind="tests")]},
            "plan.toml: phases[0].kind: must be 'stub', 'test', 'impl', 'verify' or 'other'",
            id="bad-kind",
        ),
        pytest.param(
            {"phases": [phase("P01", report="../escape.md")]},
            "plan.toml: phases[0].report: '../escape.md' leaves its folder",
            id="report-escapes",
        ),
        pytest.param(
            {"phases": [phase("P01", completion=["/etc/passwd"])]},
            "plan.toml: phases[0].completion: '/etc/passwd' is absolute",
            id="completion-absolute",
        ),
        pytest.param(
            {"phasez": [phase()]},
            "plan.toml: phasez: unknown key; check its spelling",
            id="unknown-key",
        ),
        pytest.param(
            {"worker": "nope", "phases": [phase()]},
            "plan.toml: worker: no worker profile 'nope' in the config",
            id="unknown-worker",
        ),
        pytest.param(
            {"phases": [phase("P01", policy={"poll_interval": "soon"})]},
            "plan.toml: phases[0].policy.poll_interval: 'soon' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            {"phases": [phase("P01", verify=[{"run": "true", "timeout": 0}])]},
            "plan.toml: phases[0].verify[0].timeout: 0: a duration must be greater than zero",
            id="zero-timeout",
        ),
        pytest.param(
            {"phases": [{"id": "P01", "prompt_file": "missing.md"}]},
            "plan.toml: phases[0].prompt_file: 'missing.md' does not exist",
            id="missing-prompt-file",
        ),
    ],
)
def test_validate_names_the_key_of_an_invalid_plan(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    config = make_config(tmp_path)
    write_plan(tmp_path, data)
    result = run_cli("validate", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_rejects_a_repo_outside_allowed_repo_roots(tmp_path: Path) -> None:
    config = make_config(tmp_path, allowed_repo_roots=[str(tmp_path / "repos")])
    make_plan(tmp_path)
    result = run_cli("validate", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "plan.toml: repo: " in result.stderr
    assert "is not inside allowed_repo_roots" in result.stderr


def test_validate_reports_toml_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "plan.toml").write_text('id = "T"\nrepo = \n')
    result = run_cli("validate", "plan.toml", "missing.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "plan.toml: invalid TOML" in result.stderr
    result = run_cli("validate", "missing.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "missing.toml: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"policy": {"poll_interval": "soon"}},
            "orchestrd.toml: policy.poll_interval: 'soon' is not a duration",
            id="duration",
        ),
        pytest.param(
            {"policy": {"max_polls": 0}},
            "orchestrd.toml: policy.max_polls: must be greater than 0",
            id="max-polls",
        ),
        pytest.param(
            {"polcy": {}}, "orchestrd.toml: polcy: unknown key; check its spelling", id="typo"
        ),
        pytest.param(
            {"workers": {"x": {"command": ["x", "{promt}"]}}},
            "orchestrd.toml: workers.x.command: unknown placeholder {promt}",
            id="placeholder",
        ),
    ],
)
def test_config_errors_name_the_key_and_exit_2(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    config = make_config(tmp_path, **overrides)
    make_plan(tmp_path)
    result = run_cli("validate", "plan.toml", "--config", config.name, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_config_comes_from_orchestrd_config_env_unless_given_with_config(
    tmp_path: Path,
) -> None:
    good = make_config(tmp_path)  # defines the `pass` profile the plan needs
    make_plan(tmp_path, worker="pass")
    broken = tmp_path / "broken.toml"
    broken.write_text("state_dir = [\n")
    env_good = {"ORCHESTRD_CONFIG": str(good)}
    assert run_cli("validate", "plan.toml", cwd=tmp_path, env_extra=env_good).returncode == 0
    env_broken = {"ORCHESTRD_CONFIG": str(broken)}
    result = run_cli("validate", "plan.toml", cwd=tmp_path, env_extra=env_broken)
    assert result.returncode == 2
    assert "broken.toml: invalid TOML" in result.stderr
    result = run_cli("validate", "plan.toml", "--config", good, cwd=tmp_path, env_extra=env_broken)
    assert result.returncode == 0, result.stderr


def test_run_exits_0_when_the_plan_succeeds(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    make_plan(tmp_path, phases=[phase("P01"), phase("P02")])
    result = run_cli("run", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan T: succeeded")
    # without -q the events are echoed to stderr as short lines
    assert "plan.succeeded" in result.stderr
    events = read_events(tmp_path / "state/audit.jsonl")
    assert [e["phase"] for e in events if e["event"] == "phase.passed"] == ["P01", "P02"]


def test_run_exits_1_when_the_plan_fails(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    make_plan(tmp_path, worker="fail_report")
    result = run_cli("run", "plan.toml", "--config", config, "-q", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("plan T: failed")
    assert result.stderr == ""
    [failed] = read_events(tmp_path / "state/audit.jsonl", "plan.failed")
    assert failed["reason"].startswith("phase P01 failed: report:")


def test_run_exits_2_on_an_invalid_plan_without_starting_anything(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_plan(tmp_path, {"phases": [phase("P01", verify=[{"run": "x", "expect": "red"}])]})
    result = run_cli("run", "plan.toml", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "plan.toml: phases[0].verify[0].expect: must be 'pass' or 'fail'" in result.stderr
    assert not (tmp_path / "state/plans/T").exists()


def test_sigterm_interrupts_run_stopping_the_whole_worker_tree(tmp_path: Path) -> None:
    # the worker and its grandchild ignore SIGTERM: the escalation must reach SIGKILL
    config = make_config(tmp_path, policy={"poll_interval": "0.2s", "max_polls": 200})
    plan = make_plan(tmp_path, worker="unkillable")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrd", "run", str(plan), "--config", str(config), "-q"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids_file = tmp_path / "repo/pids-P01-1.txt"
    try:
        deadline = time.monotonic() + 20
        while not pids_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pids_file.exists(), "the worker never got ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "interrupted" in out
    events = read_events(tmp_path / "state/audit.jsonl")
    names = [e["event"] for e in events]
    [stopped] = [e for e in events if e["event"] == "worker.stopped"]
    assert (stopped["why"], stopped["signal"]) == ("cancelled", "SIGKILL")
    assert names.index("daemon.stopping") < names.index("worker.stopped")
    assert names[-1] == "plan.interrupted"
    for pid in map(int, pids_file.read_text().split()):
        assert not alive(pid)
