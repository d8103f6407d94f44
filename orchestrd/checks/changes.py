"""The checks on what a phase's workers changed in the repository (its git snapshot): protected
files, test files, forbidden lines, git tampering, and a phase that changed nothing but its
paperwork.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from ..audit import Logger
from ..gitsnap import Diff
from ..plan import Phase, Plan, glob_regex
from .base import Check, CheckContext, CheckResult, PhaseRules, capped, violation

_VERB = {"A": "added", "M": "modified", "D": "deleted", "T": "changed (type)"}


def _tampering(diff: Diff | None) -> list[CheckResult]:
    """How git sees the repo is never a worker's to change, whatever rules are in force."""
    return capped(
        [
            violation(
                "git_tampering",
                c.path,
                0,
                "git_tampering",
                f"{c.path} {_VERB.get(c.status, c.status)} during the phase"
                + (
                    ": a .gitignore git ignores hides itself and what it names"
                    if c.path.endswith(".gitignore")
                    else ": it decides how git sees the repository"
                ),
            )
            for c in (diff.tampered if diff is not None else [])
        ],
        "git_tampering",
    )


def check_no_changes(ctx: CheckContext) -> list[CheckResult]:
    """A stub, test or impl phase whose workers changed nothing but the plan's report and
    completion files did not do the phase (`allow_no_changes = true` lets one pass)."""
    if ctx.rules.allow_no_changes:
        return []
    if ctx.changes is None:
        if ctx.git_broken:
            return []  # git_tampering fails the phase already
        why = ctx.git_problem or "no git snapshot"
        return [CheckResult("no_changes", False, f"{why}; not checked: no_changes", False)]
    exempt = ctx.plan.contract_files()
    work = [c.path for c in ctx.changes.files if not any(e.match(c.path) for e in exempt)]
    if work:
        return [CheckResult("no_changes", True, f"{len(work)} file(s) changed besides reports")]
    return [
        CheckResult(
            "no_changes",
            False,
            f"nothing changed but the paperwork: this {ctx.phase.kind} phase changed no file "
            "besides the plan's report and completion files [rule: no_changes]",
            details={"rule": "no_changes"},
        )
    ]


def check_changes(ctx: CheckContext) -> list[CheckResult]:
    """protect, forbid_test_changes and forbidden_patterns on what the phase's workers changed,
    and git tampering. Each rule's findings are capped (MAX_FINDINGS): a worker that changes
    10,000 files gets a readable verdict, not 10,000 events.

    The plan's report and completion files are what workers are asked to write: never counted.
    """
    rules = ctx.rules
    protect, forbid_tests, patterns = (
        rules.protect,
        rules.forbid_test_changes,
        rules.forbidden_patterns,
    )
    in_force = [
        n
        for n, on in (
            ("protect", protect),
            ("forbid_test_changes", forbid_tests),
            ("forbidden_patterns", patterns),
        )
        if on
    ]
    diff = ctx.changes
    tampering = _tampering(diff)
    if ctx.git_broken:
        # a worker that breaks the repo must not thereby escape the rules
        tampering.append(
            CheckResult(
                "git_tampering",
                False,
                f"git worked when the phase began, now: {ctx.git_problem}; restore the "
                "repository [rule: git_tampering]",
                details={"rule": "git_tampering"},
            )
        )
    if not in_force:
        return tampering
    if diff is None:
        why = ctx.git_problem or "no git snapshot"
        return [
            *tampering,
            CheckResult("git", False, f"{why}; not checked: {', '.join(in_force)}", ctx.git_broken),
        ]
    exempt = ctx.plan.contract_files()
    protected = [glob_regex(g) for g in protect]
    tests = [glob_regex(g) for g in ctx.settings.test_globs]
    found: dict[str, list[CheckResult]] = {"protect": [], "test_changes": []}
    is_test: dict[str, bool] = {}
    for change in diff.files:
        path = change.path
        is_test[path] = any(t.match(path) for t in tests)
        if any(e.match(path) for e in exempt):
            continue
        line = diff.first_line.get(path, 0)
        verb = _VERB.get(change.status, change.status)
        if any(p.match(path) for p in protected):
            found["protect"].append(
                violation("protect", path, line, "protect", f"protected file {verb}")
            )
        if forbid_tests and is_test[path]:
            found["test_changes"].append(
                violation(
                    "test_changes",
                    path,
                    line,
                    "forbid_test_changes",
                    f"test file {verb} in a {ctx.phase.kind} phase; tests are fixed before "
                    "the implementation",
                )
            )
    results = tampering + [r for name, rs in found.items() for r in capped(rs, name)]
    results += capped(_forbidden(diff, patterns, is_test, exempt), "forbidden_patterns")
    if results:
        return results
    return [
        CheckResult(
            "changes",
            True,
            f"{len(diff.files)} changed file(s); {', '.join(in_force)}: ok",
        )
    ]


def _forbidden(
    diff: Diff, patterns: Sequence[str], is_test: dict[str, bool], exempt: list[re.Pattern[str]]
) -> list[CheckResult]:
    """Lines the workers added to non-test files that match a forbidden pattern."""
    compiled = [re.compile(p) for p in patterns]
    hits = []
    for added in diff.added:
        if is_test.get(added.path) or any(e.match(added.path) for e in exempt):
            continue
        for rx in compiled:
            if rx.search(added.text):
                hits.append(
                    violation(
                        "forbidden_patterns",
                        added.path,
                        added.line,
                        "forbidden_patterns",
                        f"added line matches {rx.pattern!r}: {added.text.strip()[:120]!r}",
                    )
                )
                break
    return hits


class ChangesCheck(Check):
    name = "changes"
    fixes: ClassVar[dict[str, str]] = {
        "protect": "restore the protected file to its state when the phase started "
        "(git checkout <that commit> -- FILE); never change it",
        "forbid_test_changes": "restore the test file as it was when the phase started; make "
        "the implementation pass the tests as written",
        "forbidden_patterns": "finish the work the line marks as unfinished, then remove the "
        "marker",
        "git_tampering": "restore .git/config, .git/info/ and .git/hooks/ as they were when the "
        "phase began, and remove any .gitignore that ignores itself; never change how git sees "
        "the repository",
    }

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        lines = []
        prompts = [plan.in_plan_dir(p.prompt_file) for p in plan.phases if p.prompt_file]
        protect = [f"`{g}`" for g in (*plan.protect, *phase.protect)]
        if prompts:
            more = f" and {len(prompts) - 3} more" if len(prompts) > 3 else ""
            listed = ", ".join(f"`{p}`" for p in prompts[:3])
            protect.append(f"the plan's phase files ({listed}{more})")
        if protect:
            lines.append("- Do not change " + ", ".join(protect) + ".")
        if rules.forbid_test_changes:
            lines.append(f"- Do not change test files in this {phase.kind} phase.")
        if rules.forbidden_patterns:
            forbidden = ", ".join(f"`{p}`" for p in rules.forbidden_patterns)
            lines.append(f"- Lines you add outside tests must not match: {forbidden}.")
        return lines

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in check_changes(ctx):
            yield r


class NoChangesCheck(Check):
    name = "no_changes"
    fixes: ClassVar[dict[str, str]] = {
        "no_changes": "do the phase's work in the repository itself: a report and completion "
        "files alone are not the phase",
    }

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        if rules.allow_no_changes:
            return []
        return [
            f"- A {phase.kind} phase changes the repository: a report and completion files "
            "alone do not pass."
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in check_no_changes(ctx):
            yield r
