"""`orchestrd import` on the plan styles teams drift through (issue #17): P-prefixed and decimal
file numbers, ids from file names, other verification headings, `# Expected: …` comments,
status idioms, whole scripts, prechecks; each folder hand-made here, then imported, validated
and run with the bundled demo agent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import make_config, make_plan, phase, run_plan

from orchestrd import cli
from orchestrd.importer import ImportedPlan, import_plan_folder, render_plan_toml, shell_commands
from orchestrd.plan import phase_marker_regex

PLAN = "PLAN-20260211-WIDGET"
F = "```"

# The newer style: P-prefixed files, a decimal preflight phase, `Verification Tasks` with
# numbered sub-headings, a Worker Command, `# Expected:` comments, status idioms, a script.
P_STYLE = {
    "overview.md": "# Widget plan\n\nTotal Phases: 5\n\nP0.5 preflight, P02 stub, …\n",
    "P0.5-preflight.md": f"""# Phase 0.5: Preflight

## Phase ID

`{PLAN}.P0.5`

## Verification Tasks

### 1. Tools

{F}bash
command -v sh
{F}

### 2. Nothing left over

{F}bash
grep -rn "widget" --include=*.sh .
# Expected: No matches
{F}
""",
    "P02-widget-stub.md": f"""# Phase 02: Widget stub

## Phase ID

`{PLAN}.P02`

## Worker Command

{F}bash
claude -p "Implement the widget stub
described in P02-widget-stub.md"
{F}

## Implementation Tasks

{F}file:widget.sh
echo "widget: stub" >&2
exit 3
{F}

## Required Code Markers

{F}sh
# @plan {PLAN}.P02
{F}

## Verification

{F}bash
sh widget.sh 2>&1 | tail -5
{F}

This should fail because the stub exits 3.

{F}typescript
expect(widget()).toThrow()
{F}

## Failure Recovery

{F}bash
git checkout -- widget.sh
{F}

## Phase Completion Marker

Create: `project-plans/widget/.completed/P02.md`
""",
    "P02a-widget-stub-verification.md": f"""# Phase 02a: Stub verification

## Phase ID

`{PLAN}.P02a`

## Prerequisites

- P02 must be complete
- Verification: `grep -q "@plan:{PLAN}.P02" project-plans/widget/.completed/P02.md`

## Verification Commands

{F}bash
grep -q "stub" widget.sh; [ $? -ne 0 ] && echo "FAIL: no stub"
grep -rn "TODO" widget.sh
[ $? -eq 0 ] && echo "FAIL: TODO left in widget.sh"
{F}

## Phase Completion Marker

Create: `project-plans/widget/.completed/P02a.md`
""",
    "P3-widget-tests.md": f"""# Phase 3: Widget tests

## Phase ID

`{PLAN}.P3`

## Prerequisites

- Phase 02a completed
- `@plan:{PLAN}.P02a` in its completion file

## Implementation Tasks

{F}file:test_widget.sh
[ "$(sh widget.sh)" = "42" ] || {{ echo "assertion failed: widget is not 42"; exit 1; }}
{F}

## Verification Commands

{F}bash
sh test_widget.sh  # Expected: exit code 1
grep -c "42" test_widget.sh
# Expected: 1 match
{F}

## Phase Completion Marker

Create: `project-plans/widget/.completed/P3.md`
""",
    "P10-widget-impl.md": f"""# Phase 10: Widget implementation

## Phase ID

`{PLAN}.P10`

## Prerequisites

- P3 must be complete

## Implementation Tasks

{F}file:widget.sh
echo 42
{F}

## Verification Script

{F}bash
#!/bin/bash
set -euo pipefail
sh test_widget.sh
[ "$(sh widget.sh)" = 42 ]
{F}

## Phase Completion Marker

Create: `project-plans/widget/.completed/P10.md`
""",
}

# The oldest style: plain numbers, no Phase ID, no markers, no completion files, `## Verification`.
BARE = {
    "00-overview.md": "# Overview\n\nTotal Phases: 3\n",
    "01-analysis.md": f"""# Phase 01: Analysis

