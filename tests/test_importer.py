"""`orchestrd import`: markdown phase folders built in tmp_path, checked field by field, and a
round trip import → validate → run with a fake agent."""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from orchestrd import __version__, cli
from orchestrd.config import config_from_dict
from orchestrd.errors import OrchestrdError, PlanError
from orchestrd.importer import (
    ImportedPlan,
    add_subcommand,
    import_plan_folder,
    kind_from_name,
    render_plan_toml,
    shell_commands,
    shell_unfinished,
)
from orchestrd.plan import plan_from_dict

AGENT = Path(__file__).parent / "agents" / "importer_agent.py"
PLAN = "PLAN-20251018-DEMO"
FENCE = "```"

# A realistic plan: overview, stub, stub verification, tests, implementation, verification.
NORMAL = {
    "00-overview.md": f"""# Plan: demo guardrail

Plan ID: {PLAN}

Phases 01–03a build the guardrail: stub, tests (red), implementation (green).
""",
    "01-guardrail-stub.md": f"""# Phase 01: Guardrail stub

## Phase ID

`{PLAN}.P01`

## Implementation Tasks

Create the stub.

{FENCE}typescript
/** @plan {PLAN}.P01 */
export function guard(): never {{ throw new Error("NotYetImplemented"); }}
{FENCE}

## Required Code Markers

{FENCE}typescript
/**
 * @plan {PLAN}.P01
 * @requirement REQ-001
 */
{FENCE}

## Verification Commands

### Automated Checks

{FENCE}bash
# The stub exists
test -f work/P01.txt

# Later phases have not run yet
test -f work/P02.txt && exit 1
{FENCE}

## Success Criteria

- the stub compiles

## Failure Recovery

1. `git checkout -- src/guard.ts`

## Phase Completion Marker

Create: `project-plans/demo/.completed/P01.md`
""",
    "01a-guardrail-stub-verification.md": f"""# Phase 01a: Stub verification

## Phase ID

`{PLAN}.P01a`

## Prerequisites

- Required: Phase 01 completed
- Verification: `grep -r "@plan:{PLAN}.P01" project-plans/demo/.completed/`

## Verification Commands

{FENCE}bash
grep -q "@plan:{PLAN}.P01" project-plans/demo/.completed/P01.md
{FENCE}

## Phase Completion Marker

Create: `project-plans/demo/.completed/P01a.md`
""",
    "02-guardrail-tests.md": f"""# Phase 02: Guardrail TDD

## Phase ID

`{PLAN}.P02`

## Prerequisites

- Required: Phase 01a (stub verification) completed

## Required Code Markers

Every test carries `@plan:{PLAN}.P02`.

## Verification Commands

{FENCE}bash
# Tests exist
test -f work/P02.txt && \\
  test -f work/P01.txt

# EXPECTED TO FAIL
test -f work/P03.txt
{FENCE}

## Phase Completion Marker

Create: `project-plans/demo/.completed/P02.md`
""",
    "03-guardrail-implementation.md": f"""# Phase 03: Guardrail implementation

## Phase ID

`{PLAN}.P03`

## Prerequisites

- Required: Phase 02 completed

## Verification Commands

### Automated Checks

{FENCE}bash
for p in P01 P02 P03; do
  test -f "work/$p.txt" || exit 1
done
{FENCE}

{FENCE}sh
cat <<'EOF' | grep -q ready
ready
EOF
{FENCE}

## Phase Completion Marker

Create: `project-plans/demo/.completed/P03.md`
""",
    "03a-guardrail-implementation-verification.md": f"""# Phase 03a: Implementation verification

## Phase ID

`{PLAN}.P03a`

## Prerequisites

- Required: Phase 03 completed

## Verification Commands

### Automated Checks

{FENCE}bash
true
# every phase so far left its file behind (P03a's own included)
COUNT=$(ls work | wc -l)
[ "$COUNT" -eq 5 ]
{FENCE}

### Manual Verification Checklist

- [ ] the guard reads well

## Phase Completion Marker

Create: `project-plans/demo/.completed/P03a.md`
""",
}

