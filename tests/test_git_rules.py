"""Git snapshots around workers and the rules on what they changed, verify commands judged by
their output, marker paths and prerequisites, and the schema of the new plan/config keys —
with real git repositories, real processes and real files."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import agent_profile, make_config, make_plan, phase, run_plan

from orchestrd.checks import files_with_markers
from orchestrd.config import UNFINISHED, CheckSettings, load_config
from orchestrd.errors import PlanError
from orchestrd.gitsnap import Git, parse_unified
from orchestrd.plan import MarkerPath, glob_regex, plan_from_dict

pytestmark = pytest.mark.anyio


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def git_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git checkout with one commit of `files` (and a .gitignore for the fake agents)."""
    files = {".gitignore": ".agent/\n__pycache__/\nbuild/\n", "README.md": "# x\n", **(files or {})}
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "init", "-q")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


# -- gitsnap: snapshots that leave the user's repository alone ----------------------------------


async def test_snapshot_sees_the_whole_working_tree_without_touching_index_or_refs(
    tmp_path: Path,
) -> None:
    repo = git_repo(tmp_path / "repo", {"src/a.py": "a = 1\n"})
    (repo / "staged.py").write_text("s = 1\n")
    git(repo, "add", "staged.py")
    index = (repo / ".git/index").read_bytes()
    refs = git(repo, "show-ref")
    g = Git(repo, tmp_path / "scratch", timeout=10)
    before = await g.snapshot("t")
    (repo / "src/a.py").write_text("a = 2\nb = 3\n")
    (repo / "new.py").write_text("n = 1\n")
    (repo / "build").mkdir()
    (repo / "build/out.bin").write_text("ignored\n")
    (repo / "README.md").unlink()
    after = await g.snapshot("t")
    changed = await g.changed(before.tree, after.tree)
    assert [(c.status, c.path) for c in changed] == [
        ("D", "README.md"),
        ("A", "new.py"),
        ("M", "src/a.py"),
    ]
    added, first = await g.added_lines(before.tree, after.tree)
    assert [(a.path, a.line, a.text) for a in added] == [
        ("new.py", 1, "n = 1"),
        ("src/a.py", 1, "a = 2"),
        ("src/a.py", 2, "b = 3"),
    ]
    assert first == {"README.md": 0, "new.py": 1, "src/a.py": 1}
    assert "A  staged.py" in before.status and "?? new.py" in after.status
    assert "1 file changed" in after.diffstat or "files changed" in after.diffstat
    # the user's staged change, index and refs are as they were; what the snapshots wrote is
    # in our own repository in the scratch folder, not in the user's
    assert (repo / ".git/index").read_bytes() == index
    assert git(repo, "show-ref") == refs
    assert git(repo, "diff", "--cached", "--name-only") == "staged.py\n"
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["snapshot.git"]
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "cat-file", "-e", after.tree)


