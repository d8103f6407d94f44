"""What a start finds of an earlier run: plan folders loaded (or set aside when they cannot
be), passes the daemon never recorded disowned, and the workers left running stopped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from .audit import AuditLog, Logger, passed_in_audit
from .config import Config
from .errors import OrchestrdError, PlanError, StateError
from .launchers import Handle, Launcher, Reaped
from .lifecycle import PlanEntry, fail_unfinished
from .plan import Plan, load_plan
from .spool import lock_held
from .state import (
    AttemptState,
    PlanRecord,
    PlanState,
    load_state,
    mark_left_stopped,
    recorded_passes,
)
from .states import AttemptStatus, InvalidTransition, PhaseStatus
from .status import records
from .store import PlanFolder, Store
from .usage import UsageRecord


class Unloadable(OrchestrdError):
    """A plan folder whose state file or plan file cannot be loaded (why); `record` is its
    state where that could be read."""

    def __init__(self, reason: str, record: PlanRecord | None = None) -> None:
        super().__init__(reason)
        self.record = record


def plan_record(audit: AuditLog, path: Path, state: PlanState, log: Logger) -> PlanRecord:
    """The record of a plan whose state is on disk, redacted as the audit log is (now and
    after a reload)."""
    return PlanRecord(path, state, log, lambda text: audit.redactor(text), on_disk=True)


@dataclass
class Found:
    """A plan folder as read off the event loop: its state and plan, or why not."""

    folder: PlanFolder
    state: PlanState | None = None
    state_error: StateError | None = None
    plan: Plan | None = None
    plan_error: PlanError | None = None
    passes: set[str] | None = None
    """Its `phases-passed.txt`, read when the state claims a pass."""


def read_folder(config: Config, folder: PlanFolder) -> Found:
    """State, plan and recorded passes of a plan folder (blocking: run it in a thread)."""
    try:
        state = load_state(folder.state_file)
    except StateError as exc:
        return Found(folder, state_error=exc)
    passes = None
    if any(ps.status is PhaseStatus.PASSED for ps in state.phases.values()):
        passes = recorded_passes(folder.passes)
    try:
        plan = load_plan(folder.plan_file, config)
    except PlanError as exc:
        return Found(folder, state, plan_error=exc, passes=passes)
    return Found(folder, state, plan=plan, passes=passes)


async def load_entry(
    config: Config, audit: AuditLog, store: Store, folder: PlanFolder
) -> PlanEntry:
    """Plan and state of a plan folder; Unloadable (a corrupt state file reported and set
    aside) if either cannot be loaded."""
    # off the loop: a long plan's state takes a while to read, a plan's paths to check
    found = await anyio.to_thread.run_sync(read_folder, config, folder)
    return await entry_of(config, audit, store, found)


async def entry_of(config: Config, audit: AuditLog, store: Store, found: Found) -> PlanEntry:
    """The entry of a folder `read_folder` read; Unloadable as `load_entry` says."""
    folder = found.folder
    log = audit.bind(plan=folder.root.name)
    if found.state is None:
        if folder.state_file.exists():
            moved = store.set_aside_state(folder)
            log.info("plan.state_corrupt", reason=str(found.state_error), moved_to=str(moved))
        elif not folder.set_aside_before():  # reported when set aside
            log.info("plan.state_corrupt", reason=f"{folder.state_file} is missing")
        raise Unloadable(f"its state file cannot be read: {found.state_error}")
    record = plan_record(audit, folder.state_file, found.state, log)
    await check_passed(config, record, folder, log, found.passes)
    if found.plan is None:
        raise Unloadable(f"its plan file cannot be loaded: {found.plan_error}", record)
    return PlanEntry(found.plan, record, folder, log)


def read_plans(config: Config, store: Store) -> tuple[list[Found], list[UsageRecord]]:
    """Every plan folder of plans/ the daemon is to run (one an `orchestrd run` holds is
    left to it; one whose run was killed is adopted: its lock file removed), read in one
    go; and what every plan spent, those in plans/ (held ones too) and archive/."""
    found, usage = [], []
    for folder in store.plan_folders():
        held = lock_held(folder.run_lock)
        if held:  # a live `orchestrd run` owns it, not the daemon; its spending counts
            with contextlib.suppress(StateError):
                usage += records(load_state(folder.state_file))
            continue
        if held is False:  # its `orchestrd run` was killed: the daemon adopts the plan
            folder.run_lock.unlink(missing_ok=True)
        one = read_folder(config, folder)
        if one.state is not None:
            usage += records(one.state)
        found.append(one)
    archive = store.archive_dir
    if archive.is_dir():
        for path in sorted(archive.iterdir()):
            state_file = PlanFolder(path).state_file
            if path.name.startswith(".") or not state_file.exists():
                continue
            with contextlib.suppress(StateError):
                usage += records(load_state(state_file))
    return found, usage


async def set_aside(store: Store, folder: PlanFolder, exc: Unloadable) -> None:
    """A plan whose plan file can no longer be loaded (a repo gone, a path now leading out
    of it, a config that changed) can neither run nor be archived with its evidence: it
    fails if it had not ended, and its folder moves to archive/ as it is."""
    record = exc.record
    if record is None:
        return  # its state file was set aside and reported; the folder stays for a person
    log = record.log
    try:
        await fail_unfinished(record, f"plan no longer valid: {exc}")
        dest = await anyio.to_thread.run_sync(store.archive, folder)
    except (OSError, InvalidTransition) as err:
        log.info(
            "plan.set_aside",
            reason=str(exc),
            status=str(record.state.status),
            moved_to=None,
            error=str(err),
        )
        return
    log.info("plan.set_aside", reason=str(exc), status=str(record.state.status), moved_to=str(dest))


async def check_passed(
    config: Config,
    record: PlanRecord,
    folder: PlanFolder,
    log: Logger,
    proven: set[str] | None = None,
) -> None:
    """A phase counts as passed only if the daemon recorded it: a line in the plan's
    `phases-passed.txt`, or its `phase.passed` in the audit log (plans from before the ledger
    had it; the audit log may have been rotated since). A state file claiming more — a
    worker of the daemon's own user could rewrite it — is reported, those phases rerun."""
    state = record.state
    claimed = [p for p, ps in state.phases.items() if ps.status is PhaseStatus.PASSED]
    if not claimed:
        return
    if proven is None:
        proven = await anyio.to_thread.run_sync(recorded_passes, folder.passes)
    if not proven.issuperset(claimed):
        proven |= await anyio.to_thread.run_sync(passed_in_audit, config.audit_path, state.plan)
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