NORMAL_VERIFY = {
    "P01": [
        {"run": "test -f work/P01.txt", "expect": "pass"},
        {"run": "test -f work/P02.txt", "expect": "fail"},
    ],
    "P01a": [
        {
            "run": f'grep -q "@plan:{PLAN}.P01" project-plans/demo/.completed/P01.md',
            "expect": "pass",
        },
    ],
    "P02": [
        {"run": "test -f work/P02.txt && \\\n  test -f work/P01.txt", "expect": "pass"},
        {"run": "test -f work/P03.txt", "expect": "fail"},
    ],
    "P03": [
        {
            "run": 'for p in P01 P02 P03; do\n  test -f "work/$p.txt" || exit 1\ndone',
            "expect": "pass",
        },
        {"run": "cat <<'EOF' | grep -q ready\nready\nEOF", "expect": "pass"},
    ],
    "P03a": [
        {"run": "true", "expect": "pass"},
        {"run": 'COUNT=$(ls work | wc -l)\n[ "$COUNT" -eq 5 ]', "expect": "pass"},
    ],
}


def write_folder(
    root: Path, files: dict[str, str], *, crlf: bool = False, shuffle: bool = False
) -> Path:
    """A plan folder `root/project-plans/demo` with the files in `plan/`; root is the repo."""
    folder = root / "project-plans" / "demo"
    (folder / "plan").mkdir(parents=True)
    names = list(files)
    if shuffle:
        random.Random(4).shuffle(names)
    for name in names:
        text = files[name].replace("\n", "\r\n") if crlf else files[name]
        (folder / "plan" / name).write_bytes(text.encode())
    return folder


def config_for(tmp_path: Path) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "default_worker": "fake",
        "allowed_repo_roots": [str(tmp_path)],
        "policy": {
            "poll_interval": "0.05s",
            "max_polls": 200,
            "stop_grace": "1s",
            "max_remediations": 0,
        },
        "workers": {"fake": {"command": ["{python}", str(AGENT), "{prompt_file}"]}},
    }


def messages(imported: ImportedPlan) -> list[str]:
    return [f"{w.file.name}:{w.line}: {w.message}" for w in imported.warnings]


# ---- the normal plan, field by field ----


