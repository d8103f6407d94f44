"""The supervisor: a task group of plan runners under limits (max_workers, one plan per repo),
the inbox watch, control requests (cancel/retry), signals, sd_notify, and recovery at start-up.

Lifecycle: startup → main loop → shutdown (uvicorn's shape). Signals only record and cancel;
plan tasks turn cancellation into saved state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import watchfiles

from . import budgets, isolation, status
from .audit import CHATTY, AuditLog, Logger, Redactor, passed_in_audit
from .config import Config, load_config
from .errors import (
    ConfigError,
    OrchestrdError,
    PlanError,
    StateError,
    describe_failure,
    leaf_errors,
)
from .gitsnap import GitError
from .launchers import Handle, Launcher, Reaped, open_launcher
from .metering import DAILY, Clock, Spending, utc_now
from .metrics import Metrics, run_metrics
from .notify import run_notifier
from .parking import HOLDS_FILE, Quota
from .plan import Plan, check_plan_id, is_plan_id, load_plan
from .privsep import check_identities, clear_ambient_capabilities, handoff_root, separation
from .report import archive_report
from .runner import PlanRunner
from .spool import (
    RUN_LOCK,
    Accepted,
    ControlRequest,
    Rejected,
    Spool,
    archive_plan,
    display_name,
    lock_held,
    requester,
)
from .state import (
    AttemptState,
    PlanFolder,
    PlanRecord,
    PlanState,
    atomic_write,
    load_state,
    mark_left_stopped,
    recorded_passes,
)
from .states import (
    PLAN_RETRYABLE,
    PLAN_TERMINAL,
    AttemptStatus,
    InvalidTransition,
    PhaseStatus,
    PlanStatus,
)
from .systemd import Notifier, NotifyError, watchdog_loop
from .worker import use_pidfd_child_watcher

CANCEL, RETRY, RESUME = ".cancel", ".retry", ".resume"


@dataclasses.dataclass(eq=False)
class PlanEntry:
    plan: Plan
    record: PlanRecord
    folder: PlanFolder
    log: Logger
    scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    cancel_requested: bool = False
    requester: dict[str, object] | None = None
    """Who asked for the cancel or retry in progress (uid, user), for its events."""
    running: bool = False


class Unloadable(OrchestrdError):
    """A plan folder whose state file or plan file cannot be loaded (why); `record` is its
    state where that could be read."""

    def __init__(self, reason: str, record: PlanRecord | None = None) -> None:
        super().__init__(reason)
        self.record = record


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        echo: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.spool = Spool(config.state_dir)
        self.audit = AuditLog(
            config.audit_path,
            echo=sys.stderr if echo else None,
            redactor=Redactor.from_config(config),
            echo_skip=CHATTY,
        )
        self.log = self.audit.bind()
        self.notifier = Notifier.from_env()
        self.metrics = Metrics()
        """Counted from the audit log by the metrics task; served at /metrics."""
        self.entries: dict[str, PlanEntry] = {}
        self.paused: dict[str, PlanEntry] = {}
        """Plans a budget paused: waiting for `resume` (or, the daily budget, a new day)."""
        self.spending = Spending(clock)
        self.launcher: Launcher = open_launcher(config.launcher, None)
        """Uncontained until `serve` sets containment up (offline cancel only reaps)."""
        self.limiter = anyio.CapacityLimiter(config.max_workers)
        self.repo_locks: dict[Path, anyio.Lock] = {}
        self.merges = isolation.MergeQueue()
        self.quota = Quota(self.log)
        """Parked and blocked worker profiles (loaded from state_dir at start-up)."""
        self.seq = 0
        self._spool_errors: dict[str, str] = {}
        """Inbox or control entries that could not be handled, and why (reported once)."""
        send, receive = anyio.create_memory_object_stream[None](1)
        self._wake_send, self._wake_receive = send, receive

    # -- lifecycle --

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT; plans left unfinished resume on the next start."""
        self.spool.ensure()
        check_startup(self.config)
        self.spool.lock()
        self.quota = Quota.load(self.log, self.config.state_dir / HOLDS_FILE, atomic_write)
        clear_ambient_capabilities()
        use_pidfd_child_watcher()
        self.launcher = open_launcher(self.config.launcher, self.config)
        self._announce_dangerous()
        self._announce_limits()
        listener = None
        if self.config.http is not None:
            from .web import Listener  # starlette and uvicorn only when asked for

            # before anything runs: a port in use stops start-up with the key named
            listener = Listener.bind(self.config.http, self.config_path)
        try:
            # Signals are caught from before READY=1 until every worker is stopped: one more
            # SIGTERM/SIGINT/SIGHUP during shutdown waits in the receiver instead of killing
            # the daemon by default action with its workers still running.
            signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            with anyio.open_signal_receiver(*signals) as received:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._handle_signals, received, tg.cancel_scope)
                    await tg.start(run_notifier, lambda: self.config, self.log)
                    await tg.start(run_metrics, lambda: self.config, self.log, self.metrics)
                    tg.start_soon(self.quota.run)
                    await self._recover(tg)
                    tg.start_soon(self._watch_inbox)
                    tg.start_soon(self._main_loop, tg)
                    if listener is not None:
                        url = await tg.start(listener.serve, self)
                        print(f"orchestrd: status page at {url}", file=sys.stderr, flush=True)
                    if self.notifier.watchdog_interval() is not None:
                        tg.start_soon(watchdog_loop, self.notifier, self._notify_failed)
                    privsep, why = separation(self.config)
                    self.log.info(
                        "daemon.started",
                        state_dir=str(self.config.state_dir),
                        config=str(self.config_path),
                        max_workers=self.config.max_workers,
                        plans=len(self.entries),
                        privilege_separation=privsep,
                        privilege_separation_reason=why,
                        **self.launcher.describe(),
                    )
                    self._notify_ready()
        finally:
            self.launcher.close()
            self.log.info("daemon.stopped")
            self.spool.unlock()
            self.audit.close()
            self._wake_send.close()
            self._wake_receive.close()

    async def _handle_signals(
        self, signals: AsyncIterator[signal.Signals], scope: anyio.CancelScope
    ) -> None:
        async for sig in signals:
            if sig == signal.SIGHUP:
                await self._reload()
                continue
            self.log.info(
                "daemon.stopping",
                signal=signal.Signals(sig).name,
                running=self._count_running(),
            )
            self._notify("STOPPING=1")
            scope.cancel()
            return

    async def _reload(self) -> None:
        try:
            self.notifier.reloading()
        except NotifyError as exc:
            self._notify_failed(exc)
        try:
            new, path = load_config(self.config_path)
            if new.state_dir != self.config.state_dir or new.audit_path != self.config.audit_path:
                raise OrchestrdError(
                    f"{path}: state_dir and audit.path cannot change on reload; restart instead"
                )
        except OrchestrdError as exc:
            self.log.info("daemon.reload_failed", reason=str(exc))
        else:
            self.config = new
            self.audit.redactor = Redactor.from_config(new)
            self.limiter.total_tokens = new.max_workers
            self._announce_dangerous()
            self.log.info("daemon.reloaded", config=str(path), max_workers=new.max_workers)
            # a reload is how an operator says "the logins are fixed"
            await self.quota.unblock_all("config reload")
            self._wake()
        self._notify_ready()

    def _announce_dangerous(self) -> None:
        """Operators must know when workers may run without their agent's sandbox."""
        if not self.config.allow_dangerous_workers:
            return
        profiles = {
            name: p.dangerous_flags for name, p in self.config.workers.items() if p.dangerous_flags
        }
        if profiles:
            print(
                "orchestrd: allow_dangerous_workers = true — these profiles give workers full "
                "access to their repository: "
                + "; ".join(f"{n} ({', '.join(f)})" for n, f in profiles.items()),
                file=sys.stderr,
            )
            self.log.info("daemon.dangerous_workers", profiles=profiles)

    # -- notifications --

    def _notify(self, *fields: str) -> None:
        try:
            self.notifier.notify(*fields)
        except NotifyError as exc:
            self._notify_failed(exc)

    def _notify_failed(self, exc: NotifyError) -> None:
        self.log.info("daemon.notify_failed", reason=str(exc))

    def _notify_ready(self) -> None:
        self._notify("READY=1", f"STATUS={self._status_line()}")

    def _count_running(self) -> int:
        return sum(1 for e in self.entries.values() if e.running)

    def web_status(self) -> dict[str, object]:
        """What the status page shows of the daemon itself (orchestrd.web)."""
        running = [e.plan.id for e in self.entries.values() if e.running]
        queued = [e.plan.id for e in self.entries.values() if not e.running]
        return {"running": len(running), "running_plans": running, "queued": queued}

    def _status_line(self) -> str:
        running = self._count_running()
        return f"{running} running, {len(self.entries) - running} queued"

    # -- inbox and control requests --

    def _wake(self) -> None:
        with contextlib.suppress(anyio.WouldBlock):  # a scan is due already: it sees this too
            self._wake_send.send_nowait(None)

    async def _watch_inbox(self) -> None:
        """Wake the main loop on inotify events, and at least every rescan_interval (a timeout
        of the watcher), so an overflowed or missed event loses nothing."""
        timeout_ms = max(1, int(self.config.spool.rescan_interval * 1000))
        while True:
            try:
                async for _ in watchfiles.awatch(
                    self.spool.inbox,
                    self.spool.control,
                    watch_filter=None,
                    debounce=200,
                    step=1,
                    recursive=False,
                    rust_timeout=timeout_ms,
                    yield_on_timeout=True,
                ):
                    self._wake()
            except Exception as exc:  # the watcher must never stop the daemon: sorted below
                errors = leaf_errors(exc)
                if not all(isinstance(e, OSError | RuntimeError) for e in errors):
                    raise
                if all(_undecodable_name(e) for e in errors):
                    # a file name that is not UTF-8, which watchfiles cannot decode: something
                    # changed, and the scan handles the name; watch again
                    self._wake()
                    continue
                # e.g. out of inotify watches: fall back to rescans alone
                self.log.info("daemon.watch_failed", reason=describe_failure(exc))
                break
        while True:
            await anyio.sleep(self.config.spool.rescan_interval)
            self._wake()

    async def _main_loop(self, tg: anyio.abc.TaskGroup) -> None:
        self._wake()
        first = True
        async for _ in self._wake_receive:
            await self._scan_control(tg)
            await self._scan_inbox(tg, first)
            await self._resume_daily(tg)
            first = False

    async def _scan_inbox(self, tg: anyio.abc.TaskGroup, first: bool = False) -> None:
        try:
            names = await anyio.to_thread.run_sync(self.spool.candidates)
        except OSError as exc:
            self._spool_error("inbox/", exc)
            return
        for name in names:
            self.seq += 1
            try:
                outcome = await anyio.to_thread.run_sync(
                    self.spool.take, name, self.config, self.seq, first, self.audit.redactor
                )
            except OSError as exc:
                # e.g. a full disk: the file stays in the inbox and is tried again next scan
                self._spool_error(f"inbox/{display_name(name)}", exc)
                continue
            self._spool_errors.pop(f"inbox/{display_name(name)}", None)
            if isinstance(outcome, Rejected):
                self.log.info(
                    "plan.rejected",
                    file=display_name(name),
                    reason=outcome.reason,
                    moved_to=display_name(str(outcome.moved_to)),
                )
            elif isinstance(outcome, Accepted):
                log = self.audit.bind(plan=outcome.plan.id)
                log.info(
                    "plan.accepted",
                    file=display_name(name),
                    phases=len(outcome.plan.phases),
                    repo=str(outcome.plan.repo),
                )
                record = self._record(outcome.folder.state_file, outcome.state, log)
                entry = PlanEntry(outcome.plan, record, outcome.folder, log)
                if not await self._fix_base(entry):
                    continue
                self._start(tg, entry)
                log.info("plan.queued", seq=outcome.state.seq, active=len(self.entries))

    async def _fix_base(self, entry: PlanEntry) -> bool:
        """A worktree plan's base, fixed now that it is accepted; a base that names nothing
        fails the plan (reason: the key and what to write)."""
        try:
            await isolation.fix_base(self.config, entry.plan, entry.record)
        except (PlanError, GitError, OSError) as exc:
            await self._fail(entry, exc)
            with anyio.CancelScope(shield=True):
                await self._archive(entry)
            return False
        return True

    def _spool_error(self, what: str, exc: OSError) -> None:
        """Report a file the spool cannot handle yet, once per reason (it is retried at every
        scan, and a rescan every fraction of a second must not flood the audit log)."""
        reason = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if self._spool_errors.get(what) != reason:
            self._spool_errors[what] = reason
            self.log.info("daemon.spool_error", file=what, reason=reason)

    def _record(self, path: Path, state: PlanState, log: Logger) -> PlanRecord:
        return PlanRecord(path, state, log, lambda text: self.audit.redactor(text), on_disk=True)

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

    @contextlib.asynccontextmanager
    async def _slot_freed(self) -> AsyncIterator[None]:
        """A plan waiting for a held profile lends its worker slot to other plans meanwhile
        (it keeps its repo: it is in the middle of a phase there)."""
        self.limiter.release()
        try:
            yield
        finally:
            # even when cancelled: the plan's `async with self.limiter` gives it back after
            with anyio.CancelScope(shield=True):
                await self.limiter.acquire()

    async def _cancel(self, request: ControlRequest) -> None:
        if (paused := self.paused.pop(request.plan_id, None)) is not None:
            await paused.record.set_status(
                PlanStatus.CANCELLED, "cancelled on request", requester=request.requester
            )
            await self._archive(paused)
            return
        entry = self.entries.get(request.plan_id)
        if entry is None:
            self._ignored(request, "the plan is not active")
            return
        entry.requester = request.requester
        entry.cancel_requested = True
        entry.scope.cancel()

    async def _unarchive(self, entry: PlanEntry, folder: PlanFolder) -> PlanEntry:
        """Move an archived plan back to `folder` (under plans/) to run again; its new entry."""
        await anyio.to_thread.run_sync(shutil.move, entry.folder.root, folder.root)
        record = self._record(folder.state_file, entry.record.state, entry.log)
        return PlanEntry(entry.plan, record, folder, entry.log)

    async def _retry(self, tg: anyio.abc.TaskGroup, request: ControlRequest) -> None:
        plan_id = request.plan_id
        if (active := self.entries.get(plan_id)) is not None:
            self._ignored(
                request,
                f"the plan is {active.record.state.status} (active); only a failed or "
                "cancelled plan can be retried — cancel it first",
            )
            return
        folder = self.spool.folder(plan_id)
        source = folder if folder.root.exists() else self.spool.archived(plan_id)
        if not source.root.exists():
            self._ignored(request, "no such plan in plans/ or archive/")
            return
        try:
            entry = await self._load_entry(source)
        except Unloadable as exc:
            self._ignored(request, str(exc))
            return
        status = entry.record.state.status
        if status not in PLAN_RETRYABLE:
            self._ignored(
                request, f"the plan is {status}; only a failed or cancelled plan can be retried"
            )
            return
        if source is not folder:  # loaded where it lies first: a plan that cannot run stays
            entry = await self._unarchive(entry, folder)
        entry.requester = request.requester
        await entry.record.set_status(
            PlanStatus.QUEUED, "retry requested", requester=request.requester
        )
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
        await resume(entry.record, raises, "resume requested", requester=request.requester)
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
                await resume(entry.record, {}, "the daily budget has room again (a new UTC day)")
                self._start(tg, entry)

    # -- plans --

    def _start(self, tg: anyio.abc.TaskGroup, entry: PlanEntry) -> None:
        self.entries[entry.plan.id] = entry
        tg.start_soon(self._run_plan, entry, name=f"plan {entry.plan.id}")
        self._notify(f"STATUS={self._status_line()}")

    async def _run_plan(self, entry: PlanEntry) -> None:
        record, plan = entry.record, entry.plan
        try:
            with entry.scope:
                if entry.cancel_requested:
                    entry.scope.cancel()
                if plan.isolation == "worktree":
                    await self._run_isolated(entry)
                else:
                    lock = self.repo_locks.setdefault(plan.repo.resolve(), anyio.Lock())
                    if lock.locked():
                        entry.log.info("plan.waiting_repo", repo=str(plan.repo))
                    async with lock, self.limiter:
                        entry.running = True
                        self._notify(f"STATUS={self._status_line()}")
                        await self._runner(entry, plan).run()
            if entry.cancel_requested and record.state.status not in PLAN_TERMINAL:
                await record.set_status(
                    PlanStatus.CANCELLED, "cancelled on request", requester=entry.requester
                )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if record.state.status not in PLAN_TERMINAL:
                    await record.set_status(PlanStatus.INTERRUPTED, "the daemon is stopping")
            raise
        except Exception as exc:  # one broken plan must never take the daemon down
            await self._fail(entry, exc)
        finally:
            entry.running = False
            self.entries.pop(plan.id, None)
        if record.state.status is PlanStatus.PAUSED:
            self.paused[plan.id] = entry  # stays in plans/, nothing of it archived or lost
            self._wake()  # the daily budget may have room already (a reload raised it)
            return
        with anyio.CancelScope(shield=True):
            await self._archive(entry)
        self._notify(f"STATUS={self._status_line()}")

    def _runner(self, entry: PlanEntry, plan: Plan) -> PlanRunner:
        """The runner of `plan` (the entry's own, or rooted in its worktree), with what the
        daemon shares between plans: the launcher, the day's spending, the held profiles."""
        return PlanRunner(
            plan,
            entry.record,
            entry.folder,
            lambda: self.config,
            entry.log,
            self.launcher,
            self.spending,
            self.quota,
            self._slot_freed,
        )

    async def _run_isolated(self, entry: PlanEntry) -> None:
        """A worktree plan: no repository lock (its worktree is its own), a worker slot while
        its phases run, then its turn in the repository's merge queue."""
        record, plan = entry.record, entry.plan
        async with self.limiter:
            entry.running = True
            self._notify(f"STATUS={self._status_line()}")
            admin = await self.merges.admin(plan.repo)
            tree = await isolation.enter(self.config, plan, record, entry.log, admin)
            runner = self._runner(entry, tree)
            await runner.run()
            entry.running = False
        if record.state.status is not PlanStatus.MERGING:
            return
        commands = isolation.merge_commands(plan)
        try:
            await self.merges.merge(
                self.config,
                tree,
                plan.repo,
                record,
                entry.log,
                lambda _tree: runner.merge_verify(commands),
            )
        except (GitError, OSError) as exc:
            # git itself failed (a lock a person holds, a full disk): the merge state is
            # saved, so `orchestrd retry` carries on from where it stopped
            reason = f"merge error: {describe_failure(exc)}"
            await record.set_status(PlanStatus.MERGE_FAILED, reason)

    async def _fail(self, entry: PlanEntry, exc: Exception) -> None:
        """A plan whose runner raised (a full disk, a vanished repo, a bug) fails with the
        reason; if even its state cannot be saved, the audit log says so and the daemon goes on.
        Only an unexpected error (a bug) gets `plan.error` with its traceback."""
        reason = describe_failure(exc)
        if not all(isinstance(e, OSError | OrchestrdError) for e in leaf_errors(exc)):
            entry.log.exception("plan.error", reason=reason)
        record = entry.record
        try:
            if record.state.status not in PLAN_TERMINAL:
                await record.set_status(PlanStatus.FAILED, reason)
        except (OSError, InvalidTransition) as again:
            entry.log.info("plan.failed", reason=reason, state_not_saved=str(again))

    async def _archive(self, entry: PlanEntry) -> None:
        """Keep a finished plan's folder with copies of its reports and completion files.
        Never raises: a plan folder that cannot be moved stays in plans/ (and is tried again
        at the next start)."""
        try:
            dest, skipped = await anyio.to_thread.run_sync(
                archive_plan,
                isolation.rooted(entry.plan, entry.record),  # its reports are in its worktree
                entry.folder,
                self.spool.archive_dir,
                self.config.max_log_bytes,
            )
        except Exception as exc:  # noqa: BLE001 - a finished plan must never stop the daemon
            entry.log.info("plan.archived", reason=f"archive failed, left in plans/: {exc}")
            return
        extra: dict[str, object] = {"evidence_skipped": skipped} if skipped else {}
        extra |= await archive_report(self.config, dest)
        extra |= await anyio.to_thread.run_sync(status.index_archived, self.spool, dest)
        # the status too: a plan found finished at start-up may have lost its plan.succeeded
        # (or .failed) event with the daemon that saved the state and was killed
        entry.log.info(
            "plan.archived", path=str(dest), status=str(entry.record.state.status), **extra
        )
        if entry.record.state.worktree is not None:
            admin = await self.merges.admin(entry.plan.repo)
            await isolation.cleanup(self.config, entry.plan, entry.record, entry.log, admin)

    async def _load_entry(self, folder: PlanFolder) -> PlanEntry:
        """Plan and state of a plan folder; Unloadable (a corrupt state file reported and set
        aside) if either cannot be loaded."""
        plan_id = folder.root.name
        log = self.audit.bind(plan=plan_id)
        try:
            # off the loop: a long plan's state takes a while to read
            state = await anyio.to_thread.run_sync(load_state, folder.state_file)
        except StateError as exc:
            if folder.state_file.exists():
                moved = self.spool.set_aside(folder.state_file)
                if folder.journal.exists():  # its changes, kept beside it for a person
                    self.spool.set_aside(folder.journal)
                log.info("plan.state_corrupt", reason=str(exc), moved_to=str(moved))
            elif not any(folder.root.glob("state.toml.corrupt*")):  # reported when set aside
                log.info("plan.state_corrupt", reason=f"{folder.state_file} is missing")
            raise Unloadable(f"its state file cannot be read: {exc}") from None
        record = self._record(folder.state_file, state, log)
        await self._check_passed(record, folder, log)
        try:
            plan = load_plan(folder.plan_file, self.config)
        except PlanError as exc:
            raise Unloadable(f"its plan file cannot be loaded: {exc}", record) from None
        return PlanEntry(plan, record, folder, log)

    async def _set_aside(self, folder: PlanFolder, exc: Unloadable) -> None:
        """A plan whose plan file can no longer be loaded (a repo gone, a path now leading out
        of it, a config that changed) can neither run nor be archived with its evidence: it
        fails if it had not ended, and its folder moves to archive/ as it is."""
        record = exc.record
        if record is None:
            return  # its state file was set aside and reported; the folder stays for a person
        log = record.log
        try:
            if record.state.status not in PLAN_TERMINAL:
                await record.set_status(PlanStatus.FAILED, f"plan no longer valid: {exc}")
            dest = await anyio.to_thread.run_sync(folder.archive, self.spool.archive_dir)
        except (OSError, InvalidTransition) as err:
            log.info(
                "plan.set_aside",
                reason=str(exc),
                status=str(record.state.status),
                moved_to=None,
                error=str(err),
            )
            return
        log.info(
            "plan.set_aside", reason=str(exc), status=str(record.state.status), moved_to=str(dest)
        )

    async def _check_passed(self, record: PlanRecord, folder: PlanFolder, log: Logger) -> None:
        """A phase counts as passed only if the daemon recorded it: a line in the plan's
        `phases-passed.txt`, or its `phase.passed` in the audit log (plans from before the ledger
        had it; the audit log may have been rotated since). A state file claiming more — a
        worker of the daemon's own user could rewrite it — is reported, those phases rerun."""
        state = record.state
        claimed = [p for p, ps in state.phases.items() if ps.status is PhaseStatus.PASSED]
        if not claimed:
            return
        proven = await anyio.to_thread.run_sync(recorded_passes, folder.passes)
        if not proven.issuperset(claimed):
            proven |= await anyio.to_thread.run_sync(
                passed_in_audit, self.config.audit_path, state.plan
            )
        unproven = [p for p in claimed if p not in proven]
        if not unproven:
            return
        await record.disown_passes(unproven)
        log.info(
            "plan.state_mismatch",
            phases=unproven,
            reason="state.toml says passed; neither phases-passed.txt nor the audit log "
            "records their pass",
        )

    async def _recover(self, tg: anyio.abc.TaskGroup) -> None:
        """Rebuild the queue from plans/: stop leftover workers, resume unfinished plans (a
        paused one waits on), and what every plan spent today from the ledger."""
        entries = []
        await anyio.to_thread.run_sync(self.spool.remove_staging)
        ledger = await anyio.to_thread.run_sync(status.ledger, self.spool)
        self.spending.seed(r for _, r in ledger)
        for folder in await anyio.to_thread.run_sync(self.spool.plan_folders):
            held = lock_held(folder.root / RUN_LOCK)
            if held:
                continue  # a live `orchestrd run` owns it, not the daemon
            if held is False:  # its `orchestrd run` was killed: the daemon adopts the plan
                (folder.root / RUN_LOCK).unlink(missing_ok=True)
            try:
                entry = await self._load_entry(folder)
            except Unloadable as exc:
                await self._set_aside(folder, exc)
                continue
            if entry.record.state.status in PLAN_TERMINAL:
                await self._archive(entry)  # finished, but the archive step was interrupted
                continue
            await self._stop_recorded(entry)
            entries.append(entry)
        await self._stop_strays(entries)
        live = {f.root.name for f in await anyio.to_thread.run_sync(self.spool.plan_folders)}
        await isolation.prune_stale(self.config, live, self.log)
        entries.sort(key=lambda e: e.record.state.seq)
        self.seq = max((e.record.state.seq for e in entries), default=0)
        for entry in entries:
            previous = entry.record.state.status
            if previous is PlanStatus.PAUSED:
                self.paused[entry.plan.id] = entry
                continue
            if previous in (PlanStatus.RUNNING, PlanStatus.MERGING):
                # a merge goes on from its saved state once the plan is through its runner
                await entry.record.set_status(PlanStatus.INTERRUPTED, "the daemon stopped")
            entry.log.info("daemon.recovered", previous=str(previous))
            self._start(tg, entry)

    async def _stop_orphans(self, entry: PlanEntry) -> None:
        """Stop whatever is left of the plan's workers from an earlier daemon run."""
        await self._stop_recorded(entry)
        await self._stop_strays([entry])

    async def _stop_recorded(self, entry: PlanEntry) -> None:
        """Stop what the workers the plan's state file says were running left (exactly: their
        cgroup, or their process if it is still the same one), and record them as stopped."""
        grace = self.config.policy_for(entry.plan.policy).stop_grace
        changed = []
        for phase_id, ps in entry.record.state.phases.items():
            for att in ps.attempts:
                live = (AttemptStatus.STARTING, AttemptStatus.RUNNING, AttemptStatus.STALLED)
                if att.status not in live or att.pid is None:
                    continue
                (reaped,) = await self.launcher.reap([recorded_handle(att)], grace)
                mark_left_stopped(att)
                changed.append(phase_id)
                entry.log.info(
                    "worker.orphan_stopped",
                    phase=phase_id,
                    attempt=att.n,
                    pid=att.pid,
                    **reaped_fields(reaped),
                )
        if changed:
            await entry.record.save(*dict.fromkeys(changed))

    async def _stop_strays(self, entries: list[PlanEntry]) -> None:
        """Stop what the state files cannot know: a worker started just before a crash (its
        handle not saved yet), or a descendant that left its worker (setsid). The launcher
        finds them (local: leftover cgroups, then ORCHESTRD_LOG, which points into the plan's
        workers/ folder); the recorded workers are gone by now."""
        # with no plan left too: a cgroup in the tree is a worker of this daemon's, whatever
        # became of its plan
        grace = max(
            (self.config.policy_for(e.plan.policy).stop_grace for e in entries),
            default=self.config.policy.stop_grace,
        )
        folders = [e.folder.workers for e in entries]
        for reaped in await self.launcher.sweep(folders, grace):
            log = str(reaped.handle.fields.get("log") or "")
            cgroup = Path(str(reaped.handle.fields.get("cgroup") or "")).name
            entry = next(
                (
                    e
                    for e in entries
                    if log.startswith(f"{e.folder.workers}{os.sep}")
                    or cgroup.startswith(f"{e.plan.id}:")
                ),
                None,
            )
            found = {k: v for k, v in reaped.handle.fields.items() if k in ("pid", "log")}
            (entry.log if entry is not None else self.log).info(
                "worker.orphan_stopped", **found, **reaped_fields(reaped)
            )

    def _announce_limits(self) -> None:
        """Limits a profile sets that cannot be had here: said once, never a failure."""
        for name, profile in sorted(self.config.workers.items()):
            for reason in self.launcher.warnings(profile.limits):
                self.log.info("daemon.limits_unavailable", profile=name, reason=reason)