Write the analysis.

{F}file:analysis.md
the widget prints 42
{F}

## Verification

{F}bash
test -s analysis.md
{F}
""",
    "01a-analysis-verification.md": f"""# Phase 01a: Analysis verification

## Prerequisites

Phase 01 completed.

## Verification

{F}
grep -q 42 analysis.md
{F}
""",
    "02-widget-implementation.md": f"""# Phase 02: Implementation

{F}file:widget.sh
echo 42
{F}

## Verification

{F}bash
[ "$(sh widget.sh)" = 42 ]
{F}
""",
}


def write(root: Path, name: str, files: dict[str, str]) -> Path:
    """The plan folder `root/project-plans/NAME` holding the files; root is the repo."""
    folder = root / "project-plans" / name
    folder.mkdir(parents=True)
    for file in reversed(list(files)):  # the disk order is not the phase order
        (folder / file).write_text(files[file], encoding="utf-8")
    return folder


def warned(imported: ImportedPlan) -> list[str]:
    return [f"{w.file.name}:{w.line}: {w.message}" for w in imported.warnings]


def phases(imported: ImportedPlan) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in imported.plan["phases"]}


# ---- the P-prefixed style ----


def test_p_prefixed_and_decimal_numbers_sort_as_numbers(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert imported.plan["id"] == PLAN
    # by file name P0.5 < P02 < P02a < P10 < P3; as numbers P3 comes before P10
    assert [p["id"] for p in imported.plan["phases"]] == ["P0.5", "P02", "P02a", "P3", "P10"]
    assert [p["prompt_file"] for p in imported.plan["phases"]] == [
        "P0.5-preflight.md",
        "P02-widget-stub.md",
        "P02a-widget-stub-verification.md",
        "P3-widget-tests.md",
        "P10-widget-impl.md",
    ]
    # the phase id is what follows the plan id, not what follows the last dot
    assert phases(imported)["P0.5"]["markers"] == [f"@plan:{PLAN}.P0.5"]
    assert imported.notes[""] == ["overview.md is the plan's overview, not a phase"]


def test_verification_tasks_with_numbered_subheadings(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert phases(imported)["P0.5"]["verify"] == [
        {"run": "command -v sh", "expect": "pass"},
        {"run": 'grep -rn "widget" --include=*.sh .', "expect": "fail"},
    ]


def test_worker_command_and_other_sections_are_not_verification(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    p02 = phases(imported)["P02"]
    runs = [v["run"] for v in p02["verify"]]
    assert runs == ["sh widget.sh 2>&1"]  # no claude -p, no git checkout, no file: block
    assert not any(
        "claude" in v["run"]
        for p in imported.plan["phases"]
        for v in [*p.get("verify", []), *p.get("precheck", [])]
    )
    [hint] = [n for n in imported.notes["P02"] if "worker command" in n]
    assert hint.startswith("worker command of the plan's author (line 7; a hint, not run")
    assert 'claude -p "Implement the widget stub described in P02-widget-stub.md"' in hint
    text = render_plan_toml(imported)
    assert "# worker command of the plan's author" in text
    assert (
        "P02-widget-stub.md:35: code block ```typescript is not shell; not run by "
        "orchestrd" in warned(imported)
    )


def test_conditional_prose_and_non_commands_in_prerequisites_are_not_read(
    tmp_path: Path,
) -> None:
    files = {
        "01-x.md": f"""# Phase 01
## Prerequisites
- Verification: `analysis.md` exists
## Verification
{F}bash
npm test
{F}
The build should fail if the stub is left in.
"""
    }
    imported = import_plan_folder(write(tmp_path, "w", files), tmp_path, None)
    [p01] = imported.plan["phases"]
    assert p01["verify"] == [{"run": "npm test", "expect": "pass"}] and "precheck" not in p01
    got = warned(imported)
    assert (
        "01-x.md:3: prerequisite not checked by orchestrd: '- Verification: `analysis.md` "
        "exists'" in got
    )
    assert (
        "01-x.md:8: 'The build should fail if the stub is left in.' is a condition, not "
        "what the block above should do; not read" in got
    )


def test_the_block_wins_over_prose_and_expected_output_is_not_run(tmp_path: Path) -> None:
    files = {
        "01-x.md": f"""# Phase 01