def test_normal_plan_is_imported_field_by_field(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    folder = write_folder(repo, NORMAL)
    imported = import_plan_folder(folder, repo, "fake")
    plan = imported.plan
    assert imported.warnings == []
    assert plan["id"] == PLAN
    assert plan["repo"] == str(repo.resolve())
    assert plan["plan_dir"] == "project-plans/demo"
    assert plan["worker"] == "fake"
    ids = ["P01", "P01a", "P02", "P03", "P03a"]
    assert [p["id"] for p in plan["phases"]] == ids
    assert [p["kind"] for p in plan["phases"]] == ["stub", "verify", "test", "impl", "verify"]
    names = sorted(n for n in NORMAL if not n.startswith("00"))
    assert [p["prompt_file"] for p in plan["phases"]] == [f"plan/{n}" for n in names]
    for phase in plan["phases"]:
        pid = phase["id"]
        assert phase["report"] == f"reports/{pid}-worker.md"
        assert phase["completion"] == [f".completed/{pid}.md"]
        assert phase["markers"] == [f"@plan:{PLAN}.{pid}"]
        assert phase["verify"] == NORMAL_VERIFY[pid], pid
        assert set(phase) - {"precheck"} == {
            "id",
            "kind",
            "prompt_file",
            "report",
            "completion",
            "markers",
            "verify",
        }
    # `- Verification: `grep …`` under Prerequisites: run before the phase starts
    assert plan["phases"][1]["precheck"] == [
        {"run": f'grep -r "@plan:{PLAN}.P01" project-plans/demo/.completed/', "expect": "pass"}
    ]
    assert [p for p in plan["phases"] if "precheck" in p] == [plan["phases"][1]]


def test_normal_plan_notes_prerequisites_overview_and_a_phases(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, NORMAL)
    imported = import_plan_folder(folder, tmp_path, None)
    assert "worker" not in imported.plan
    assert imported.notes[""] == ["plan/00-overview.md is the plan's overview, not a phase"]
    p01a = imported.notes["P01a"]
    assert p01a[0] == "from plan/01a-guardrail-stub-verification.md"
    assert any(n.startswith("prerequisite P01 (line 9)") for n in p01a)
    assert any(n.startswith("prerequisite P01 (line 10)") for n in p01a)
    assert any("may also append to P01's completion file" in n for n in p01a)
    assert any(n.startswith("prerequisite P01a (line 9)") for n in imported.notes["P02"])
    assert not any("may also append" in n for n in imported.notes["P02"])


def test_rendered_toml_has_a_header_and_validates(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, NORMAL)
    (folder / "plan" / "notes.md").write_text("scratch\n")
    imported = import_plan_folder(folder, tmp_path, "fake")
    text = render_plan_toml(imported)
    header = text.split("\n\n")[0]
    assert all(line.startswith("# ") for line in header.splitlines())
    assert f"orchestrd {__version__}" in header
    assert str(folder.resolve()) in header
    assert re.search(r"on \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", header)
    assert "1 warning(s):" in header
    assert "#   plan/notes.md:1: not a phase" in header
    assert "# prerequisite P01a (line 9): met by phase order" in text
    assert tomllib.loads(text) == imported.plan
    config = config_from_dict(config_for(tmp_path), "test-config")
    plan = plan_from_dict(tomllib.loads(text), "plan.toml", config)
    assert [p.verify[0].expect for p in plan.phases] == ["pass"] * 5
    assert plan.phase("P02").verify[1].expect == "fail"


# ---- odd input ----


def test_missing_sections_get_defaults_and_warnings(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            "01-bare-stub.md": f"# Phase 01\n\n## Phase ID\n\n`{PLAN}.P01`\n\nJust do it.\n",
            "02-empty-id-tests.md": (
                "# Phase 02\n\n## Phase ID\n\nTBD\n\n## Verification Commands\n"
            ),
            "03-no-commands-implementation.md": (
                f"## Phase ID\n`{PLAN}.P03`\n## Verification Commands\nRun `npm test`.\n"
                "## Phase Completion Marker\nWrite a note somewhere.\n"
            ),
        },
    )
    imported = import_plan_folder(folder, tmp_path, None)
    p01, p02, p03 = imported.plan["phases"]
    assert (p01["id"], p01["kind"], p03["id"], p03["kind"]) == ("P01", "stub", "P03", "impl")
    assert p01["completion"] == [".completed/P01.md"] and "verify" not in p01
    assert p03["completion"] == [".completed/P03.md"] and "verify" not in p03
    # no id in its Phase ID section: the id from the file name, no marker, no completion file
    assert (p02["id"], p02["markers"], p02["completion"]) == ("P02", [], [])
    got = messages(imported)
    assert got[0].startswith("01-bare-stub.md:1: no `Create:")
    assert got[1].startswith("01-bare-stub.md:1: no commands in a '## Verification Commands'")
    assert got[2] == (
        "02-empty-id-tests.md:3: the '## Phase ID' section holds no "
        "`PLAN-….PNN` id; the phase is P02, from the file name"
    )
    assert got[3].startswith("02-empty-id-tests.md:1: no completion file and no `@plan:")
    assert got[4].startswith("02-empty-id-tests.md:7: no commands")
    assert got[5].startswith("03-no-commands-implementation.md:5: no `Create:")
    assert got[6] == (
        "03-no-commands-implementation.md:4: inline code outside a fenced ```bash "
        "block is not run: 'Run `npm test`.'"
    )
    assert got[7].startswith("03-no-commands-implementation.md:3: no commands")
    assert got[8] == "02-empty-id-tests.md:1: no Phase ID: the phase is P02, from the file name"
    assert len(got) == 9


