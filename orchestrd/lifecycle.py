"""A plan's life, and the one owner of its status: queued → running → what its runner returns
(succeeded, failed, paused, or merging → succeeded / merge_failed), or interrupted, cancelled,
failed by an error → archived; and the requests that queue it again (retry, resume). The
daemon, `orchestrd run` and the offline cancel/retry/resume all go through here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import isolation, status
from .audit import Logger
from .config import Config
from .errors import OrchestrdError, describe_failure, leaf_errors
from .plan import Plan
from .report import archive_report
from .runner import PlanRunner
from .spool import Spool
from .state import PlanRecord
from .states import PLAN_TERMINAL, PLAN_TRANSITIONS, InvalidTransition, Outcome, PlanStatus
from .store import PlanFolder, archive_plan

Admin = Callable[[Path], Awaitable[anyio.Lock]]
"""The repository's worktree-administration lock (isolation.MergeQueue.admin)."""


@dataclasses.dataclass(eq=False)
class PlanEntry:
    """A loaded plan: its file, its record and folder, its audit logger, and its run's scope."""

    plan: Plan
    record: PlanRecord
    folder: PlanFolder
    log: Logger
    scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    cancel_requested: bool = False
    requester: dict[str, object] | None = None
    """Who asked for the cancel or retry in progress (uid, user), for its events."""
    running: bool = False
    stopping: str | None = None
    """Set (why) by a daemon that stops before it cancels `scope`: the run ends interrupted,
    as a cancellation from outside ends it, not cancelled."""


async def run(entry: PlanEntry, work: Callable[[], Awaitable[object]], stopping: str) -> None:
    """One run of a plan: `work` carries it out (`carry_out`); a cancel asked for ends it
    cancelled, a cancellation from outside interrupted (`stopping`: why), an error failed."""
    record = entry.record
    try:
        with entry.scope:
            if entry.cancel_requested:
                entry.scope.cancel()
            await work()
        if entry.cancel_requested:
            await cancel(record, entry.requester)
        elif entry.stopping is not None:
            await _interrupted(record, entry.stopping)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _interrupted(record, stopping)
        raise
    except Exception as exc:  # one broken plan must never take the daemon down
        await fail(entry, exc)


async def _interrupted(record: PlanRecord, why: str) -> None:
    """Interrupted, where the table allows it: a plan interrupted before (recovered, waiting
    for its slot), paused or ended keeps its status."""
    if PlanStatus.INTERRUPTED in PLAN_TRANSITIONS[record.state.status]:
        await record.set_status(PlanStatus.INTERRUPTED, why)


async def carry_out(record: PlanRecord, plan: Plan, runner: PlanRunner) -> Outcome:
    """The plan running (its phases as the plan file has them), then how the runner says it
    ended, recorded."""
    record.state.add_phases(plan)
    if record.state.status is not PlanStatus.RUNNING:
        # unsaved: queued and interrupted plans resume just like running ones, and the
        # first attempt's save follows within milliseconds
        await record.set_status(PlanStatus.RUNNING, save=False, phases=len(plan.phases))
    outcome = await runner.run()
    await end(record, outcome)
    return outcome


async def end(record: PlanRecord, outcome: Outcome) -> None:
    """Record how a run or a merge ended."""
    await record.set_status(outcome.status, outcome.reason, **outcome.fields)


async def interrupt(record: PlanRecord, reason: str) -> None:
    """A plan whose run stopped without an end of its own (a restart, a killed `run`)."""
    await record.set_status(PlanStatus.INTERRUPTED, reason)


async def fail(entry: PlanEntry, exc: Exception) -> None:
    """A plan whose runner raised (a full disk, a vanished repo, a bug) fails with the
    reason; if even its state cannot be saved, the audit log says so and the daemon goes on.
    Only an unexpected error (a bug) gets `plan.error` with its traceback."""
    reason = describe_failure(exc)
    if not all(isinstance(e, OSError | OrchestrdError) for e in leaf_errors(exc)):
        entry.log.exception("plan.error", reason=reason)
    try:
        await fail_unfinished(entry.record, reason)
    except (OSError, InvalidTransition) as again:
        entry.log.info("plan.failed", reason=reason, state_not_saved=str(again))


async def fail_unfinished(record: PlanRecord, reason: str) -> None:
    """Fail a plan that has not ended (one that has keeps its end)."""
    if record.state.status not in PLAN_TERMINAL:
        await record.set_status(PlanStatus.FAILED, reason)


async def cancel(record: PlanRecord, requester: dict[str, object] | None) -> None:
    """`orchestrd cancel`: the plan ends cancelled unless it ended meanwhile."""
    if record.state.status not in PLAN_TERMINAL:
        await record.set_status(PlanStatus.CANCELLED, "cancelled on request", requester=requester)


async def retry(record: PlanRecord, requester: dict[str, object]) -> None:
    """`orchestrd retry`: a failed or cancelled plan queued again."""
    await record.set_status(PlanStatus.QUEUED, "retry requested", requester=requester)


async def resume(
    record: PlanRecord,
    raises: dict[str, float],
    reason: str,
    requester: dict[str, object] | None = None,
) -> None:
    """A paused plan queued again, with the limits the operator raised for it."""
    record.state.budget_raises.update(raises)
    fields: dict[str, Any] = {"raised": raises} if raises else {}
    if requester is not None:
        fields["requester"] = requester
    await record.set_status(PlanStatus.QUEUED, reason, True, **fields)


async def archive(entry: PlanEntry, config: Config, store: Spool, admin: Admin) -> None:
    """Keep a finished plan's folder with copies of its reports and completion files.
    Never raises: a plan folder that cannot be moved stays in plans/ (and is tried again
    at the next start)."""
    try:
        dest, skipped = await anyio.to_thread.run_sync(
            archive_plan,
            isolation.rooted(entry.plan, entry.record),  # its reports are in its worktree
            entry.folder,
            store.archive_dir,
            config.max_log_bytes,
        )
    except Exception as exc:  # noqa: BLE001 - a finished plan must never stop the daemon
        entry.log.info("plan.archived", reason=f"archive failed, left in plans/: {exc}")
        return
    extra: dict[str, object] = {"evidence_skipped": skipped} if skipped else {}
    extra |= await archive_report(config, dest)
    extra |= await anyio.to_thread.run_sync(status.index_archived, store, dest)
    # the status too: a plan found finished at start-up may have lost its plan.succeeded
    # (or .failed) event with the daemon that saved the state and was killed
    entry.log.info("plan.archived", path=str(dest), status=str(entry.record.state.status), **extra)
    if entry.record.state.worktree is not None:
        lock = await admin(entry.plan.repo)
        await isolation.cleanup(config, entry.plan, entry.record, entry.log, lock)
