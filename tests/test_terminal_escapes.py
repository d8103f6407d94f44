"""Nothing a worker printed reaches a person's terminal raw: its escape sequences (OSC window
titles, clear-screen, colours, BEL, NUL, 8-bit CSI, bidi overrides) are shown escaped
(`\\x1b`) in the daemon's echo to stderr/the journal, in `orchestrd status`, and wherever a
reason quotes it. The JSON audit file keeps the text exact (JSON escapes it anyway).
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

from daemon_support import Daemon

from orchestrd.audit import AuditLog

AGENTS = Path(__file__).parent / "agents"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\0 done"


def test_printable_escapes_control_characters_and_keeps_newlines_where_asked() -> None:
    from orchestrd.audit import printable  # the one function every rendering for people uses

    assert printable(ESCAPES, newlines=False) == (
        "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x1b[0m\\x00 done"
    )
    assert printable("a\r\nb\tc\x9b1m\u202ed\udcff") == "a\\x0d\nb\tc\\x9b1m\\u202ed\\xff"
    assert printable("a\nb", newlines=False) == "a\\x0ab"
    assert printable("plain ünïcode → ok") == "plain ünïcode → ok"


def test_a_stalled_workers_log_tail_is_echoed_escaped(tmp_path: Path) -> None:
    echo = io.StringIO()
    audit = AuditLog(tmp_path / "audit.jsonl", echo=echo)
    audit.bind(plan="T").info("worker.stalled", polls=6, log_tail=f"line 1\n{ESCAPES}")
    audit.close()
    shown = echo.getvalue()
    assert not RAW_CONTROL.search(shown), repr(shown)
    assert "log_tail=line 1 ⏎ \\x1b]0;pwned\\x07\\x1b[2J" in shown
    # the record itself is exact
    [line] = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["log_tail"] == f"line 1\n{ESCAPES}"


def worker(what: str) -> dict[str, Any]:
    return {
        "command": ["{python}", str(AGENTS / "hostile_files.py"), "{prompt}"],
        "env": {"HOSTILE": what},
    }


def test_escapes_quoted_in_a_failure_reason_reach_neither_the_journal_nor_status(
    daemon: Daemon,
) -> None:
    daemon.write_config(
        workers={**daemon.config_data()["workers"], "escapes": worker("escapes")},
        checks={"fail_on_log_errors": True},
    )
    daemon.start()
    daemon.submit("esc", worker="escapes")
    [failed] = daemon.wait_event("plan.failed", plan="esc")
    assert "\x1b]0;pwned\x07" in failed["reason"]  # the audit record is exact
    stderr = daemon.stderr()
    assert "log_errors" in stderr
    assert not RAW_CONTROL.search(stderr), repr(stderr)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in stderr
    for args in (("status",), ("status", "esc")):
        result = daemon.cli(*args)
        assert result.returncode == 0, result.stderr
        assert not RAW_CONTROL.search(result.stdout), repr(result.stdout)
    assert "reason: " in result.stdout and "\\x1b]0;pwned\\x07" in result.stdout
    # and every other command that shows a person what a worker printed
    for args in (
        ("tail",),
        ("tail", "--plan", "esc"),
        ("report", "esc"),
        ("report", "--since", "1h"),
    ):
        result = daemon.cli(*args)
        assert result.returncode == 0, result.stderr
        assert not RAW_CONTROL.search(result.stdout), (args, result.stdout)
        assert "\\x1b]0;pwned\\x07" in result.stdout, (args, result.stdout)
    report = (daemon.state_dir / "archive" / "esc" / "report.md").read_text()
    assert not RAW_CONTROL.search(report), repr(report)


def test_import_warnings_show_file_names_and_quoted_lines_escaped(tmp_path: Path) -> None:
    from orchestrd.importer import import_plan_folder

    plan = tmp_path / "project-plans" / "demo" / "plan"
    plan.mkdir(parents=True)
    (plan / "01-stub.md").write_text("## Phase ID\n`PLAN-20251018-DEMO.P01`\n")
    (plan / os.fsdecode(b"notes\x1b]0;t\x07\xff.md")).write_text("nothing\n")
    imported = import_plan_folder(plan.parent, tmp_path, None)
    [shown] = [str(w) for w in imported.warnings if "notes" in str(w)]
    assert not RAW_CONTROL.search(shown), repr(shown)
    assert "notes\\x1b]0;t\\x07\\xff.md:1: warning: not a phase" in shown