def test_odd_headings_levels_case_colons_and_inline_values(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            "01-odd-stub.md": f"""# PHASE ID:
{PLAN}.P01

#### verification commands (MANDATORY)
{FENCE}
true
{FENCE}
## Automated checks ##
{FENCE}shell
test -d .
{FENCE}
# Phase completion marker:
If PASS, create: `project-plans/demo/.completed/P01.md` with `Status: PASS`
""",
            "02-odd-tests.md": f"""## **Phase ID:** `{PLAN}.P02`
### Verification Commands:
{FENCE}bash
echo one
{FENCE}
### Automated Checks
{FENCE}bash
echo two
{FENCE}
### Success Criteria
{FENCE}bash
echo not-a-verify-command
{FENCE}
### Completion Marker
- Create `project-plans/demo/.completed/P02.md` summarizing the review.
""",
        },
    )
    imported = import_plan_folder(folder, tmp_path, None)
    assert imported.warnings == []
    p01, p02 = imported.plan["phases"]
    assert p01["id"] == "P01" and p02["id"] == "P02"
    assert p01["verify"] == [
        {"run": "true", "expect": "pass"},
        {"run": "test -d .", "expect": "pass"},
    ]
    assert p02["verify"] == [
        {"run": "echo one", "expect": "pass"},
        {"run": "echo two", "expect": "pass"},
    ]
    assert p01["completion"] == [".completed/P01.md"]
    assert p02["completion"] == [".completed/P02.md"]


def test_crlf_files_import_like_lf_files(tmp_path: Path) -> None:
    lf = import_plan_folder(write_folder(tmp_path / "lf", NORMAL), tmp_path / "lf", None)
    crlf = import_plan_folder(
        write_folder(tmp_path / "crlf", NORMAL, crlf=True), tmp_path / "crlf", None
    )
    assert b"\r\n" in next((tmp_path / "crlf").rglob("02-*.md")).read_bytes()
    assert crlf.warnings == []
    assert crlf.plan["phases"] == lf.plan["phases"]
    assert all("\r" not in v["run"] for p in crlf.plan["phases"] for v in p["verify"])


def test_no_overview(tmp_path: Path) -> None:
    files = {k: v for k, v in NORMAL.items() if not k.startswith("00")}
    imported = import_plan_folder(write_folder(tmp_path, files), tmp_path, None)
    assert imported.warnings == [] and imported.notes[""] == []
    assert [p["id"] for p in imported.plan["phases"]] == ["P01", "P01a", "P02", "P03", "P03a"]


def test_phase_files_in_natural_order_whatever_the_disk_order(tmp_path: Path) -> None:
    def phase(pid: str) -> str:
        return (
            f"## Phase ID\n`{PLAN}.{pid}`\n## Verification Commands\n```bash\ntrue\n```\n"
            f"## Phase Completion Marker\nCreate: `.completed/{pid}.md`\n"
        )

    files = {
        "10-final-verification.md": phase("P10"),
        "9a-x-verification.md": phase("P09a"),
        "9-x-implementation.md": phase("P09"),
        "2-tests.md": phase("P02"),
        "1-stub.md": phase("P01"),
        "1a-stub-verification.md": phase("P01a"),
        "1B-review.md": phase("P01b"),
    }
    folder = write_folder(tmp_path, files, shuffle=True)
    imported = import_plan_folder(folder, tmp_path, None)
    assert imported.warnings == []
    assert [p["id"] for p in imported.plan["phases"]] == [
        "P01",
        "P01a",
        "P01b",
        "P02",
        "P09",
        "P09a",
        "P10",
    ]
    assert [p["kind"] for p in imported.plan["phases"]] == [
        "stub",
        "verify",
        "other",
        "test",
        "impl",
        "verify",
        "verify",
    ]


def test_files_that_are_not_phases_are_warned_and_left_out(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            **NORMAL,
            "notes.md": f"## Phase ID\n`{PLAN}.P09`\n",
            "04-scratch.md": "# Scratch\nideas\n",
            "README.txt": "not markdown\n",
        },
    )
    (folder / "plan" / "drafts").mkdir()
    imported = import_plan_folder(folder, tmp_path, None)
    assert [p["id"] for p in imported.plan["phases"]] == ["P01", "P01a", "P02", "P03", "P03a"]
    assert messages(imported) == [
        "notes.md:1: not a phase: its name has no number prefix (NN-name.md, P05-name.md); "
        "not imported",
        "04-scratch.md:1: not a phase: no '## Phase ID' section, no phase sections "
        "(Verification, Prerequisites, Completion Marker, …) and no title naming a phase, task "
        "or step; file not imported",
    ]
    assert str(imported.warnings[0]).endswith(
        "plan/notes.md:1: warning: not a phase: its name "
        "has no number prefix (NN-name.md, P05-name.md); "
        "not imported"
    )


