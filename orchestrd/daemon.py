"""The supervisor: a task group of plan runners under limits (max_workers, one plan per repo),
the inbox watch, control requests (cancel/retry), signals, sd_notify, and recovery at start-up.

Lifecycle: startup → main loop → shutdown (uvicorn's shape). Signals only record and cancel;
plan tasks turn cancellation into saved state.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import watchfiles

from .audit import AuditLog, Logger, Redactor
from .config import Config, load_config
from .errors import ConfigError, OrchestrdError, PlanError, StateError
from .plan import Plan, confine, load_plan
from .runner import PlanRunner
from .spool import Accepted, Rejected, Spool
from .state import PlanFolder, PlanRecord, load_state
from .states import PLAN_TERMINAL, AttemptStatus, InvalidTransition, PlanStatus
from .systemd import Notifier, NotifyError, watchdog_loop
from .worker import WorkerHandle, stop_orphan

CANCEL, RETRY = ".cancel", ".retry"


@dataclasses.dataclass(eq=False)
class PlanEntry:
    plan: Plan
    record: PlanRecord
    folder: PlanFolder
    log: Logger
    scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    cancel_requested: bool = False
    running: bool = False


class Daemon:
    def __init__(self, config: Config, config_path: Path | None, echo: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.spool = Spool(config.state_dir)
        self.audit = AuditLog(
            config.audit_path, echo=sys.stderr if echo else None,
            redactor=Redactor.from_config(config),
        )
        self.log = self.audit.bind()
        self.notifier = Notifier.from_env()
        self.entries: dict[str, PlanEntry] = {}
        self.limiter = anyio.CapacityLimiter(config.max_workers)
        self.repo_locks: dict[Path, anyio.Lock] = {}
        self.seq = 0
        send, receive = anyio.create_memory_object_stream[None](1)
        self._wake_send, self._wake_receive = send, receive

    # -- lifecycle --

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT; plans left unfinished resume on the next start."""
        self.spool.ensure()
        check_startup(self.config, self.spool)
        self.spool.lock()
        self._announce_dangerous()
        try:
            # Signals are caught from before READY=1 until every worker is stopped: one more
            # SIGTERM/SIGINT/SIGHUP during shutdown waits in the receiver instead of killing
            # the daemon by default action with its workers still running.
            signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            with anyio.open_signal_receiver(*signals) as received:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._handle_signals, received, tg.cancel_scope)
                    await self._recover(tg)
                    tg.start_soon(self._watch_inbox)
                    tg.start_soon(self._main_loop, tg)
                    if self.notifier.watchdog_interval() is not None:
                        tg.start_soon(watchdog_loop, self.notifier, self._notify_failed)
                    self.log.info(
                        "daemon.started", state_dir=str(self.config.state_dir),
                        config=str(self.config_path), max_workers=self.config.max_workers,
                        plans=len(self.entries),
                    )
                    self._notify_ready()
        finally:
            self.log.info("daemon.stopped")
            self.spool.unlock()
            self.audit.close()

    async def _handle_signals(
        self, signals: AsyncIterator[signal.Signals], scope: anyio.CancelScope
    ) -> None:
        async for sig in signals:
            if sig == signal.SIGHUP:
                await self._reload()
                continue
            self.log.info(
                "daemon.stopping", signal=signal.Signals(sig).name,
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

    def _status_line(self) -> str:
        running = self._count_running()
        return f"{running} running, {len(self.entries) - running} queued"

    # -- inbox and control requests --

    def _wake(self) -> None:
        try:
            self._wake_send.send_nowait(None)
        except anyio.WouldBlock:
            pass  # a scan is already due; it will see this change too

    async def _watch_inbox(self) -> None:
        """Wake the main loop on inotify events, and at least every rescan_interval (a timeout
        of the watcher), so an overflowed or missed event loses nothing."""
        timeout_ms = max(1, int(self.config.spool.rescan_interval * 1000))
        try:
            async for _ in watchfiles.awatch(
                self.spool.inbox, self.spool.control, watch_filter=None, debounce=200, step=5,
                recursive=False, rust_timeout=timeout_ms, yield_on_timeout=True,
            ):
                self._wake()
        except (OSError, RuntimeError) as exc:
            # e.g. out of inotify watches: fall back to rescans alone
            self.log.info("daemon.watch_failed", reason=str(exc))
            while True:
                await anyio.sleep(self.config.spool.rescan_interval)
                self._wake()

    async def _main_loop(self, tg: anyio.abc.TaskGroup) -> None:
        self._wake()
        first = True
        async for _ in self._wake_receive:
            await self._scan_control(tg)
            await self._scan_inbox(tg, first)
            first = False

    async def _scan_inbox(self, tg: anyio.abc.TaskGroup, first: bool = False) -> None:
        for name in await anyio.to_thread.run_sync(self.spool.candidates):
            self.seq += 1
            try:
                outcome = await anyio.to_thread.run_sync(
                    self.spool.take, name, self.config, self.seq, first
                )
            except OSError as exc:
                # e.g. a full disk: the file stays in the inbox and is tried again next scan
                self.log.info("daemon.spool_error", file=name, reason=str(exc))
                continue
            if isinstance(outcome, Rejected):
                self.log.info(
                    "plan.rejected", file=name, reason=outcome.reason,
                    moved_to=str(outcome.moved_to),
                )
            elif isinstance(outcome, Accepted):
                log = self.audit.bind(plan=outcome.plan.id)
                log.info("plan.accepted", file=name, phases=len(outcome.plan.phases),
                         repo=str(outcome.plan.repo))
                record = PlanRecord(outcome.folder.state_file, outcome.state, log)
                self._start(tg, PlanEntry(outcome.plan, record, outcome.folder, log))
                log.info("plan.queued", seq=outcome.state.seq, active=len(self.entries))

    async def _scan_control(self, tg: anyio.abc.TaskGroup) -> None:
        for request in sorted(self.spool.control.iterdir()):
            plan_id, kind = request.stem, request.suffix
            if kind not in (CANCEL, RETRY):
                continue
            request.unlink(missing_ok=True)
            if kind == CANCEL:
                await self._cancel(plan_id)
            else:
                await self._retry(tg, plan_id)

    async def _cancel(self, plan_id: str) -> None:
        entry = self.entries.get(plan_id)
        if entry is None:
            self.log.info("daemon.request_ignored", plan=plan_id, request="cancel",
                          reason="the plan is not active")
            return
        entry.cancel_requested = True
        entry.scope.cancel()

    async def _retry(self, tg: anyio.abc.TaskGroup, plan_id: str) -> None:
        if plan_id in self.entries:
            return
        archived = self.spool.archive_dir / plan_id
        if archived.exists() and not (self.spool.plans / plan_id).exists():
            await anyio.to_thread.run_sync(shutil.move, archived, self.spool.plans / plan_id)
        folder = self.spool.folder(plan_id)
        entry = await self._load_entry(folder)
        if entry is None or entry.record.state.status not in (
            PlanStatus.FAILED, PlanStatus.CANCELLED
        ):
            self.log.info("daemon.request_ignored", plan=plan_id, request="retry",
                          reason="only a failed or cancelled plan can be retried")
            return
        await entry.record.set_status(PlanStatus.QUEUED, "retry requested")
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
                lock = self.repo_locks.setdefault(plan.repo.resolve(), anyio.Lock())
                if lock.locked():
                    entry.log.info("plan.waiting_repo", repo=str(plan.repo))
                async with lock, self.limiter:
                    entry.running = True
                    self._notify(f"STATUS={self._status_line()}")
                    runner = PlanRunner(plan, record, entry.folder, lambda: self.config, entry.log)
                    await runner.run()
            if entry.cancel_requested and record.state.status not in PLAN_TERMINAL:
                await record.set_status(PlanStatus.CANCELLED, "cancelled on request")
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
        with anyio.CancelScope(shield=True):
            await self._archive(entry)
        self._notify(f"STATUS={self._status_line()}")

    async def _fail(self, entry: PlanEntry, exc: Exception) -> None:
        """A plan whose runner raised (a full disk, a vanished repo, a bug) fails with the
        reason; if even its state cannot be saved, the audit log says so and the daemon goes on."""
        reason = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, OSError):
            entry.log.exception("plan.error", reason=reason)
        record = entry.record
        try:
            if record.state.status not in PLAN_TERMINAL:
                await record.set_status(PlanStatus.FAILED, reason)
        except (OSError, InvalidTransition) as again:
            entry.log.info("plan.failed", reason=reason, state_not_saved=str(again))

    async def _archive(self, entry: PlanEntry) -> None:
        """Keep a finished plan's folder with copies of its reports and completion files."""
        try:
            dest = await anyio.to_thread.run_sync(
                archive_plan, entry.plan, entry.folder, self.spool.archive_dir
            )
        except OSError as exc:
            entry.log.info("plan.archived", reason=f"archive failed, left in plans/: {exc}")
            return
        entry.log.info("plan.archived", path=str(dest))

    async def _load_entry(self, folder: PlanFolder) -> PlanEntry | None:
        """Plan and state of a folder under plans/, or None (reported) if unusable."""
        plan_id = folder.root.name
        log = self.audit.bind(plan=plan_id)
        try:
            state = load_state(folder.state_file)
        except StateError as exc:
            if folder.state_file.exists():
                moved = self.spool.set_aside(folder.state_file)
                log.info("plan.state_corrupt", reason=str(exc), moved_to=str(moved))
            elif not any(folder.root.glob("state.toml.corrupt*")):  # reported when set aside
                log.info("plan.state_corrupt", reason=f"{folder.state_file} is missing")
            return None
        record = PlanRecord(folder.state_file, state, log)
        try:
            plan = load_plan(folder.plan_file, self.config)
        except PlanError as exc:
            if state.status not in PLAN_TERMINAL:
                await record.set_status(PlanStatus.FAILED, f"plan no longer valid: {exc}")
            return None
        return PlanEntry(plan, record, folder, log)

    async def _recover(self, tg: anyio.abc.TaskGroup) -> None:
        """Rebuild the queue from plans/: stop leftover workers, resume unfinished plans."""
        entries = []
        for path in sorted(self.spool.plans.iterdir()):
            if not path.is_dir():
                continue
            entry = await self._load_entry(PlanFolder(path))
            if entry is None:
                continue
            if entry.record.state.status in PLAN_TERMINAL:
                await self._archive(entry)  # finished, but the archive step was interrupted
                continue
            await self._stop_orphans(entry)
            entries.append(entry)
        entries.sort(key=lambda e: e.record.state.seq)
        self.seq = max((e.record.state.seq for e in entries), default=0)
        for entry in entries:
            previous = entry.record.state.status
            if previous is PlanStatus.RUNNING:
                await entry.record.set_status(PlanStatus.INTERRUPTED, "the daemon stopped")
            entry.log.info("daemon.recovered", previous=str(previous))
            self._start(tg, entry)

    async def _stop_orphans(self, entry: PlanEntry) -> None:
        grace = self.config.policy_for(entry.plan.policy).stop_grace
        for phase_id, ps in entry.record.state.phases.items():
            for att in ps.attempts:
                live = (AttemptStatus.STARTING, AttemptStatus.RUNNING, AttemptStatus.STALLED)
                if att.status not in live or att.pid is None:
                    continue
                handle = WorkerHandle(
                    pid=att.pid, pgid=att.pgid or att.pid, start_time=att.start_time or 0,
                    boot_id=att.boot_id or "", log=att.log,
                )
                sig = await stop_orphan(handle, grace)
                att.status = AttemptStatus.STOPPED
                entry.log.info(
                    "worker.orphan_stopped", phase=phase_id, attempt=att.n, pid=att.pid,
                    signal=sig.name if sig else None,
                )
        await entry.record.save()


