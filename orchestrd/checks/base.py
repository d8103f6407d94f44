"""What every check shares: a result, the context a check runs in, the rules in force for a
phase (PhaseRules, resolved in one place) and the Check base class the registry holds.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import ClassVar, TypeVar

from ..audit import Logger
from ..config import CheckSettings
from ..errors import PlanError
from ..fsutil import DEFAULT_MAX_BYTES, FileRefused, read_regular
from ..gitsnap import Diff
from ..judge import Match
from ..launchers import Launcher
from ..plan import Phase, Plan, confine
from ..policy import WatchOutcome
from ..privsep import Identity

MAX_FINDINGS = 20  # per check and file: enough to act on, short enough to read
T = TypeVar("T")


NO_CHANGES_KINDS = frozenset({"stub", "test", "impl"})
"""Phase kinds whose workers must change something besides their report and completion files."""


@dataclasses.dataclass(frozen=True)
class PhaseRules:
    """Every rule in force for one phase, the phase's own value or else the plan's or the
    config's default. phase_rules() is the one place that resolves them: the contract the worker
    is told (trailers) and the checks that judge it read them here, so they cannot disagree."""

    log_error_patterns: tuple[str, ...]
    fail_on_log_errors: bool
    evidence_rules: tuple[str, ...]
    placeholders: tuple[str, ...]
    protect: tuple[str, ...]
    """Globs: the plan's and the phase's protect, and the plan's phase files."""
    forbid_test_changes: bool
    forbidden_patterns: tuple[str, ...]
    allow_no_changes: bool
    expect_pass_must_not_match: tuple[str, ...]
    expect_fail_must_not_match: tuple[str, ...]
    """What a verify command's output must not show, by its `expect`, for the phase's kind
    (used by the commands that keep `default_must_not_match`)."""

    def must_not_match(self, expect: str) -> tuple[str, ...]:
        return (
            self.expect_pass_must_not_match
            if expect == "pass"
            else (self.expect_fail_must_not_match)
        )


def pick(own: T | None, default: T) -> T:
    """A phase's own value of a rule, or (None: not set) the default."""
    return default if own is None else own


def phase_rules(plan: Plan, phase: Phase, settings: CheckSettings) -> PhaseRules:
    """The rules in force for `phase` (see PhaseRules)."""
    kind = phase.kind
    return PhaseRules(
        log_error_patterns=tuple(settings.log_error_patterns),
        fail_on_log_errors=pick(phase.fail_on_log_errors, settings.fail_on_log_errors),
        evidence_rules=tuple(pick(phase.evidence_rules, settings.evidence_rules)),
        placeholders=tuple(settings.placeholders),
        protect=tuple(plan.protected_globs(phase)),
        forbid_test_changes=pick(phase.forbid_test_changes, kind in settings.forbid_test_changes),
        forbidden_patterns=tuple(
            pick(phase.forbidden_patterns, settings.forbidden_patterns.for_kind(kind))
        ),
        allow_no_changes=pick(phase.allow_no_changes, kind not in NO_CHANGES_KINDS),
        expect_pass_must_not_match=tuple(settings.expect_pass_must_not_match.for_kind(kind)),
        expect_fail_must_not_match=tuple(settings.expect_fail_must_not_match.for_kind(kind)),
    )


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str
    fatal: bool = True
    """A non-fatal failure is reported (check.warning) but does not fail the phase."""
    details: dict[str, object] = dataclasses.field(default_factory=dict)
    """Extra fields for the audit event (a verify command's exit code and output tail)."""


@dataclasses.dataclass(frozen=True)
class CheckContext:
    plan: Plan
    phase: Phase
    settings: CheckSettings
    outcome: WatchOutcome
    log_path: Path
    output_dir: Path
    attempt: int
    env: dict[str, str]
    grace: float
    prompt: str = ""
    """The worker's prompt: agent CLIs echo it into their log, and it is not their output."""
    max_log_bytes: int = 64 * 1024 * 1024
    """Verify output is capped like a worker log."""
    report: str = ""
    """This attempt's report (plan_dir-relative); '' for the phase's own report."""
    changes: Diff | None = None
    """What the phase's workers changed in the repo; None when git cannot tell."""
    git_problem: str | None = None
    """Why `changes` is None (not a git checkout, git failed)."""
    identity: Identity | None = None
    """Verify commands run as the worker's user (None: as the daemon's)."""
    pid_namespace: bool = True
    git_broken: bool = False
    launcher: Launcher | None = None
    """Runs verify commands (None: the local launcher in process groups)."""
    """git worked when the phase began and failed after an attempt: no warning, a failure."""
    log_found: Mapping[str, Match] | None = None
    """What the pump saw in the worker's whole output (log_error_patterns' first matches): the
    log file keeps only its head and tail once it is cut."""
    stale: frozenset[str] = frozenset()
    """Contract files (repo-relative) no worker of the phase wrote: unchanged since it began."""

    @functools.cached_property
    def rules(self) -> PhaseRules:
        return phase_rules(self.plan, self.phase, self.settings)

    @property
    def report_path(self) -> str:
        return self.report or self.phase.report_path


def violation(name: str, path: str, line: int, rule: str, message: str) -> CheckResult:
    """A failed rule at a place: `path:line: message [rule: rule]`, with the parts as fields."""
    where = f"{path}:{line}" if line else path
    return CheckResult(
        name,
        False,
        f"{where}: {message} [rule: {rule}]",
        details={"file": path, "line": line, "rule": rule},
    )


def capped(results: list[CheckResult], name: str) -> list[CheckResult]:
    if len(results) <= MAX_FINDINGS:
        return results
    more = len(results) - MAX_FINDINGS
    return [*results[:MAX_FINDINGS], CheckResult(name, False, f"… and {more} more like these")]


def read_in_repo(
    plan: Plan, rel: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, str | None, str | None]:
    """(repo-relative path, text, why it was refused); the text is None when the file is
    missing or refused. Refused, unread: a path leaving the repo and (a worker wrote it)
    anything but a regular file of at most `max_bytes`."""
    path = plan.in_plan_dir(rel)
    try:
        target = confine(plan.repo, path)
    except PlanError as exc:
        return path, None, str(exc)
    try:
        text = read_regular(target, max_bytes, follow=False).decode("utf-8", errors="replace")
        return path, text, None
    except FileRefused as exc:
        return path, None, f"{path}: {exc}"
    except OSError:
        return path, None, None


def stale_result(name: str, path: str) -> CheckResult:
    return violation(
        name,
        path,
        0,
        "stale",
        "unchanged since the phase began: no worker of this phase wrote it, so it is no "
        "evidence of this phase's work",
    )


class Check(abc.ABC):
    """One checkpoint after a worker, all it takes in one place: its name, what the worker is
    told (`trailer`: lines of the contract at the end of its prompt), how to fix each rule it
    names (`fixes`, for the remediation prompt) and how it runs. CHECKS runs them in order; a
    new check is a subclass added there."""

    name: ClassVar[str]
    fixes: ClassVar[dict[str, str]] = {}

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        """The contract's lines for this check (`report`: the attempt's report, plan_dir
        relative)."""
        return []

    @abc.abstractmethod
    def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        """The check's results, each audited by `inspect` as it comes (before the next one
        is made: a verify command's events follow the one before)."""
