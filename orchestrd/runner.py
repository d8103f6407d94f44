"""One plan: its phases in order, a fresh worker per attempt, the poll policy, the checkpoints,
and remediation workers until the phase passes or the remediations run out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from .audit import Logger
from .checks import (
    FIXES,
    CheckContext,
    CheckResult,
    audit,
    change_rules,
    check_prerequisites,
    failures,
    inspect,
    run_verify,
)
from .config import CheckSettings, Config, Policy, WorkerProfile
from .contract import ContractBaseline
from .errors import OrchestrdError, PlanError
from .fsutil import FileRefused, read_head, read_regular, write_file
from .gitsnap import Git, PhaseGit, drop_snapshots
from .plan import Phase, Plan, confine
from .policy import WatchOutcome, watch
from .privsep import Identity, handoff_root, identity_for, make_handoff
from .state import AttemptState, PhaseState, PlanFolder, PlanRecord, now_iso
from .states import (
    ATTEMPT_TRANSITIONS,
    AttemptStatus,
    PhaseStatus,
    PlanStatus,
    check_transition,
)
from .worker import (
    LOG_SCAN_BYTES,
    LocalWorker,
    WorkerSpec,
    WorkerStartError,
    launch,
    log_without_prompt,
    stop_group,
)

# What a worker inherits from the daemon's environment, besides env_passthrough and its profile.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
LOG_TAIL_LINES = 40
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def set_attempt(att: AttemptState, new: AttemptStatus) -> None:
    check_transition(ATTEMPT_TRANSITIONS, att.status, new)
    att.status = new


def base_env(config: Config) -> dict[str, str]:
    names = (*BASE_ENV, *config.env_passthrough)
    return {k: os.environ[k] for k in names if k in os.environ}


def render_command(
    profile: WorkerProfile, values: dict[str, str]
) -> list[str]:
    # one pass over the template: braces inside a substituted value (a prompt quoting
    # `f"{phase}"`) are the value's own text, never placeholders
    return [
        _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg)
        for arg in profile.command
    ]


def contract_trailer(
    plan: Plan, phase: Phase, attempt: int, role: str, report_rel: str, settings: CheckSettings
) -> str:
    """What the worker must leave behind, in words: the same rules the checkpoints apply."""
    report = plan.in_plan_dir(report_rel)
    completion = [plan.in_plan_dir(c) for c in phase.completion_paths]
    required = {"phase": f"`Phase: {phase.id}`", "timestamp": "`Completed: <real date and time>`"}
    lines = [
        "",
        "---",
        f"orchestrd worker contract — plan {plan.id}, phase {phase.id}, attempt {attempt} "
        f"({role}). You run headless in {plan.repo}; nobody will answer questions.",
        f"- When you are done, write the report `{report}` (relative to the repository) with a "
        "line `Status: PASS`, or `Status: FAIL` and what is missing."
        + "".join(f" It needs a line {required[r]}." for r in phase.report_requires),
        "- Write the report and completion files in this attempt: one left as it was before "
        "this phase began (by an earlier run or plan) is no evidence.",
    ]
    if completion:  # `completion = []`: an imported phase that names no completion file
        lines.append(
            "- Create the completion file(s) " + ", ".join(f"`{c}`" for c in completion)
            + (
                " containing the marker(s) " + ", ".join(f"`{m}`" for m in phase.markers)
                if phase.markers
                else ""
            )
            + "."
            + "".join(f" Each needs a line {required[r]}." for r in phase.completion_requires)
        )
    lines += [
        f"- At least {mp.min} file(s) matching `{mp.glob}` must contain the marker(s) too."
        for mp in phase.marker_paths
    ]
    rules = phase.evidence_rules if phase.evidence_rules is not None else settings.evidence_rules
    if rules:
        lines.append(
            "- Reports and completion files are evidence: paste real command output (commands "
            "go in ```bash blocks; `$(…)` anywhere else is never expanded), leave no template "
            "text or empty output blocks, and record no check as FAIL under `Status: PASS`."
        )
    _, forbid_tests, patterns = change_rules(plan, phase, settings)
    prompts = [plan.in_plan_dir(p.prompt_file) for p in plan.phases if p.prompt_file]
    protect = [f"`{g}`" for g in (*plan.protect, *phase.protect)]
    if prompts:
        more = f" and {len(prompts) - 3} more" if len(prompts) > 3 else ""
        protect.append(
            "the plan's phase files (" + ", ".join(f"`{p}`" for p in prompts[:3]) + more + ")"
        )
    if protect:
        lines.append("- Do not change " + ", ".join(protect) + ".")
    if forbid_tests:
        lines.append(f"- Do not change test files in this {phase.kind} phase.")
    if patterns:
        lines.append(
            "- Lines you add outside tests must not match: "
            + ", ".join(f"`{p}`" for p in patterns) + "."
        )
    if phase.verify:
        lines.append(
            "- After you exit, the supervisor runs these checks itself (your claims about them "
            "are not trusted; their output is judged too, so a failure must be the right one):"
        )
        lines += [f"   - `{v.run}` must {v.expect}" for v in phase.verify]
    lines.append("Exit when finished.")
    return "\n".join(lines) + "\n"


def remediation_section(
    failed: list[CheckResult], failed_log: Path, tail: str, baseline: str | None = None
) -> str:
    """The failed checks with their places and rules, how to fix each rule, and the log's end."""
    lines = [
        "",
        "## Remediation",
        "A previous worker on this phase did not finish it. These checks failed:",
    ]
    lines += [f"- {r.name}: {r.reason}" for r in failed]
    rules = list(dict.fromkeys(str(r.details["rule"]) for r in failed if "rule" in r.details))
    if rules:
        lines += ["", "How to fix each rule named above:"]
        lines += [f"- {rule}: {FIXES[rule]}" for rule in rules if rule in FIXES]
    if baseline:
        lines.append(
            f"The phase started at commit {baseline}; `git diff {baseline}` shows what changed "
            "since (files the phase must not change are judged against it)."
        )
    lines += [
        "",
        f"The last lines of its log ({failed_log}):",
        "```",
        tail,
        "```",
        "Repair what is missing or wrong, then meet the contract below.",
    ]
    # a NUL byte (a binary file dumped into the log) cannot travel in argv or the environment
    return ("\n".join(lines) + "\n").replace("\0", "")


