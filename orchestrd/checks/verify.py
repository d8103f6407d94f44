"""The plan's verify commands, run by the daemon itself after a worker and judged by exit code
and by their whole output (must_match / must_not_match)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import ClassVar

import anyio
import anyio.to_thread

from ..audit import Logger
from ..judge import Match, StreamJudge
from ..launchers import WorkerSpec, WorkerStartError, open_launcher
from ..plan import Phase, Plan
from ..worker import tail_file
from .base import Check, CheckContext, CheckResult, PhaseRules


def _first_broken(
    found: dict[str, Match], must: list[str], must_not: list[str]
) -> tuple[str, int, str, str] | None:
    """The first output rule broken: (rule, line, pattern, the line's text), or None."""
    for pattern in must_not:
        if m := found.get(pattern):
            return "must_not_match", m.line, pattern, m.text[:160]
    for pattern in must:
        if pattern not in found:
            return "must_match", 0, pattern, ""
    return None


async def run_verify(ctx: CheckContext, index: int, log: Logger) -> CheckResult:
    """Run one verify command in the repo, in its own process group, output to a file; judge it
    by its exit code, then by its whole output (must_match / must_not_match), however much of
    it the file keeps (a cut is logged: check.output_truncated)."""
    cmd = ctx.phase.verify[index]
    out_path = ctx.output_dir / f"verify-{ctx.phase.id}-{ctx.attempt}-{index}.log"
    name = f"verify[{index}]"
    wanted = cmd.expect == "pass"
    must_not = [*cmd.must_not_match]
    if cmd.default_must_not_match:
        must_not += ctx.rules.must_not_match(cmd.expect)
    # judged as it streams: the file keeps only the head and the tail of a long output
    judge = StreamJudge([*must_not, *cmd.must_match])
    started = time.monotonic()
    spec = WorkerSpec(
        [*ctx.settings.verify_shell, cmd.run],
        ctx.env,
        ctx.plan.repo,
        out_path,
        ctx.identity,
        ctx.pid_namespace,
        name=f"{ctx.plan.id}:{ctx.phase.id}:{ctx.attempt}:verify{index}",
    )
    launcher = ctx.launcher or open_launcher("local", None)
    rc: int | None = None
    try:
        # launched like a worker: own cgroup, output capped, nothing left behind
        async with launcher.launch(spec, ctx.max_log_bytes, ctx.grace, judge.feed) as proc:
            with anyio.move_on_after(cmd.timeout):
                rc = await proc.wait()
    except WorkerStartError as exc:
        return CheckResult(name, False, f"cannot run {cmd.run!r}: {exc}")
    took = round(time.monotonic() - started, 3)
    if proc.dropped_bytes:
        log.info(
            "check.output_truncated",
            check=name,
            output=str(out_path),
            max_log_bytes=ctx.max_log_bytes,
            output_bytes=proc.output_bytes,
            dropped_bytes=proc.dropped_bytes,
        )
    tail = await anyio.to_thread.run_sync(tail_file, out_path, 15, 4096)
    if rc is None:
        return CheckResult(
            name,
            False,
            f"{cmd.run!r} timed out after {cmd.timeout}s and was stopped",
            details={"command": cmd.run, "output": str(out_path), "output_tail": tail},
        )
    passed = rc == 0
    details: dict[str, object] = {
        "command": cmd.run,
        "returncode": rc,
        "expect": cmd.expect,
        "seconds": took,
        "output": str(out_path),
        "output_tail": tail,
    }
    if passed != wanted:
        reason = f"{cmd.run!r} exited {rc} but was expected to {cmd.expect}"
        return CheckResult(name, False, reason, details=details)
    broken = _first_broken(judge.close(), cmd.must_match, must_not)
    if broken is None:
        checked = " and its output" if must_not or cmd.must_match else ""
        reason = f"{cmd.run!r} exited {rc} as expected ({cmd.expect}){checked}"
        return CheckResult(name, True, reason, details=details)
    rule, line, pattern, quote = broken
    why = "red for the wrong reason" if cmd.expect == "fail" else "green for the wrong reason"
    if rule == "must_not_match":
        reason = (
            f"{out_path.name}:{line}: {cmd.run!r} exited {rc} as expected ({cmd.expect}), but "
            f"its output matches {pattern!r}: {quote!r} — {why} [rule: must_not_match]"
        )
    else:
        reason = (
            f"{out_path.name}: {cmd.run!r} exited {rc} as expected ({cmd.expect}), but its "
            f"output never matches {pattern!r} — {why} [rule: must_match]"
        )
    details.update(rule=rule, pattern=pattern, file=str(out_path), line=line)
    return CheckResult(name, False, reason, details=details)


class VerifyCheck(Check):
    name = "verify"
    fixes: ClassVar[dict[str, str]] = {
        "must_not_match": "the command must fail (or pass) for the right reason: fix what its "
        "output shows (a bad option, a missing module, no tests found), then run it yourself",
        "must_match": "the command's output must show the expected result; run it yourself and "
        "fix what is missing",
    }

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        if not phase.verify:
            return []
        return [
            "- After you exit, the supervisor runs these checks itself (your claims about them "
            "are not trusted; their output is judged too, so a failure must be the right one):",
            *(f"   - `{v.run}` must {v.expect}" for v in phase.verify),
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for i in range(len(ctx.phase.verify)):
            yield await run_verify(ctx, i, log)