def test_prerequisites_that_are_not_earlier_phases_warn(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            "01-a-stub.md": f"## Phase ID\n`{PLAN}.P01`\n## Prerequisites\n- Phase 07 completed\n"
            "- hookBusContracts.ts must exist\n- P01 itself is not a prerequisite\n",
        },
    )
    imported = import_plan_folder(folder, tmp_path, None)
    assert [m for m in messages(imported) if "prerequisite" in m] == [
        "01-a-stub.md:4: prerequisite phase 07 is not an earlier phase of this plan; nothing "
        "checks it",
        "01-a-stub.md:5: prerequisite not checked by orchestrd: '- hookBusContracts.ts must exist'",
        "01-a-stub.md:6: prerequisite not checked by orchestrd: '- P01 itself is not a "
        "prerequisite'",
    ]
    assert imported.notes["P01"] == ["from plan/01-a-stub.md"]


def test_code_markers_of_other_phases_warn_in_both_forms(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            "06-x-tests.md": f"""## Phase ID
`{PLAN}.P06`
## Required Code Markers
{FENCE}typescript
/** @plan {PLAN}.P06 */
// @plan:{PLAN}.P06
/** @plan {PLAN}.P05 */
// @plan:{PLAN}.P06a
{FENCE}
""",
        },
    )
    imported = import_plan_folder(folder, tmp_path, None)
    got = [m for m in messages(imported) if "code marker" in m]
    assert got == [
        f"06-x-tests.md:7: code marker '@plan {PLAN}.P05' names another phase than this file's "
        f"@plan:{PLAN}.P06",
        f"06-x-tests.md:8: code marker '@plan:{PLAN}.P06a' names another phase than this "
        f"file's @plan:{PLAN}.P06",
    ]
    assert imported.plan["phases"][0]["markers"] == [f"@plan:{PLAN}.P06"]


@pytest.mark.parametrize(
    ("line", "completion", "warning"),
    [
        ("Create: `project-plans/demo/.completed/P01.md`", ".completed/P01.md", None),
        ("Create: `.completed/P01.md`", ".completed/P01.md", None),
        ("Create: `./project-plans/demo/plan/.completed/P01.md`", "plan/.completed/P01.md", None),
        (
            "Create: `project-plans/old-name/.completed/P01.md`",
            ".completed/P01.md",
            "is not under the plan folder 'project-plans/demo'; using '.completed/P01.md' in it",
        ),
        ("Create: `../elsewhere/P01.md`", ".completed/P01.md", "is not inside the plan folder"),
        (
            "Create: `project-plans/demo/.completed/P00.md`",
            ".completed/P00.md",
            "is not named after phase P01",
        ),
    ],
)
def test_completion_paths_are_made_relative_to_plan_dir(
    tmp_path: Path, line: str, completion: str, warning: str | None
) -> None:
    text = (
        f"## Phase ID\n`{PLAN}.P01`\n## Verification Commands\n```\ntrue\n```\n"
        f"## Phase Completion Marker\n{line}\n"
    )
    imported = import_plan_folder(write_folder(tmp_path, {"01-s.md": text}), tmp_path, None)
    assert imported.plan["phases"][0]["completion"] == [completion]
    if warning is None:
        assert imported.warnings == []
    else:
        assert any(warning in w.message and w.line == 8 for w in imported.warnings)


def test_duplicate_phase_ids_warn_and_keep_the_first_file(tmp_path: Path) -> None:
    text = f"## Phase ID\n`{PLAN}.P01`\n"
    folder = write_folder(tmp_path, {"01-a.md": text, "02-b.md": text, "02-c.md": "# Phase\n"})
    imported = import_plan_folder(folder, tmp_path, None)
    assert [(p["id"], p["prompt_file"]) for p in imported.plan["phases"]] == [
        ("P01", "plan/01-a.md"),
        ("P02", "plan/02-c.md"),
    ]
    assert (
        "02-b.md:1: phase id P01 is also the id of 01-a.md; file not imported (give each "
        "phase file its own number or PLAN.PNN id)" in messages(imported)
    )