## Verification
{F}bash
# EXPECTED TO FAIL
npm test
{F}
Once implemented, this should pass.
### Expected Output
{F}
FAIL src/widget.test.ts
{F}
"""
    }
    imported = import_plan_folder(write(tmp_path, "w", files), tmp_path, None)
    assert imported.plan["phases"][0]["verify"] == [{"run": "npm test", "expect": "fail"}]
    got = warned(imported)
    assert (
        "01-x.md:7: 'Once implemented, this should pass.' says pass, but the block says "
        "'npm test' should fail; kept fail" in got
    )
    assert (
        "01-x.md:9: code block ``` is under an expected-output heading; not run by orchestrd" in got
    )


def test_prose_after_a_block_and_the_ambiguous_pipe(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert phases(imported)["P02"]["verify"] == [{"run": "sh widget.sh 2>&1", "expect": "fail"}]
    [pipe] = [w for w in imported.warnings if "pipe" in w.message]
    assert (pipe.file.name, pipe.line) == ("P02-widget-stub.md", 30)
    assert pipe.message == (
        "'sh widget.sh 2>&1 | tail -5' is expected to fail, but a pipe's exit status is its "
        "last command's (tail: always 0), so as written it can never fail; imported as "
        "'sh widget.sh 2>&1' (the verify log keeps the whole output); write `set -o pipefail` "
        "(bash) or drop the pipe"
    )


def test_status_idioms_read_as_expectations(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert phases(imported)["P02a"]["verify"] == [
        {"run": 'grep -q "stub" widget.sh', "expect": "pass"},
        {"run": 'grep -rn "TODO" widget.sh', "expect": "fail"},
    ]
    assert phases(imported)["P3"]["verify"] == [
        {"run": "sh test_widget.sh", "expect": "fail"},
        {
            "run": 'grep -c "42" test_widget.sh',
            "expect": "pass",
            "must_match": [r"^(?:.*:)?\s*1\s*$"],
        },
    ]


def test_a_shebang_block_is_one_script(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    [script] = phases(imported)["P10"]["verify"]
    assert script["expect"] == "pass"
    assert script["run"].startswith("/bin/bash -c '#!/bin/bash\nset -euo pipefail\n")
    done = subprocess.run(["/bin/sh", "-c", script["run"]], cwd=tmp_path, capture_output=True)
    assert done.returncode != 0  # no test_widget.sh here: the script stops at its first error


def test_prerequisites_in_every_form_and_the_verification_precheck(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    notes = imported.notes
    assert any(n.startswith("prerequisite P02 (line 9): met by phase order") for n in notes["P02a"])
    assert any(n.startswith("prerequisite P02a (line 9)") for n in notes["P3"])
    assert any(n.startswith("prerequisite P02a (line 10)") for n in notes["P3"])  # @plan:…P02a
    assert any(n.startswith("prerequisite P3 (line 9)") for n in notes["P10"])
    assert phases(imported)["P02a"]["precheck"] == [
        {
            "run": f'grep -q "@plan:{PLAN}.P02" project-plans/widget/.completed/P02.md',
            "expect": "pass",
        }
    ]
    assert not [m for m in warned(imported) if "prerequisite" in m]


def test_the_overview_count_is_checked(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert not [m for m in warned(imported) if "overview" in m]  # 5 files, "Total Phases: 5"
    files = {**P_STYLE, "overview.md": "Total Phases: 7\n"}
    imported = import_plan_folder(write(tmp_path / "b", "widget", files), tmp_path / "b", None)
    assert (
        "overview.md:1: the overview says 'Total Phases: 7', but 5 phase files were "
        "imported (P0.5, P02, P02a, P3, P10)" in warned(imported)
    )


def test_every_warning_of_the_p_style_is_accounted_for(tmp_path: Path) -> None:
    imported = import_plan_folder(write(tmp_path, "widget", P_STYLE), tmp_path, None)
    assert warned(imported) == [
        "P0.5-preflight.md:1: no `Create: `…/.completed/PXX.md`` path in a '## Phase Completion "
        "Marker' section; using .completed/P0.5.md",
        "P02-widget-stub.md:35: code block ```typescript is not shell; not run by orchestrd",
        "P02-widget-stub.md:30: 'sh widget.sh 2>&1 | tail -5' is expected to fail, but a pipe's "
        "exit status is its last command's (tail: always 0), so as written it can never fail; "
        "imported as 'sh widget.sh 2>&1' (the verify log keeps the whole output); write "
        "`set -o pipefail` (bash) or drop the pipe",
    ]


# ---- the bare style: no Phase IDs, no markers ----


def test_a_folder_without_phase_ids_or_markers_gets_ids_from_file_names(tmp_path: Path) -> None:
    folder = write(tmp_path, "old-widget", BARE)
    imported = import_plan_folder(folder, tmp_path, None)
    assert imported.plan["id"] == "PLAN-OLD-WIDGET"
    assert [p["id"] for p in imported.plan["phases"]] == ["P01", "P01a", "P02"]
    assert [p["kind"] for p in imported.plan["phases"]] == ["other", "verify", "impl"]
    for p in imported.plan["phases"]:
        assert (p["completion"], p["markers"]) == ([], []), p["id"]
    assert phases(imported)["P01a"]["verify"] == [
        {"run": "grep -q 42 analysis.md", "expect": "pass"}
    ]
    got = warned(imported)
    assert got[-1] == (
        "01-analysis.md:1: no Phase ID in any file: the plan id is "
        "PLAN-OLD-WIDGET, from the folder name 'old-widget' (give --id to choose)"
    )
    assert got[:-1] == [
        f"{name}:1: no completion file and no `@plan:PLAN.PNN` marker: completion = [] and no "
        "marker check; the phase is judged by its report and verify commands"
        for name in (
            "01-analysis.md",
            "01a-analysis-verification.md",
            "02-widget-implementation.md",
        )
    ]
    assert imported.notes[""] == ["00-overview.md is the plan's overview, not a phase"]
    named = import_plan_folder(folder, tmp_path, None, "WIDGET-2")
    assert named.plan["id"] == "WIDGET-2" and "no Phase ID in any file" not in str(named.warnings)


def test_markers_in_code_blocks_name_the_plan_and_phase_in_both_forms(tmp_path: Path) -> None:
    files = {
        "03-widget-tests.md": f"# Phase 03\n\n{F}ts\n/** @plan {PLAN}.P03 */\n{F}\n",
        "04-widget-impl.md": f"# Phase 04\n\n{F}ts\n// @plan:{PLAN}.P04\n{F}\n"
        "## Phase Completion Marker\nCreate: `.completed/P04.md`\n",
    }
    imported = import_plan_folder(write(tmp_path, "w", files), tmp_path, None)
    assert imported.plan["id"] == PLAN
    p03, p04 = imported.plan["phases"]
    assert (p03["id"], p03["markers"]) == ("P03", [f"@plan:{PLAN}.P03"])
    assert (p04["id"], p04["markers"], p04["completion"]) == (
        "P04",
        [f"@plan:{PLAN}.P04"],
        [".completed/P04.md"],
    )
    assert not [m for m in warned(imported) if "Phase ID" in m]  # the markers gave the ids


def test_any_verification_heading_and_titles_naming_a_task(tmp_path: Path) -> None:
    files = {
        "11-cache-stub.md": f"""# Task 11: Cache stub

