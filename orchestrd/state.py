"""Durable plan state: the state.toml model, atomic writes (tmp → fsync → rename → fsync dir),
loading, and the one choke point through which plan and phase states change.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pydantic
import tomli_w
from pydantic import BaseModel, Field

from .audit import Logger
from .errors import StateError
from .states import (
    PHASE_TRANSITIONS,
    PLAN_TRANSITIONS,
    AttemptStatus,
    PhaseStatus,
    PlanStatus,
    check_transition,
)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="microseconds")


class AttemptState(BaseModel):
    n: int
    role: str
    status: AttemptStatus = AttemptStatus.STARTING
    pid: int | None = None
    pgid: int | None = None
    start_time: int | None = None
    boot_id: str | None = None
    log: str
    started_at: str = Field(default_factory=now_iso)
    ended_at: str | None = None
    returncode: int | None = None
    failure: str | None = None


class PhaseState(BaseModel):
    status: PhaseStatus = PhaseStatus.PENDING
    failures: int = 0
    reason: str | None = None
    attempts: list[AttemptState] = Field(default_factory=list)


class PlanState(BaseModel):
    plan: str
    status: PlanStatus = PlanStatus.QUEUED
    seq: int = 0
    reason: str | None = None
    submitted_at: str = Field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    phases: dict[str, PhaseState] = Field(default_factory=dict)

    def current_phase(self) -> tuple[str, PhaseState] | None:
        """The first phase that has not passed."""
        for pid, ps in self.phases.items():
            if ps.status is not PhaseStatus.PASSED:
                return pid, ps
        return None


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        view = memoryview(data)
        while view:  # a nearly full disk may take part of it: never rename a short file in
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _same(text: str) -> str:
    return text


def dump_state(
    state: PlanState,
    redact: Callable[[str], str] = _same,
    cache: dict[tuple[str, int], str] | None = None,
) -> bytes:
    """state.toml's bytes. Free-text fields (reasons, failures — they quote worker output) go
    through `redact`; ids, paths and numbers stay as they are, since recovery reads them.

    A passed phase never changes again, so with a `cache` its TOML is built once: a save costs
    the same for the last phase of a long plan as for the first.
    """
    head: dict[str, Any] = state.model_dump(mode="json", exclude_none=True, exclude={"phases"})
    if "reason" in head:
        head["reason"] = redact(head["reason"])
    parts = [tomli_w.dumps(head)]
    for phase_id, ps in state.phases.items():
        key = (phase_id, len(ps.attempts))
        chunk = cache.get(key) if cache is not None else None
        if chunk is None:
            data: dict[str, Any] = ps.model_dump(mode="json", exclude_none=True)
            if "reason" in data:
                data["reason"] = redact(data["reason"])
            for att in data["attempts"]:
                if "failure" in att:
                    att["failure"] = redact(att["failure"])
            chunk = tomli_w.dumps({"phases": {phase_id: data}})
            if cache is not None and ps.status is PhaseStatus.PASSED:
                cache[key] = chunk
        parts.append(chunk)
    return "\n".join(parts).encode()


def load_state(path: Path) -> PlanState:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return PlanState.model_validate(data)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, pydantic.ValidationError) as exc:
        raise StateError(f"{path}: unreadable state file ({type(exc).__name__}: {exc})") from None


_PLAN_EVENTS = {
    PlanStatus.QUEUED: "plan.queued",
    PlanStatus.RUNNING: "plan.started",
    PlanStatus.SUCCEEDED: "plan.succeeded",
    PlanStatus.FAILED: "plan.failed",
    PlanStatus.CANCELLED: "plan.cancelled",
    PlanStatus.INTERRUPTED: "plan.interrupted",
}


class PlanRecord:
    """A plan's state file plus the transitions that change it; every change is saved and
    audited here and nowhere else."""

    def __init__(
        self, path: Path, state: PlanState, log: Logger,
        redact: Callable[[str], str] = _same,
    ) -> None:
        self.path = path
        self.state = state
        self.log = log
        self.redact = redact
        """Applied to reasons and failures: `orchestrd status` shows them to whoever can read
        state_dir, without the daemon's environment to redact them itself."""
        self._passed: dict[tuple[str, int], str] = {}

    async def save(self) -> None:
        data = dump_state(self.state, self.redact, self._passed)
        try:
            await anyio.to_thread.run_sync(atomic_write, self.path, data)
        except OSError as exc:
            # a write(2) error names no file: say which one could not be saved
            raise OSError(exc.errno, f"cannot save {self.path}: {exc.strerror}") from None

    async def set_status(
        self, new: PlanStatus, reason: str | None = None, save: bool = True, **fields: Any
    ) -> None:
        """Change the plan's state and audit it; `save=False` only where a save follows at
        once and recovery treats the old state the same way."""
        old = self.state.status
        check_transition(PLAN_TRANSITIONS, old, new)
        self.state.status = new
        self.state.reason = reason
        if new is PlanStatus.RUNNING and self.state.started_at is None:
            self.state.started_at = now_iso()
        if new in (PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.CANCELLED):
            self.state.finished_at = now_iso()
        if new is PlanStatus.QUEUED:
            self.state.finished_at = None
        if save:
            await self.save()
        extra = {"reason": reason} if reason else {}
        self.log.info(_PLAN_EVENTS[new], previous=str(old), **extra, **fields)

    async def set_phase(
        self, phase_id: str, new: PhaseStatus, event: str | None, reason: str | None = None,
        save: bool = True, **fields: Any,
    ) -> None:
        """Change a phase's state; `event` (if any) is the one audit event for the change.

        `save=False` where a save follows at once anyway, or where recovery would do the same
        whether the change was saved or not (running and checking both restart the phase).
        """
        ps = self.state.phases[phase_id]
        check_transition(PHASE_TRANSITIONS, ps.status, new)
        ps.status = new
        if reason is not None or new is PhaseStatus.PASSED:
            ps.reason = reason
        if save:
            await self.save()
        if event:
            extra = {"reason": reason} if reason else {}
            self.log.info(event, phase=phase_id, **extra, **fields)


class PlanFolder:
    """The files of one plan under `state_dir/plans/<id>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plan_file = root / "plan.toml"
        self.state_file = root / "state.toml"
        self.workers = root / "workers"
        self.ledger = root / "worker-pids.txt"
        self.passes = root / "phases-passed.txt"
        """`<ts> <phase>` per phase that passed: recovery's proof, beside state.toml's word."""

    def create(self) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)

    def append_ledger(self, line: str, path: Path | None = None) -> None:
        """One line, one write(2) on an O_APPEND descriptor: whole even if the daemon dies, and
        no buffered file object per line on the event loop. `path`: another file than the
        PID ledger (`passes`)."""
        fd = os.open(
            path or self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            os.write(fd, f"{now_iso()} {line}\n".encode())
        finally:
            os.close(fd)

    def archive(self, archive_dir: Path) -> Path:
        """Move the whole folder to `archive_dir/<id>[-n]` (never overwriting an older one)."""
        archive_dir.mkdir(parents=True, exist_ok=True)
        dest = archive_dir / self.root.name
        n = 1
        while dest.exists():
            n += 1
            dest = archive_dir / f"{self.root.name}-{n}"
        os.replace(self.root, dest)
        return dest