def test_folder_outside_the_repo_or_without_phases_is_an_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "a", NORMAL)
    (tmp_path / "b").mkdir()
    with pytest.raises(PlanError, match="not inside the repo .*; pass --repo"):
        import_plan_folder(folder, tmp_path / "b", None)
    empty = write_folder(tmp_path / "c", {"notes.md": "hello\n"})
    with pytest.raises(PlanError, match=r"no phase files(.|\n)*notes\.md:1: warning: not a phase"):
        import_plan_folder(empty, tmp_path / "c", None)
    with pytest.raises(PlanError, match="no such folder"):
        import_plan_folder(tmp_path / "missing", tmp_path, None)


def test_plan_dir_is_the_folder_relative_to_the_repo(tmp_path: Path) -> None:
    hidden = tmp_path / ".plans" / "demo"
    hidden.mkdir(parents=True)
    (hidden / "01-stub.md").write_text(f"## Phase ID\n`{PLAN}.P01`\n")
    imported = import_plan_folder(hidden, tmp_path, None)
    assert imported.plan["plan_dir"] == ".plans/demo"
    assert imported.plan["phases"][0]["prompt_file"] == "01-stub.md"  # no plan/ subfolder
    at_root = import_plan_folder(hidden, hidden, None)
    assert "plan_dir" not in at_root.plan and at_root.plan["repo"] == str(hidden.resolve())


def test_a_second_phase_id_or_a_number_mismatch_warns(tmp_path: Path) -> None:
    text = f"## Phase ID\n`{PLAN}.P02`\n\nreplaces `{PLAN}.P01`\n"
    imported = import_plan_folder(write_folder(tmp_path, {"01-x.md": text}), tmp_path, None)
    assert imported.plan["phases"][0]["id"] == "P02"
    assert messages(imported)[:2] == [
        f"01-x.md:4: more than one Phase ID; the phase is {PLAN}.P02",
        "01-x.md:2: Phase ID P02 does not match the file name's number; the phase keeps its "
        "place in file order",
    ]


def test_plan_ids_that_disagree_warn_and_keep_their_markers(tmp_path: Path) -> None:
    files = {f"0{i}-x.md": f"## Phase ID\n`{PLAN}.P0{i}`\n" for i in (1, 2)}
    files["03-x.md"] = "## Phase ID\n`PLAN-OTHER.P03`\n"
    imported = import_plan_folder(write_folder(tmp_path, files), tmp_path, None)
    assert imported.plan["id"] == PLAN
    assert imported.plan["phases"][2]["markers"] == ["@plan:PLAN-OTHER.P03"]
    assert "03-x.md:1: Phase ID PLAN-OTHER.P03 names plan PLAN-OTHER" in messages(imported)[-1]


# ---- shell blocks ----


def _commands(block: str) -> tuple[list[tuple[str, str]], list[str]]:
    warned: list[str] = []
    lines = list(enumerate(block.splitlines(), 1))
    cmds = shell_commands(lines, lambda no, msg: warned.append(f"{no}: {msg}"))
    return [(c["run"], c["expect"]) for c in cmds], warned


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("a\n\n# comment\nb", [("a", "pass"), ("b", "pass")]),
        ("a && exit 1\nb &&exit 1;", [("a", "fail"), ("b", "fail")]),
        ("x | y && exit 1", [("x | y", "fail")]),
        ("echo 'a && exit 1'", [("echo 'a && exit 1'", "pass")]),
        ("a && exit 12", [("a && exit 12", "pass")]),
        (
            "# EXPECTED TO FAIL\na\nb\n# expected to pass\nc",
            [("a", "fail"), ("b", "fail"), ("c", "pass")],
        ),
        ("a \\\n  b \\\n  c\nd", [("a \\\n  b \\\n  c", "pass"), ("d", "pass")]),
        ("a |\n  b\nc &&\n  d", [("a |\n  b", "pass"), ("c &&\n  d", "pass")]),
        ("if x; then\n  # inside\n  y\nfi", [("if x; then\n  # inside\n  y\nfi", "pass")]),
        ("while read l; do echo $l; done < f", [("while read l; do echo $l; done < f", "pass")]),
        (
            "case $x in\n  a) if b; then c; fi;;\nesac",
            [("case $x in\n  a) if b; then c; fi;;\nesac", "pass")],
        ),
        ('echo "multi\nline"', [('echo "multi\nline"', "pass")]),
        (
            "python - <<EOF\nprint('done')\nEOF\nnext",
            [("python - <<EOF\nprint('done')\nEOF", "pass"), ("next", "pass")],
        ),
        ("(cd x &&\n  make)", [("(cd x &&\n  make)", "pass")]),
        (
            "echo $(date) # note\ngrep -c '#' f",
            [("echo $(date) # note", "pass"), ("grep -c '#' f", "pass")],
        ),
        ("{ a; b; } && exit 1", [("{ a; b; }", "fail")]),
        ("echo done; echo for", [("echo done; echo for", "pass")]),
        (
            'T=$(grep -c x f)\n[ "$T" -ge 2 ]\ncd sub\nls && exit 1',
            [
                ('T=$(grep -c x f)\n[ "$T" -ge 2 ]', "pass"),
                ("T=$(grep -c x f)\ncd sub\nls", "fail"),
            ],
        ),
        (
            "export A=1\nB='two words'\nC=$((A + 1))\nFOO=bar env",
            [("export A=1\nB='two words'\nC=$((A + 1))\nFOO=bar env", "pass")],
        ),
    ],
)
def test_shell_blocks_become_whole_commands(block: str, expected: list[tuple[str, str]]) -> None:
    cmds, warned = _commands(block)
    assert cmds == expected
    assert warned == []


