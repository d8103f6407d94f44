"""Inspection after a worker ends: exit code, log scan, report status, completion markers and
the plan's verify commands (run by the daemon itself, with an expected outcome).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import anyio

from .audit import Logger
from .config import CheckSettings
from .errors import PlanError
from .plan import Phase, Plan, confine, phase_marker_regex
from .policy import WatchOutcome
from .worker import WorkerSpec, WorkerStartError, launch, tail_file

_STATUS = re.compile(
    r"^[\s>#*_-]*status[*_\s]*:[*_\s]*(PASS(?:ED)?|FAIL(?:ED)?)\b", re.IGNORECASE | re.MULTILINE
)
LOG_SCAN_BYTES = 4 * 1024 * 1024  # the end of the log is where runtime errors are


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


def check_exit(outcome: WatchOutcome) -> CheckResult:
    if outcome.stalled:
        return CheckResult(
            "exit_code", False, f"stalled: still running after {outcome.polls} polls, stopped"
        )
    if outcome.returncode == 0:
        return CheckResult("exit_code", True, "exited 0")
    rc = outcome.returncode
    how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited {rc}"
    return CheckResult("exit_code", False, how)


def check_log(ctx: CheckContext) -> CheckResult:
    fatal = (
        ctx.phase.fail_on_log_errors
        if ctx.phase.fail_on_log_errors is not None
        else ctx.settings.fail_on_log_errors
    )
    text = tail_file(ctx.log_path, lines=10**9, max_bytes=LOG_SCAN_BYTES)
    if ctx.prompt.strip():
        # a remediation prompt quotes the failed log's traceback; its echo is no new error
        text = text.replace(ctx.prompt.strip(), "")
    for pattern in ctx.settings.log_error_patterns:
        for line in text.splitlines():
            if re.search(pattern, line):
                return CheckResult(
                    "log_errors", False, f"log matches {pattern!r}: {line.strip()[:200]}", fatal
                )
    return CheckResult("log_errors", True, "no runtime error patterns in the log")


def _read_in_repo(plan: Plan, rel: str) -> tuple[str, str | None]:
    """(repo-relative path, text or None when missing); refuses paths leaving the repo."""
    path = plan.in_plan_dir(rel)
    try:
        target = confine(plan.repo, path)
    except PlanError as exc:
        return path, f"\0{exc}"
    try:
        return path, target.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return path, None


def check_report(ctx: CheckContext) -> CheckResult:
    path, text = _read_in_repo(ctx.plan, ctx.phase.report_path)
    if text is None:
        return CheckResult("report", False, f"{path} is missing; the worker must write it")
    if text.startswith("\0"):
        return CheckResult("report", False, text[1:])
    found = _STATUS.findall(text)
    if not found:
        return CheckResult("report", False, f"{path} has no 'Status: PASS' or 'Status: FAIL' line")
    if found[-1].upper().startswith("PASS"):
        return CheckResult("report", True, f"{path}: Status: PASS")
    return CheckResult("report", False, f"{path} says Status: FAIL")


def check_completion(ctx: CheckContext) -> list[CheckResult]:
    results = []
    for rel in ctx.phase.completion_paths:
        path, text = _read_in_repo(ctx.plan, rel)
        if text is None:
            results.append(CheckResult("completion", False, f"{path} is missing"))
            continue
        if text.startswith("\0"):
            results.append(CheckResult("completion", False, text[1:]))
            continue
        missing = [m for m in ctx.phase.markers if not phase_marker_regex(m).search(text)]
        if missing:
            results.append(
                CheckResult("completion", False, f"{path} lacks marker(s): {', '.join(missing)}")
            )
        else:
            results.append(CheckResult("completion", True, f"{path} exists with its markers"))
    return results


async def run_verify(ctx: CheckContext, index: int) -> CheckResult:
    """Run one verify command in the repo, in its own process group, output to a file."""
    cmd = ctx.phase.verify[index]
    out_path = ctx.output_dir / f"verify-{ctx.phase.id}-{ctx.attempt}-{index}.log"
    name = f"verify[{index}]"
    started = time.monotonic()
    spec = WorkerSpec([*ctx.settings.verify_shell, cmd.run], ctx.env, ctx.plan.repo, out_path)
    rc: int | None = None
    try:
        # launched like a worker: own process group, output capped, nothing left behind
        async with launch(spec, ctx.max_log_bytes, ctx.grace) as proc:
            with anyio.move_on_after(cmd.timeout):
                rc = await proc.wait()
    except WorkerStartError as exc:
        return CheckResult(name, False, f"cannot run {cmd.run!r}: {exc}")
    took = round(time.monotonic() - started, 3)
    tail = tail_file(out_path, lines=15, max_bytes=4096)
    if rc is None:
        return CheckResult(
            name, False, f"{cmd.run!r} timed out after {cmd.timeout}s and was stopped",
            details={"command": cmd.run, "output": str(out_path), "output_tail": tail},
        )
    passed = rc == 0
    wanted = cmd.expect == "pass"
    details: dict[str, object] = {
        "command": cmd.run,
        "returncode": rc,
        "expect": cmd.expect,
        "seconds": took,
        "output": str(out_path),
        "output_tail": tail,
    }
    if passed == wanted:
        reason = f"{cmd.run!r} exited {rc} as expected ({cmd.expect})"
        return CheckResult(name, True, reason, details=details)
    reason = f"{cmd.run!r} exited {rc} but was expected to {cmd.expect}"
    return CheckResult(name, False, reason, details=details)


async def inspect(ctx: CheckContext, log: Logger) -> list[CheckResult]:
    """Every checkpoint, in order, each audited as check.passed / check.failed / check.warning."""
    results = [check_exit(ctx.outcome), check_log(ctx), check_report(ctx)]
    results += check_completion(ctx)
    for r in results:
        _audit(log, r)
    for i in range(len(ctx.phase.verify)):
        r = await run_verify(ctx, i)
        _audit(log, r)
        results.append(r)
    return results


def _audit(log: Logger, r: CheckResult) -> None:
    event = "check.passed" if r.ok else ("check.failed" if r.fatal else "check.warning")
    log.info(event, check=r.name, reason=r.reason, **r.details)


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok and r.fatal]