## Structural Verification

{F}bash
test -f cache.ts
{F}

### Semantic Verification Checklist

{F}bash
open the file and read it
{F}

## Anti-Fraud Command Checks

{F}bash
grep -rn "TODO" cache.ts
# Expected: no matches
{F}
""",
        "12-notes.md": "# Task 12: Notes\n\nWrite them down.\n",
    }
    imported = import_plan_folder(write(tmp_path, "w", files), tmp_path, None)
    p11, p12 = imported.plan["phases"]
    assert p11["verify"] == [
        {"run": "test -f cache.ts", "expect": "pass"},
        {"run": 'grep -rn "TODO" cache.ts', "expect": "fail"},
    ]
    assert (
        "11-cache-stub.md:11: code block ```bash is under a manual-check heading; not run by "
        "orchestrd" in warned(imported)
    )
    assert (p12["id"], p12["prompt_file"]) == ("P12", "12-notes.md")


def test_mixed_folder_warns_on_the_file_without_a_phase_id(tmp_path: Path) -> None:
    files = {
        "01-a.md": f"## Phase ID\n`{PLAN}.P01`\n",
        "02-b.md": "# Phase 02\n## Verification\n```\ntrue\n```\n",
    }
    imported = import_plan_folder(write(tmp_path, "w", files), tmp_path, None)
    assert [p["id"] for p in imported.plan["phases"]] == ["P01", "P02"]
    assert "02-b.md:1: no Phase ID: the phase is P02, from the file name" in warned(imported)


# ---- expectation forms, one block each ----


def _read(block: str) -> tuple[list[dict[str, Any]], list[str]]:
    got: list[str] = []
    cmds = shell_commands(
        list(enumerate(block.splitlines(), 1)), lambda no, msg: got.append(f"{no}: {msg}")
    )
    return cmds, got


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            'grep -rn "TODO" src/\n# Expected: No matches',
            {"run": 'grep -rn "TODO" src/', "expect": "fail"},
        ),
        (
            "grep -c TODO a.ts\n# Expected: 0 results",
            {"run": "grep -c TODO a.ts", "expect": "fail"},
        ),
        (
            "grep -rn TODO src/ | wc -l\n# Expected: 0 results",
            {"run": "grep -rn TODO src/ | wc -l", "expect": "pass", "must_match": [r"^\s*0\s*$"]},
        ),
        ("node check.js\n# Expected: exit code 1", {"run": "node check.js", "expect": "fail"}),
        ("node check.js  # Expected: exit code 0", {"run": "node check.js", "expect": "pass"}),
        ("npm test\n# Expected: all tests pass", {"run": "npm test", "expect": "pass"}),
        ("npm run lint # Expected: no errors.", {"run": "npm run lint", "expect": "pass"}),
        (
            "find . -name '*.orig'\n# Expected: no output",
            {"run": "find . -name '*.orig'", "expect": "pass", "must_not_match": [r"\S"]},
        ),
        (
            "grep -q api src/a.ts\n# Expected: match found",
            {"run": "grep -q api src/a.ts", "expect": "pass"},
        ),
        ("npm test\n# Expected: tests fail", {"run": "npm test", "expect": "fail"}),
        (
            'grep -r "stub" src/ ; [ $? -eq 0 ] && echo "FAIL: stub left"',
            {"run": 'grep -r "stub" src/', "expect": "fail"},
        ),
        (
            'grep -r "stub" src/\n[ $? -eq 0 ] && echo "FAIL: stub left"',
            {"run": 'grep -r "stub" src/', "expect": "fail"},
        ),
        (
            'grep -q x f\n[ $? -ne 0 ] && echo "FAIL: x missing"',
            {"run": "grep -q x f", "expect": "pass"},
        ),
        ('grep -q x f || echo "FAIL: x missing"', {"run": "grep -q x f", "expect": "pass"}),
        ('grep -q x f && echo "ERROR: x found"', {"run": "grep -q x f", "expect": "fail"}),
        (
            'grep -q x f || echo "x is fine"',
            {"run": 'grep -q x f || echo "x is fine"', "expect": "pass"},
        ),
        # the forms of a real project's plans, asides included
        (
            "grep -rn TODO src\n# Expected: No matches — stubs are gone (P11)",
            {"run": "grep -rn TODO src", "expect": "fail"},
        ),
        (
            "npm test\n# Expected: Tests exist but fail naturally",
            {"run": "npm test", "expect": "fail"},
        ),
        ("npm test\n# Expected: All pass, 0 failures", {"run": "npm test", "expect": "pass"}),
        ("npm run typecheck\n# Expected: 0 errors", {"run": "npm run typecheck", "expect": "pass"}),
        ("ls src/a.ts\n# Expected: File exists", {"run": "ls src/a.ts", "expect": "pass"}),
        (
            "git diff --stat\n# Expected: No diff",
            {"run": "git diff --stat", "expect": "pass", "must_not_match": [r"\S"]},
        ),
        ("npm test -- --run\n# Expected: 7/7 pass", {"run": "npm test -- --run", "expect": "pass"}),
        (
            "grep -q api a.ts\n# Expected: 1+ (the import)",
            {"run": "grep -q api a.ts", "expect": "pass"},
        ),
    ],
)
def test_expectation_forms(block: str, expected: dict[str, Any]) -> None:
    cmds, got = _read(block)
    assert cmds == [expected]
    assert got == []


@pytest.mark.parametrize(
    ("block", "expected", "warning"),
    [
        (
            "grep -q x f\n# Expected: exit code 2",
            {"run": "grep -q x f", "expect": "fail"},
            "2: '# Expected: exit code 2': expect = \"fail\" accepts any non-zero exit, not only 2",
        ),
        (
            "./build.sh\n# Expected: a lovely widget",
            {"run": "./build.sh", "expect": "pass"},
            "2: '# Expected: a lovely widget' not read; the command is judged by its exit code "
            '(expect = "pass"); add must_match to check its output',
        ),
        ("# Expected: nothing", None, "1: '# Expected: nothing' follows no command; not checked"),
        (
            "# EXPECTED TO FAIL\nnpm test 2>&1 | head -n 3 | tail -1",
            {"run": "npm test 2>&1", "expect": "fail"},
            "2: 'npm test 2>&1 | head -n 3 | tail -1' is expected to fail, "
            "but a pipe's exit status "
            "is its last command's (tail: always 0), so as written it can never fail; imported as "
            "'npm test 2>&1' (the verify log keeps the whole output); write `set -o pipefail` "
            "(bash) or drop the pipe",
        ),
        # read on grep, whose status counts once the trailing head is dropped
        (
            "grep -rn TODO src | head -3  # Expected: no matches",
            {"run": "grep -rn TODO src", "expect": "fail"},
            "1: 'grep -rn TODO src | head -3' is expected to fail, but a pipe's exit status is its "
            "last command's (head: always 0), so as written it can never fail; imported as "
            "'grep -rn TODO src' (the verify log keeps the whole output); write `set -o pipefail` "
            "(bash) or drop the pipe",
        ),
        (
            "rg -l api src\n# Expected: 3+ files",
            {"run": "rg -l api src", "expect": "pass"},
            "2: '# Expected: 3+ files': only that grep finds a match is checked, not how many; "
            "count with `grep -c` (or `| wc -l`) to check the number",
        ),
        (
            "wc -l a.ts\n# Expected: <150 lines for stub",
            {"run": "wc -l a.ts", "expect": "pass"},
            "2: '# Expected: <150 lines for stub' not read; the command is judged by its exit code "
            '(expect = "pass"); add must_match to check its output',
        ),
        (
            "npm test | tee out.log",
            {"run": "npm test | tee out.log", "expect": "pass"},
            "1: 'npm test | tee out.log': a pipe's exit status is its last command's (tee), not "
            "npm's; imported as written, expecting pass; write `set -o pipefail` (bash) or drop "
            "the pipe",
        ),
    ],
)
def test_expectations_that_are_not_clear_warn(
    block: str, expected: dict[str, Any] | None, warning: str
) -> None:
    cmds, got = _read(block)
    assert cmds == ([expected] if expected else [])
    assert got == [warning]


@pytest.mark.parametrize(
    ("said", "counts", "others"),
    [
        ("3", ["3"], ["2", "4", "13", "30"]),
        ("3 matches", ["  3"], ["33"]),
        ("3+", ["3", "9", "10", "3000"], ["0", "2"]),
        ("≥ 15", ["15", "16", "19", "20", "99", "100"], ["14", "9", "1", "05"]),
        (">= 109", ["109", "110", "199", "200", "1000"], ["108", "100", "99"]),
        ("at least 1 occurrence", ["1", "7", "10"], ["0"]),
    ],
)
def test_counts_become_a_must_match_on_the_number_printed(
    said: str, counts: list[str], others: list[str]
) -> None:
    [wc], got = _read(f"grep -r api src | wc -l\n# Expected: {said}")
    [counted], _ = _read(f"grep -c api a.ts\n# Expected: {said}")
    assert got == [] and wc["expect"] == counted["expect"] == "pass"
    [pattern], [per_file] = wc["must_match"], counted["must_match"]
    assert [n for n in counts if not re.search(pattern, f"{n}\n", re.M)] == []
    assert [n for n in others if re.search(pattern, f"{n}\n", re.M)] == []
    assert re.search(per_file, f"a.ts:{counts[0].strip()}\n", re.M)


def test_pipes_with_pipefail_or_a_meaningful_last_stage_are_left_alone() -> None:
    for block, run in [
        ("set -o pipefail\nnpm test | tail -3", "set -o pipefail\nnpm test | tail -3"),
        ("cat f | grep -q x", "cat f | grep -q x"),
        ("echo 'a | tail'", "echo 'a | tail'"),
        ("grep x f | wc -l\n# Expected: 2", "grep x f | wc -l"),
    ]:
        cmds, got = _read(block)
        assert (got, [c["run"] for c in cmds]) == ([], [run]), block


# ---- the command line: --id, --strict, --report ----


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "orchestrd.toml"
    cfg.write_text(
        tomli_w.dumps(
            {
                "state_dir": str(tmp_path / "state"),
                "default_worker": "demo",
                "allowed_repo_roots": [str(tmp_path)],
                "policy": {
                    "poll_interval": "0.05s",
                    "max_polls": 200,
                    "stop_grace": "1s",
                    "max_remediations": 0,
                },
                "workers": {
                    "demo": {
                        "command": ["{python}", "-m", "orchestrd.demo_agent", "{prompt_file}"],
                        "env": {"DEMO_AGENT_DELAY": "0"},
                    }
                },
            }
        )
    )
    return cfg


def test_strict_makes_warnings_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path, "old-widget", BARE)
    out = tmp_path / "plan.toml"
    argv = [
        "import",
        str(folder),
        "-o",
        str(out),
        "--repo",
        str(tmp_path),
        "--config",
        str(_config(tmp_path)),
    ]
    assert cli.main([*argv, "--strict"]) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "01-analysis.md:1: warning: no completion file" in err
    assert "4 warning(s) and --strict; nothing written" in err
    assert cli.main([*argv, "--id", "WIDGET"]) == 0
    assert tomllib.loads(out.read_text())["id"] == "WIDGET"
    assert cli.main([*argv, "--id", "no spaces"]) == 2
    assert "--id: 'no spaces' is not a plan id" in capsys.readouterr().err


def test_report_prints_a_table_per_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write(tmp_path, "widget", P_STYLE)
    code = cli.main(
        [
            "import",
            str(folder),
            "--dry-run",
            "--report",
            "--repo",
            str(tmp_path),
            "--config",
            str(_config(tmp_path)),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id "))
    table = [line.split() for line in lines[start : start + 6]]
    assert table[0] == [
        "id",
        "kind",
        "verify",
        "fail",
        "precheck",
        "markers",
        "completion",
        "warnings",
    ]
    assert table[1:] == [
        ["P0.5", "other", "2", "1", "0", "1", ".completed/P0.5.md", "1"],
        ["P02", "stub", "1", "1", "0", "1", ".completed/P02.md", "2"],
        ["P02a", "verify", "2", "1", "1", "1", ".completed/P02a.md", "0"],
        ["P3", "test", "2", "1", "0", "1", ".completed/P3.md", "0"],
        ["P10", "impl", "1", "0", "0", "1", ".completed/P10.md", "0"],
    ]
    assert lines[start + 6] == ("0 other warning(s) (overview, folder, files that are not phases)")


# ---- round trip: import → validate → run with the demo agent ----


@pytest.mark.parametrize(("name", "files"), [("widget", P_STYLE), ("old-widget", BARE)])
def test_round_trip_with_the_demo_agent(tmp_path: Path, name: str, files: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    folder = write(repo, name, files)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"],
        check=True,
    )
    subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "plan",
        ],
        check=True,
    )
    cfg = _config(tmp_path)
    plan_file = tmp_path / "plan.toml"

    def orchestrd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrd", *args, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    imported = orchestrd("import", str(folder), "-o", str(plan_file), "--repo", str(repo))
    assert imported.returncode == 0, imported.stderr
    validate = orchestrd("validate", str(plan_file))
    assert validate.returncode == 0, validate.stderr
    run = orchestrd("run", str(plan_file), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    events = [
        json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    ]
    plan = tomllib.loads(plan_file.read_text())
    assert [e["phase"] for e in events if e["event"] == "phase.passed"] == [
        p["id"] for p in plan["phases"]
    ]
    assert not [e for e in events if e["event"] in ("check.failed", "remediation.started")]
    verified = [
        (e["phase"], e["command"], e["expect"], e["returncode"])
        for e in events
        if e["event"] == "check.passed" and e["check"].startswith("verify")
    ]
    assert [v[:3] for v in verified] == [
        (p["id"], v["run"], v["expect"]) for p in plan["phases"] for v in p.get("verify", [])
    ]
    assert all((rc == 0) == (expect == "pass") for *_, expect, rc in verified)
    if name == "widget":
        [pre] = [e for e in events if e.get("check") == "precheck[0]"]
        assert (pre["event"], pre["phase"]) == ("check.passed", "P02a")
        assert (repo / "widget.sh").read_text() == "echo 42\n"


# ---- precheck: the plan key an imported `Verification:` prerequisite line becomes ----


@pytest.mark.anyio
async def test_a_failing_precheck_fails_the_phase_before_any_worker(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        phases=[
            phase("P01"),
            phase(
                "P02",
                precheck=[
                    {"run": "test -f .completed/P01.md"},
                    {"run": "echo checked; test -f missing.txt"},
                ],
            ),
        ],
    )
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "failed"
    assert [e["phase"] for e in run.events("worker.started")] == ["P01"]
    passed = [e for e in run.events("check.passed") if e["check"].startswith("precheck")]
    assert [(e["phase"], e["check"]) for e in passed] == [("P02", "precheck[0]")]
    [failed] = run.events("check.failed")
    assert (failed["phase"], failed["check"], failed["returncode"]) == ("P02", "precheck[1]", 1)
    [phase_failed] = run.events("phase.failed")
    assert (phase_failed["phase"], phase_failed["attempts"]) == ("P02", 0)
    assert phase_failed["reason"].startswith(
        "precheck[1]: 'echo checked; test -f missing.txt' exited 1 but was expected to pass"
    )


@pytest.mark.anyio
async def test_passing_prechecks_let_the_phase_start(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        phases=[
            phase("P01"),
            phase(
                "P02",
                prerequisites=["P01"],
                precheck=[
                    {"run": "test -f .completed/P01.md"},
                    {"run": "test -f never.txt", "expect": "fail"},
                ],
            ),
        ],
    )
    run = await run_plan(make_config(tmp_path), plan)
    assert run.status == "succeeded"
    names = [
        (e["event"], e.get("check"))
        for e in run.events()
        if e.get("phase") == "P02" and e["event"] in ("check.passed", "worker.started")
    ]
    assert names[:4] == [
        ("check.passed", "prerequisites"),
        ("check.passed", "precheck[0]"),
        ("check.passed", "precheck[1]"),
        ("worker.started", None),
    ]
    out = run.folder / "workers" / "verify-P02-0-0.log"
    assert out.is_file()


def test_a_marker_is_not_the_start_of_a_decimal_phase_marker() -> None:
    marker = phase_marker_regex("@plan:X.P0")
    assert not marker.search("<!-- @plan:X.P0.5 -->")
    assert marker.search("done: @plan:X.P0.") and marker.search("@plan X.P0\n")