def test_shell_block_oddities_warn() -> None:
    cmds, warned = _commands("grep x f\n# Expected: 3\nfor x in a b; do\n  echo $x")
    assert cmds == [("grep x f", "pass"), ("for x in a b; do\n  echo $x", "pass")]
    assert (
        warned[0] == "2: '# Expected: 3': only that grep finds a match is checked, not how "
        "many; count with `grep -c` (or `| wc -l`) to check the number"
    )
    assert warned[1].startswith("3: command unfinished at the end of its block")
    cmds, warned = _commands("true\nN=$(ls | wc -l)")
    assert cmds == [("true", "pass")]
    assert warned == ["2: 'N=$(ls | wc -l)' ends its block: no command uses it; not imported"]
    assert shell_unfinished("echo 'open") and not shell_unfinished("echo 'closed'")


def test_non_shell_and_manual_blocks_in_verification_warn(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {
            "01-x.md": f"""## Phase ID
`{PLAN}.P01`
## Verification Commands
{FENCE}typescript
expect(x).toBe(1)
{FENCE}
{FENCE}bash
true
{FENCE}
### Manual verification
{FENCE}bash
open http://localhost
{FENCE}
{FENCE}bash
never closed
"""
        },
    )
    imported = import_plan_folder(folder, tmp_path, None)
    assert imported.plan["phases"][0]["verify"] == [{"run": "true", "expect": "pass"}]
    got = messages(imported)
    assert got[0] == "01-x.md:14: code block never closed; the rest of the file is read as code"
    assert "01-x.md:4: code block ```typescript is not shell; not run by orchestrd" in got
    assert (
        "01-x.md:11: code block ```bash is under a manual-check heading; not run by "
        "orchestrd" in got
    )
    assert (
        "01-x.md:14: code block ```bash is under a manual-check heading; not run by "
        "orchestrd" in got
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("01-multi-runtime-guardrail-stub", "stub"),
        ("01a-multi-runtime-guardrail-stub-verification", "verify"),
        ("02-guardrail-tests", "test"),
        ("04-provider-tdd", "test"),
        ("05-provider-implementation", "impl"),
        ("05a-provider-impl-verification", "verify"),
        ("00a-preflight-verification", "verify"),
        ("06-integration-tests", "test"),
        ("07-pseudocode", "other"),
        ("08-testing-notes", "other"),
    ],
)
def test_kind_comes_from_the_file_name(name: str, kind: str) -> None:
    assert kind_from_name(name) == kind


# ---- the subcommand ----


def _wired() -> bool:
    return " import " in cli.build_parser().format_help().replace("{", " ").replace(",", " ")


