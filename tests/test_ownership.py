"""One owner per concept: state changes only in the state module, plan status only in the
lifecycle, the state folder's layout only in the store, checks as one registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from orchestrd import states
from orchestrd.checks import CHECKS, FIXES, Check, phase_rules
from orchestrd.config import CheckSettings
from orchestrd.plan import Phase, Plan
from orchestrd.prompt import contract_trailer
from orchestrd.states import PHASE_EVENTS, PHASE_TRANSITIONS, PLAN_EVENTS, PlanStatus

PACKAGE = Path(states.__file__).parent
ASSIGNED = re.compile(r"\.status\s*=(?!=)|\.status,[^=\n]*=(?!=)")


def test_only_the_state_module_assigns_a_status() -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "state.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ASSIGNED.search(line)
    ]
    assert found == []


SETS_PLAN_STATUS = re.compile(r"\.set_status\(")


def test_only_the_lifecycle_sets_a_plan_status() -> None:
    """The runner and the merge queue return an Outcome; the daemon, `orchestrd run`, the
    control requests and recovery ask the lifecycle: none chooses a plan status itself."""
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("state.py", "lifecycle.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SETS_PLAN_STATUS.search(line)
    ]
    assert found == []


TRANSITION_EVENTS = {*PLAN_EVENTS.values(), *PHASE_EVENTS.values()}
EMITTED_ALLOWED = {
    # a plan whose failure could not even be saved: no transition happened, the event says so
    ("lifecycle.py", "plan.failed"),
}


def test_transition_events_are_emitted_only_by_the_record() -> None:
    """A new plan's first state (plan.queued) too: its record announces it from the table,
    nobody logs a transition's event by hand."""
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.args[0].value}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "state.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("info", "warning", "exception")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in TRANSITION_EVENTS
        and (path.name, node.args[0].value) not in EMITTED_ALLOWED
    ]
    assert found == []


LAYOUT_FILES = {
    "state.toml",
    "state.journal",
    "plan.toml",
    "worker-pids.txt",
    "phases-passed.txt",
    "daemon.lock",
    "run.lock",
    ".accepting",
}
LAYOUT_FOLDERS = {"plans", "archive", "inbox", "rejected", "control"}
LAYOUT_ALLOWED = {
    # the journal continues whichever state file it is given: its suffix is the state
    # format's, not the folder's (store.py names the state file)
    ("state.py", ".journal"),
}


def _spelled_paths(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that name a state-folder file, and folder names joined into a path
    (`x / "plans"`, `os.path.join(x, "archive")`). Messages ("inbox/<name>: ...") are text."""
    joined: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined.add(id(node.right))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join":
            joined.update(id(a) for a in node.args[1:])
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        if any(c.isspace() for c in text):
            continue  # a message or a docstring
        parts = [p.rstrip("*") for p in text.split("/") if p]
        if any(p == f or p.startswith(f + ".") for p in parts for f in LAYOUT_FILES) or (
            id(node) in joined and text in LAYOUT_FOLDERS
        ):
            found.append((node.lineno, text))
    return found


def test_only_the_store_spells_the_state_folder_layout() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {text!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "store.py"
        for n, text in _spelled_paths(ast.parse(path.read_text()))
        if (path.name, text) not in LAYOUT_ALLOWED
    ]
    assert found == []


def test_every_event_is_of_an_allowed_change_and_every_plan_status_has_one() -> None:
    for old, new in PHASE_EVENTS:
        assert new in PHASE_TRANSITIONS[old], (old, new)
    assert set(PLAN_EVENTS) == set(PlanStatus)
    assert {PlanStatus.FAILED, PlanStatus.CANCELLED, PlanStatus.MERGE_FAILED} == (
        states.PLAN_RETRYABLE
    )


def test_a_check_is_one_class_its_fixes_and_contract_lines_come_from_the_registry(
    tmp_path: Path,
) -> None:
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names))
    assert all(isinstance(c, Check) for c in CHECKS)
    assert {rule: fix for c in CHECKS for rule, fix in c.fixes.items()} == FIXES
    assert "marker_paths" in FIXES and "stale" in FIXES and "git_tampering" in FIXES

    phase = Phase.model_validate(
        {
            "id": "P01",
            "prompt": "do it",
            "kind": "impl",
            "markers": ["@plan:T.P01"],
            "marker_paths": [{"glob": "src/*.py", "min": 2}],
            "verify": [{"run": "true"}],
        }
    )
    plan = Plan.model_validate({"id": "T", "repo": str(tmp_path), "phases": [phase]})
    settings = CheckSettings()
    trailer = contract_trailer(plan, phase, 1, "primary", phase.report_path, settings)
    rules = phase_rules(plan, phase, settings)
    lines = [ln for c in CHECKS for ln in c.trailer(plan, phase, rules, phase.report_path)]
    body = trailer.splitlines()[3:-1]  # between the contract's header and "Exit when finished."
    assert body == lines
    assert any("At least 2 file(s) matching `src/*.py`" in ln for ln in lines)


def test_only_the_daemon_command_builds_a_daemon() -> None:
    """Offline cancel/retry/resume and `orchestrd run` share the lifecycle and the store, not a
    Daemon built to reach its private parts."""
    built = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bDaemon\(", line) and not line.startswith("class ")
    ]
    assert built == ["daemon.py:" + str(_line_of("anyio.run(Daemon(", PACKAGE / "daemon.py"))]


def _line_of(text: str, path: Path) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)
