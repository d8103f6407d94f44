"""The checks' registries are the only lists: the rules in force are resolved in one place
(phase_rules), an evidence rule is one class (its name, default, fix and how it judges), and
no other module names a rule in an if-chain."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

from orchestrd import checks, evidence, importer
from orchestrd.checks import CHECKS, FIXES, Check, phase_rules
from orchestrd.config import CheckSettings, load_config
from orchestrd.errors import PlanError
from orchestrd.plan import Phase, Plan, load_plan
from orchestrd.prompt import contract_trailer

PACKAGE = Path(evidence.__file__).parent


def _plan(tmp_path: Path, **phase: Any) -> tuple[Plan, Phase]:
    p = Phase.model_validate({"id": "P01", "prompt": "do it", "kind": "impl", **phase})
    return Plan.model_validate({"id": "T", "repo": str(tmp_path), "phases": [p]}), p


def test_phase_rules_take_the_phase_value_else_the_config_default(tmp_path: Path) -> None:
    settings = CheckSettings(fail_on_log_errors=True, forbid_test_changes=["impl"])
    plan, phase = _plan(tmp_path)
    rules = phase_rules(plan, phase, settings)
    assert rules.fail_on_log_errors and rules.forbid_test_changes
    assert rules.evidence_rules == evidence.DEFAULT_RULES
    assert not rules.allow_no_changes  # an impl phase must change the repo
    assert rules.forbidden_patterns == tuple(settings.forbidden_patterns.for_kind("impl"))

    plan, phase = _plan(
        tmp_path,
        fail_on_log_errors=False,
        forbid_test_changes=False,
        evidence_rules=[],
        forbidden_patterns=[],
        allow_no_changes=True,
    )
    rules = phase_rules(plan, phase, settings)
    assert not rules.fail_on_log_errors and not rules.forbid_test_changes
    assert rules.evidence_rules == () and rules.forbidden_patterns == ()
    assert rules.allow_no_changes


def test_the_contract_and_the_checks_read_the_same_resolved_rules(tmp_path: Path) -> None:
    settings = CheckSettings()
    plan, strict = _plan(tmp_path)
    _, lax = _plan(tmp_path, forbid_test_changes=False, forbidden_patterns=[], evidence_rules=[])
    told = contract_trailer(plan, strict, 1, "primary", strict.report_path, settings)
    assert "Do not change test files" in told and "must not match" in told
    assert "Reports and completion files are evidence" in told
    told = contract_trailer(plan, lax, 1, "primary", lax.report_path, settings)
    assert "Do not change test files" not in told and "must not match" not in told
    assert "Reports and completion files are evidence" not in told


class _TodoLeft(evidence.TextRule):
    name = "todo_left"
    fix = "finish what the TODO marks"
    default = False

    def find(self, doc: evidence.Document) -> Iterator[evidence.Finding]:
        for line in doc.lines:
            if "TODO" in line.text:
                yield evidence.Finding(doc.path, line.no, self.name, "a TODO is left")


def test_a_new_evidence_rule_is_one_class_in_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert all(isinstance(r, evidence.TextRule) for r in evidence.RULES)
    assert {r.name for r in evidence.RULES} <= set(FIXES)
    with pytest.raises(ValueError, match="unknown evidence rule 'todo_left'"):
        CheckSettings(evidence_rules=["todo_left"])

    monkeypatch.setattr(evidence, "RULES", (*evidence.RULES, _TodoLeft()))
    settings = CheckSettings(evidence_rules=["todo_left"])
    assert settings.evidence_rules == ["todo_left"]
    found = evidence.check_text("Status: PASS\nTODO: tests\n", "r.md", rules=["todo_left"])
    assert [(f.line, f.rule) for f in found] == [(2, "todo_left")]
    # off unless named: its class says so
    assert evidence.check_text("TODO\n", "r.md", rules=evidence.DEFAULT_RULES) == []


def test_every_check_and_rule_comes_from_its_registry_and_no_if_chain_names_them() -> None:
    assert all(isinstance(c, Check) and c.name for c in CHECKS)
    assert {rule: fix for c in CHECKS for rule, fix in c.fixes.items()} == FIXES
    rule_names = [r.name for r in evidence.RULES]
    names = "|".join(rule_names)
    chain = re.compile(rf"""["']({names})["']\s+(?:not\s+)?in\b""")
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if chain.search(line)
    ]
    assert found == []


def test_checks_and_importer_modules_stay_below_600_lines() -> None:
    for pkg in (checks, importer):
        for path in Path(str(pkg.__file__)).parent.glob("*.py"):
            assert len(path.read_text().splitlines()) < 600, path


def test_a_stored_plan_is_read_with_the_spool_limit_it_was_taken_in_with(tmp_path: Path) -> None:
    big = "x" * (1024 * 1024 + 10)
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(
        f'id = "T"\nrepo = "{tmp_path}"\n[[phases]]\nid = "P01"\nprompt = "{big}"\n'
    )
    config, _ = load_config(make_config(tmp_path, spool={"max_plan_bytes": 2 * 1024 * 1024}))
    assert len(load_plan(plan_file, config).phases[0].prompt or "") == len(big)
    small, _ = load_config(make_config(tmp_path, spool={"max_plan_bytes": 4096}))
    with pytest.raises(PlanError, match="4096"):
        load_plan(plan_file, small)
