"""Inspection after a worker ends: exit code, log scan, report status, completion markers, the
evidence rules on what the worker wrote, what it changed in the repo (git), and the plan's verify
commands (run by the daemon itself, judged by exit code and output).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.to_thread

from . import evidence
from .audit import Logger, printable
from .config import CheckSettings
from .errors import PlanError
from .fsutil import DEFAULT_MAX_BYTES, FileRefused, read_head, read_regular
from .gitsnap import Diff
from .judge import Match, StreamJudge, scan_file
from .launchers import Launcher, WorkerSpec, WorkerStartError, open_launcher
from .plan import MarkerPath, Phase, Plan, confine, glob_prefix, glob_regex, phase_marker_regex
from .policy import Ended, WatchOutcome
from .privsep import Identity
from .worker import tail_file

MAX_FINDINGS = 20  # per check and file: enough to act on, short enough to read
MARKER_FILE_BYTES = 4 * 1024 * 1024  # a marker sits in a source file, not in a huge one


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


def _capped(results: list[CheckResult], name: str) -> list[CheckResult]:
    if len(results) <= MAX_FINDINGS:
        return results
    more = len(results) - MAX_FINDINGS
    return [*results[:MAX_FINDINGS], CheckResult(name, False, f"… and {more} more like these")]


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
    fatal = (
        ctx.phase.fail_on_log_errors
        if ctx.phase.fail_on_log_errors is not None
        else ctx.settings.fail_on_log_errors
    )
    patterns = ctx.settings.log_error_patterns
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


def _read_in_repo(
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


def check_report(ctx: CheckContext) -> CheckResult:
    path, text, refused = _read_in_repo(ctx.plan, ctx.report_path, ctx.settings.max_evidence_bytes)
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
        path, text, refused = _read_in_repo(plan, rel, max_bytes)
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
    rules = phase.evidence_rules if phase.evidence_rules is not None else settings.evidence_rules
    files = [(ctx.report_path, True, phase.report_requires)]
    files += [(c, False, phase.completion_requires) for c in phase.completion_paths]
    results: list[CheckResult] = []
    checked = []
    for rel, is_report, requires in files:
        path, text, _ = _read_in_repo(ctx.plan, rel, settings.max_evidence_bytes)
        if text is None or path in ctx.stale:
            continue
        checked.append(path)
        found = evidence.check_text(
            text,
            path,
            rules=rules,
            placeholder_texts=settings.placeholders,
            requires=requires,
            phase_id=phase.id,
            kind=phase.kind,
            report=is_report,
        )
        results += _capped(
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


def change_rules(
    plan: Plan, phase: Phase, settings: CheckSettings
) -> tuple[list[str], bool, list[str]]:
    """(protected globs, forbid test changes, forbidden patterns) in force for a phase."""
    forbid_tests = (
        phase.forbid_test_changes
        if phase.forbid_test_changes is not None
        else phase.kind in settings.forbid_test_changes
    )
    patterns = (
        phase.forbidden_patterns
        if phase.forbidden_patterns is not None
        else settings.forbidden_patterns.for_kind(phase.kind)
    )
    return plan.protected_globs(phase), forbid_tests, patterns


_VERB = {"A": "added", "M": "modified", "D": "deleted", "T": "changed (type)"}


def _tampering(diff: Diff | None) -> list[CheckResult]:
    """How git sees the repo is never a worker's to change, whatever rules are in force."""
    return _capped(
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


NO_CHANGES_KINDS = frozenset({"stub", "test", "impl"})
"""Phase kinds whose workers must change something besides their report and completion files."""


def _no_changes_allowed(phase: Phase) -> bool:
    if phase.allow_no_changes is not None:
        return phase.allow_no_changes
    return phase.kind not in NO_CHANGES_KINDS


def check_no_changes(ctx: CheckContext) -> list[CheckResult]:
    """A stub, test or impl phase whose workers changed nothing but the plan's report and
    completion files did not do the phase (`allow_no_changes = true` lets one pass)."""
    if _no_changes_allowed(ctx.phase):
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
    protect, forbid_tests, patterns = change_rules(ctx.plan, ctx.phase, ctx.settings)
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
    results = tampering + [r for name, rs in found.items() for r in _capped(rs, name)]
    results += _capped(_forbidden(diff, patterns, is_test, exempt), "forbidden_patterns")
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
    diff: Diff, patterns: list[str], is_test: dict[str, bool], exempt: list[re.Pattern[str]]
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
    defaults = (
        ctx.settings.expect_pass_must_not_match
        if wanted
        else ctx.settings.expect_fail_must_not_match
    )
    must_not = [*cmd.must_not_match]
    if cmd.default_must_not_match:
        must_not += defaults.for_kind(ctx.phase.kind)
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


_REQUIRED = {"phase": "`Phase: {id}`", "timestamp": "`Completed: <real date and time>`"}


class Check(abc.ABC):
    """One checkpoint after a worker, all it takes in one place: its name, what the worker is
    told (`trailer`: lines of the contract at the end of its prompt), how to fix each rule it
    names (`fixes`, for the remediation prompt) and how it runs. CHECKS runs them in order; a
    new check is a subclass added there."""

    name: ClassVar[str]
    fixes: ClassVar[dict[str, str]] = {}

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
        """The contract's lines for this check (`report`: the attempt's report, plan_dir
        relative)."""
        return []

    @abc.abstractmethod
    def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        """The check's results, each audited by `inspect` as it comes (before the next one
        is made: a verify command's events follow the one before)."""


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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
        rules = (
            phase.evidence_rules if phase.evidence_rules is not None else settings.evidence_rules
        )
        if not rules:
            return []
        return [
            "- Reports and completion files are evidence: paste real command output (commands "
            "go in ```bash blocks; `$(…)` anywhere else is never expanded), leave no template "
            "text or empty output blocks, and record no check as FAIL under `Status: PASS`."
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in await anyio.to_thread.run_sync(check_evidence, ctx):
            yield r


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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
        lines = []
        _, forbid_tests, patterns = change_rules(plan, phase, settings)
        prompts = [plan.in_plan_dir(p.prompt_file) for p in plan.phases if p.prompt_file]
        protect = [f"`{g}`" for g in (*plan.protect, *phase.protect)]
        if prompts:
            more = f" and {len(prompts) - 3} more" if len(prompts) > 3 else ""
            listed = ", ".join(f"`{p}`" for p in prompts[:3])
            protect.append(f"the plan's phase files ({listed}{more})")
        if protect:
            lines.append("- Do not change " + ", ".join(protect) + ".")
        if forbid_tests:
            lines.append(f"- Do not change test files in this {phase.kind} phase.")
        if patterns:
            forbidden = ", ".join(f"`{p}`" for p in patterns)
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

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
        if _no_changes_allowed(phase):
            return []
        return [
            f"- A {phase.kind} phase changes the repository: a report and completion files "
            "alone do not pass."
        ]

    async def run(self, ctx: CheckContext, log: Logger) -> AsyncIterator[CheckResult]:
        for r in check_no_changes(ctx):
            yield r


class VerifyCheck(Check):
    name = "verify"
    fixes: ClassVar[dict[str, str]] = {
        "must_not_match": "the command must fail (or pass) for the right reason: fix what its "
        "output shows (a bad option, a missing module, no tests found), then run it yourself",
        "must_match": "the command's output must show the expected result; run it yourself and "
        "fix what is missing",
    }

    def trailer(self, plan: Plan, phase: Phase, settings: CheckSettings, report: str) -> list[str]:
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
