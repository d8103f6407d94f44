"""One owner per concept: state changes only in the state module, checks as one registry."""

from __future__ import annotations

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
