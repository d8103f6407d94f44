"""One attempt of a phase: a fresh worker briefed, launched, watched on the poll policy and
metered against the budgets, stopped however it ends, then checked; or the limit it ran into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import budgets
from .audit import Logger
from .briefing import Briefing
from .budgets import Crossing
from .checks import CheckContext, CheckResult, inspect
from .config import Config, Policy
from .contract import ContractBaseline
from .fingerprint import describe_changes, work_changes
from .fsutil import FileRefused
from .gitsnap import Diff, PhaseGit
from .judge import OutputScanner
from .launchers import Launcher, Worker, WorkerSpec, WorkerStartError
from .limits import LimitHit, LimitKind, StreamError, auth_exit_codes, judge
from .metering import AttemptMeter, PlanBudget, Spending, new_meter
from .parking import Quota
from .plan import Phase, Plan
from .policy import Ended, Liveness, WatchOutcome, watch
from .prompt import LOG_TAIL_LINES
from .state import AttemptState, PlanRecord, now_iso
from .states import AttemptStatus, PhaseStatus
from .store import PlanFolder
from .streams import Error, Result, StreamEvent, open_stream
from .usage import total
from .worker import log_without_prompt

DEFAULT_STREAM_SILENCE = 600.0
"""silence_timeout of a stream-format worker when nothing sets one: a stream always says
something (a tool call, a retry) within minutes."""


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


class AttemptRunner(Briefing):
    """Runs a plan's attempts; the plan's runner (runner.PlanRunner) runs its phases on it."""

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
            self.record.set_attempt(att, AttemptStatus.FAILED_TO_START)
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
        self.record.set_attempt(
            att, AttemptStatus.RATE_LIMITED if rate else AttemptStatus.AUTH_FAILED
        )
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
        self.record.set_attempt(att, AttemptStatus.RUNNING)
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
                self.record.set_attempt(att, AttemptStatus.STOPPED)
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
                self.record.set_attempt(att, AttemptStatus.STALLED)
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
                self.record.set_attempt(att, AttemptStatus.STOPPED)
                self.folder.append_ledger(f"{who} stalled stopped={sig.name if sig else 'gone'}")
                await self._respawned(worker, policy, log, respawn)
            elif outcome.ended is Ended.NO_EXIT:
                log.info(
                    "worker.no_exit",
                    exit_grace=policy.exit_grace,
                    elapsed=round(worker.elapsed(), 3),
                )
                sig = await worker.stop(policy.stop_grace)
                self.record.set_attempt(att, AttemptStatus.STOPPED)
                log.info("worker.stopped", signal=sig.name if sig else None, why="no exit")
                self.folder.append_ledger(f"{who} no exit stopped={sig.name if sig else 'gone'}")
                await self._respawned(worker, policy, log, respawn)
            else:
                self.record.set_attempt(att, AttemptStatus.EXITED)
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
                        self.record.set_attempt(att, AttemptStatus.STOPPED)
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
