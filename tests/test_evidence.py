"""The evidence rules on report and completion files, on small texts: each finding names the
file, the line and the rule; commands in ```bash blocks, expected failures and history are not
findings."""

from __future__ import annotations

import pytest

from orchestrd.config import PLACEHOLDERS_DEFAULT
from orchestrd.evidence import DEFAULT_RULES, Finding, check_text


def scan(
    text: str,
    *,
    kind: str = "other",
    report: bool = True,
    requires: tuple[str, ...] = (),
) -> list[tuple[int, str]]:
    found = check_text(
        text,
        "reports/P05-worker.md",
        rules=DEFAULT_RULES,
        placeholder_texts=PLACEHOLDERS_DEFAULT,
        requires=requires,
        phase_id="P05",
        kind=kind,
        report=report,
    )
    return [(f.line, f.rule) for f in found]


def test_finding_reason_names_file_line_and_rule() -> None:
    [f] = check_text(
        "# P05\n\nTest output:\n$(npm test -- --run x 2>&1)\n",
        "reports/P05-worker.md",
        rules=["unexpanded_shell"],
    )
    assert f == Finding("reports/P05-worker.md", 4, "unexpanded_shell", f.message)
    assert f.reason == (
        "reports/P05-worker.md:4: unexpanded shell '$(npm test -- --run x 2>&1)' where output "
        "should be [rule: unexpanded_shell]"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a heredoc with a quoted delimiter left the substitution as text
        (
            "Status: PASS\n\nOutput: $(cat reports/P05a-test-output.log)\n",
            [(3, "unexpanded_shell")],
        ),
        ("Status: PASS\n```\n$(npm test 2>&1)\n```\n", [(3, "unexpanded_shell")]),
        ("Status: PASS\n```text\nran: $(date)\n```\n", [(3, "unexpanded_shell")]),
        ("Status: PASS\nran `$(npm bin)/vitest` inline\n", [(2, "unexpanded_shell")]),
        # a lone backticked command where the output should be
        ("Status: PASS\n## Test output\n`npm test -- --run x`\n", [(3, "unexpanded_shell")]),
        ("Status: PASS\n**Output:**\n`cat out.log`\n", [(3, "unexpanded_shell")]),
        ("Status: PASS\n```\n`npm test`\n```\n", [(3, "unexpanded_shell")]),
        # a console transcript: the prompt line is a command, the rest is output
        (
            "Status: PASS\n```console\n$ echo $(date)\nMon\n$(oops)\n```\n",
            [(5, "unexpanded_shell")],
        ),
    ],
)
def test_unexpanded_shell_where_output_should_be_is_found(
    text: str, expected: list[tuple[int, str]]
) -> None:
    assert scan(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Status: PASS\n```bash\nnpm test -- --run \"$(git ls-files '*.test.ts')\"\n```\n",
        "Status: PASS\n```sh\nDATE=$(date +%F)\n```\n",
        "Status: PASS\n```ts\nconst el = $('#main');\n```\n",
        "Status: PASS\nRun:\n`npm test -- --run x`\n",  # a command to run, not output
        "Status: PASS\n```\nCACError: Unknown option `--filter`\n```\n",  # real output quoting
        "Status: PASS\nCost: $5 (not a substitution)\n",
    ],
)
def test_commands_and_real_output_are_not_unexpanded_shell(text: str) -> None:
    assert scan(text) == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("Status: PASS\nCompleted: YYYY-MM-DD HH:MM\n", 2),
        ("Status: PASS\n\n## Verification\n<paste command outputs>\n", 4),
        ("Status: PASS\n```\n<Paste output here>\n```\n", 3),
        ("Status: PASS\n- [TODO] fill in\n", 2),
    ],
)
def test_template_placeholders_are_found_once_per_line(text: str, line: int) -> None:
    assert scan(text) == [(line, "placeholder")]


def test_placeholders_are_configurable() -> None:
    found = check_text(
        "a\n{{OUTPUT}}\n", "x.md", rules=["placeholder"], placeholder_texts=["{{OUTPUT}}"]
    )
    assert [(f.line, f.rule) for f in found] == [(2, "placeholder")]
    assert check_text("YYYY-MM-DD\n", "x.md", rules=["placeholder"], placeholder_texts=[]) == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("Status: PASS\n## Output\n```\n```\n", 3),
        ("Status: PASS\n```text\n\n   \n```\n", 2),
        ("Status: PASS\n```\n...\n```\n", 2),
    ],
)
def test_empty_fenced_output_blocks_are_found(text: str, line: int) -> None:
    assert scan(text) == [(line, "empty_output_block")]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("# Report\n- Typecheck: FAIL\n- Tests: PASS\n\nStatus: PASS\n", 2),
        ("| check | result |\n|---|---|\n| lint | FAIL |\n\n**Status:** PASS\n", 3),
        ("❌ build broken on node 18\nStatus: PASS\n", 1),
        ("Build: PASS, Lint: FAILED\nStatus: PASS\n", 1),
        # in a test phase a failing non-test check is still a contradiction
        ("- Typecheck: FAIL\nStatus: PASS\n", 1),
    ],
)
def test_a_check_recorded_as_fail_under_status_pass_is_a_contradiction(
    text: str, line: int
) -> None:
    assert scan(text, kind="test") == [(line, "contradiction")]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- npm test -- --run x: FAIL (expected: red)\nStatus: PASS\n", "other"),
        ("- Tests: FAIL\nStatus: PASS\n", "test"),  # red is the point of a test phase
        ("| vitest | FAIL |\nStatus: PASS\n", "test"),
        ("- Lint: FAIL → fixed, now PASS\nStatus: PASS\n", "other"),
        ("- Previous attempt: FAIL (no report)\nStatus: PASS\n", "other"),
        ("Status: FAIL\n\nStatus: PASS\n", "other"),  # status lines are the status
        ("```\nFAIL src/a.test.ts > adds\n```\nStatus: PASS\n", "other"),  # tool output
        ("- Typecheck: FAIL\nStatus: FAIL\n", "other"),  # consistent: no contradiction
    ],
)
def test_expected_history_and_tool_output_fails_are_no_contradiction(text: str, kind: str) -> None:
    assert scan(text, kind=kind) == []


def test_contradiction_is_only_judged_in_the_report() -> None:
    assert scan("- Typecheck: FAIL\nStatus: PASS\n", report=False) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Phase: P05\nCompleted: 2025-10-18T14:05:00+0200\n", []),
        ("**Phase:** `PLAN-20251018-X.P05`\n**Date**: 2025-10-18 14:05\n", []),
        ("Status: PASS\n", [(0, "phase_line"), (0, "timestamp_line")]),
        ("Phase: P05a\nCompleted: today\n", [(1, "phase_line"), (2, "timestamp_line")]),
        ("Phase: P04\nCompleted: 2025-10-18\n", [(1, "phase_line")]),
    ],
)
def test_phase_and_timestamp_lines_are_required_where_the_plan_asks(
    text: str, expected: list[tuple[int, str]]
) -> None:
    assert scan(text, requires=("phase", "timestamp"), report=False) == expected


def test_required_lines_are_not_asked_for_by_default() -> None:
    assert scan("Status: PASS\n") == []
