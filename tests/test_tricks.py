"""Checkpoints that cannot be fooled: fake agents (tests/agents/trick_*.py) commit each trick seen
in real agent-run plans to a small real git repository; each trick is caught with the right
`check.failed` (file:line and rule), the remediation worker — the same agent, honest when
ORCHESTRD_ROLE=remediation — is told exactly what failed and passes, and an honest worker
passes every rule.

The repository is a tiny workspace: packages/core (calc.py, a stub, and its tests),
packages/cli (no tests), tools/vitest.py (a stand-in for a JS test runner), scripts/test.sh
(the workers' own test script, like package.json's "test"), project-plans/demo/plan/*.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENTS, Run, agent_profile, make_config, make_plan, run_plan

pytestmark = pytest.mark.anyio

PLAN_DIR = "project-plans/demo"
SMOKE_TEST = """import unittest

from calc import add


class AddTest(unittest.TestCase):
    def test_add_exists(self) -> None:
        self.assertTrue(callable(add))
"""
RED_TEST = (
    SMOKE_TEST
    + """
    def test_adds(self) -> None:
        self.assertEqual(add(2, 3), 5)
"""
)
PHASE_FILE = "# Phase 03: implement add\n\n- [ ] add returns the sum\n- [ ] overflow handling\n"
CORE_TESTS = "python3 tools/vitest.py run --root=packages/core calc"
RED_VERIFY_FAILED = "verify-P02-1-0.log:1: 'sh scripts/test.sh' exited 1 as expected (fail), but"


def read(path: Path | str) -> str:
    return Path(path).read_text(encoding="utf-8")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def make_workspace(tmp_path: Path, red_tests: bool = False) -> Path:
    """The workspace as a git checkout with one commit (tests red already when `red_tests`)."""
    repo = tmp_path / "repo"
    files = {
        ".gitignore": ".agent/\n__pycache__/\npids-*.txt\n",
        "tools/vitest.py": (AGENTS / "vitest_standin.py").read_text(),
        "packages/core/calc.py": "def add(a: int, b: int) -> int:\n    return 0  # stub\n",
        "packages/core/tests/test_calc.py": RED_TEST if red_tests else SMOKE_TEST,
        "packages/cli/cli.py": "from calc import add\n",
        "scripts/test.sh": f"{CORE_TESTS}\n",
        f"{PLAN_DIR}/plan/02-tests.md": "# Phase 02: tests for add, red against the stub\n",
        f"{PLAN_DIR}/plan/03-impl.md": PHASE_FILE,
    }
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def red_phase(**fields: Any) -> dict[str, Any]:
    return {
        "id": "P02",
        "kind": "test",
        "prompt_file": "plan/02-tests.md",
        "markers": ["@plan:T.P02"],
        "verify": [{"run": "sh scripts/test.sh", "expect": "fail"}],
        **fields,
    }


def impl_phase(pid: str = "P03", **fields: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "kind": "impl",
        "prompt_file": "plan/03-impl.md",
        "markers": [f"@plan:T.{pid}"],
        "verify": [{"run": CORE_TESTS}],
        **fields,
    }


async def run_agent(
    tmp_path: Path,
    agent: str,
    phases: list[dict[str, Any]],
    red_tests: bool = False,
    **env: str,
) -> Run:
    repo = make_workspace(tmp_path, red_tests)
    config = make_config(
        tmp_path,
        policy={"max_remediations": 1},
        workers={agent: agent_profile(agent, **env)},
    )
    plan = make_plan(
        tmp_path,
        phases=phases,
        repo=repo,
        worker=agent,
        plan_dir=PLAN_DIR,
        protect=["project-plans/**/plan/*.md"],
    )
    return await run_plan(config, plan)


def of_attempt(run: Run, event: str, attempt: int) -> list[dict[str, Any]]:
    return [e for e in run.events(event) if e.get("attempt") == attempt]


def assert_caught_then_remediated(
    run: Run, expected: list[tuple[str, str | None, str]], phase_id: str = "P03"
) -> None:
    """Attempt 1 failed exactly these checks — (check, rule, start of the reason: `file:line`) —
    the remediation prompt listed them with their rules, and attempt 2 passed everything."""
    failed = of_attempt(run, "check.failed", 1)
    assert [(e["check"], e.get("rule")) for e in failed] == [(c, r) for c, r, _ in expected]
    for e, (_, _, start) in zip(failed, expected, strict=True):
        assert e["reason"].startswith(start), e["reason"]
    [remediation] = run.events("remediation.started")
    assert remediation["phase"] == phase_id
    prompt = run.agent(phase_id, 2)["prompt"]
    for e in failed:
        assert f"- {e['check']}: {e['reason']}" in prompt
        if "rule" in e:
            assert f"- {e['rule']}: " in prompt.split("How to fix each rule named above:")[1]
    assert of_attempt(run, "check.failed", 2) == []
    assert of_attempt(run, "check.warning", 2) == []
    assert run.status == "succeeded", run.events("phase.failed")
    # the remediation wrote its own report, and that is the one that was read
    env = run.agent(phase_id, 2)["env"]
    report = f"{PLAN_DIR}/reports/{phase_id}-remediation-1-worker.md"
    assert env["ORCHESTRD_REPORT"] == report
    assert f"`{report}`" in prompt
    [report_check] = [e for e in of_attempt(run, "check.passed", 2) if e["check"] == "report"]
    assert report_check["reason"] == f"{report}: Status: PASS"


async def test_unexpanded_shell_in_the_completion_file_is_caught(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_unexpanded", [impl_phase()], red_tests=True)
    assert_caught_then_remediated(
        run,
        [("evidence", "unexpanded_shell", f"{PLAN_DIR}/.completed/P03.md:11: unexpanded shell")],
    )
    [failed] = of_attempt(run, "check.failed", 1)
    assert failed["reason"] == (
        f"{PLAN_DIR}/.completed/P03.md:11: unexpanded shell "
        "'$(python3 tools/vitest.py run --root=packages/core calc 2>&1)' where output should be "
        "[rule: unexpanded_shell]"
    )
    assert (failed["file"], failed["line"]) == (f"{PLAN_DIR}/.completed/P03.md", 11)
    # the honest report runs its command in a ```bash block with a $(…): that is no finding
    honest_report = run.repo / f"{PLAN_DIR}/reports/P03-remediation-1-worker.md"
    assert "$(date +%s)" in read(honest_report)


async def test_placeholders_left_in_the_report_are_caught(tmp_path: Path) -> None:
    phases = [impl_phase(report_requires=["phase", "timestamp"])]
    run = await run_agent(tmp_path, "trick_placeholder", phases, red_tests=True)
    report = f"{PLAN_DIR}/reports/P03-worker.md"
    assert_caught_then_remediated(
        run,
        [
            ("evidence", "placeholder", f"{report}:4: template placeholder 'YYYY-MM-DD', 'HH:MM'"),
            ("evidence", "timestamp_line", f"{report}:4: 'Completed: YYYY-MM-DD HH:MM' holds no"),
            ("evidence", "placeholder", f"{report}:8: template placeholder '<paste'"),
        ],
    )


async def test_red_for_the_wrong_reason_is_caught(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_wrong_red", [red_phase()])
    assert_caught_then_remediated(
        run, [("verify[0]", "must_not_match", RED_VERIFY_FAILED)], phase_id="P02"
    )
    [failed] = of_attempt(run, "check.failed", 1)
    # the exit code alone said "red as expected"
    assert (failed["returncode"], failed["expect"]) == (1, "fail")
    assert "matches 'Unknown option': 'CACError: Unknown option `--filter`'" in failed["reason"]
    assert "red for the wrong reason [rule: must_not_match]" in failed["reason"]
    [verify] = [e for e in of_attempt(run, "check.passed", 2) if e["check"] == "verify[0]"]
    assert "AssertionError: 0 != 5" in read(verify["output"])


async def test_an_exit_code_that_lies_does_not_pass_a_red_phase(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_lying_exit", [red_phase()])
    assert_caught_then_remediated(
        run, [("verify[0]", "must_not_match", RED_VERIFY_FAILED)], phase_id="P02"
    )
    [failed] = of_attempt(run, "check.failed", 1)
    assert "'No test files found'" in failed["reason"]
    output = read(failed["output"])
    # the target suite passed; the 1 came from the package without tests
    assert "[packages/core] PASS tests/test_calc.py" in output
    assert failed["output_tail"].splitlines()[-1] == "[packages/core] PASS tests/test_calc.py"


async def test_an_edit_to_a_protected_phase_file_is_caught(tmp_path: Path) -> None:
    run = await run_agent(
        tmp_path,
        "trick_protected",
        [impl_phase()],
        red_tests=True,
        TRICK_PHASE_FILE=f"{PLAN_DIR}/plan/03-impl.md",
    )
    assert_caught_then_remediated(
        run,
        [("protect", "protect", f"{PLAN_DIR}/plan/03-impl.md:3: protected file modified")],
    )
    assert (run.repo / PLAN_DIR / "plan/03-impl.md").read_text() == PHASE_FILE
    # the worker's commit and its diff stat are in the audit log
    changes = of_attempt(run, "worker.changes", 1)[0]
    assert changes["commits"][0].endswith("trick: phase file edited")
    assert f"M {PLAN_DIR}/plan/03-impl.md" in changes["changed"]
    assert changes["before"]["head"] != changes["after"]["head"]


async def test_a_test_edited_in_an_implementation_phase_is_caught(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_test_edit", [impl_phase()], red_tests=True)
    assert_caught_then_remediated(
        run,
        [
            (
                "test_changes",
                "forbid_test_changes",
                "packages/core/tests/test_calc.py:11: test file modified in a impl phase",
            )
        ],
    )
    # the weakened test made the suite green: only the change rule caught it
    [verify] = [e for e in of_attempt(run, "check.passed", 1) if e["check"] == "verify[0]"]
    assert verify["returncode"] == 0


async def test_unfinished_work_added_in_an_implementation_phase_is_caught(
    tmp_path: Path,
) -> None:
    run = await run_agent(tmp_path, "trick_todo", [impl_phase()], red_tests=True)
    assert_caught_then_remediated(
        run,
        [
            ("forbidden_patterns", "forbidden_patterns", "packages/core/calc.py:2: added line"),
            ("forbidden_patterns", "forbidden_patterns", "packages/core/calc.py:3: added line"),
        ],
    )
    reasons = [e["reason"] for e in of_attempt(run, "check.failed", 1)]
    assert "'# TODO: handle overflow'" in reasons[0]
    assert "(?i)\\\\bfor now\\\\b" in reasons[1] or "for now" in reasons[1]


async def test_the_a_phase_marker_alone_does_not_count(tmp_path: Path) -> None:
    phases = [impl_phase("P08", marker_paths=[{"glob": "packages/**/*.py", "min": 1}])]
    run = await run_agent(tmp_path, "trick_p08a", phases, red_tests=True)
    assert_caught_then_remediated(
        run,
        [
            ("completion", None, f"{PLAN_DIR}/.completed/P08.md lacks marker(s): @plan:T.P08"),
            ("marker_paths", "marker_paths", "packages/**/*.py: 0 file(s) contain @plan:T.P08"),
        ],
        phase_id="P08",
    )
    [found] = [e for e in of_attempt(run, "check.passed", 2) if e["check"] == "marker_paths"]
    assert found["reason"] == "packages/**/*.py: 1 file(s) with @plan:T.P08: packages/core/calc.py"


async def test_a_failed_check_under_status_pass_is_a_contradiction(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_contradiction", [impl_phase()], red_tests=True)
    assert_caught_then_remediated(
        run,
        [("evidence", "contradiction", f"{PLAN_DIR}/reports/P03-worker.md:9: records 'Typecheck'")],
    )


async def test_an_echoed_status_pass_in_the_log_is_no_report(tmp_path: Path) -> None:
    run = await run_agent(tmp_path, "trick_echo", [impl_phase()], red_tests=True)
    assert_caught_then_remediated(
        run,
        [("report", None, f"{PLAN_DIR}/reports/P03-worker.md is missing; the worker must")],
    )
    log = (run.folder / "workers/worker-P03-1.log").read_text()
    assert "`Status: PASS`" in log  # the echoed worker contract
    assert log.rstrip().endswith("Status: PASS")  # and the agent's own claim


async def test_an_honest_worker_passes_every_rule(tmp_path: Path) -> None:
    phases = [
        red_phase(
            verify=[
                {"run": "sh scripts/test.sh", "expect": "fail", "must_match": "AssertionError"}
            ],
            report_requires=["phase", "timestamp"],
            completion_requires=["phase", "timestamp"],
        ),
        impl_phase(
            marker_paths=[{"glob": "packages/**/*.py"}],
            prerequisites=["P02"],
            report_requires=["phase", "timestamp"],
            completion_requires=["phase", "timestamp"],
        ),
        {
            "id": "P04",
            "kind": "verify",
            "prompt": "Verify the whole workspace.",
            "markers": ["@plan:T.P04"],
            "prerequisites": ["P02", "P03"],
            "verify": [{"run": CORE_TESTS}],
        },
    ]
    run = await run_agent(tmp_path, "honest", phases)
    assert run.status == "succeeded"
    assert run.events("check.failed") == [] and run.events("check.warning") == []
    assert run.events("remediation.started") == []
    checks = {(e["phase"], e["check"]) for e in run.events("check.passed")}
    assert {
        ("P02", "evidence"),
        ("P03", "marker_paths"),
        ("P03", "changes"),
        ("P03", "prerequisites"),
        ("P04", "prerequisites"),
    } <= checks
    changes = run.events("worker.changes")
    assert [e["phase"] for e in changes] == ["P02", "P03", "P04"]
    assert [len(e["commits"]) for e in changes] == [1, 1, 1]
    assert changes[1]["changed"] == [
        "M packages/core/calc.py",
        f"A {PLAN_DIR}/.completed/P03.md",
        f"A {PLAN_DIR}/reports/P03-worker.md",
    ]
    assert changes[1]["after"]["status"] == []  # committed: a clean tree
    # the daemon never touched the user's index or refs: git still sees a clean checkout
    assert git(run.repo, "status", "--porcelain") == ""
    assert git(run.repo, "stash", "list") == ""