async def stop_orphans(config: Config, launcher: Launcher, entry: PlanEntry, log: Logger) -> None:
    """Stop whatever is left of the plan's workers from an earlier daemon run."""
    await stop_recorded(config, launcher, entry)
    await stop_strays(config, launcher, [entry], log)


async def stop_recorded(config: Config, launcher: Launcher, entry: PlanEntry) -> None:
    """Stop what the workers the plan's state file says were running left (exactly: their
    cgroup, or their process if it is still the same one), and record them as stopped."""
    grace = config.policy_for(entry.plan.policy).stop_grace
    changed = []
    for phase_id, ps in entry.record.state.phases.items():
        for att in ps.attempts:
            live = (AttemptStatus.STARTING, AttemptStatus.RUNNING, AttemptStatus.STALLED)
            if att.status not in live or att.pid is None:
                continue
            (reaped,) = await launcher.reap([recorded_handle(att)], grace)
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


async def stop_strays(
    config: Config, launcher: Launcher, entries: list[PlanEntry], log: Logger
) -> None:
    """Stop what the state files cannot know: a worker started just before a crash (its
    handle not saved yet), or a descendant that left its worker (setsid). The launcher
    finds them (local: leftover cgroups, then ORCHESTRD_LOG, which points into the plan's
    workers/ folder); the recorded workers are gone by now."""
    # with no plan left too: a cgroup in the tree is a worker of this daemon's, whatever
    # became of its plan
    grace = max(
        (config.policy_for(e.plan.policy).stop_grace for e in entries),
        default=config.policy.stop_grace,
    )
    folders = [e.folder.workers for e in entries]
    for reaped in await launcher.sweep(folders, grace):
        worker_log = str(reaped.handle.fields.get("log") or "")
        cgroup = Path(str(reaped.handle.fields.get("cgroup") or "")).name
        entry = next(
            (
                e
                for e in entries
                if worker_log.startswith(f"{e.folder.workers}{os.sep}")
                or cgroup.startswith(f"{e.plan.id}:")
            ),
            None,
        )
        found = {k: v for k, v in reaped.handle.fields.items() if k in ("pid", "log")}
        (entry.log if entry is not None else log).info(
            "worker.orphan_stopped", **found, **reaped_fields(reaped)
        )


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
