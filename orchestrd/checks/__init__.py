"""Inspection after a worker ends: exit code, log scan, report status, completion markers, the
evidence rules on what the worker wrote, what it changed in the repo (git), and the plan's verify
commands (run by the daemon itself, judged by exit code and output).

CHECKS is the registry: each check one class (base.Check) with its name, its lines of the
worker's contract, its fixes and how it runs; the rules in force come from base.phase_rules.
"""

from __future__ import annotations

from ..audit import Logger
from .base import (
    MAX_FINDINGS,
    NO_CHANGES_KINDS,
    Check,
    CheckContext,
    CheckResult,
    PhaseRules,
    phase_rules,
    violation,
)
from .changes import ChangesCheck, NoChangesCheck, check_changes, check_no_changes
from .paperwork import (
    CompletionCheck,
    EvidenceCheck,
    ExitCheck,
    LogCheck,
    MarkerPathsCheck,
    ReportCheck,
    check_completion,
    check_evidence,
    check_exit,
    check_log,
    check_prerequisites,
    check_report,
    completion_results,
    files_with_markers,
    marker_path_results,
)
from .verify import VerifyCheck, run_verify

__all__ = [
    "CHECKS",
    "FIXES",
    "MAX_FINDINGS",
    "NO_CHANGES_KINDS",
    "Check",
    "CheckContext",
    "CheckResult",
    "PhaseRules",
    "audit",
    "check_changes",
    "check_completion",
    "check_evidence",
    "check_exit",
    "check_log",
    "check_no_changes",
    "check_prerequisites",
    "check_report",
    "completion_results",
    "failures",
    "files_with_markers",
    "inspect",
    "marker_path_results",
    "phase_rules",
    "run_verify",
    "violation",
]

# Run in this order after each worker; their trailers make the worker's contract in this order.
CHECKS: tuple[Check, ...] = (
    ExitCheck(),
    LogCheck(),
    ReportCheck(),
    CompletionCheck(),
    EvidenceCheck(),
    MarkerPathsCheck(),
    ChangesCheck(),
    NoChangesCheck(),
    VerifyCheck(),
)

# How to repair each rule a check names, for the remediation prompt.
FIXES: dict[str, str] = {rule: fix for check in CHECKS for rule, fix in check.fixes.items()}


async def inspect(ctx: CheckContext, log: Logger) -> list[CheckResult]:
    """Every checkpoint of CHECKS, in order, each result audited as check.passed /
    check.failed / check.warning as it comes."""
    results: list[CheckResult] = []
    for check in CHECKS:
        async for r in check.run(ctx, log):
            audit(log, r)
            results.append(r)
    return results


def audit(log: Logger, r: CheckResult) -> None:
    event = "check.passed" if r.ok else ("check.failed" if r.fatal else "check.warning")
    log.info(event, check=r.name, reason=r.reason, **r.details)


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok and r.fatal]
