"""False passes of the trust core, each from an issue (#11, #23): evidence an earlier run left
behind, a Status PASS quoted in a fenced block, changes hidden from git by index flags, ignore
rules or repo-configured programs, and an uncapped worker.changes event — with real git
repositories, real processes and the real runner."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import agent_profile, make_config, make_plan, phase, run_plan

from orchestrd.checks import CheckContext, check_report
from orchestrd.config import CheckSettings
from orchestrd.gitsnap import COMMITS, Git, PhaseGit
from orchestrd.plan import Plan
from orchestrd.policy import WatchOutcome

pytestmark = pytest.mark.anyio

STALE_REPORT = "# P01 worker report\n\nStatus: PASS\n"
STALE_COMPLETION = "# P01 done\n- @plan:T.P01\n"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def git_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    files = {".gitignore": ".agent/\n__pycache__/\n", "README.md": "# x\n", **(files or {})}
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "init", "-q")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "commit.gpgsign", "false")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def failed(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(e["check"], e.get("rule"), e.get("file")) for e in events]


# -- 1. stale evidence --------------------------------------------------------------------------


@pytest.mark.parametrize("with_git", [True, False])
async def test_report_and_completion_left_by_an_earlier_run_are_stale(
    tmp_path: Path, with_git: bool
) -> None:
    files = {"reports/P01-worker.md": STALE_REPORT, ".completed/P01.md": STALE_COMPLETION}
    repo = tmp_path / "repo"
    if with_git:
        git_repo(repo, files)  # committed by an earlier run
    else:
        for rel, text in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
    config = make_config(
        tmp_path, policy={"max_remediations": 0}, workers={"idle": agent_profile("idle")}
    )
    run = await run_plan(config, make_plan(tmp_path, repo=repo, worker="idle"))
    assert run.status == "failed"
    assert failed(run.events("check.failed")) == [
        ("report", "stale", "reports/P01-worker.md"),
        ("completion", "stale", ".completed/P01.md"),
    ]
    [report] = [e for e in run.events("check.failed") if e["check"] == "report"]
    assert report["reason"] == (
        "reports/P01-worker.md: unchanged since the phase began: no worker of this phase wrote "
        "it, so it is no evidence of this phase's work [rule: stale]"
    )
    assert not [e for e in run.events("check.passed") if e["check"] == "evidence"]


async def test_a_file_rewritten_by_the_worker_is_fresh_even_with_the_same_text(
    tmp_path: Path,
) -> None:
    # without git the mtime tells a rewrite from a leftover; a file absent before is fresh
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "reports/P01-worker.md").write_text("# P01 worker report\n\nStatus: PASS\n")
    os.utime(repo / "reports/P01-worker.md", (1_000_000, 1_000_000))
    run = await run_plan(make_config(tmp_path), make_plan(tmp_path, repo=repo))
    assert run.status == "succeeded", run.events("check.failed")


async def test_remediation_is_told_how_to_repair_a_stale_file(tmp_path: Path) -> None:
    repo = git_repo(
        tmp_path / "repo",
        {"reports/P01-worker.md": STALE_REPORT, ".completed/P01.md": STALE_COMPLETION},
    )
    config = make_config(
        tmp_path, policy={"max_remediations": 1}, workers={"idle": agent_profile("idle")}
    )
    run = await run_plan(config, make_plan(tmp_path, repo=repo, worker="idle"))
    assert run.status == "failed"
    prompt = (run.folder / "workers/prompt-P01-2.md").read_text()
    assert "- stale: the file is the same as before this phase began" in prompt
    # the remediation's own report path was absent before: missing, not stale
    second = [e for e in run.events("check.failed") if e["attempt"] == 2]
    assert failed(second) == [
        ("report", None, None),
        ("completion", "stale", ".completed/P01.md"),
    ]


# -- 3. Status lines in fenced blocks -----------------------------------------------------------


def _report_ctx(tmp_path: Path, text: str) -> CheckContext:
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "reports/P01-worker.md").write_text(text)
    plan = Plan.model_validate(
        {"id": "T", "repo": str(repo), "phases": [{"id": "P01", "prompt": "x"}]}
    )
    return CheckContext(
        plan=plan,
        phase=plan.phases[0],
        settings=CheckSettings(),
        outcome=WatchOutcome(0, 1),
        log_path=tmp_path / "log",
        output_dir=tmp_path,
        attempt=1,
        env={},
        grace=0.1,
    )


def test_a_status_pass_quoted_in_a_fence_after_a_fail_is_no_verdict(tmp_path: Path) -> None:
    text = "# Report\n\nStatus: FAIL\n\nEarlier report:\n```\nStatus: PASS\n```\n"
    result = check_report(_report_ctx(tmp_path, text))
    assert not result.ok
    assert result.reason == "reports/P01-worker.md says Status: FAIL"


def test_a_status_only_inside_a_fence_is_no_status(tmp_path: Path) -> None:
    result = check_report(_report_ctx(tmp_path, "# Report\n\n~~~\nStatus: PASS\n~~~\n"))
    assert not result.ok
    assert "has no 'Status: PASS' or 'Status: FAIL' line" in result.reason


def test_two_verdicts_outside_fences_that_disagree_are_a_contradiction(tmp_path: Path) -> None:
    result = check_report(_report_ctx(tmp_path, "Status: FAIL\n\nfixed it.\n\nStatus: PASS\n"))
    assert not result.ok
    assert result.details["rule"] == "contradiction"
    assert result.reason == (
        "reports/P01-worker.md: Status: PASS (line 5) and Status: FAIL (line 1) disagree; a "
        "report has one verdict [rule: contradiction]"
    )


# -- 2. changes hidden from git -----------------------------------------------------------------


async def run_trick(tmp_path: Path, trick: str, **env: str) -> Any:
    repo = git_repo(
        tmp_path / "repo",
        {
            ".gitignore": ".agent/\n__pycache__/\nnode_modules/\n",
            "node_modules/.keep": "",
            "calc.py": "def add(a, b):\n    return 0\n",
            "tests/test_calc.py": "from calc import add\n\ndef test_add():\n"
            "    assert add(2, 3) == 5\n",
        },
    )
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        workers={"hide": agent_profile("git_hide", AGENT_TRICK=trick, **env)},
    )
    plan = make_plan(tmp_path, repo=repo, worker="hide", phases=[phase("P01", kind="impl")])
    return await run_plan(config, plan)


@pytest.mark.parametrize("flag", ["skip-worktree", "assume-unchanged"])
async def test_index_flags_do_not_hide_an_edited_test(tmp_path: Path, flag: str) -> None:
    run = await run_trick(tmp_path, flag)
    assert run.status == "failed"
    assert failed(run.events("check.failed")) == [
        ("test_changes", "forbid_test_changes", "tests/test_calc.py"),
    ]
    [changes] = run.events("worker.changes")
    assert "M tests/test_calc.py" in changes["changed"]
    assert not (run.folder / "workers/snapshot.git").exists()  # gone with the plan


async def test_an_exclude_the_worker_adds_hides_nothing_and_is_reported(tmp_path: Path) -> None:
    run = await run_trick(tmp_path, "exclude")
    assert run.status == "failed"
    assert failed(run.events("check.failed")) == [
        ("git_tampering", "git_tampering", ".git/info/exclude"),
        ("test_changes", "forbid_test_changes", "conftest.py"),
    ]
    [tamper] = [e for e in run.events("check.failed") if e["check"] == "git_tampering"]
    assert tamper["reason"] == (
        ".git/info/exclude: .git/info/exclude modified during the phase: it decides how git "
        "sees the repository [rule: git_tampering]"
    )


async def test_the_users_excludes_file_is_pinned_at_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore = tmp_path / "xdg/git/ignore"
    ignore.parent.mkdir(parents=True)
    ignore.write_text("*.swp\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    run = await run_trick(tmp_path, "global-exclude", AGENT_IGNORE=str(ignore))
    assert run.status == "failed"
    assert failed(run.events("check.failed")) == [
        ("git_tampering", "git_tampering", f"core.excludesFile {ignore}"),
        ("test_changes", "forbid_test_changes", "conftest.py"),
    ]


async def test_a_gitignore_that_ignores_itself_and_a_new_test_is_seen(tmp_path: Path) -> None:
    run = await run_trick(tmp_path, "gitignore")
    assert run.status == "failed"
    assert failed(run.events("check.failed")) == [
        ("git_tampering", "git_tampering", "tests/.gitignore"),
        ("test_changes", "forbid_test_changes", "tests/test_extra.py"),
    ]
    prompt_rules = run.events("phase.failed")[0]["reason"]
    assert "a .gitignore git ignores hides itself and what it names" in prompt_rules


async def test_no_program_the_repo_config_names_is_run_by_the_daemon(tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    run = await run_trick(tmp_path, "programs", AGENT_MARK=str(mark))
    assert run.status == "failed"
    ran = sorted(p.name for p in os.scandir(tmp_path) if p.name.startswith("ran-"))
    assert ran == ["ran-hook.sh"]  # the worker's own script: nothing ever ran it
    checks = failed(run.events("check.failed"))
    assert ("git_tampering", "git_tampering", ".git/config") in checks
    assert ("git_tampering", "git_tampering", ".git/hooks/post-index-change") in checks
    assert ("test_changes", "forbid_test_changes", "tests/test_calc.py") in checks


async def test_a_repository_broken_during_the_phase_fails_it(tmp_path: Path) -> None:
    run = await run_trick(tmp_path, "break-head")
    assert run.status == "failed"
    assert [(e["check"], e.get("rule")) for e in run.events("check.failed")] == [
        ("git_tampering", "git_tampering"),
        ("git", None),
    ]
    assert run.events("check.warning") == []


async def test_test_files_in_a_folder_ignored_before_the_phase_are_not_compared(
    tmp_path: Path,
) -> None:
    # node_modules/ was there (and ignored) at the baseline: what a package brings is not a
    # test the worker changed
    run = await run_trick(tmp_path, "deps")
    assert run.status == "succeeded", run.events("check.failed")


# -- 5. worker.changes stays small --------------------------------------------------------------


async def test_worker_changes_is_capped_and_says_what_was_cut(tmp_path: Path) -> None:
    run = await run_trick(tmp_path, "many-files", AGENT_FILES="3000")
    line = next(
        raw for raw in run.config.audit_path.read_text().splitlines() if '"worker.changes"' in raw
    )
    assert len(line) < 64 * 1024, len(line)
    changes = json.loads(line)
    assert changes["changed_count"] == 3002  # the files, the report, the completion file
    assert len(changes["changed"]) == 500
    assert changes["cut"] == {
        "diffstat": 2902,
        "after.status": 2802,
        "changed": 2502,
    }
    assert changes["diffstat"].splitlines()[-1].startswith(" 3002 files changed")


async def test_findings_per_rule_are_capped(tmp_path: Path) -> None:
    run = await run_trick(tmp_path, "many-files", AGENT_FILES="30", AGENT_DIR="tests")
    assert run.status == "failed"
    found = [e for e in run.events("check.failed") if e["check"] == "test_changes"]
    assert len(found) == 21
    assert found[-1]["reason"] == "… and 10 more like these"


async def test_commits_are_listed_up_to_a_cap_and_counted(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    g = Git(repo, tmp_path / "scratch", timeout=10)
    before = await g.snapshot("t")
    for i in range(COMMITS + 3):
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {i} " + "x" * 400)
    after = await g.snapshot("t")
    commits, count = await g.commits(before.head, after.head)
    assert (len(commits), count) == (COMMITS, COMMITS + 3)
    event = await PhaseGit(g)._event(before, after, [])
    assert event["cut"] == {"commits": 3}
    listed = event["commits"]
    assert isinstance(listed, list) and all(len(c) <= 300 for c in listed)


@pytest.mark.parametrize("fail", ["❌ FAIL", "FAILING", "**FAILED** (3 tests)", "PASS/FAIL"])
def test_any_status_line_that_names_a_failure_is_one(tmp_path: Path, fail: str) -> None:
    # a FAIL the worker wrote in other words must not be outvoted by a later PASS
    result = check_report(_report_ctx(tmp_path, f"Status: {fail}\n\nfixed.\n\nStatus: PASS\n"))
    assert not result.ok
    assert result.details["rule"] == "contradiction"
