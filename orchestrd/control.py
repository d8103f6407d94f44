"""Control requests (`orchestrd cancel`, `retry`, `resume`, `merge`, `unblock`): acted on by
the daemon from control/, held to the inbox's trust rules, or applied to the state files
directly while no daemon runs.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import anyio.to_thread

from . import budgets, isolation, lifecycle
from .audit import AuditLog, Logger, Redactor
from .config import Config
from .errors import OrchestrdError
from .launchers import open_launcher
from .lifecycle import PlanEntry
from .metering import DAILY, Spending
from .parking import Quota
from .plan import check_plan_id, is_plan_id
from .recovery import Unloadable, load_entry, plan_record, stop_orphans
from .spool import ControlRequest, Spool, display_name, requester
from .states import PLAN_RETRYABLE, PLAN_TERMINAL, PlanStatus

CANCEL, RETRY, RESUME = ".cancel", ".retry", ".resume"


class Requests:
    """The daemon's side of control/: what each request does to the plans it runs (mixed into
    the daemon, whose plans and task group they act on)."""

    config: Config
    spool: Spool
    audit: AuditLog
    log: Logger
    entries: dict[str, PlanEntry]
    paused: dict[str, PlanEntry]
    merges: isolation.MergeQueue
    quota: Quota
    spending: Spending
    _start: Callable[[anyio.abc.TaskGroup, PlanEntry], None]
    _archive: Callable[[PlanEntry], Awaitable[None]]
    _spool_error: Callable[[str, OSError], None]
    _spool_errors: dict[str, str]

    async def _scan_control(self, tg: anyio.abc.TaskGroup) -> None:
        """Act on the cancel/retry requests in control/, held to the inbox's trust rules."""
        try:
            names = await anyio.to_thread.run_sync(self.spool.request_names)
        except OSError as exc:
            self._spool_error("control/", exc)
            return
        for name in names:
            what = f"control/{display_name(name)}"
            try:
                request = await anyio.to_thread.run_sync(
                    self.spool.take_request, name, self.config.allowed_submitters
                )
            except OSError as exc:  # e.g. a folder named like a request: not one
                self._spool_error(what, exc)
                continue
            self._spool_errors.pop(what, None)
            if request is None:
                continue
            if request.refused is not None:
                plan = {"plan": request.plan_id} if is_plan_id(request.plan_id) else {}
                if request.kind == "unblock":
                    plan = {"profile": request.plan_id}
                self.log.info(
                    "daemon.request_refused",
                    **plan,
                    request=request.kind,
                    file=request.file,
                    reason=request.refused,
                    requester=request.requester,
                )
            elif request.kind == "cancel":
                await self._cancel(request)
            elif request.kind == "merge":
                if not self.merges.wake(request.plan_id):
                    self._ignored(request, "no merge of this plan is waiting to be tried again")
            elif request.kind == "unblock":
                await self._unblock(request)
            elif request.kind == "resume":
                await self._resume(tg, request)
            else:
                await self._retry(tg, request)

    def _ignored(self, request: ControlRequest, reason: str) -> None:
        self.log.info(
            "daemon.request_ignored",
            plan=request.plan_id,
            request=request.kind,
            reason=reason,
            requester=request.requester,
        )

    async def _unblock(self, request: ControlRequest) -> None:
        profile = request.plan_id  # an unblock request names a worker profile
        if not await self.quota.unblock(profile, "unblock request", requester=request.requester):
            self.log.info(
                "daemon.request_ignored",
                profile=profile,
                request=request.kind,
                reason="the profile is not blocked",
                requester=request.requester,
            )

    async def _cancel(self, request: ControlRequest) -> None:
        if (paused := self.paused.pop(request.plan_id, None)) is not None:
            await lifecycle.cancel(paused.record, request.requester)
            await self._archive(paused)
            return
        entry = self.entries.get(request.plan_id)
        if entry is None:
            self._ignored(request, "the plan is not active")
            return
        entry.requester = request.requester
        entry.cancel_requested = True
        entry.scope.cancel()

    async def _retry(self, tg: anyio.abc.TaskGroup, request: ControlRequest) -> None:
        plan_id = request.plan_id
        if (active := self.entries.get(plan_id)) is not None:
            self._ignored(
                request,
                f"the plan is {active.record.state.status} (active); only a failed or "
                "cancelled plan can be retried — cancel it first",
            )
            return
        source = self.spool.located(plan_id)
        if source is None:
            self._ignored(request, "no such plan in plans/ or archive/")
            return
        try:
            entry = await load_entry(self.config, self.audit, self.spool, source)
        except Unloadable as exc:
            self._ignored(request, str(exc))
            return
        status = entry.record.state.status
        if status not in PLAN_RETRYABLE:
            self._ignored(
                request, f"the plan is {status}; only a failed or cancelled plan can be retried"
            )
            return
        # loaded where it lies first: a plan that cannot run stays
        entry = await unarchive(self.spool, self.audit, entry)
        entry.requester = request.requester
        await lifecycle.retry(entry.record, request.requester)
        self._start(tg, entry)

    async def _resume(self, tg: anyio.abc.TaskGroup, request: ControlRequest) -> None:
        """`orchestrd resume`: a paused plan queued again, with the limits it raises."""
        entry = self.paused.get(request.plan_id)
        if entry is None:
            active = self.entries.get(request.plan_id)
            why = f"is {active.record.state.status}" if active else "is not paused"
            self._ignored(request, f"the plan {why}; only a paused plan can be resumed")
            return
        try:
            raises = parse_raises(request.text)
            above_config(raises, self.config, request.uid)
        except ValueError as exc:
            self.log.info(
                "daemon.request_refused",
                plan=request.plan_id,
                request=request.kind,
                file=request.file,
                reason=f"control/{request.file}: {exc}",
                requester=request.requester,
            )
            return
        del self.paused[request.plan_id]
        await lifecycle.resume(entry.record, raises, "resume requested", request.requester)
        self._start(tg, entry)

    async def _resume_daily(self, tg: anyio.abc.TaskGroup) -> None:
        """Plans the daily budget paused go on once the day has room again: a new UTC day (or
        a reload that raised the limit)."""
        for plan_id, entry in list(self.paused.items()):
            if entry.record.state.reason != f"budget:{DAILY}":
                continue
            own = entry.plan.budgets.limits() if entry.plan.budgets is not None else None
            limit = budgets.limits(
                self.config.budgets.limits(), own, entry.record.state.budget_raises
            ).get(DAILY)
            if self.spending.exceeded_today(limit) is None:
                del self.paused[plan_id]
                text = "the daily budget has room again (a new UTC day)"
                await lifecycle.resume(entry.record, {}, text)
                self._start(tg, entry)


