"""One plan: its phases in order, a fresh worker per attempt, the poll policy, the checkpoints,
and remediation workers until the phase passes, the remediations run out or they stagnate. An
attempt that ended on its account (a limit, a lost login) is no failure: its profile is put on
hold, and the phase starts again with a fresh worker when the profile may run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import budgets
from .audit import Logger
from .budgets import Crossing
from .checks import (
    CheckContext,
    CheckResult,
    audit,
    check_prerequisites,
    failures,
    inspect,
    run_verify,
)
from .config import CheckSettings, Config, Policy, WorkerProfile
from .contract import ContractBaseline
from .errors import OrchestrdError
from .fingerprint import (
    Failure,
    Fingerprint,
    Stagnation,
    describe_changes,
    fingerprint,
    work_changes,
)
from .fsutil import FileRefused, write_file
from .gitsnap import Diff, Git, PhaseGit, drop_snapshots
from .judge import OutputScanner
from .launchers import Launcher, Worker, WorkerSpec, WorkerStartError
from .limits import LimitHit, LimitKind, StreamError, auth_exit_codes, judge, local_zone
from .metering import DAILY, AttemptMeter, PlanBudget, Spending, new_meter
from .parking import Quota, utcnow
from .plan import Phase, Plan, VerifyCommand
from .policy import Ended, Liveness, WatchOutcome, watch
from .privsep import Identity, handoff_root, identity_for, make_handoff, remove_handoff
from .prompt import (
    LOG_TAIL_LINES,
    base_env,
    contract_trailer,
    log_tail_without,
    read_prompt_file,
    remediation_section,
    render_command,
    tried_section,
)
from .state import (
    AttemptState,
    PlanFolder,
    PlanRecord,
    mark_left_stopped,
    now_iso,
    set_attempt,
)
from .states import (
    AttemptStatus,
    PhaseStatus,
    PlanStatus,
)
from .streams import Error, Result, StreamEvent, open_stream
from .usage import total
from .worker import log_without_prompt

DEFAULT_STREAM_SILENCE = 600.0
"""silence_timeout of a stream-format worker when nothing sets one: a stream always says
something (a tool call, a retry) within minutes."""


@dataclasses.dataclass
class Handoff:
    """Who the attempt's worker runs as, and its hand-off folder (None: as the daemon)."""

    identity: Identity | None
    folder: Path | None = None

    async def remove(self) -> None:
        if self.folder is not None:
            await anyio.to_thread.run_sync(remove_handoff, self.folder)


def describe(failed: list[CheckResult]) -> str:
    return "; ".join(f"{r.name}: {r.reason}" for r in failed).replace("\0", "")


@dataclasses.dataclass
class AttemptEnd:
    """How an attempt ended: its check results, or the limit that ended it unchecked."""

    n: int
    results: list[CheckResult]
    log_path: Path
    limit: LimitHit | None = None
    changes: str | None = None
    """What it changed outside the plan's paperwork (`S path digest` lines; None: unknown)."""
    diffstat: str = ""


