"""One plan: its phases in order, a fresh worker per attempt, the poll policy, the checkpoints,
and remediation workers until the phase passes, the remediations run out or they stagnate. An
attempt that ended on its account (a limit, a lost login) is no failure: its profile is put on
hold, and the phase starts again with a fresh worker when the profile may run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import budgets
from .attempt import AttemptEnd, AttemptRunner, BudgetPause
from .audit import Logger
from .briefing import describe
from .checks import CheckContext, CheckResult, audit, check_prerequisites, failures, run_verify
from .config import Config, Policy
from .contract import ContractBaseline
from .fingerprint import Failure, Fingerprint, Stagnation, fingerprint
from .gitsnap import Git, PhaseGit, drop_snapshots
from .limits import LimitKind, local_zone
from .metering import DAILY
from .parking import utcnow
from .plan import Phase, VerifyCommand
from .policy import WatchOutcome
from .privsep import identity_for
from .prompt import base_env
from .state import mark_left_stopped
from .states import AttemptStatus, Outcome, PhaseStatus, PlanStatus


class PlanRunner(AttemptRunner):
    """Carries out one plan's phases; how it ended is returned, the plan's status is recorded
    by its lifecycle."""

    async def run(self) -> Outcome:
        """Run every phase not yet passed (the plan is running); how it ended: SUCCEEDED,
        FAILED, PAUSED (a budget was spent) or, for a worktree plan to be merged, MERGING. The
        caller records it (lifecycle)."""
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
            spent = {"spent": round(pause.crossing.spent, 6), "limit": pause.crossing.limit}
            return Outcome(PlanStatus.PAUSED, f"budget:{name}", {"budget": name, **spent, **extra})

    async def _run(self) -> Outcome:
        state = self.record.state
        for phase in self.plan.phases:
            if state.phases[phase.id].status is PhaseStatus.PASSED:
                self.log.info("phase.skipped", phase=phase.id, reason="passed before")
                continue
            if not await self.run_phase(phase):
                reason = f"phase {phase.id} failed: {state.phases[phase.id].reason}"
                await anyio.to_thread.run_sync(drop_snapshots, self.folder.workers)
                self._keep_ledger()
                return Outcome(PlanStatus.FAILED, reason, {"phase": phase.id})
        # kept while the plan may resume (its index spares hashing every file again)
        await anyio.to_thread.run_sync(drop_snapshots, self.folder.workers)
        self._keep_ledger()
        wt = state.worktree
        if wt is not None and self.plan.merge == "rebase":
            # the daemon's merge queue takes it from here
            return Outcome(PlanStatus.MERGING, None, {"target": wt.target, "branch": wt.branch})
        return Outcome(PlanStatus.SUCCEEDED)

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