def recorded_handle(att: AttemptState) -> Handle:
    """The attempt's launcher handle; a state file from before handles has the local fields."""
    if att.handle is not None:
        return Handle.from_dict(att.handle)
    return Handle(
        "local",
        {
            "pid": att.pid,
            "pgid": att.pgid or att.pid,
            "start_time": att.start_time or 0,
            "boot_id": att.boot_id or "",
            "log": att.log,
        },
    )


def reaped_fields(reaped: Reaped) -> dict[str, object]:
    fields: dict[str, object] = {"signal": reaped.signal.name if reaped.signal else None}
    if cgroup := reaped.handle.fields.get("cgroup"):
        fields["cgroup"] = cgroup
    if reaped.stopped:
        fields["processes"] = [{"pid": p.pid, "command": p.command} for p in reaped.stopped]
    if reaped.found:
        fields["found"] = reaped.found
    return fields


def check_startup(config: Config) -> None:
    """Refuse to serve an inbox others could write into, or to run as root unasked (sshd's
    StrictModes). Modes are checked, never changed: they come from tmpfiles or the operator.
    Called before anything is created or opened in state_dir; folders not made yet are
    created by the daemon itself, never writable by others."""
    if os.geteuid() == 0 and not config.allow_root:
        raise ConfigError(
            "refusing to run the daemon as root: workers would run as root too. Run it as the "
            "orchestrd user (see README, 'Install as a systemd service'), or set "
            "allow_root = true in the config"
        )
    if os.geteuid() == 0 and not config.worker_user and not config.allow_root_workers:
        raise ConfigError(
            "refusing to run the daemon as root without worker_user: a root daemon never runs "
            'a worker as root. Set worker_user = "orchestrd-worker" (systemd/orchestrd.'
            "sysusers creates it) in the config"
        )
    check_identities(config)
    spool = Spool(config.state_dir)
    # and the folders whose files it acts on: a request in control/ cancels or retries any
    # plan, a folder in plans/ runs
    for folder in (spool.root, spool.inbox, spool.control, spool.plans, spool.archive_dir):
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"{folder} is writable by anyone (mode {stat.S_IMODE(st.st_mode):04o}): anyone "
                f"could make the daemon run programs. Fix it with: chmod o-w {folder}"
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"{folder} is owned by uid {st.st_uid}, not by the daemon's user "
                f"(uid {os.geteuid()}) or root; chown it to the daemon's user"
            )
    check_handoff_root(config)