async def test_commits_are_compared_as_trees(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    g = Git(repo, tmp_path / "scratch", timeout=10)
    before = await g.snapshot("t")
    (repo / "x.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "worker commit")
    after = await g.snapshot("t")
    assert before.head != after.head and after.status == []
    assert [(c.status, c.path) for c in await g.changed(before.tree, after.tree)] == [("A", "x.py")]
    commits, count = await g.commits(before.head, after.head)
    assert [c.split(" ", 1)[1] for c in commits] == ["worker commit"] and count == 1


async def test_a_folder_that_is_no_checkout_or_an_ignored_one_is_named(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert await Git(plain, tmp_path / "s", 10).problem() == f"{plain} is not a git checkout"
    outer = git_repo(tmp_path / "outer", {".gitignore": "inner/\n"})
    (outer / "inner").mkdir()
    problem = await Git(outer / "inner", tmp_path / "s", 10).problem()
    assert problem == f"{outer / 'inner'} is ignored by the git checkout around it (.gitignore)"
    (outer / "sub").mkdir()
    assert await Git(outer / "sub", tmp_path / "s", 10).problem() is None


def test_unified_diff_line_numbers_follow_the_hunks() -> None:
    diff = (
        "diff --git a/f.py b/f.py\n--- a/f.py\n+++ b/f.py\n@@ -3,0 +4,2 @@\n+x\n+y\n"
        "@@ -10 +12 @@\n-old\n+new\n\\ No newline at end of file\n"
        "diff --git a/g.py b/g.py\n--- a/g.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n"
    )
    added, first = parse_unified(diff)
    assert [(a.path, a.line, a.text) for a in added] == [
        ("f.py", 4, "x"),
        ("f.py", 5, "y"),
        ("f.py", 12, "new"),
    ]
    assert first == {"f.py": 4, "g.py": 0}


@pytest.mark.parametrize(
    ("glob", "path", "hit"),
    [
        ("**/test_*.py", "test_a.py", True),
        ("**/test_*.py", "pkg/sub/test_a.py", True),
        ("**/__tests__/**", "src/__tests__/a.ts", True),
        ("tests/**", "tests/unit/a.py", True),
        ("project-plans/**/plan/*.md", "project-plans/x/plan/05-tests.md", True),
        ("project-plans/**/plan/*.md", "project-plans/x/plan/sub/05.md", False),
        ("src/*.ts", "src/a/b.ts", False),
        ("**/*.test.ts", "src/calc.ts", False),
    ],
)
def test_globs_match_repo_paths(glob: str, path: str, hit: bool) -> None:
    assert bool(glob_regex(glob).match(path)) is hit


@pytest.mark.parametrize(
    ("line", "hit"),
    [
        ("// TODO: later", True),
        ("throw new Error('NotYetImplemented')", True),
        ("return 0; // for now", True),
        ("# placeholder implementation", True),
        ("return 'placeholder'", True),
        ('<input placeholder="Search" />', False),
        ("placeholder?: string;", False),
        ("input.placeholder = label;", False),
        ("<Field placeholder={placeholder} />", False),
        ("const todoList = []", False),
    ],
)
def test_default_forbidden_patterns_are_precise(line: str, hit: bool) -> None:
    assert any(re.search(p, line) for p in UNFINISHED) is hit


# -- the rules in a run -------------------------------------------------------------------------


async def test_without_git_the_change_rules_are_a_warning_not_a_crash(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, phases=[phase("P01", kind="impl"), phase("P02")])
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "succeeded"
    warning, no_changes = run.events("check.warning")
    assert (warning["phase"], warning["check"]) == ("P01", "git")
    assert (no_changes["phase"], no_changes["check"]) == ("P01", "no_changes")
    assert warning["reason"] == (
        f"{run.repo} is not a git checkout; not checked: forbid_test_changes, forbidden_patterns"
    )
    assert run.events("worker.changes") == []


async def test_files_written_by_verify_commands_are_not_blamed_on_workers(
    tmp_path: Path,
) -> None:
    # the primary fails; its verify command writes into tests/ between the attempts; the
    # remediation is judged on what workers changed, and the verify's file is not theirs
    repo = git_repo(tmp_path / "repo")
    config = make_config(tmp_path, policy={"max_remediations": 1})
    verify = [{"run": "mkdir -p tests && echo 'x = 1' >> tests/test_generated.py"}]
    plan = make_plan(
        tmp_path,
        repo=repo,
        worker="flaky",
        phases=[phase("P01", kind="impl", verify=verify, allow_no_changes=True)],
    )
    run = await run_plan(config, plan)
    assert run.status == "succeeded", run.events("check.failed")
    assert [e["check"] for e in run.events("check.failed")] == ["report", "completion"]
    changes = [e for e in run.events("check.passed") if e["check"] == "changes"]
    assert [e["attempt"] for e in changes] == [1, 2]
    second = [e for e in run.events("worker.changes") if e["attempt"] == 2][0]
    assert "A tests/test_generated.py" not in second["changed"]  # the verify wrote it, before
    assert "?? tests/test_generated.py" in second["before"]["status"]


async def test_phase_overrides_switch_change_rules_on_and_off(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_SAY="x")},
        checks={"forbidden_patterns": {"other": [r"\bdone\b"]}},
    )
    # the completion file says "done", but it is an orchestrd file: never a violation; the
    # fake agent's .agent/ record is ignored by .gitignore
    plan = make_plan(
        tmp_path,
        repo=repo,
        phases=[
            phase("P01", protect=["README.md"], forbid_test_changes=True),
            phase(
                "P02",
                kind="impl",
                forbidden_patterns=[],
                forbid_test_changes=False,
                allow_no_changes=True,
            ),
        ],
    )
    run = await run_plan(config, plan)
    assert run.status == "succeeded", run.events("check.failed")
    passed = {
        e["phase"]: e["reason"] for e in run.events("check.passed") if e["check"] == "changes"
    }
    assert passed["P01"].endswith("protect, forbid_test_changes, forbidden_patterns: ok")
    assert "P02" not in passed  # nothing in force: no check at all


async def test_verify_output_rules_must_match_and_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"max_remediations": 0})
    verify = [
        {"run": "echo 'Ran 0 tests'"},  # default for expect=pass: tested nothing
        {"run": "echo 'Ran 0 tests'", "default_must_not_match": False},
        {"run": "echo '3 passed'", "must_match": [r"\d+ passed", "coverage"]},
        {"run": "echo 'boom'; exit 1", "expect": "fail", "must_not_match": "boom"},
    ]
    run = await run_plan(config, make_plan(tmp_path, phases=[phase("P01", verify=verify)]))
    by = {e["check"]: e for e in run.events() if e.get("check", "").startswith("verify")}
    assert by["verify[0]"]["event"] == "check.failed"
    assert by["verify[0]"]["reason"].startswith(
        "verify-P01-1-0.log:1: \"echo 'Ran 0 tests'\" exited 0 as expected (pass), but its "
        "output matches '\\\\bRan 0 tests\\\\b': 'Ran 0 tests'"
    )
    assert "green for the wrong reason [rule: must_not_match]" in by["verify[0]"]["reason"]
    assert by["verify[1]"]["event"] == "check.passed"
    assert by["verify[2]"]["reason"] == (
        "verify-P01-1-2.log: \"echo '3 passed'\" exited 0 as expected (pass), but its output "
        "never matches 'coverage' — green for the wrong reason [rule: must_match]"
    )
    assert (by["verify[3]"]["rule"], by["verify[3]"]["line"]) == ("must_not_match", 1)


