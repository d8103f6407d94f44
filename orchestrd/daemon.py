"""The supervisor: a task group of plan runners under limits (max_workers, one plan per repo),
the inbox watch, signals, sd_notify; control requests (control.py) and recovery at start-up
(recovery.py) act on its plans.

Lifecycle: startup → main loop → shutdown (uvicorn's shape). Signals only record and cancel;
plan tasks turn cancellation into saved state.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from . import isolation, lifecycle, recovery
from .audit import CHATTY, AuditLog, Redactor
from .config import Config, load_config
from .control import Requests
from .errors import OrchestrdError, PlanError, describe_failure
from .gitsnap import GitError
from .inotify import Inotify
from .launchers import Launcher, open_launcher
from .lifecycle import PlanEntry
from .metering import Clock, Spending, utc_now
from .metrics import Metrics, run_metrics
from .notify import run_notifier
from .parking import HOLDS_FILE, Quota
from .plan import Plan
from .privsep import clear_ambient_capabilities, separation
from .runner import PlanRunner
from .spool import Accepted, Rejected, Spool, display_name
from .startup import check_startup
from .state import atomic_write
from .states import PLAN_TERMINAL, Outcome, PlanStatus
from .systemd import Notifier, NotifyError, watchdog_loop
from .worker import use_pidfd_child_watcher

STOPPING = "the daemon is stopping"


class Daemon(Requests):
    _intake: anyio.CancelScope
    """The inbox and control scans: stopped first at shutdown, so no plan starts after."""
    _plans_ended: anyio.Event
    """Set at shutdown once every plan's task has ended (`self.entries` is empty)."""

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
        self._stopping = False
        send, receive = anyio.create_memory_object_stream[None](1)
        self._wake_send, self._wake_receive = send, receive

    # -- lifecycle --

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT; plans left unfinished resume on the next start."""
        self._intake, self._plans_ended = anyio.CancelScope(), anyio.Event()  # on the loop
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
                    await tg.start(run_notifier, lambda: self.config, self.log, self.audit)
                    await tg.start(
                        run_metrics, lambda: self.config, self.log, self.metrics, self.audit
                    )
                    tg.start_soon(self.quota.run)
                    await self._recover(tg)
                    if self._stopping:  # stopped during start-up: no service, no READY
                        return
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
            if listener is not None:
                listener.close()
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
            await self._stop_plans()
            scope.cancel()
            return

    async def _stop_plans(self) -> None:
        """Stop every plan by its own scope and wait for their tasks to end, and only then
        cancel the daemon's scope. anyio delivers a cancellation by walking every scope under
        the cancelled one on each pass of the loop until its tasks are done, so cancelling the
        daemon's scope while thousands of plans stop their workers under it spins the loop at
        O(plans) a pass (55 % of the loop, 10 s to stop 2,000 workers; bench/README.md); a
        plan's own scope is walked only while that plan stops. Each run ends interrupted, as
        a cancellation from outside would end it."""
        self._stopping = True
        self._intake.cancel()
        for entry in list(self.entries.values()):
            entry.stopping = STOPPING
            entry.scope.cancel()
        if self.entries:
            await self._plans_ended.wait()

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
        """Wake the main loop on inotify events, and at least every rescan_interval of quiet,
        so an overflowed or missed event loses nothing. The inotify descriptor is read on the
        event loop: an idle daemon sleeps until something happens (no watcher thread that
        wakes every millisecond)."""
        try:
            watch = Inotify([self.spool.inbox, self.spool.control])
        except OSError as exc:  # e.g. out of inotify watches: fall back to rescans alone
            self.log.info("daemon.watch_failed", reason=describe_failure(exc))
            watch = None
        try:
            while True:
                with anyio.move_on_after(self.config.spool.rescan_interval):
                    if watch is not None:
                        try:
                            await watch.changed()
                        except OSError as exc:  # the watch must never stop the daemon
                            self.log.info("daemon.watch_failed", reason=describe_failure(exc))
                            watch.close()
                            watch = None  # rescans alone from now on
                    else:
                        await anyio.sleep_forever()
                self._wake()
        finally:
            if watch is not None:
                watch.close()

    async def _main_loop(self, tg: anyio.abc.TaskGroup) -> None:
        self._wake()
        first = True
        with self._intake:
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
                record = recovery.plan_record(
                    self.audit, outcome.folder.state_file, outcome.state, log
                )
                entry = PlanEntry(outcome.plan, record, outcome.folder, log)
                if not await self._fix_base(entry):
                    continue
                self._start(tg, entry)
                record.queued(active=len(self.entries))

    async def _fix_base(self, entry: PlanEntry) -> bool:
        """A worktree plan's base, fixed now that it is accepted; a base that names nothing
        fails the plan (reason: the key and what to write)."""
        try:
            await isolation.fix_base(self.config, entry.plan, entry.record)
        except (PlanError, GitError, OSError) as exc:
            await lifecycle.fail(entry, exc)
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

    # -- plans --

    def _start(self, tg: anyio.abc.TaskGroup, entry: PlanEntry, announce: bool = True) -> None:
        """Run the plan's task; `announce`: tell systemd the new status line (recovery says
        it once, with READY=1, not once per plan: counting is O(plans) each time).
        Once the daemon is stopping, none starts: the plan's folder is in plans/, and the next
        start resumes it."""
        if self._stopping:
            return
        self.entries[entry.plan.id] = entry
        tg.start_soon(self._run_plan, entry, name=f"plan {entry.plan.id}")
        if announce:
            self._notify(f"STATUS={self._status_line()}")

    async def _run_plan(self, entry: PlanEntry) -> None:
        try:
            await lifecycle.run(entry, functools.partial(self._carry_out, entry), STOPPING)
        finally:
            entry.running = False
            self.entries.pop(entry.plan.id, None)
            if self._stopping and not self.entries:
                self._plans_ended.set()
        if entry.stopping is not None and not entry.cancel_requested:
            # stopped by the daemon: the plan stays in plans/, and the next start resumes it or
            # archives it from what its state file says (a save cut short by the stop may have
            # left it behind the status in memory)
            return
        if entry.record.state.status is PlanStatus.PAUSED:
            self.paused[entry.plan.id] = entry  # stays in plans/, nothing of it archived or lost
            self._wake()  # the daily budget may have room already (a reload raised it)
            return
        with anyio.CancelScope(shield=True):
            await self._archive(entry)
        self._notify(f"STATUS={self._status_line()}")

    async def _carry_out(self, entry: PlanEntry) -> None:
        """The plan's run under the daemon's limits: a worker slot, and its repository to
        itself (a worktree plan has its own worktree)."""
        plan = entry.plan
        if plan.isolation == "worktree":
            await self._run_isolated(entry)
            return
        lock = self.repo_locks.setdefault(plan.repo.resolve(), anyio.Lock())
        if lock.locked():
            entry.log.info("plan.waiting_repo", repo=str(plan.repo))
        async with lock, self.limiter:
            entry.running = True
            self._notify(f"STATUS={self._status_line()}")
            await lifecycle.carry_out(entry.record, plan, self._runner(entry, plan))

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
            outcome = await lifecycle.carry_out(record, tree, runner)
            entry.running = False
        if outcome.status is not PlanStatus.MERGING:
            return
        commands = isolation.merge_commands(plan)
        try:
            outcome = await self.merges.merge(
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
            outcome = Outcome(PlanStatus.MERGE_FAILED, f"merge error: {describe_failure(exc)}")
        await lifecycle.end(record, outcome)

    async def _archive(self, entry: PlanEntry) -> None:
        await lifecycle.archive(entry, self.config, self.spool, self.merges.admin)

    async def _recover(self, tg: anyio.abc.TaskGroup) -> None:
        """Rebuild the queue from plans/: stop leftover workers, resume unfinished plans (a
        paused one waits on), and what every plan spent today from the ledger."""
        entries = []
        await anyio.to_thread.run_sync(self.spool.remove_staging)
        # every folder's state and plan read in one thread call (not two hops each on the
        # loop), the day's spending counted from the same reads
        found, usage = await anyio.to_thread.run_sync(recovery.read_plans, self.config, self.spool)
        self.spending.seed(usage)
        for one in found:
            try:
                entry = await recovery.entry_of(self.config, self.audit, self.spool, one)
            except recovery.Unloadable as exc:
                await recovery.set_aside(self.spool, one.folder, exc)
                continue
            if entry.record.state.status in PLAN_TERMINAL:
                await self._archive(entry)  # finished, but the archive step was interrupted
                continue
            await recovery.stop_recorded(self.config, self.launcher, entry)
            entries.append(entry)
        await recovery.stop_strays(self.config, self.launcher, entries, self.log)
        live = {f.root.name for f in await anyio.to_thread.run_sync(self.spool.plan_folders)}
        await isolation.prune_stale(self.config, live, self.log)
        entries.sort(key=lambda e: e.record.state.seq)
        self.seq = max((e.record.state.seq for e in entries), default=0)
        for entry in entries:
            if self._stopping:
                return  # a stop during start-up: the rest resume at the next start
            previous = entry.record.state.status
            if previous is PlanStatus.PAUSED:
                self.paused[entry.plan.id] = entry
                continue
            if previous in (PlanStatus.RUNNING, PlanStatus.MERGING):
                # a merge goes on from its saved state once the plan is through its runner
                await lifecycle.interrupt(entry.record, "the daemon stopped")
            entry.log.info("daemon.recovered", previous=str(previous))
            self._start(tg, entry, announce=False)

    def _announce_limits(self) -> None:
        """Limits a profile sets that cannot be had here: said once, never a failure."""
        for name, profile in sorted(self.config.workers.items()):
            for reason in self.launcher.warnings(profile.limits):
                self.log.info("daemon.limits_unavailable", profile=name, reason=reason)


def run_daemon(config: Config, config_path: Path | None) -> None:
    check_startup(config)  # before the audit log or any folder is created in state_dir
    # nothing the daemon or its workers create is writable by others, whatever umask it got;
    # with separate worker users, "others" are the workers: they may not even read its files
    private = 0o027 if separation(config)[0] else 0o002
    os.umask(os.umask(private) | private)
    anyio.run(Daemon(config, config_path).serve)