def check_handoff_root(config: Config) -> None:
    """The hand-off folders hold each attempt's prompt: a worker (its group) that could write
    their root could swap another attempt's prompt or failed log."""
    root = handoff_root(config)
    try:
        st = root.stat()
    except FileNotFoundError:
        return  # the daemon makes it (0750) at the first worker that runs as another user
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP) or st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"handoff_dir: {root} (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) must "
            "belong to the daemon's user and be writable by nobody else: workers read their "
            f"prompts there. Fix it with: chown {os.geteuid()} {root} && chmod 2750 {root}"
        )


def _undecodable_name(exc: BaseException) -> bool:
    """watchfiles' error for an event on a file name that is not UTF-8."""
    return isinstance(exc, RuntimeError) and "Unable to decode path" in str(exc)


def run_daemon(config: Config, config_path: Path | None) -> None:
    check_startup(config)  # before the audit log or any folder is created in state_dir
    # nothing the daemon or its workers create is writable by others, whatever umask it got;
    # with separate worker users, "others" are the workers: they may not even read its files
    private = 0o027 if separation(config)[0] else 0o002
    os.umask(os.umask(private) | private)
    anyio.run(Daemon(config, config_path).serve)


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


async def apply_offline(
    config: Config, config_path: Path | None, plan_id: str, kind: str, text: str = ""
) -> str:
    """Cancel, retry or resume a plan while no daemon runs (holding its lock meanwhile).

    Returns the plan's state afterwards; a retried or resumed plan runs when the daemon next
    starts.
    """
    check_plan_id(plan_id, "PLAN_ID")
    daemon = Daemon(config, config_path, echo=False)
    daemon.spool.ensure()
    daemon.spool.lock()
    who = requester(os.geteuid())
    try:
        folder = daemon.spool.folder(plan_id)
        source = folder
        if kind == RETRY and not folder.root.exists():
            source = daemon.spool.archived(plan_id)
        if not source.root.exists():
            raise OrchestrdError(f"plan {plan_id}: not found in {daemon.spool.plans}")
        try:
            entry = await daemon._load_entry(source)
        except Unloadable as exc:
            state = exc.record.state.status if exc.record else "unreadable"
            raise OrchestrdError(
                f"plan {plan_id} is {state}, but it cannot be loaded, so it cannot be "
                f"{'cancelled' if kind == CANCEL else 'retried'}: {exc}"
            ) from None
        status = entry.record.state.status
        if kind == CANCEL and status not in PLAN_TERMINAL:
            await daemon._stop_orphans(entry)
            await entry.record.set_status(
                PlanStatus.CANCELLED, "cancelled on request", requester=who
            )
            await daemon._archive(entry)
        elif kind == RESUME and status is PlanStatus.PAUSED:
            await resume(entry.record, parse_raises(text), "resume requested", requester=who)
        elif kind == RETRY and status in PLAN_RETRYABLE:
            if source is not folder:
                entry = await daemon._unarchive(entry, folder)
            await entry.record.set_status(PlanStatus.QUEUED, "retry requested", requester=who)
        return str(entry.record.state.status)
    finally:
        daemon.spool.unlock()
        daemon.audit.close()
