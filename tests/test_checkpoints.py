"""The checkpoints after every worker exit, in order, each an audit event with a reason:
exit code, log scan, report status, completion files and markers, verify commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import agent_profile, alive, make_config, make_plan, phase, run_plan

from orchestrd.checks import CheckContext, check_completion, check_exit, check_report
from orchestrd.config import CheckSettings
from orchestrd.plan import Plan, phase_marker_regex
from orchestrd.policy import WatchOutcome

pytestmark = pytest.mark.anyio


def checks(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event"], e["check"]) for e in events if e["event"].startswith("check.")]


async def test_checks_run_in_order_each_an_event_with_a_reason(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        phases=[
            phase(
                "P01",
                completion=[".completed/a.md", ".completed/b.md"],
                verify=[
                    {"run": "test -f reports/P01-worker.md"},
                    {"run": "exit 3", "expect": "fail"},
                ],
            )
        ],
    )
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "succeeded"
    events = run.events()
    assert checks(events) == [
        ("check.passed", "exit_code"),
        ("check.passed", "log_errors"),
        ("check.passed", "report"),
        ("check.passed", "completion"),
        ("check.passed", "completion"),
        ("check.passed", "evidence"),
        ("check.passed", "verify[0]"),
        ("check.passed", "verify[1]"),
    ]
    assert all(e["reason"] for e in events if e["event"].startswith("check."))
    names = [e["event"] for e in events]
    # every check comes after the worker's exit and before the phase's verdict
    check_at = [i for i, n in enumerate(names) if n.startswith("check.")]
    assert names.index("worker.exited") < check_at[0]
    assert check_at[-1] < names.index("phase.passed")


async def test_crashing_worker_fails_the_exit_code_check_and_the_phase(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    run = await run_plan(config, make_plan(tmp_path, worker="crash"))
    assert run.status == "failed"
    [exited] = run.events("worker.exited")
    assert exited["returncode"] == 1
    by_check = {e["check"]: e for e in run.events() if e["event"].startswith("check.")}
    assert by_check["exit_code"]["event"] == "check.failed"
    assert by_check["exit_code"]["reason"] == "exited 1"
    assert by_check["report"]["event"] == "check.failed"
    # the traceback is reported, but by default does not fail the phase on its own
    assert by_check["log_errors"]["event"] == "check.warning"
    assert "Traceback" in by_check["log_errors"]["reason"]
    [failed] = run.events("phase.failed")
    assert "exit_code: exited 1" in failed["reason"]
    assert "log_errors" not in failed["reason"]


async def test_log_error_pattern_is_only_a_warning_by_default(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, workers={"pass": agent_profile("pass", AGENT_SAY="Error: disk quota low")}
    )
    run = await run_plan(config, make_plan(tmp_path))
    assert run.status == "succeeded"
    [warning] = run.events("check.warning")
    assert warning["check"] == "log_errors"
    assert "Error: disk quota low" in warning["reason"]


async def test_log_error_pattern_fails_the_phase_when_fail_on_log_errors(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        checks={"fail_on_log_errors": True},
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_SAY="Error: disk quota low")},
    )
    run = await run_plan(config, make_plan(tmp_path))
    assert run.status == "failed"
    [failed_check] = run.events("check.failed")
    assert failed_check["check"] == "log_errors"
    [phase_failed] = run.events("phase.failed")
    assert "Error: disk quota low" in phase_failed["reason"]


async def test_phase_fail_on_log_errors_overrides_config_and_patterns_are_configurable(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        checks={"log_error_patterns": [r"PANIC\b"], "fail_on_log_errors": True},
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_SAY="Error: x; PANIC at the disco")},
    )
    plan = make_plan(tmp_path, phases=[phase("P01", fail_on_log_errors=False), phase("P02")])
    run = await run_plan(config, plan)
    warnings = run.events("check.warning")
    assert [(e["phase"], e["check"]) for e in warnings] == [("P01", "log_errors")]
    assert "'PANIC\\\\b'" in warnings[0]["reason"]
    [failed] = run.events("check.failed")
    assert (failed["phase"], failed["check"]) == ("P02", "log_errors")
    assert run.status == "failed"


async def test_missing_report_fails_the_report_check(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    run = await run_plan(config, make_plan(tmp_path, worker="no_report"))
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert failed["check"] == "report"
    assert failed["reason"] == "reports/P01-worker.md is missing; the worker must write it"


async def test_report_saying_status_fail_fails_the_phase(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    run = await run_plan(config, make_plan(tmp_path, worker="fail_report"))
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert failed["check"] == "report"
    assert "Status: FAIL" in failed["reason"]


async def test_report_with_markdown_bold_status_pass_passes(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, workers={"pass": agent_profile("pass", AGENT_STATUS_LINE="**Status:** PASS")}
    )
    run = await run_plan(config, make_plan(tmp_path))
    assert run.status == "succeeded"
    [report] = [e for e in run.events("check.passed") if e["check"] == "report"]
    assert "PASS" in report["reason"]


async def test_completion_marker_must_match_whole_phase_id(tmp_path: Path) -> None:
    # the agent writes `@plan:T.P08a`: that is another phase's marker, not P08's
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_MARKER_SUFFIX="a")},
    )
    plan = make_plan(tmp_path, phases=[phase("P08", markers=["@plan:T.P08"])])
    run = await run_plan(config, plan)
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert failed["check"] == "completion"
    assert failed["reason"] == ".completed/P08.md lacks marker(s): @plan:T.P08"
    assert "@plan:T.P08a" in (run.repo / ".completed/P08.md").read_text()


def test_every_completion_file_must_exist_and_hold_every_marker(tmp_path: Path) -> None:
    (tmp_path / "pp/.completed").mkdir(parents=True)
    (tmp_path / "pp/.completed/a.md").write_text("@plan:T.P01 and @req:R1\n")
    (tmp_path / "pp/.completed/b.md").write_text("@plan:T.P01 only\n")
    plan = Plan.model_validate(
        {
            "id": "T",
            "repo": str(tmp_path),
            "plan_dir": "pp",
            "phases": [
                phase(
                    "P01",
                    markers=["@plan:T.P01", "@req:R1"],
                    completion=[".completed/a.md", ".completed/b.md", ".completed/c.md"],
                )
            ],
        }
    )
    results = check_completion(_ctx(plan, plan.phases[0]))
    assert [(r.name, r.ok, r.reason) for r in results] == [
        ("completion", True, "pp/.completed/a.md exists with its markers"),
        ("completion", False, "pp/.completed/b.md lacks marker(s): @req:R1"),
        ("completion", False, "pp/.completed/c.md is missing"),
    ]


async def test_verify_expect_fail_passes_on_a_red_command(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, phases=[phase("P01", verify=[{"run": "exit 1", "expect": "fail"}])])
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "succeeded"
    [verify] = [e for e in run.events() if e.get("check") == "verify[0]"]
    assert verify["event"] == "check.passed"
    assert (verify["returncode"], verify["expect"]) == (1, "fail")


async def test_verify_expect_fail_fails_on_a_green_command(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    plan = make_plan(
        tmp_path, phases=[phase("P01", verify=[{"run": "echo all green", "expect": "fail"}])]
    )
    run = await run_plan(config, plan)
    assert run.status == "failed"
    [verify] = run.events("check.failed")
    assert verify["check"] == "verify[0]"
    assert verify["reason"] == "'echo all green' exited 0 but was expected to fail"
    assert verify["output_tail"] == "all green"


async def test_verify_expect_pass_fails_on_a_red_command_and_runs_in_the_repo(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    plan = make_plan(
        tmp_path,
        phases=[phase("P01", verify=[{"run": "pwd; test -f no-such-file"}])],
    )
    run = await run_plan(config, plan)
    assert run.status == "failed"
    [verify] = run.events("check.failed")
    assert (verify["check"], verify["returncode"], verify["expect"]) == ("verify[0]", 1, "pass")
    assert verify["output_tail"] == str(run.repo)


async def test_verify_command_that_times_out_fails_and_is_stopped(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    plan = make_plan(
        tmp_path,
        phases=[
            phase(
                "P01",
                verify=[{"run": "sleep 30 & echo $! > sleep.pid; wait", "timeout": "0.3s"}],
            )
        ],
    )
    run = await run_plan(config, plan)
    assert run.status == "failed"
    [verify] = run.events("check.failed")
    assert verify["check"] == "verify[0]"
    assert "timed out after 0.3s" in verify["reason"]
    assert not alive(int((run.repo / "sleep.pid").read_text()))


# -- the report and marker rules, on real files ------------------------------------------------


def _ctx(plan: Plan, ph: Any) -> CheckContext:
    return CheckContext(
        plan=plan,
        phase=ph,
        settings=CheckSettings(),
        outcome=WatchOutcome(0, 0),
        log_path=Path("/nonexistent"),
        output_dir=Path("/nonexistent"),
        attempt=1,
        env={},
        grace=0.1,
    )


def _report_plan(tmp_path: Path, text: str) -> CheckContext:
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports/P01-worker.md").write_text(text)
    plan = Plan.model_validate({"id": "T", "repo": str(tmp_path), "phases": [phase()]})
    return _ctx(plan, plan.phases[0])


@pytest.mark.parametrize(
    "text",
    [
        "Status: PASS",
        "status: pass",
        "STATUS: Pass",
        "**Status:** PASS",
        "**Status**: PASS",
        "Status: **PASS**",
        "## Status: PASSED",
        "- Status: PASS — all 12 tests green",
        "> Status: PASS",
        "# Report\n\nSome text.\n\n**Status:** PASS\n\nNotes follow.",
    ],
)
def test_report_status_pass_is_accepted_in_its_common_spellings(tmp_path: Path, text: str) -> None:
    result = check_report(_report_plan(tmp_path, text))
    assert result.ok, result.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Status: FAIL", "says Status: FAIL"),
        ("**Status:** FAIL — tests still red", "says Status: FAIL"),
        ("status: failed", "says Status: FAIL"),
        ("All done, everything passes.", "has no 'Status: PASS' or 'Status: FAIL' line"),
        ("Status: PASSING", "has no 'Status: PASS' or 'Status: FAIL' line"),
        ("The previous Status: PASS was wrong", "has no 'Status: PASS' or 'Status: FAIL' line"),
    ],
)
def test_report_without_status_pass_is_rejected_with_a_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    result = check_report(_report_plan(tmp_path, text))
    assert not result.ok
    assert result.reason == f"reports/P01-worker.md {reason}"


def test_a_report_beginning_with_a_nul_byte_is_read_as_text_not_taken_for_a_refusal(
    tmp_path: Path,
) -> None:
    result = check_report(_report_plan(tmp_path, "\0junk the agent dumped\nStatus: FAIL\n"))
    assert result.reason == "reports/P01-worker.md says Status: FAIL"


def test_report_symlinked_outside_the_repo_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("Status: PASS\n")
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "reports/P01-worker.md").symlink_to(outside)
    plan = Plan.model_validate({"id": "T", "repo": str(repo), "phases": [phase()]})
    result = check_report(_ctx(plan, plan.phases[0]))
    assert not result.ok
    assert "outside" in result.reason


@pytest.mark.parametrize(
    ("outcome", "ok", "reason"),
    [
        (WatchOutcome(0, 1), True, "exited 0"),
        (WatchOutcome(3, 0), False, "exited 3"),
        (WatchOutcome(-9, 2), False, "killed by signal 9"),
        (WatchOutcome(None, 6), False, "stalled: still running after 6 polls, stopped"),
    ],
)
def test_exit_code_check_says_how_the_worker_ended(
    outcome: WatchOutcome, ok: bool, reason: str
) -> None:
    result = check_exit(outcome)
    assert (result.name, result.ok, result.reason) == ("exit_code", ok, reason)


@pytest.mark.parametrize(
    "text",
    [
        "@plan:X.P08",
        "<!-- @plan:X.P08 -->",
        "(@plan:X.P08)",
        "@plan:X.P08.",
        " * @plan X.P08",
    ],
)
def test_marker_is_found_with_a_boundary(text: str) -> None:
    assert phase_marker_regex("@plan:X.P08").search(text)


@pytest.mark.parametrize(
    "text", ["@plan:X.P08a", "@plan:X.P081", "@plan:X.P08-b", "@plan:X.P0", "x@plan:X.P08"]
)
def test_marker_of_another_phase_does_not_count(text: str) -> None:
    assert not phase_marker_regex("@plan:X.P08").search(text)