def log_tail_without(log: Path, prompt_file: Path, lines: int) -> str:
    """The end of a worker's log without the prompt the agent echoed into it: the prompt is
    not the worker's output, and the next worker gets its own."""
    try:
        prompt = read_head(prompt_file, LOG_SCAN_BYTES).decode("utf-8", errors="replace")
    except (OSError, FileRefused):
        prompt = ""
    try:
        text = log_without_prompt(log, prompt, "[the prompt, echoed by the agent]")
    except FileRefused as exc:
        return f"[orchestrd: the log is not read: it {exc}]"
    return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Handoff:
    """Who the attempt's worker runs as, and its hand-off folder (None: as the daemon)."""

    identity: Identity | None
    folder: Path | None = None

    async def remove(self) -> None:
        if self.folder is not None:
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, self.folder, ignore_errors=True)
            )


MAX_PROMPT_FILE = 4 * 1024 * 1024


def read_prompt_file(plan: Plan, rel: str) -> str:
    """A phase's prompt file, which an earlier phase's worker may have replaced: read by the
    daemon (perhaps as root), so a link leading out of the repo is refused (PlanError; it would
    hand the daemon's files to the next worker), and so is anything but a regular file (a FIFO
    would block) or a file over MAX_PROMPT_FILE."""
    path = confine(plan.repo, plan.in_plan_dir(rel))
    try:
        raw = read_regular(path, MAX_PROMPT_FILE, "the prompt file limit", follow=False)
    except FileRefused as exc:
        raise PlanError(f"prompt_file {plan.in_plan_dir(rel)}: {exc}") from None
    return raw.decode("utf-8", errors="replace")


def describe(failed: list[CheckResult]) -> str:
    return "; ".join(f"{r.name}: {r.reason}" for r in failed).replace("\0", "")


