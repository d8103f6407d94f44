"""The checks on what a worker leaves behind: its exit and its log, the report, the completion
files and their markers, the evidence rules on what it wrote, and a phase's prerequisites.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.to_thread

from .. import evidence
from ..audit import Logger, printable
from ..fsutil import DEFAULT_MAX_BYTES, FileRefused, read_head
from ..judge import scan_file
from ..plan import MarkerPath, Phase, Plan, glob_prefix, glob_regex, phase_marker_regex
from ..policy import Ended, WatchOutcome
from .base import (
    Check,
    CheckContext,
    CheckResult,
    PhaseRules,
    capped,
    read_in_repo,
    stale_result,
    violation,
)

MARKER_FILE_BYTES = 4 * 1024 * 1024  # a marker sits in a source file, not in a huge one


def check_exit(outcome: WatchOutcome) -> CheckResult:
    if outcome.ended is Ended.NO_EXIT:
        # its stream said it was done; the other checks judge whether it was
        return CheckResult("exit_code", True, "gave its final result, stopped after exit_grace")
    if outcome.ended is Ended.SILENT:
        return CheckResult(
            "exit_code",
            False,
            f"silent: no output and no CPU for {outcome.silent_for}s, stopped",
        )
    if outcome.stalled:
        return CheckResult(
            "exit_code", False, f"stalled: still running after {outcome.polls} polls, stopped"
        )
    if outcome.returncode == 0:
        return CheckResult("exit_code", True, "exited 0")
    rc = outcome.returncode
    how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited {rc}"
    return CheckResult("exit_code", False, how)


async def check_log(ctx: CheckContext) -> CheckResult:
    fatal = ctx.rules.fail_on_log_errors
    patterns = list(ctx.rules.log_error_patterns)
    # the whole log (its head and tail when it was cut), not only its end
    # bounded: a worker may write to its log file directly, past the pump's cap
    limit = ctx.max_log_bytes + 64 * 1024
    try:
        found = await anyio.to_thread.run_sync(scan_file, ctx.log_path, patterns, ctx.prompt, limit)
    except FileRefused as exc:
        # orchestrd made that log: a worker that swapped it hides what it printed
        return CheckResult("log_errors", False, f"worker log {ctx.log_path.name} {exc}")
    found = {**found, **(ctx.log_found or {})}
    for pattern in patterns:
        if m := found.get(pattern):
            return CheckResult("log_errors", False, f"log matches {pattern!r}: {m.text}", fatal)
    return CheckResult("log_errors", True, "no runtime error patterns in the log")


def check_report(ctx: CheckContext) -> CheckResult:
    path, text, refused = read_in_repo(ctx.plan, ctx.report_path, ctx.settings.max_evidence_bytes)
    if refused is not None:
        return CheckResult("report", False, refused)
    if text is None:
        return CheckResult("report", False, f"{path} is missing; the worker must write it")
    if path in ctx.stale:
        return stale_result("report", path)
    status, disagree = evidence.report_status(text)
    if disagree:
        return violation("report", path, 0, "contradiction", disagree)
    if status is None:
        return CheckResult("report", False, f"{path} has no 'Status: PASS' or 'Status: FAIL' line")
    if status == "PASS":
        return CheckResult("report", True, f"{path}: Status: PASS")
    return CheckResult("report", False, f"{path} says Status: FAIL")


def completion_results(
    plan: Plan,
    phase: Phase,
    name: str = "completion",
    stale: frozenset[str] = frozenset(),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[CheckResult]:
    """Each completion file of `phase` exists, was written in the phase (not `stale`) and holds
    every marker (boundary-matched)."""
    results = []
    for rel in phase.completion_paths:
        path, text, refused = read_in_repo(plan, rel, max_bytes)
        if text is None and refused is None:
            results.append(CheckResult(name, False, f"{path} is missing"))
            continue
        if path in stale:
            results.append(stale_result(name, path))
            continue
        if text is None:
            results.append(CheckResult(name, False, str(refused)))
            continue
        missing = [m for m in phase.markers if not phase_marker_regex(m).search(text)]
        if missing:
            results.append(
                CheckResult(name, False, f"{path} lacks marker(s): {', '.join(missing)}")
            )
        else:
            results.append(CheckResult(name, True, f"{path} exists with its markers"))
    return results


def check_completion(ctx: CheckContext) -> list[CheckResult]:
    return completion_results(
        ctx.plan, ctx.phase, stale=ctx.stale, max_bytes=ctx.settings.max_evidence_bytes
    )


def check_evidence(ctx: CheckContext) -> list[CheckResult]:
    """The evidence rules on the report and every completion file that exist and were written
    in the phase (a missing or stale one has failed its own check already)."""
    phase, settings = ctx.phase, ctx.settings
    rules = ctx.rules.evidence_rules
    files = [(ctx.report_path, True, phase.report_requires)]
    files += [(c, False, phase.completion_requires) for c in phase.completion_paths]
    results: list[CheckResult] = []
    checked = []
    for rel, is_report, requires in files:
        path, text, _ = read_in_repo(ctx.plan, rel, settings.max_evidence_bytes)
        if text is None or path in ctx.stale:
            continue
        checked.append(path)
        found = evidence.check_text(
            text,
            path,
            rules=rules,
            placeholder_texts=ctx.rules.placeholders,
            requires=requires,
            phase_id=phase.id,
            kind=phase.kind,
            report=is_report,
        )
        results += capped(
            [violation("evidence", f.path, f.line, f.rule, f.message) for f in found], "evidence"
        )
    if results or not checked:
        return results
    required = sorted({*phase.report_requires, *phase.completion_requires})
    names = ", ".join([*rules, *(f"{r} line" for r in required)]) or "no rules"
    return [CheckResult("evidence", True, f"{', '.join(checked)}: {names}: ok")]


def files_with_markers(repo: Path, mp: MarkerPath, markers: list[str]) -> dict[str, list[str]]:
    """For each marker, the repo-relative files matching `mp.glob` that contain it (a thread)."""
    root = repo.resolve()
    match = glob_regex(mp.glob)
    regexes = {m: phase_marker_regex(m) for m in markers}
    found: dict[str, list[str]] = {m: [] for m in markers}
    start = root / glob_prefix(mp.glob)
    for folder, dirs, names in os.walk(start):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(names):
            full = Path(folder) / name
            rel = full.relative_to(root).as_posix()
            if not match.match(rel):
                continue
            try:
                if root not in full.resolve().parents:
                    continue  # a symlink leading out of the repo
                # a FIFO the worker left here must not block the thread forever
                text = read_head(full, MARKER_FILE_BYTES).decode("utf-8", errors="replace")
            except (OSError, RuntimeError, FileRefused):  # unreadable, not a file, a loop
                continue
            for marker, regex in regexes.items():
                if regex.search(text):
                    # a name that is not UTF-8 shown as `\xff`: it goes into reasons, which
                    # state files (UTF-8 TOML) and terminals must be able to take
                    found[marker].append(printable(rel, newlines=False))
    return found


async def marker_path_results(plan: Plan, phase: Phase, name: str) -> list[CheckResult]:
    results = []
    for mp in phase.marker_paths:
        found = await anyio.to_thread.run_sync(files_with_markers, plan.repo, mp, phase.markers)
        for marker, files in found.items():
            where = ", ".join(files[:5]) + (" …" if len(files) > 5 else "")
            if len(files) >= mp.min:
                reason = f"{mp.glob}: {len(files)} file(s) with {marker}: {where}"
                results.append(CheckResult(name, True, reason))
                continue
            results.append(
                CheckResult(
                    name,
                    False,
                    f"{mp.glob}: {len(files)} file(s) contain {marker}, at least {mp.min} must"
                    + (f" (found in: {where})" if files else "")
                    + " [rule: marker_paths]",
                    details={
                        "glob": mp.glob,
                        "marker": marker,
                        "found": files[:50],
                        "min": mp.min,
                        "rule": "marker_paths",
                    },
                )
            )
    return results


async def check_prerequisites(plan: Plan, phase: Phase) -> list[CheckResult]:
    """Before a phase starts: each prerequisite phase's completion files hold its markers, and
    its marker_paths are met."""
    results = []
    for pid in phase.prerequisites:
        earlier = plan.phase(pid)
        found = await anyio.to_thread.run_sync(completion_results, plan, earlier, "prerequisites")
        found += await marker_path_results(plan, earlier, "prerequisites")
        for r in found:
            reason = f"{pid}: {r.reason}"
            if not r.ok:
                reason += f"; phase {pid} must be done before {phase.id} starts"
            results.append(dataclasses.replace(r, reason=reason))
    return results


_REQUIRED = {"phase": "`Phase: {id}`", "timestamp": "`Completed: <real date and time>`"}


class ExitCheck(Check):
    name = "exit_code"

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        yield check_exit(ctx.outcome)


class LogCheck(Check):
    name = "log_errors"

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        yield await check_log(ctx)


class ReportCheck(Check):
    name = "report"
    fixes: ClassVar[dict[str, str]] = {
        "stale": "the file is the same as before this phase began (left by an earlier run or "
        "plan): do this phase's work, then write the file anew with this attempt's real results",
    }

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        needs = "".join(
            f" It needs a line {_REQUIRED[r].format(id=phase.id)}." for r in phase.report_requires
        )
        return [
            f"- When you are done, write the report `{plan.in_plan_dir(report)}` (relative to "
            "the repository) with a line `Status: PASS`, or `Status: FAIL` and what is missing."
            + needs,
            "- Write the report and completion files in this attempt: one left as it was before "
            "this phase began (by an earlier run or plan) is no evidence.",
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        # off the event loop: it reads what the worker wrote
        yield await anyio.to_thread.run_sync(check_report, ctx)


class CompletionCheck(Check):
    name = "completion"

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        completion = [plan.in_plan_dir(c) for c in phase.completion_paths]
        if not completion:  # `completion = []`: an imported phase that names no completion file
            return []
        markers = ", ".join(f"`{m}`" for m in phase.markers)
        return [
            "- Create the completion file(s) "
            + ", ".join(f"`{c}`" for c in completion)
            + (f" containing the marker(s) {markers}" if phase.markers else "")
            + "."
            + "".join(
                f" Each needs a line {_REQUIRED[r].format(id=phase.id)}."
                for r in phase.completion_requires
            )
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in await anyio.to_thread.run_sync(check_completion, ctx):
            yield r


class MarkerPathsCheck(Check):
    name = "marker_paths"
    fixes: ClassVar[dict[str, str]] = {
        "marker_paths": "put the phase's marker (exactly this phase's id, no suffix) in the "
        "files the glob names, in a comment next to the code it marks",
    }

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        return [
            f"- At least {mp.min} file(s) matching `{mp.glob}` must contain the marker(s) too."
            for mp in phase.marker_paths
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in await marker_path_results(ctx.plan, ctx.phase, self.name):
            yield r


class EvidenceCheck(Check):
    name = "evidence"
    fixes: ClassVar[dict[str, str]] = evidence.FIXES

    def trailer(self, plan: Plan, phase: Phase, rules: PhaseRules, report: str) -> list[str]:
        if not rules.evidence_rules:
            return []
        return [
            "- Reports and completion files are evidence: paste real command output (commands "
            "go in ```bash blocks; `$(…)` anywhere else is never expanded), leave no template "
            "text or empty output blocks, and record no check as FAIL under `Status: PASS`."
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in await anyio.to_thread.run_sync(check_evidence, ctx):
            yield r