def _main(argv: list[str]) -> int:
    """`orchestrd ARGV` in-process: cli.main once `import` is wired into it, else an equivalent
    parser with add_subcommand and the same error handling."""
    if _wired():
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="orchestrd")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    add_subcommand(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except OrchestrdError as exc:
        print(f"orchestrd: {exc}", file=sys.stderr)
        return 2
    return code


def _cli_setup(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path, Path]:
    repo = tmp_path / "repo"
    folder = write_folder(repo, files)
    cfg = tmp_path / "orchestrd.toml"
    cfg.write_text(tomli_w.dumps(config_for(tmp_path)))
    return repo, folder, cfg


def test_cli_dry_run_prints_the_plan_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, {**NORMAL, "notes.md": "x\n"})
    out = tmp_path / "plan.toml"
    code = _main(
        [
            "import",
            str(folder),
            "-o",
            str(out),
            "--repo",
            str(repo),
            "--dry-run",
            "--config",
            str(cfg),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and not out.exists()
    assert tomllib.loads(captured.out)["id"] == PLAN
    assert captured.err.splitlines() == [
        f"{folder}/plan/notes.md:1: warning: not a phase: its name has no number prefix "
        "(NN-name.md, P05-name.md); not imported"
    ]


def test_cli_writes_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, NORMAL)
    monkeypatch.chdir(repo)  # --repo defaults to .
    code = _main(
        [
            "import",
            "project-plans/demo",
            "-o",
            "plan.toml",
            "--worker",
            "fake",
            "--config",
            str(cfg),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = tomllib.loads((repo / "plan.toml").read_text())
    assert data["worker"] == "fake" and data["plan_dir"] == "project-plans/demo"
    assert capsys.readouterr().err == "plan.toml: plan PLAN-20251018-DEMO, 5 phases, 0 warning(s)\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dry-run", "--repo", "OTHER"], "not inside the repo"),
        (["--repo", "REPO"], "nowhere to write; give -o OUT.toml, or --dry-run"),
        (["--dry-run", "--repo", "REPO", "--worker", "nope"], "no worker profile 'nope'"),
    ],
)
def test_cli_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, NORMAL)
    (tmp_path / "other").mkdir()
    paths = {"REPO": str(repo), "OTHER": str(tmp_path / "other")}
    argv = ["import", str(folder), "--config", str(cfg), *extra]
    assert _main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orchestrd: ") and message in err


def test_cli_refuses_a_repo_outside_allowed_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, NORMAL)
    config = config_for(tmp_path) | {"allowed_repo_roots": [str(tmp_path / "elsewhere")]}
    cfg.write_text(tomli_w.dumps(config))
    assert (
        _main(["import", str(folder), "--repo", str(repo), "--dry-run", "--config", str(cfg)]) == 2
    )
    assert "is not inside allowed_repo_roots" in capsys.readouterr().err


@pytest.mark.skipif(not _wired(), reason="`import` is not wired into orchestrd.cli yet")
def test_python_m_orchestrd_import(tmp_path: Path) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, NORMAL)
    out = tmp_path / "plan.toml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrd",
            "import",
            str(folder),
            "-o",
            str(out),
            "--repo",
            str(repo),
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(out.read_text())["id"] == PLAN


# ---- round trip: import → validate → run ----


def test_round_trip_import_validate_run(tmp_path: Path) -> None:
    repo, folder, cfg = _cli_setup(tmp_path, NORMAL)
    imported = import_plan_folder(folder, repo, "fake")
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(render_plan_toml(imported))

    def orchestrd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrd", *args, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    validate = orchestrd("validate", str(plan_file))
    assert validate.returncode == 0, validate.stderr
    assert f"plan {PLAN}, 5 phases" in validate.stdout
    run = orchestrd("run", str(plan_file), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in audit.splitlines()]
    assert [e["phase"] for e in events if e["event"] == "phase.passed"] == [
        "P01",
        "P01a",
        "P02",
        "P03",
        "P03a",
    ]
    assert events[-1]["event"] == "plan.succeeded"
    verified = [
        (e["phase"], e["command"], e["expect"])
        for e in events
        if e["event"] == "check.passed" and e["check"].startswith("verify")
    ]
    assert verified == [
        (pid, v["run"], v["expect"]) for pid, vs in NORMAL_VERIFY.items() for v in vs
    ]
    assert not [e for e in events if e["event"] in ("check.failed", "remediation.started")]
    done = repo / "project-plans" / "demo" / ".completed" / "P03a.md"
    assert f"@plan:{PLAN}.P03a" in done.read_text()