async def unarchive(spool: Spool, audit: AuditLog, entry: PlanEntry) -> PlanEntry:
    """An archived plan moved back under plans/ to run again; its new entry (itself if it is
    there already)."""
    if spool.is_active(entry.folder):
        return entry
    folder = await anyio.to_thread.run_sync(spool.unarchive, entry.folder)
    record = plan_record(audit, folder.state_file, entry.record.state, entry.log)
    return PlanEntry(entry.plan, record, folder, entry.log)


def above_config(raises: dict[str, float], config: Config, uid: int) -> None:
    """A plan's limit raised above the config's is the operator's call: refused (ValueError)
    unless asked by root or the daemon's own user (whoever may write its state)."""
    if uid in (0, os.geteuid()):
        return
    limits = config.budgets.limits()
    over = [
        f"{name}={value:g} (the config's is {limit:g})"
        for name, value in raises.items()
        if (limit := limits.get(name)) is not None and value > limit
    ]
    if over:
        raise ValueError(
            "only the operator (root or the daemon's user) may raise a plan's limit above the "
            f"config's: {', '.join(over)}; ask them, or raise it up to the config's limit"
        )


def parse_raises(text: str) -> dict[str, float]:
    """A resume request's `NAME=VALUE` lines (ValueError saying what to write)."""
    return dict(budgets.parse_raise(line.strip()) for line in text.splitlines() if line.strip())


async def apply_offline(config: Config, plan_id: str, kind: str, text: str = "") -> str:
    """Cancel, retry or resume a plan while no daemon runs (holding its lock meanwhile).

    Returns the plan's state afterwards; a retried or resumed plan runs when the daemon next
    starts.
    """
    check_plan_id(plan_id, "PLAN_ID")
    spool = Spool(config.state_dir)
    spool.ensure()
    spool.lock()
    audit = AuditLog(config.audit_path, redactor=Redactor.from_config(config))
    who = requester(os.geteuid())
    try:
        source = spool.folder(plan_id)
        if kind == RETRY:
            source = spool.located(plan_id) or source
        if not source.root.exists():
            raise OrchestrdError(f"plan {plan_id}: not found in {spool.plans}")
        try:
            entry = await load_entry(config, audit, spool, source)
        except Unloadable as exc:
            state = exc.record.state.status if exc.record else "unreadable"
            raise OrchestrdError(
                f"plan {plan_id} is {state}, but it cannot be loaded, so it cannot be "
                f"{'cancelled' if kind == CANCEL else 'retried'}: {exc}"
            ) from None
        status = entry.record.state.status
        if kind == CANCEL and status not in PLAN_TERMINAL:
            # uncontained: it only reaps what an earlier daemon left
            launcher = open_launcher(config.launcher, None)
            try:
                await stop_orphans(config, launcher, entry, audit.bind())
            finally:
                launcher.close()
            await lifecycle.cancel(entry.record, who)
            await lifecycle.archive(entry, config, spool, isolation.MergeQueue().admin)
        elif kind == RESUME and status is PlanStatus.PAUSED:
            await lifecycle.resume(entry.record, parse_raises(text), "resume requested", who)
        elif kind == RETRY and status in PLAN_RETRYABLE:
            entry = await unarchive(spool, audit, entry)
            await lifecycle.retry(entry.record, who)
        return str(entry.record.state.status)
    finally:
        spool.unlock()
        audit.close()