def check_startup(config: Config, spool: Spool) -> None:
    """Refuse to serve an inbox others could write into, or to run as root unasked (sshd's
    StrictModes). Modes are checked, never changed: they come from tmpfiles or the operator."""
    if os.geteuid() == 0 and not config.allow_root:
        raise ConfigError(
            "refusing to run the daemon as root: workers would run as root too. Run it as the "
            "orchestrd user (see README, 'Install as a systemd service'), or set "
            "allow_root = true in the config"
        )
    for folder in (spool.root, spool.inbox):
        st = folder.stat()
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


def archive_plan(plan: Plan, folder: PlanFolder, archive_dir: Path) -> Path:
    """Copy the plan's reports and completion files into its folder, then move it to archive/."""
    evidence = folder.root / "evidence"
    for phase in plan.phases:
        for rel in (phase.report_path, *phase.completion_paths):
            try:
                src = confine(plan.repo, plan.in_plan_dir(rel))
            except PlanError:
                continue  # a symlink leading out of the repo: not evidence, not copied
            if src.is_file():
                dest = evidence / plan.in_plan_dir(rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
    return folder.archive(archive_dir)


def run_daemon(config: Config, config_path: Path | None) -> None:
    anyio.run(Daemon(config, config_path).serve)




async def apply_offline(config: Config, config_path: Path | None, plan_id: str, kind: str) -> str:
    """Cancel or retry a plan while no daemon runs (holding its lock meanwhile).

    Returns the plan's state afterwards; a retried plan runs when the daemon next starts.
    """
    daemon = Daemon(config, config_path, echo=False)
    daemon.spool.ensure()
    daemon.spool.lock()
    try:
        if kind == RETRY:
            archived = daemon.spool.archive_dir / plan_id
            if archived.exists() and not (daemon.spool.plans / plan_id).exists():
                shutil.move(archived, daemon.spool.plans / plan_id)
        folder = daemon.spool.folder(plan_id)
        entry = await daemon._load_entry(folder) if folder.root.exists() else None
        if entry is None:
            raise OrchestrdError(f"plan {plan_id}: not found in {daemon.spool.plans}")
        status = entry.record.state.status
        if kind == CANCEL and status not in PLAN_TERMINAL:
            await daemon._stop_orphans(entry)
            await entry.record.set_status(PlanStatus.CANCELLED, "cancelled on request")
            await daemon._archive(entry)
        elif kind == RETRY and status in (PlanStatus.FAILED, PlanStatus.CANCELLED):
            await entry.record.set_status(PlanStatus.QUEUED, "retry requested")
        return str(entry.record.state.status)
    finally:
        daemon.spool.unlock()
        daemon.audit.close()