@contextlib.asynccontextmanager
async def _nothing_to_free() -> AsyncIterator[None]:
    yield


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of `waits` returns."""

    async def run(wait: Callable[[], Awaitable[object]], scope: anyio.CancelScope) -> None:
        await wait()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        for wait in waits:
            tg.start_soon(run, wait, tg.cancel_scope)


class BudgetPause(Exception):
    """A budget is spent: the plan pauses (its worker, if any, stopped already)."""

    def __init__(self, crossing: Crossing) -> None:
        super().__init__(crossing.budget)
        self.crossing = crossing


def _watch_event(liveness: Liveness, errors: list[StreamError], event: StreamEvent) -> None:
    """A stream event, for liveness (the agent spoke; its final result came) and for limits
    (its errors, sorted into kinds by the adapter)."""
    liveness.event(final=isinstance(event, Result))
    if isinstance(event, Error):
        errors.append(StreamError(event.kind, event.message, event.retrying, event.resets_at))


class PlanRunner:
    """Carries out one plan. The caller owns the record's plan-level status."""

    def __init__(
        self,
        plan: Plan,
        record: PlanRecord,
        folder: PlanFolder,
        get_config: Callable[[], Config],
        log: Logger,
        launcher: Launcher,
        spending: Spending | None = None,
        quota: Quota | None = None,
        idle: Callable[[], AbstractAsyncContextManager[None]] = _nothing_to_free,
    ) -> None:
        self.plan = plan
        self.record = record
        self.folder = folder
        self.get_config = get_config
        self.log = log
        self.launcher = launcher
        self.quota = quota if quota is not None else Quota(log)
        """The daemon's held profiles (`orchestrd run`: its own, in memory)."""
        self.idle = idle
        """Frees the plan's worker slot while it waits for a held profile."""
        self._tried: tuple[int, str] | None = None
        """The last failed attempt and its diffstat, for the next remediation prompt."""

        self.spending = spending if spending is not None else Spending()
        """What every plan spent per UTC day (the daemon's, shared: the daily budget)."""
        self.budget = self._plan_budget(get_config())

    def _limits(self, config: Config) -> dict[str, float]:
        own = self.plan.budgets.limits() if self.plan.budgets is not None else None
        return budgets.limits(config.budgets.limits(), own, self.record.state.budget_raises)

    def _plan_budget(self, config: Config) -> PlanBudget:
        """The plan's budgets, with what it spent before from its ledger (a restart, a
        resume), so nothing is forgotten."""
        state = self.record.state
        before = total(
            a.usage for ps in state.phases.values() for a in ps.attempts if a.usage is not None
        )
        return PlanBudget(
            self._limits(config),
            before,
            state.wall_seconds,
            set(state.budget_warned),
            self.spending,
        )

    def _keep_ledger(self) -> None:
        """Put the plan's wall time and the warnings given into its state (saved next)."""
        self.record.state.wall_seconds = round(self.budget.wall(), 3)
        self.record.state.budget_warned = sorted(self.budget.warned)

    async def run(self) -> PlanStatus:
        """Run every phase not yet passed; returns SUCCEEDED, FAILED, PAUSED (a budget was
        spent) or, for a worktree plan to be merged, MERGING; and records it."""
        try:
            return await self._run()
        except BudgetPause as pause:
            self._keep_ledger()
            phase = self.record.state.current_phase()
            if phase is not None and phase[1].status is PhaseStatus.RUNNING:
                # its phase runs again from a fresh worker on resume
                await self.record.set_phase(phase[0], PhaseStatus.PENDING)
            name = pause.crossing.budget
            extra: dict[str, Any] = {}
            if name == DAILY:  # it resumes by itself then
                extra["resumes_at"] = budgets.next_utc_midnight(self.spending.clock()).isoformat()
            await self.record.set_status(
                PlanStatus.PAUSED,
                f"budget:{name}",
                budget=name,
                spent=round(pause.crossing.spent, 6),
                limit=pause.crossing.limit,
                **extra,
            )
            return PlanStatus.PAUSED

    async def _run(self) -> PlanStatus:
        state = self.record.state
        state.add_phases(p.id for p in self.plan.phases)
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
                self._keep_ledger()
                await self.record.set_status(PlanStatus.FAILED, reason, phase=phase.id)
                return PlanStatus.FAILED
        # kept while the plan may resume (its index spares hashing every file again)
        await anyio.to_thread.run_sync(drop_snapshots, self.folder.workers)
        self._keep_ledger()
        wt = state.worktree
        if wt is not None and self.plan.merge == "rebase":
            # the daemon's merge queue takes it from here
            await self.record.set_status(PlanStatus.MERGING, target=wt.target, branch=wt.branch)
            return PlanStatus.MERGING
        await self.record.set_status(PlanStatus.SUCCEEDED)
        return PlanStatus.SUCCEEDED

    async def run_phase(self, phase: Phase) -> bool:
        ps = self.record.state.phases[phase.id]
        if ps.status in (PhaseStatus.RUNNING, PhaseStatus.CHECKING, PhaseStatus.FAILED):
            # resumed after a restart, or retried: the phase starts over with a fresh worker
            for att in ps.attempts:
                if att.status in (AttemptStatus.STARTING, AttemptStatus.RUNNING):
                    mark_left_stopped(att)
            if ps.status is PhaseStatus.FAILED:
                ps.failures = 0
            await self.record.set_phase(phase.id, PhaseStatus.PENDING)
        # unsaved: the first attempt's record is saved right after, and a phase left pending
        # by a crash runs from the start all the same
        await self.record.set_phase(phase.id, PhaseStatus.RUNNING, save=False, kind=phase.kind)
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
        stagnation = Stagnation()
        self._tried = None
        while True:
            role = "primary" if ps.failures == 0 else "remediation"
            profile = self._profile_name(phase, role, self.get_config())
            await self._wait_for(profile)
            # read after the wait: a night's park may have seen the config reloaded
            config = self.get_config()
            policy = config.policy_for(self.plan.policy, phase.policy)
            self.budget.limits = self._limits(config)  # a reload may have changed them
            if (spent := self.budget.exceeded_now(self.log.bind(phase=phase.id))) is not None:
                raise BudgetPause(spent)  # before a worker starts: nothing to stop
            end = await self.attempt(
                phase, config, policy, role, profile, previous, (pgit, contract)
            )
            if end.limit is not None:
                await self._hold(profile, phase, end)
                continue  # no remediation spent: the same attempt again, when it may run
            await self.quota.succeeded(profile)
            bad = failures(end.results)
            if not bad:
                await self.record.set_phase(phase.id, PhaseStatus.PASSED)
                # the daemon's own record, next to the state: recovery believes a pass only
                # with it (or the audit log's phase.passed), never state.toml alone
                self.folder.append_ledger(phase.id, self.folder.passes)
                return True
            ps.failures += 1
            if await self._given_up(phase, policy, bad, end, stagnation):
                return False
            previous = (bad, end.log_path)
            self._tried = (end.n, end.diffstat)
            await self.record.set_phase(
                phase.id,
                PhaseStatus.RUNNING,
                describe(bad),
                attempt=len(ps.attempts) + 1,
                remediation=ps.failures,
                max_remediations=policy.max_remediations,
            )
            if phase.remediation_backoff is not None:
                await anyio.sleep(phase.remediation_backoff)

    async def _given_up(
        self,
        phase: Phase,
        policy: Policy,
        bad: list[CheckResult],
        end: AttemptEnd,
        stagnation: Stagnation,
    ) -> bool:
        """Fail the phase when its remediations are spent, or when they stagnate while some
        are left (a failure like the last one, or nothing changed after one)."""
        ps = self.record.state.phases[phase.id]
        stagnant = stagnation.failed(end.n, self._fingerprint(bad, end))
        if ps.failures > policy.max_remediations:
            stagnant = None  # nothing left to cut short: the plain reason says it all
        elif stagnant is None:
            return False
        reason, extra = describe(bad), dict[str, Any]()
        if stagnant is not None:
            reason = f"{stagnant[0]}: {reason}"
            extra = {"stagnant_attempts": stagnant[1]}
        await self.record.set_phase(
            phase.id, PhaseStatus.FAILED, reason, attempts=len(ps.attempts), **extra
        )
        return True

    def _profile_name(self, phase: Phase, role: str, config: Config) -> str:
        if role == "remediation" and phase.remediation_worker is not None:
            return phase.remediation_worker
        return self.plan.worker or config.default_worker

    async def _wait_for(self, profile: str) -> None:
        """Wait while `profile` is parked or blocked, the plan's worker slot freed meanwhile
        (another plan may have put it on hold again by the time the slot is back)."""
        while self.quota.holds.get(profile) is not None:
            async with self.idle():
                await self.quota.wait(profile, self.log)

    async def _hold(self, profile: str, phase: Phase, end: AttemptEnd) -> None:
        """Park the profile until its limit resets (or for a backoff), or block it."""
        hit = end.limit
        assert hit is not None
        where = {"plan": self.plan.id, "phase": phase.id, "attempt": end.n}
        # holds.toml is read by `status` without the daemon's secrets to redact with
        hit = dataclasses.replace(hit, message=self.record.redact(hit.message))
        prof = self.get_config().workers.get(profile)
        if hit.kind is LimitKind.AUTH:
            await self.quota.block(profile, hit.message, **where)
            return
        margin = prof.rate_limit_margin if prof else 60.0
        backoff = prof.rate_limit_backoff if prof else 60.0
        until = hit.resume_at(utcnow(), local_zone(), margin)
        await self.quota.park(profile, until, backoff, hit.message, **where)

    def _fingerprint(self, bad: list[CheckResult], end: AttemptEnd) -> Fingerprint:
        found = [
            Failure.of(
                r.name,
                r.details,
                str(r.details["output_tail"]) if "output_tail" in r.details else None,
            )
            for r in bad
        ]
        return fingerprint(found, end.changes)

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
        await self.record.set_phase(phase.id, PhaseStatus.CHECKING)
        await self.record.set_phase(phase.id, PhaseStatus.FAILED, describe(bad), attempts=0)
        return False

    async def _precheck(self, phase: Phase, log: Logger) -> list[CheckResult]:
        """The precheck commands, run and judged as verify commands are (output in the
        workers folder as verify-ID-0-N.log: attempt 0, before the first worker)."""
        return await self._commands(phase, phase.precheck, "precheck", log)

    async def merge_verify(self, commands: list[VerifyCommand]) -> str | None:
        """The merge queue's re-verify: `commands` run in the plan's worktree on its rebased
        branch, as its verify commands run (output: verify-merge-0-N.log); the failures, or
        None when all ended as expected."""
        phase = self.plan.phases[-1].model_copy(update={"id": "merge"})
        bad = failures(await self._commands(phase, commands, "merge_verify", self.log))
        return describe(bad) if bad else None

    async def _commands(
        self, phase: Phase, commands: list[VerifyCommand], label: str, log: Logger
    ) -> list[CheckResult]:
        config = self.get_config()
        # run as the workers are: the commands come from the plan, as verify's do
        profile = config.workers.get(self.plan.worker or config.default_worker)
        identity = identity_for(config, profile)
        env = base_env(config) | (identity.env() if identity else {})
        ctx = CheckContext(
            plan=self.plan,
            phase=phase.model_copy(update={"verify": commands}),
            settings=config.checks,
            outcome=WatchOutcome(0, 0),
            log_path=Path(os.devnull),
            output_dir=self.folder.workers,
            attempt=0,
            env=env,
            grace=config.policy_for(self.plan.policy, phase.policy).stop_grace,
            max_log_bytes=config.max_log_bytes,
            identity=identity,
            pid_namespace=config.worker_pid_namespace,
            launcher=self.launcher,
        )
        results = []
        for i in range(len(commands)):
            r = dataclasses.replace(await run_verify(ctx, i, log), name=f"{label}[{i}]")
            audit(log, r)
            results.append(r)
        return results

    def _prompt(
        self,
        phase: Phase,
        n: int,
        role: str,
        report: str,
        settings: CheckSettings,
        previous: tuple[list[CheckResult], Path] | None,
        baseline: str | None,
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
            if self._tried is not None:
                text += tried_section(*self._tried)
        return text + contract_trailer(self.plan, phase, n, role, report, settings)

    def _env(
        self,
        config: Config,
        profile: WorkerProfile,
        phase: Phase,
        n: int,
        role: str,
        report: str,
        log_path: Path,
        previous: tuple[list[CheckResult], Path] | None,
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
        if (wt := self.record.state.worktree) is not None:
            env.update(ORCHESTRD_WORKTREE=str(self.plan.repo), ORCHESTRD_BASE=wt.base)
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
        profile: str,
        previous: tuple[list[CheckResult], Path] | None,
        baselines: tuple[PhaseGit, ContractBaseline],
    ) -> AttemptEnd:
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
                phase, config, profile, n, role, report, log_path, previous, baseline
            )
            mine = [self.plan.in_plan_dir(p) for p in (report, *phase.completion_paths)]
            await contract.take(mine)
            await pgit.start_attempt(f"{phase.id}-{n}")
            meter = self._meter(config, att, log, profile)
            # a stream's events tell liveness (silence, a result without an exit) and limits
            liveness = Liveness(stream=meter.reader is not None)
            errors: list[StreamError] = []
            meter.watchers.append(functools.partial(_watch_event, liveness, errors))
            silence = self._silence(phase, config, profile, stream=meter.reader is not None)
            # a worker alone in its PID namespace cannot outlive it: nothing to watch for
            respawn = spec.identity is None or not spec.pid_namespace
            # the log keeps the head and tail of the output: its errors are judged on all of it
            scanner = OutputScanner(config.checks.log_error_patterns, prompt)

            def observe(chunk: bytes) -> None:
                scanner.feed(chunk)
                meter.feed(chunk)

            with meter:
                launch = self.launcher.launch(
                    spec, config.max_log_bytes, policy.stop_grace, observe
                )
                async with launch as worker:
                    wlog = log.bind(pid=worker.pid)
                    if flags:
                        wlog.info("worker.dangerous", flags=flags)
                    outcome = await self._supervise(
                        worker, att, phase, policy, wlog, meter, silence, liveness, respawn
                    )
                # the output is drained now: its last line, and the final usage
                if meter.finish(att.returncode):
                    await self.record.save(phase.id)
            if att.usage is not None:
                self.budget.before.add(att.usage)
            if outcome.halted:
                with anyio.CancelScope(shield=True):
                    await handoff.remove()
                assert meter.exceeded is not None
                raise BudgetPause(meter.exceeded)
        except WorkerStartError as exc:
            ps.attempts.append(att)
            set_attempt(att, AttemptStatus.FAILED_TO_START)
            att.failure = str(exc)
            att.ended_at = now_iso()
            # checked like any attempt, so remediation.started / phase.failed follow as usual
            await self.record.set_phase(phase.id, PhaseStatus.CHECKING)
            self.folder.append_ledger(f"{phase.id} attempt={n} role={role} failed_to_start")
            log.info("worker.failed_to_start", reason=str(exc))
            result = CheckResult("start", False, f"worker failed to start: {exc}")
            log.info("check.failed", check=result.name, reason=result.reason)
            return AttemptEnd(n, [result], log_path, changes=None if pgit.problem else "")
        if worker.dropped_bytes:
            wlog.info(
                "worker.log_truncated",
                max_log_bytes=config.max_log_bytes,
                dropped_bytes=worker.dropped_bytes,
            )
        changes, diff = await pgit.end_attempt(f"{phase.id}-{n}")
        if changes is not None:
            wlog.info("worker.changes", **changes)
        try:
            limit = await self._limit(config, profile, outcome, log_path, prompt, errors)
            if limit is not None:
                await self._limited(att, phase, limit, profile, wlog)
                return AttemptEnd(n, [], log_path, limit)
            return await self._check(
                phase,
                config,
                policy,
                n,
                outcome,
                log_path,
                env,
                prompt,
                report,
                spec,
                (pgit, contract),
                (changes, diff),
                mine,
                wlog,
                scanner,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await handoff.remove()

    async def _check(
        self,
        phase: Phase,
        config: Config,
        policy: Policy,
        n: int,
        outcome: WatchOutcome,
        log_path: Path,
        env: dict[str, str],
        prompt: str,
        report: str,
        spec: WorkerSpec,
        baselines: tuple[PhaseGit, ContractBaseline],
        git_view: tuple[dict[str, object] | None, Diff | None],
        mine: list[str],
        wlog: Logger,
        scanner: OutputScanner,
    ) -> AttemptEnd:
        """The attempt's checkpoints, and what it changed (for the stagnation breaker)."""
        pgit, contract = baselines
        changes, diff = git_view
        # without git, a file rewritten with the same text is told apart by its mtime
        stale = await contract.stale(mine, mtime=pgit.problem is not None)
        # the attempt's end was just saved; checking restarts the phase like running does
        await self.record.set_phase(phase.id, PhaseStatus.CHECKING, save=False)
        ctx = CheckContext(
            plan=self.plan,
            phase=phase,
            settings=config.checks,
            outcome=outcome,
            log_path=log_path,
            output_dir=self.folder.workers,
            attempt=n,
            env=env,
            grace=policy.stop_grace,
            max_log_bytes=config.max_log_bytes,
            prompt=prompt,
            report=report,
            changes=diff,
            git_problem=pgit.problem,
            git_broken=pgit.broken,
            stale=stale,
            log_found=scanner.close(),
            identity=spec.identity,
            pid_namespace=spec.pid_namespace,
            launcher=self.launcher,
        )
        results = await inspect(ctx, wlog)
        own: str | None = None
        diffstat = ""
        if changes is not None:
            changed = changes.get("changed")
            entries = work_changes(
                [str(c) for c in changed] if isinstance(changed, list) else [],
                self.plan.contract_files(),
            )
            own = await anyio.to_thread.run_sync(describe_changes, self.plan.repo, entries)
            diffstat = str(changes.get("diffstat", "")) if entries else ""
        return AttemptEnd(n, results, log_path, changes=own, diffstat=diffstat)

    def _silence(self, phase: Phase, config: Config, profile: str, stream: bool) -> float | None:
        """silence_timeout from the phase's policy, the plan's, the profile, the config's
        [policy]; unset everywhere: off for text, 10 minutes for a stream format."""
        prof = config.workers.get(profile)
        for value in (
            phase.policy.silence_timeout if phase.policy else None,
            self.plan.policy.silence_timeout if self.plan.policy else None,
            prof.silence_timeout if prof else None,
            config.policy.silence_timeout,
        ):
            if value is not None:
                return None if value is False else float(value)
        return DEFAULT_STREAM_SILENCE if stream else None

    async def _limit(
        self,
        config: Config,
        profile: str,
        outcome: WatchOutcome,
        log_path: Path,
        prompt: str,
        errors: list[StreamError],
    ) -> LimitHit | None:
        """The limit or lost login an attempt that did not end well ended on, if any."""
        if outcome.returncode == 0 or outcome.ended is Ended.NO_EXIT:
            return None
        prof = config.workers.get(profile)
        if prof is None:
            return None
        try:  # the end of the log, without the prompt it echoed (a remediation prompt quotes)
            text = await anyio.to_thread.run_sync(log_without_prompt, log_path, prompt)
        except FileRefused:
            text = ""
        codes = prof.auth_exit_codes
        return judge(
            text,
            outcome.returncode,
            prof.rate_limit_patterns,
            prof.auth_patterns,
            auth_exit_codes(prof.command) if codes is None else codes,
            errors,
        )

    async def _limited(
        self, att: AttemptState, phase: Phase, hit: LimitHit, profile: str, log: Logger
    ) -> None:
        rate = hit.kind is LimitKind.RATE_LIMIT
        set_attempt(att, AttemptStatus.RATE_LIMITED if rate else AttemptStatus.AUTH_FAILED)
        att.failure = hit.message
        await self.record.save(phase.id)
        if rate:
            log.info(
                "worker.rate_limited", profile=profile, message=hit.message, reset=hit.reset_text
            )
        else:
            log.info("worker.auth_failed", profile=profile, message=hit.message)

    def _meter(self, config: Config, att: AttemptState, log: Logger, name: str) -> AttemptMeter:
        """The attempt's observer: its profile's stream format read into the ledger (kept in
        the attempt's state) and held against the budgets; opaque `text` is only timed."""
        profile = config.workers[name]
        reader = open_stream(profile.output)
        meter = new_meter(config.prices, name, profile.model, self.spending)
        if reader is not None:
            att.usage = meter.record
        return AttemptMeter(reader, meter, self.budget, log)

    async def _on_poll(self, meter: AttemptMeter, phase_id: str) -> dict[str, Any]:
        """`tokens` and `events` for the poll; the usage saved when it changed (so a restart
        knows what was spent, at most one poll behind)."""
        self.budget.limits = self._limits(self.get_config())  # a reload may have changed them
        fields = meter.poll_fields()
        if meter.unsaved:
            meter.unsaved = False
            self._keep_ledger()
            await self.record.save(phase_id)
        return fields

    async def _prepare(
        self,
        phase: Phase,
        config: Config,
        profile_name: str,
        n: int,
        role: str,
        report: str,
        log_path: Path,
        previous: tuple[list[CheckResult], Path] | None,
        baseline: str | None,
    ) -> tuple[WorkerSpec, dict[str, str], str, list[str], Handoff]:
        """The worker's spec, env, prompt, dangerous flags and hand-off folder;
        WorkerStartError if impossible."""
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
                # a folder per plan: ids may hold '-', and `<plan>-<phase>-<n>` of two plans can be
                # one name (plan a-b phase c, plan a phase b-c)
                handoff.folder = handoff_root(config) / self.plan.id / f"{phase.id}-{n}"
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
                    make_handoff,
                    handoff.folder,
                    identity,
                    prompt,
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
            "prompt": prompt,
            "prompt_file": str(prompt_file),
            "plan": self.plan.id,
            "phase": phase.id,
            "attempt": str(n),
            "log": str(log_path),
            "python": sys.executable,
        }
        argv = render_command(profile, values)
        env = self._env(config, profile, phase, n, role, report, log_path, previous, handoff)
        spec = WorkerSpec(
            argv,
            env,
            self.plan.repo,
            log_path,
            identity,
            config.worker_pid_namespace,
            name=f"{self.plan.id}:{phase.id}:{n}",
            limits=profile.limits,
            launcher=profile.launcher or "",
        )
        return spec, env, prompt, profile.dangerous_flags, handoff

    async def _respawned(self, worker: Worker, policy: Policy, log: Logger, watch: bool) -> None:
        """For stop_grace after a stop, stop what starts the worker's session again."""
        if not watch:
            return
        found = await self.launcher.respawned(worker, policy.stop_grace)
        if found:
            log.info(
                "worker.respawned",
                pids=[p.pid for p in found],
                commands=[p.command for p in found],
            )

    async def _supervise(
        self,
        worker: Worker,
        att: AttemptState,
        phase: Phase,
        policy: Policy,
        log: Logger,
        meter: AttemptMeter,
        silence: float | None = None,
        liveness: Liveness | None = None,
        respawn: bool = True,
    ) -> WatchOutcome:
        self.record.state.phases[phase.id].attempts.append(att)
        att.pid, att.handle = worker.pid, worker.handle.to_dict()
        set_attempt(att, AttemptStatus.RUNNING)
        await self.record.save(phase.id)
        who = f"{phase.id} attempt={att.n} role={att.role} pid={worker.pid}"
        self.folder.append_ledger(who)
        where = dict(worker.placement)
        if "pending_s" in where:  # queued on a cluster until now: no stall, no poll
            log.info("worker.pending", job_id=where["job_id"], seconds=where.pop("pending_s"))
        log.info("worker.started", log=att.log, command=worker.argv[0], **where)
        try:
            on_poll = functools.partial(self._on_poll, meter, phase.id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(meter.wall_timer)
                outcome = await watch(
                    worker,
                    policy,
                    log,
                    silence,
                    liveness,
                    on_poll if meter.reader is not None else None,
                    halt=meter.stop,
                )
                tg.cancel_scope.cancel()
            if outcome.halted and meter.ending:
                # spent by its closing count: the agent is done, its work is checked as usual
                # (the plan pauses before its next worker) — unless it goes on instead
                with anyio.move_on_after(policy.stop_grace):
                    await first_of(worker.wait, meter.more.wait)
                if worker.returncode is not None:
                    outcome = WatchOutcome(worker.returncode, outcome.polls)
            if outcome.halted:
                sig = await worker.stop(policy.stop_grace)
                set_attempt(att, AttemptStatus.STOPPED)
                assert meter.exceeded is not None
                att.failure = f"stopped: budget {meter.exceeded.budget} spent"
                log.info(
                    "worker.stopped",
                    signal=sig.name if sig else None,
                    why="budget",
                    budget=meter.exceeded.budget,
                )
                self.folder.append_ledger(f"{who} budget stopped={sig.name if sig else 'gone'}")
            elif outcome.stalled:
                set_attempt(att, AttemptStatus.STALLED)
                why: dict[str, Any] = {"reason": str(outcome.ended)}
                if outcome.silent_for is not None:
                    why["silent_for"] = outcome.silent_for
                log.info(
                    "worker.stalled",
                    polls=outcome.polls,
                    elapsed=round(worker.elapsed(), 3),
                    **why,
                    log_tail=await anyio.to_thread.run_sync(worker.tail, LOG_TAIL_LINES),
                )
                sig = await stop(worker, policy.stop_grace, "stalled", log)
                set_attempt(att, AttemptStatus.STOPPED)
                self.folder.append_ledger(f"{who} stalled stopped={sig.name if sig else 'gone'}")
                await self._respawned(worker, policy, log, respawn)
            elif outcome.ended is Ended.NO_EXIT:
                log.info(
                    "worker.no_exit",
                    exit_grace=policy.exit_grace,
                    elapsed=round(worker.elapsed(), 3),
                )
                sig = await worker.stop(policy.stop_grace)
                set_attempt(att, AttemptStatus.STOPPED)
                log.info("worker.stopped", signal=sig.name if sig else None, why="no exit")
                self.folder.append_ledger(f"{who} no exit stopped={sig.name if sig else 'gone'}")
                await self._respawned(worker, policy, log, respawn)
            else:
                set_attempt(att, AttemptStatus.EXITED)
                att.returncode = outcome.returncode
                oom = {"oom_killed": True} if worker.oom_killed else {}
                log.info(
                    "worker.exited",
                    returncode=outcome.returncode,
                    elapsed=round(worker.elapsed(), 3),
                    **oom,
                )
                self.folder.append_ledger(f"{who} exited={outcome.returncode}")
                # nothing of a worker may outlive its attempt: stop what it left (its cgroup)
                if await stop(worker, policy.stop_grace, LEFT_RUNNING, log):
                    await self._respawned(worker, policy, log, respawn)
            return outcome
        finally:
            if worker.returncode is None or att.status is AttemptStatus.RUNNING:
                # cancelled (shutdown or cancel): stop the tree before the cancellation goes on
                with anyio.CancelScope(shield=True):
                    sig = await stop(worker, policy.stop_grace, "cancelled", log)
                    if att.status is AttemptStatus.RUNNING:
                        set_attempt(att, AttemptStatus.STOPPED)
                    self.folder.append_ledger(f"{who} stopped={sig.name if sig else 'gone'}")
            att.ended_at = now_iso()
            self._keep_ledger()
            with anyio.CancelScope(shield=True):
                await self.record.save(phase.id)


LEFT_RUNNING = "left running after exit"


async def stop(worker: Worker, grace: float, why: str, log: Logger) -> signal.Signals | None:
    """The one place an attempt's worker is stopped (its whole tree: everything in its cgroup),
    with `worker.stopped` naming why and, after an exit, what was still running. Survives
    cancellation. Returns the last signal needed (None: nothing was left)."""
    with anyio.CancelScope(shield=True):
        sig = await worker.stop(grace)
    if sig is None and why == LEFT_RUNNING:
        return None
    left = [{"pid": p.pid, "command": p.command} for p in worker.left_running]
    log.info(
        "worker.stopped",
        signal=sig.name if sig else None,
        why=why,
        **({"processes": left} if left else {}),
    )
    return sig