async def test_marker_paths_count_files_and_accept_the_space_form(tmp_path: Path) -> None:
    (tmp_path / "src/sub").mkdir(parents=True)
    (tmp_path / "src/a.ts").write_text("/** @plan T.P08 */\n")
    (tmp_path / "src/sub/b.ts").write_text("// @plan:T.P08\n")
    (tmp_path / "src/sub/c.ts").write_text("// @plan:T.P08a\n")
    (tmp_path / "src/d.py").write_text("# @plan:T.P08\n")
    found = files_with_markers(tmp_path, MarkerPath(glob="src/**/*.ts"), ["@plan:T.P08"])
    assert found == {"@plan:T.P08": ["src/a.ts", "src/sub/b.ts"]}


async def test_a_phase_whose_prerequisite_left_no_marker_fails_before_any_worker(
    tmp_path: Path,
) -> None:
    plan = make_plan(tmp_path, phases=[phase("P01"), phase("P02", prerequisites=["P01"])])
    run = await run_plan(make_config(tmp_path), plan, passed=["P01"])
    assert run.status == "failed"
    assert run.events("worker.started") == []
    [failed] = run.events("check.failed")
    assert (failed["phase"], failed["check"]) == ("P02", "prerequisites")
    assert failed["reason"] == (
        "P01: .completed/P01.md is missing; phase P01 must be done before P02 starts"
    )
    [phase_failed] = run.events("phase.failed")
    assert phase_failed["attempts"] == 0
    assert phase_failed["reason"] == f"prerequisites: {failed['reason']}"
    names = run.names()
    assert names.index("phase.started") < names.index("check.failed") < names.index("phase.failed")


async def test_a_met_prerequisite_is_a_passed_check(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, phases=[phase("P01"), phase("P02", prerequisites=["P01"])])
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "succeeded"
    [met] = [e for e in run.events("check.passed") if e["check"] == "prerequisites"]
    assert met["reason"] == "P01: .completed/P01.md exists with its markers"


# -- schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        (
            [phase("P01", prerequisites=["P02"]), phase("P02")],
            "phases[0].prerequisites: 'P02' is a later phase; name earlier phases only "
            "(there are none before P01)",
        ),
        (
            [phase("P01"), phase("P02", prerequisites=["P9"])],
            "phases[1].prerequisites: 'P9' is no phase; name earlier phases only (P01)",
        ),
        (
            [phase("P01", verify=[{"run": "x", "must_match": "("}])],
            "phases[0].verify[0].must_match: '(' is not a valid regex",
        ),
        (
            [phase("P01", markers=[], marker_paths=[{"glob": "src/**"}])],
            "phases[0]: marker_paths: the phase has no markers to look for",
        ),
        (
            [phase("P01", remediation_report="reports/fix-{attempt}.md")],
            "phases[0].remediation_report: unknown placeholder {attempt}",
        ),
        (
            [phase("P01", protect=["../outside/*"])],
            "phases[0].protect: '../outside/*': a glob is relative to the repo",
        ),
        (
            [phase("P01", report_requires=["date"])],
            "phases[0].report_requires[0]: must be 'phase' or 'timestamp'",
        ),
    ],
)
def test_new_plan_keys_are_validated_with_the_key_and_the_fix(
    tmp_path: Path, phases: list[dict[str, Any]], message: str
) -> None:
    config, _ = load_config(make_config(tmp_path))
    (tmp_path / "repo").mkdir()
    with pytest.raises(PlanError) as err:
        plan_from_dict(
            {"id": "T", "repo": str(tmp_path / "repo"), "phases": phases}, "p.toml", config
        )
    assert f"p.toml: {message}" in str(err.value)


def test_per_kind_pattern_tables_keep_their_other_defaults() -> None:
    settings = CheckSettings.model_validate(
        {"expect_fail_must_not_match": {"test": ["AssertionError: expected"]}}
    )
    test_patterns = settings.expect_fail_must_not_match.for_kind("test")
    assert "CACError" in test_patterns and "AssertionError: expected" in test_patterns
    assert "NotYetImplemented" not in test_patterns
    assert "NotYetImplemented" in CheckSettings().expect_fail_must_not_match.for_kind("test")
    assert "NotYetImplemented" not in CheckSettings().expect_fail_must_not_match.for_kind("stub")
    with pytest.raises(ValueError, match="tests"):
        CheckSettings.model_validate({"forbidden_patterns": {"tests": ["x"]}})


def test_the_commented_default_config_states_the_check_defaults() -> None:
    # config/orchestrd.toml spells every [checks] default out: it must not drift from the code
    text = (Path(__file__).parent.parent / "config/orchestrd.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert CheckSettings.model_validate(data["checks"]) == CheckSettings()
    assert set(data["checks"]) == set(CheckSettings.model_fields)
