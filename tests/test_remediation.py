"""Remediation: a failed phase gets a fresh worker told what failed (env and prompt), up to
`max_remediations`; then the phase and the plan fail with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import agent_profile, make_config, make_plan, phase, run_plan

pytestmark = pytest.mark.anyio


async def test_phase_passes_when_the_remediation_worker_repairs_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 1})
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    assert run.status == "succeeded"
    [remediation] = run.events("remediation.started")
    assert remediation["phase"] == "P01"
    assert (remediation["attempt"], remediation["remediation"]) == (2, 1)
    assert remediation["max_remediations"] == 1
    assert remediation["reason"] == (
        "report: reports/P01-worker.md says Status: FAIL; completion: .completed/P01.md is missing"
    )
    started = run.events("worker.started")
    assert [(e["attempt"], e["role"]) for e in started] == [(1, "primary"), (2, "remediation")]
    names = run.names()
    assert names.index("remediation.started") < names.index("phase.passed")
    assert names[-1] == "plan.succeeded"


async def test_remediation_worker_gets_the_failed_log_and_the_failure_in_its_env(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 1})
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    env = run.agent("P01", 2)["env"]
    workers = run.folder / "workers"
    assert env["ORCHESTRD_ROLE"] == "remediation"
    assert env["ORCHESTRD_ATTEMPT"] == "2"
    assert env["ORCHESTRD_LOG"] == str(workers / "worker-P01-2.log")
    assert env["ORCHESTRD_FAILED_LOG"] == str(workers / "worker-P01-1.log")
    assert env["ORCHESTRD_FAILURE"] == (
        "report: reports/P01-worker.md says Status: FAIL; completion: .completed/P01.md is missing"
    )


async def test_remediation_prompt_quotes_the_failed_checks_and_the_failed_log_tail(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="crash")},
    )
    plan = make_plan(tmp_path, worker="flaky", phases=[phase("P01", prompt="Fix the parser.")])
    run = await run_plan(config, plan)
    assert run.status == "succeeded"
    prompt = run.agent("P01", 2)["prompt"]
    failed_log = run.folder / "workers/worker-P01-1.log"
    assert prompt.startswith("Fix the parser.")
    assert "## Remediation" in prompt
    assert "- exit_code: exited 1" in prompt
    assert "- report: reports/P01-worker.md is missing; the worker must write it" in prompt
    assert str(failed_log) in prompt
    # the end of the failed worker's log, traceback included
    assert "primary attempt 1: failing by crash" in prompt
    assert "RuntimeError: the agent crashed" in prompt
    assert failed_log.read_text().splitlines()[-1] in prompt
    # and the contract trailer still closes the prompt, for this attempt and role
    assert "attempt 2 (remediation)" in prompt
    assert prompt.rstrip().endswith("Exit when finished.")


async def test_stalled_primary_is_remediated_with_its_stall_as_the_reason(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"poll_interval": "0.5s", "max_polls": 2, "max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="hang")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    assert run.status == "succeeded"
    env = run.agent("P01", 2)["env"]
    assert env["ORCHESTRD_FAILURE"].startswith("exit_code: stalled: still running after 2 polls")
    assert "- exit_code: stalled" in run.agent("P01", 2)["prompt"]


async def test_exhausted_remediations_fail_the_phase_and_the_plan_with_the_reason(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 2})
    plan = make_plan(tmp_path, worker="fail_report", phases=[phase("P01"), phase("P02")])
    run = await run_plan(config, plan)
    assert run.status == "failed"
    started = run.events("worker.started")
    assert [(e["attempt"], e["role"]) for e in started] == [
        (1, "primary"),
        (2, "remediation"),
        (3, "remediation"),
    ]
    assert [e["remediation"] for e in run.events("remediation.started")] == [1, 2]
    [phase_failed] = run.events("phase.failed")
    assert phase_failed["phase"] == "P01"
    assert phase_failed["attempts"] == 3
    # each remediation writes its own report; the last one is the verdict
    assert phase_failed["reason"] == (
        "report: reports/P01-remediation-2-worker.md says Status: FAIL"
    )
    [plan_failed] = run.events("plan.failed")
    assert plan_failed["reason"] == (
        "phase P01 failed: report: reports/P01-remediation-2-worker.md says Status: FAIL"
    )
    assert plan_failed["phase"] == "P01"
    # the plan stops at the failed phase
    assert not [e for e in run.events() if e.get("phase") == "P02"]
    assert run.names()[-1] == "plan.failed"


async def test_no_remediation_when_max_remediations_is_zero(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    assert run.status == "failed"
    assert run.events("remediation.started") == []
    assert len(run.events("worker.started")) == 1


async def test_echoed_prompt_quoting_a_traceback_does_not_fail_the_remediation(
    tmp_path: Path,
) -> None:
    # Agent CLIs echo their prompt into their log, and a remediation prompt quotes the failed
    # log's traceback: that quote is not a runtime error of the remediation worker.
    config = make_config(
        tmp_path,
        checks={"fail_on_log_errors": True},
        policy={"max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="crash")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    second_log = (run.folder / "workers/worker-P01-2.log").read_text()
    assert "Traceback (most recent call last)" in second_log  # the echo is there
    assert run.status == "succeeded", run.events("phase.failed")
    log_checks = [e for e in run.events() if e.get("check") == "log_errors"]
    assert [(e["attempt"], e["event"]) for e in log_checks] == [
        (1, "check.failed"),
        (2, "check.passed"),
    ]


async def test_real_error_after_the_echoed_prompt_is_still_found(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        checks={"fail_on_log_errors": True},
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_SAY="Error: the build broke")},
    )
    plan = make_plan(tmp_path, phases=[phase("P01", prompt="If you see `Error: x`, fix it.")])
    run = await run_plan(config, plan)
    [failed] = run.events("check.failed")
    assert failed["check"] == "log_errors"
    assert "Error: the build broke" in failed["reason"]


async def test_binary_bytes_in_the_failed_log_do_not_keep_the_remediation_from_starting(
    tmp_path: Path,
) -> None:
    # NUL bytes cannot be passed in argv or the environment: the quote must do without them
    config = make_config(
        tmp_path,
        policy={"max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="garbage")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    assert run.status == "succeeded"
    facts = run.agent("P01", 2)
    assert "binary" in facts["prompt"]
    assert "\0" not in facts["prompt"] and "\0" not in facts["env"]["ORCHESTRD_FAILURE"]