class PlanRunner:
    """Carries out one plan. The caller owns the record's plan-level status."""

    def __init__(
        self,
        plan: Plan,
        record: PlanRecord,
        folder: PlanFolder,
        get_config: Callable[[], Config],
        log: Logger,
    ) -> None:
        self.plan = plan
        self.record = record
        self.folder = folder
        self.get_config = get_config
        self.log = log

    async def run(self) -> PlanStatus:
        """Run every phase not yet passed; returns SUCCEEDED or FAILED (and records it)."""
        state = self.record.state
        for phase in self.plan.phases:
            state.phases.setdefault(phase.id, PhaseState())
        if state.status is not PlanStatus.RUNNING:
            # unsaved: queued and interrupted plans resume just like running ones, and the
            # first attempt's save follows within milliseconds
            await self.record.set_status(
                PlanStatus.RUNNING, save=False, phases=len(self.plan.phases)
            )
        for phase in self.plan.phases:
            if state.phases[phase.id].status is PhaseStatus.PASSED:
                self.log.info("phase.skipped", phase=phase.id, reason="passed before")
                continue
            if not await self.run_phase(phase):
                reason = f"phase {phase.id} failed: {state.phases[phase.id].reason}"
                await anyio.to_thread.run_sync(drop_snapshots, self.folder.workers)
                await self.record.set_status(PlanStatus.FAILED, reason, phase=phase.id)
                return PlanStatus.FAILED
        # kept while the plan may resume (its index spares hashing every file again)
        await anyio.to_thread.run_sync(drop_snapshots, self.folder.workers)
        await self.record.set_status(PlanStatus.SUCCEEDED)
        return PlanStatus.SUCCEEDED

    async def run_phase(self, phase: Phase) -> bool:
        ps = self.record.state.phases[phase.id]
        if ps.status in (PhaseStatus.RUNNING, PhaseStatus.CHECKING, PhaseStatus.FAILED):
            # resumed after a restart, or retried: the phase starts over with a fresh worker
            for att in ps.attempts:
                if att.status in (AttemptStatus.STARTING, AttemptStatus.RUNNING):
                    att.status = AttemptStatus.STOPPED
            if ps.status is PhaseStatus.FAILED:
                ps.failures = 0
            await self.record.set_phase(phase.id, PhaseStatus.PENDING, None)
        # unsaved: the first attempt's record is saved right after, and a phase left pending
        # by a crash runs from the start all the same
        await self.record.set_phase(
            phase.id, PhaseStatus.RUNNING, "phase.started", save=False, kind=phase.kind
        )
        if not await self._prerequisites_met(phase):
            return False
        config = self.get_config()
        # the phase's workers are judged on what they changed since the phase began
        git = self._git(config)
        # ignored files matching these are compared too: hiding one from git hides nothing
        watch = (*config.checks.test_globs, *self.plan.protected_globs(phase))
        pgit = PhaseGit(git, tuple(dict.fromkeys(watch)))
        # and a report or completion file none of them wrote is no evidence of their work
        contract = ContractBaseline(self.plan, phase)
        policy = config.policy_for(self.plan.policy, phase.policy)
        await contract.take(contract.paths(policy.max_remediations))
        previous: tuple[list[CheckResult], Path] | None = None
        while True:
            config = self.get_config()
            policy = config.policy_for(self.plan.policy, phase.policy)
            role = "primary" if ps.failures == 0 else "remediation"
            results, log_path = await self.attempt(
                phase, config, policy, role, previous, (pgit, contract)
            )
            bad = failures(results)
            if not bad:
                await self.record.set_phase(phase.id, PhaseStatus.PASSED, "phase.passed")
                # the daemon's own record, next to the state: recovery believes a pass only
                # with it (or the audit log's phase.passed), never state.toml alone
                self.folder.append_ledger(phase.id, self.folder.passes)
                return True
            ps.failures += 1
            if ps.failures > policy.max_remediations:
                await self.record.set_phase(
                    phase.id, PhaseStatus.FAILED, "phase.failed", describe(bad),
                    attempts=len(ps.attempts),
                )
                return False
            previous = (bad, log_path)
            await self.record.set_phase(
                phase.id, PhaseStatus.RUNNING, "remediation.started", describe(bad),
                attempt=len(ps.attempts) + 1, remediation=ps.failures,
                max_remediations=policy.max_remediations,
            )

    def _git(self, config: Config) -> Git:
        """git for the plan's repo. What reads the repo's own config (status, rev-parse) runs
        as its workers' user when they have one: that config is theirs to write. Snapshots are
        built as the daemon in a repository of our own in the plan's folder, out of their
        reach."""
        profile = config.workers.get(self.plan.worker or config.default_worker)
        identity = identity_for(config, profile)  # ConfigError (the user is gone): plan fails
        return Git(self.plan.repo, self.folder.workers, config.checks.git_timeout, identity)

    async def _prerequisites_met(self, phase: Phase) -> bool:
        """Earlier phases named in `prerequisites` left their markers and the `precheck`
        commands end as expected; else the phase fails before any worker starts (a worker
        cannot make up for a phase that was not done)."""
        if not phase.prerequisites and not phase.precheck:
            return True
        log = self.log.bind(phase=phase.id)
        results = await check_prerequisites(self.plan, phase)
        for r in results:
            audit(log, r)
        if not failures(results):
            results += await self._precheck(phase, log)
        bad = failures(results)
        if not bad:
            return True
        await self.record.set_phase(phase.id, PhaseStatus.CHECKING, None)
        await self.record.set_phase(
            phase.id, PhaseStatus.FAILED, "phase.failed", describe(bad), attempts=0
        )
        return False

    async def _precheck(self, phase: Phase, log: Logger) -> list[CheckResult]:
        """The precheck commands, run and judged as verify commands are (output in the
        workers folder as verify-ID-0-N.log: attempt 0, before the first worker)."""
        config = self.get_config()
        # run as the workers are: the commands come from the plan, as verify's do
        profile = config.workers.get(self.plan.worker or config.default_worker)
        identity = identity_for(config, profile)
        env = base_env(config) | (identity.env() if identity else {})
        ctx = CheckContext(
            plan=self.plan, phase=phase.model_copy(update={"verify": phase.precheck}),
            settings=config.checks, outcome=WatchOutcome(0, 0), log_path=Path(os.devnull),
            output_dir=self.folder.workers, attempt=0, env=env,
            grace=config.policy_for(self.plan.policy, phase.policy).stop_grace,
            max_log_bytes=config.max_log_bytes, identity=identity,
            pid_namespace=config.worker_pid_namespace,
        )
        results = []
        for i in range(len(phase.precheck)):
            r = dataclasses.replace(await run_verify(ctx, i, log), name=f"precheck[{i}]")
            audit(log, r)
            results.append(r)
        return results

    def _prompt(
        self, phase: Phase, n: int, role: str, report: str, settings: CheckSettings,
        previous: tuple[list[CheckResult], Path] | None, baseline: str | None,
        shown_log: Path | None = None,
    ) -> str:
        """`shown_log`: where the worker finds the failed log (its hand-off copy)."""
        if phase.prompt is not None:
            text = phase.prompt
        else:
            assert phase.prompt_file is not None
            text = read_prompt_file(self.plan, phase.prompt_file)
        if previous is not None:
            failed, failed_log = previous
            echoed = self.folder.workers / f"prompt-{phase.id}-{n - 1}.md"
            tail = log_tail_without(failed_log, echoed, LOG_TAIL_LINES)
            text += remediation_section(failed, shown_log or failed_log, tail, baseline)
        return text + contract_trailer(self.plan, phase, n, role, report, settings)

    def _env(
        self, config: Config, profile: WorkerProfile, phase: Phase, n: int, role: str,
        report: str, log_path: Path, previous: tuple[list[CheckResult], Path] | None,
        handoff: Handoff,
    ) -> dict[str, str]:
        env = base_env(config)
        if handoff.identity is not None:
            env.update(handoff.identity.env())
        env.update(profile.env)
        env.update(
            ORCHESTRD_PLAN_ID=self.plan.id,
            ORCHESTRD_PHASE_ID=phase.id,
            ORCHESTRD_PHASE_KIND=phase.kind,
            ORCHESTRD_ATTEMPT=str(n),
            ORCHESTRD_ROLE=role,
            ORCHESTRD_REPORT=self.plan.in_plan_dir(report),
            ORCHESTRD_COMPLETION=os.pathsep.join(
                self.plan.in_plan_dir(c) for c in phase.completion_paths
            ),
            ORCHESTRD_MARKERS="\n".join(phase.markers),
            ORCHESTRD_LOG=str(log_path),
        )
        if previous is not None:
            # the worker user cannot open the state folder: it reads a copy
            failed = handoff.folder / "failed.log" if handoff.folder else previous[1]
            env["ORCHESTRD_FAILED_LOG"] = str(failed)
            env["ORCHESTRD_FAILURE"] = describe(previous[0])
        return env

    async def attempt(
        self,
        phase: Phase,
        config: Config,
        policy: Policy,
        role: str,
        previous: tuple[list[CheckResult], Path] | None,
        baselines: tuple[PhaseGit, ContractBaseline],
    ) -> tuple[list[CheckResult], Path]:
        pgit, contract = baselines
        ps = self.record.state.phases[phase.id]
        n = len(ps.attempts) + 1
        # remediation k writes its own report: the failed one stays as it was
        report = phase.report_for(ps.failures if role == "remediation" else 0)
        log = self.log.bind(phase=phase.id, attempt=n, role=role)
        log_path = self.folder.workers / f"worker-{phase.id}-{n}.log"
        # recorded in state only once its worker started (or failed to): a cancel before then
        # must not leave an attempt without its worker.started event and its ledger line
        att = AttemptState(n=n, role=role, log=str(log_path))
        try:
            baseline = pgit.baseline.head if pgit.baseline else None
            spec, env, prompt, flags, handoff = await self._prepare(
                phase, config, n, role, report, log_path, previous, baseline
            )
            mine = [self.plan.in_plan_dir(p) for p in (report, *phase.completion_paths)]
            await contract.take(mine)
            await pgit.start_attempt(f"{phase.id}-{n}")
            async with launch(spec, config.max_log_bytes, policy.stop_grace) as worker:
                wlog = log.bind(pid=worker.handle.pid)
                if flags:
                    wlog.info("worker.dangerous", flags=flags)
                outcome = await self._supervise(worker, att, phase, policy, wlog)
        except WorkerStartError as exc:
            ps.attempts.append(att)
            set_attempt(att, AttemptStatus.FAILED_TO_START)
            att.failure = str(exc)
            att.ended_at = now_iso()
            # checked like any attempt, so remediation.started / phase.failed follow as usual
            await self.record.set_phase(phase.id, PhaseStatus.CHECKING, None)
            self.folder.append_ledger(f"{phase.id} attempt={n} role={role} failed_to_start")
            log.info("worker.failed_to_start", reason=str(exc))
            result = CheckResult("start", False, f"worker failed to start: {exc}")
            log.info("check.failed", check=result.name, reason=result.reason)
            return [result], log_path
        if worker.dropped_bytes:
            wlog.info(
                "worker.log_truncated", max_log_bytes=config.max_log_bytes,
                dropped_bytes=worker.dropped_bytes,
            )
        changes, diff = await pgit.end_attempt(f"{phase.id}-{n}")
        if changes is not None:
            wlog.info("worker.changes", **changes)
        # without git, a file rewritten with the same text is told apart by its mtime
        stale = await contract.stale(mine, mtime=pgit.problem is not None)
        # the attempt's end was just saved; checking restarts the phase like running does
        await self.record.set_phase(phase.id, PhaseStatus.CHECKING, None, save=False)
        ctx = CheckContext(
            plan=self.plan, phase=phase, settings=config.checks, outcome=outcome,
            log_path=log_path, output_dir=self.folder.workers, attempt=n, env=env,
            grace=policy.stop_grace, max_log_bytes=config.max_log_bytes, prompt=prompt,
            report=report, changes=diff, git_problem=pgit.problem, git_broken=pgit.broken,
            stale=stale, identity=spec.identity, pid_namespace=spec.pid_namespace,
        )
        try:
            return await inspect(ctx, wlog), log_path
        finally:
            with anyio.CancelScope(shield=True):
                await handoff.remove()

    async def _prepare(
        self, phase: Phase, config: Config, n: int, role: str, report: str, log_path: Path,
        previous: tuple[list[CheckResult], Path] | None, baseline: str | None,
    ) -> tuple[WorkerSpec, dict[str, str], str, list[str], Handoff]:
        """The worker's spec, env, prompt, dangerous flags and hand-off folder;
        WorkerStartError if impossible."""
        profile_name = self.plan.worker or config.default_worker
        profile = config.workers.get(profile_name)
        if profile is None:
            raise WorkerStartError(f"worker profile {profile_name!r} is not in the config")
        if profile.dangerous_flags and not config.allow_dangerous_workers:
            # the config was reloaded with the opt-in withdrawn: no new dangerous starts
            raise WorkerStartError(
                f"worker profile {profile_name!r} is dangerous "
                f"({', '.join(profile.dangerous_flags)}) and allow_dangerous_workers is off"
            )
        prompt_file = self.folder.workers / f"prompt-{phase.id}-{n}.md"
        try:
            identity = identity_for(config, profile)
            handoff = Handoff(identity)
            if identity is not None:
                handoff.folder = handoff_root(config) / f"{self.plan.id}-{phase.id}-{n}"
            shown = handoff.folder / "failed.log" if handoff.folder else None
            # reads files workers could have touched: off the event loop
            prompt = await anyio.to_thread.run_sync(
                self._prompt, phase, n, role, report, config.checks, previous, baseline, shown
            )
            prompt_file = self.folder.workers / f"prompt-{phase.id}-{n}.md"
            # a file name that is not UTF-8 (quoted in a reason) is written as its own bytes
            await anyio.to_thread.run_sync(
                write_file, prompt_file, prompt.encode("utf-8", "surrogateescape")
            )
            if identity is not None and handoff.folder is not None:
                await anyio.to_thread.run_sync(
                    make_handoff, handoff.folder, identity, prompt,
                    previous[1] if previous else None,
                )
                prompt_file = handoff.folder / "prompt.md"
        except OSError as exc:
            raise WorkerStartError(f"cannot prepare the prompt: {exc}") from None
        except FileRefused as exc:
            raise WorkerStartError(f"cannot write the prompt {prompt_file}: it {exc}") from None
        except OrchestrdError as exc:  # the worker user is gone since the start
            raise WorkerStartError(str(exc)) from None
        values = {
            "prompt": prompt, "prompt_file": str(prompt_file), "plan": self.plan.id,
            "phase": phase.id, "attempt": str(n), "log": str(log_path),
            "python": sys.executable,
        }
        argv = render_command(profile, values)
        env = self._env(config, profile, phase, n, role, report, log_path, previous, handoff)
        spec = WorkerSpec(
            argv, env, self.plan.repo, log_path, identity, config.worker_pid_namespace
        )
        return spec, env, prompt, profile.dangerous_flags, handoff

    async def _supervise(
        self, worker: LocalWorker, att: AttemptState, phase: Phase, policy: Policy, log: Logger
    ) -> WatchOutcome:
        h = worker.handle
        self.record.state.phases[phase.id].attempts.append(att)
        att.pid, att.pgid, att.start_time, att.boot_id = h.pid, h.pgid, h.start_time, h.boot_id
        set_attempt(att, AttemptStatus.RUNNING)
        await self.record.save(phase.id)
        who = f"{phase.id} attempt={att.n} role={att.role} pid={h.pid}"
        self.folder.append_ledger(who)
        log.info("worker.started", log=h.log, command=worker.argv[0])
        try:
            outcome = await watch(worker, policy, log)
            if outcome.stalled:
                set_attempt(att, AttemptStatus.STALLED)
                log.info(
                    "worker.stalled", polls=outcome.polls, elapsed=round(worker.elapsed(), 3),
                    log_tail=await anyio.to_thread.run_sync(worker.tail, LOG_TAIL_LINES),
                )
                sig = await worker.stop(policy.stop_grace)
                set_attempt(att, AttemptStatus.STOPPED)
                log.info("worker.stopped", signal=sig.name if sig else None, why="stalled")
                self.folder.append_ledger(f"{who} stalled stopped={sig.name if sig else 'gone'}")
            else:
                set_attempt(att, AttemptStatus.EXITED)
                att.returncode = outcome.returncode
                log.info(
                    "worker.exited", returncode=outcome.returncode,
                    elapsed=round(worker.elapsed(), 3),
                )
                self.folder.append_ledger(f"{who} exited={outcome.returncode}")
                # nothing of a worker may outlive its attempt: stop what it left in its group
                sig = await stop_group(h.pgid, policy.stop_grace)
                if sig is not None:
                    log.info("worker.stopped", signal=sig.name, why="left running after exit")
            return outcome
        finally:
            if worker.returncode is None or att.status is AttemptStatus.RUNNING:
                # cancelled (shutdown or cancel): stop the tree before the cancellation goes on
                with anyio.CancelScope(shield=True):
                    sig = await worker.stop(policy.stop_grace)
                    if att.status is AttemptStatus.RUNNING:
                        set_attempt(att, AttemptStatus.STOPPED)
                    log.info("worker.stopped", signal=sig.name if sig else None, why="cancelled")
                    self.folder.append_ledger(f"{who} stopped={sig.name if sig else 'gone'}")
            att.ended_at = now_iso()
            with anyio.CancelScope(shield=True):
                await self.record.save(phase.id)
