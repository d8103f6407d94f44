"""Durable plan state: the state model, its files (a snapshot plus a journal of changes), loading,
and the one choke point through which plan and phase states change.

`state.toml` is a whole state (TOML, written atomically: tmp → fsync → rename → fsync dir).
`state.journal` beside it holds the changes saved since, one line per save: a TOML inline table
keyed by the save's revision, with the plan's fields and the phases that changed, appended with
one write(2) and fsync'd. So a save costs what changed, not the plan's length. Loading reads the
snapshot and replays the journal's lines after its revision; a last line cut off by a crash is
ignored. When the journal outgrows the snapshot (and when the plan ends) a new snapshot replaces
both: each phase's TOML as last saved, joined and written in a thread (nothing is parsed again).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pydantic
import tomli_w
from pydantic import BaseModel, Field

from .audit import Logger
from .errors import StateError
from .fsutil import fsync_dir, write_all
from .plan import Plan
from .states import (
    ATTEMPT_TRANSITIONS,
    PHASE_EVENTS,
    PHASE_TRANSITIONS,
    PLAN_EVENTS,
    PLAN_TERMINAL,
    PLAN_TRANSITIONS,
    AttemptStatus,
    PhaseStatus,
    PlanStatus,
    check_transition,
)
from .usage import UsageRecord

JOURNAL_SUFFIX = ".journal"
SNAPSHOT_HEADER = "# orchestrd plan state; the changes saved since are in state.journal\n"
SNAPSHOT_END = "# end of the plan state\n"
COMPACT_MIN_BYTES = 64 * 1024
"""The journal is folded into the snapshot once it is larger than the snapshot and than this
(a small plan's journal stays until the plan ends)."""


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="microseconds")


class AttemptState(BaseModel):
    n: int
    role: str
    status: AttemptStatus = AttemptStatus.STARTING
    pid: int | None = None
    handle: dict[str, str | int | None] | None = None
    """The launcher's handle (`kind` + its fields): what recovery reaps after a crash."""
    pgid: int | None = None
    start_time: int | None = None
    boot_id: str | None = None
    """pgid, start_time, boot_id: a local worker's identity as state files before handles
    kept it (read by recovery only)."""
    log: str
    started_at: str = Field(default_factory=now_iso)
    ended_at: str | None = None
    returncode: int | None = None
    failure: str | None = None
    usage: UsageRecord | None = None
    """What it spent, from its stream (profiles with an `output` format): the usage ledger."""


class PhaseState(BaseModel):
    status: PhaseStatus = PhaseStatus.PENDING
    failures: int = 0
    reason: str | None = None
    attempts: list[AttemptState] = Field(default_factory=list)


class WorktreeState(BaseModel):
    """A worktree plan's git facts, fixed at acceptance (`isolation = "worktree"`)."""

    path: str
    """Its worktree, where its workers, verify commands and snapshots run."""
    branch: str
    """`orchestrd/<plan-id>`, created at `base`."""
    base: str
    """The commit the plan starts from."""
    base_branch: str | None = None
    """The branch `base` was resolved from (None: a commit or a detached HEAD)."""
    target: str | None = None
    """The branch a `merge = "rebase"` plan is merged into."""
    merge: dict[str, Any] | None = None
    """Its merge's state (merge.MergeState): saved before every step of it."""


class PlanState(BaseModel):
    plan: str
    status: PlanStatus = PlanStatus.QUEUED
    seq: int = 0
    revision: int = 0
    """How many times the state was saved: journal lines up to this one are in the snapshot."""
    reason: str | None = None
    submitted_at: str = Field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    phases: dict[str, PhaseState] = Field(default_factory=dict)
    worktree: WorktreeState | None = None
    wall_seconds: float = 0.0
    """Time spent running in earlier runs (before a pause or a restart): `plan_max_wall`."""
    budget_raises: dict[str, float] = Field(default_factory=dict)
    """Limits the operator raised for this plan (`orchestrd resume --budget NAME=VALUE`)."""
    budget_warned: list[str] = Field(default_factory=list)
    """Plan budgets already warned about at 80 % (one `budget.warning` each, restarts too)."""

    @classmethod
    def first(cls, plan: Plan, seq: int = 0) -> PlanState:
        """A new plan's first state: queued, every phase pending."""
        state = cls(plan=plan.id, seq=seq)
        state.add_phases(plan)
        return state

    def add_phases(self, plan: Plan) -> None:
        """A pending state for each of the plan's phases that has none yet, in its order: the
        one place a plan's phase list becomes phase states."""
        for phase in plan.phases:
            self.phases.setdefault(phase.id, PhaseState())

    def current_phase(self) -> tuple[str, PhaseState] | None:
        """The first phase that has not passed."""
        for pid, ps in self.phases.items():
            if ps.status is not PhaseStatus.PASSED:
                return pid, ps
        return None


def journal_of(state_file: Path) -> Path:
    """The journal that continues `state_file` (`state.toml` → `state.journal`)."""
    return state_file.with_suffix(JOURNAL_SUFFIX)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        write_all(fd, data)  # never rename a short file in
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _same(text: str) -> str:
    return text


def _phase_data(ps: PhaseState, redact: Callable[[str], str]) -> dict[str, Any]:
    """A phase as plain data, its free text (reason, failures quote worker output) redacted."""
    data: dict[str, Any] = ps.model_dump(mode="json", exclude_none=True)
    if "reason" in data:
        data["reason"] = redact(data["reason"])
    for att in data["attempts"]:
        if "failure" in att:
            att["failure"] = redact(att["failure"])
    return data


def _head_data(state: PlanState, redact: Callable[[str], str]) -> dict[str, Any]:
    head: dict[str, Any] = state.model_dump(mode="json", exclude_none=True, exclude={"phases"})
    if "reason" in head:
        head["reason"] = redact(head["reason"])
    return head


def _phase_chunk(phase_id: str, data: dict[str, Any]) -> str:
    return tomli_w.dumps({"phases": {phase_id: data}})


def _snapshot(head: dict[str, Any], chunks: list[str]) -> bytes:
    """state.toml's bytes from the plan's fields and its phases' TOML, in order."""
    return "\n".join([SNAPSHOT_HEADER + tomli_w.dumps(head), *chunks, SNAPSHOT_END]).encode()


def dump_state(state: PlanState, redact: Callable[[str], str] = _same) -> bytes:
    """state.toml's bytes. Free-text fields (reasons, failures — they quote worker output) go
    through `redact`; ids, paths and numbers stay as they are, since recovery reads them."""
    chunks = [_phase_chunk(pid, _phase_data(ps, redact)) for pid, ps in state.phases.items()]
    return _snapshot(_head_data(state, redact), chunks)


def _check_whole(snapshot: bytes, path: Path) -> None:
    """A snapshot that a broken disk cut off may still parse (cut between two phases), and
    the journal would hide the loss: one written here ends with its end line. (One written by
    a version before the journal starts with its `plan` key and has no end line.)"""
    if not snapshot.startswith(b"plan = ") and not snapshot.endswith(SNAPSHOT_END.encode()):
        raise StateError(f"{path}: cut off (its last line is not {SNAPSHOT_END.strip()!r})")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(text: str) -> str:
    # JSON's string escapes (\" \\ \n \r \t \b \f \u00XX) are TOML's too; DEL is the one
    # control character JSON leaves as it is and TOML does not allow
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _inline(value: object) -> str:
    """`value` as TOML on one line (inline tables and arrays never break)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML's float syntax, inf and nan included
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_inline(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"no TOML for state value {value!r}")


def journal_line(revision: int, head: dict[str, Any], phases: dict[str, Any]) -> bytes:
    """One save as a journal line: `<revision> = {<the plan's fields>, phases = {<changed>}}`.
    The plan's fields are always all there (they are few); of the phases, the ones saved."""
    change = {k: v for k, v in head.items() if k != "revision"}
    change["phases"] = phases
    return f"{revision} = {_inline(change)}\n".encode()


class _Gap(Exception):
    """A journal line that does not follow the snapshot: read while it was being replaced."""


def _replay(data: dict[str, Any], journal: bytes, where: Path) -> dict[str, Any]:
    """`data` (a snapshot) with the journal's changes after its revision applied."""
    lines = journal.split(b"\n")
    lines.pop()  # after the last newline: nothing, or a line a crash cut off (never saved)
    revision = data.get("revision", 0)
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            [(key, change)] = tomllib.loads(raw.decode("utf-8")).items()
            line_revision = int(key)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
            raise StateError(f"{where}: line {number} is not a saved change ({exc})") from None
        if not isinstance(change, dict):
            raise StateError(f"{where}: line {number} is not a saved change (not a table)")
        if line_revision <= revision:
            continue  # folded into the snapshot already (a crash before the journal went)
        if line_revision != revision + 1:
            raise _Gap(f"{where}: line {number} is revision {key}, after {revision}")
        phases = data["phases"] if isinstance(data.get("phases"), dict) else {}
        phases.update(change.pop("phases", {}))
        data = {**change, "revision": line_revision, "phases": phases}
        revision = line_revision
    return data


def _read_bytes(path: Path) -> tuple[bytes, int]:
    """The file's bytes and inode (which tells a replaced snapshot from the same one)."""
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_ino


def load_state(path: Path) -> PlanState:
    """The state saved in `path` (state.toml) and its journal."""
    journal = journal_of(path)
    for _ in range(5):
        try:
            snapshot, inode = _read_bytes(path)
            _check_whole(snapshot, path)
            try:
                changes, _ = _read_bytes(journal)
            except FileNotFoundError:
                changes = b""
            data = _replay(tomllib.loads(snapshot.decode("utf-8")), changes, journal)
            return PlanState.model_validate(data)
        except _Gap as gap:
            # the snapshot was replaced (and the journal emptied) between the two reads: read
            # both again; a gap under an unchanged snapshot is damage
            try:
                replaced = os.stat(path).st_ino != inode
            except OSError:
                replaced = True
            if not replaced:
                raise StateError(f"{gap}: changes are missing") from None
        except (
            OSError,
            UnicodeDecodeError,
            tomllib.TOMLDecodeError,
            pydantic.ValidationError,
        ) as exc:
            raise StateError(
                f"{path}: unreadable state file ({type(exc).__name__}: {exc})"
            ) from None
    raise StateError(f"{path}: replaced at every read; try again")


def _trim_torn_tail(fd: int, size: int) -> int:
    """Cut a last line that a crash left without its newline, so the next line does not run
    on from it; the journal's new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    return end


def append_change(path: Path, line: bytes) -> bool:
    """Append one saved change to `path`'s journal (one write(2), fsync'd); whether the
    journal has outgrown the snapshot (then it is time to fold it into a new one)."""
    journal = journal_of(path)
    fd = os.open(
        journal, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
    )
    try:
        size = _trim_torn_tail(fd, os.fstat(fd).st_size)
        write_all(fd, line)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if size == 0:
        fsync_dir(path.parent)  # a new journal: its name must survive a crash too
    return size + len(line) > max(COMPACT_MIN_BYTES, os.stat(path).st_size)


def write_whole_state(path: Path, data: bytes, replacing: bool = False) -> None:
    """Write a whole state to `path` and end its journal. A crash before the journal is gone
    leaves lines the snapshot holds already, which loading skips by their revision.
    `replacing`: the files there belong to another state (a plan of the same id run before),
    whose journal goes first."""
    journal = journal_of(path)
    if replacing:
        journal.unlink(missing_ok=True)
    atomic_write(path, data)
    journal.unlink(missing_ok=True)


def _write_snapshot(path: Path, head: dict[str, Any], chunks: list[str]) -> None:
    write_whole_state(path, _snapshot(head, chunks))


def mark_left_stopped(att: AttemptState) -> None:
    """Record as stopped an attempt an earlier run left starting, running or stalled (a crash,
    a restart): not a transition of the table, the state catching up with what happened."""
    att.status = AttemptStatus.STOPPED


class PlanRecord:
    """A plan's state files plus the transitions that change them; every change is saved and
    audited here and nowhere else.

    A save names the phases it changed (`save(phase_id)`): only those and the plan's own
    fields are written, so whoever changes a phase's data (attempts too) saves that phase.
    """

    def __init__(
        self,
        path: Path,
        state: PlanState,
        log: Logger,
        redact: Callable[[str], str] = _same,
        on_disk: bool = False,
    ) -> None:
        self.path = path
        self.state = state
        self.log = log
        self.redact = redact
        """Applied to reasons and failures: `orchestrd status` shows them to whoever can read
        state_dir, without the daemon's environment to redact them itself."""
        self._append = on_disk
        """The files at `path` hold the state as saved last (loaded from them, or written by
        the spool): a save appends to the journal. If not, the next save writes it whole."""
        self._replacing = not on_disk
        """The files at `path`, if any, hold another state (an older plan of the same id)."""
        self._chunks: dict[str, str] = {}
        """Each phase's TOML as saved last: a new snapshot is these joined, not the plan
        serialised again (nor the files parsed again)."""
        self._lock = anyio.Lock()  # lines reach the journal in revision order

    async def save(self, *phase_ids: str, compact: bool = False) -> None:
        """Save the plan's fields and the phases named, off the event loop; `compact` (or a
        journal grown past the snapshot) folds the journal into a new whole state.toml."""
        async with self._lock:
            revision = self.state.revision + 1
            try:
                if self._append:
                    head = _head_data(self.state, self.redact)
                    phases = {
                        pid: _phase_data(self.state.phases[pid], self.redact) for pid in phase_ids
                    }
                    line = journal_line(revision, head, phases)
                    for pid, data in phases.items():
                        self._chunks[pid] = _phase_chunk(pid, data)
                    grown = await anyio.to_thread.run_sync(append_change, self.path, line)
                    self.state.revision = head["revision"] = revision
                    if compact or grown:
                        await self._compact(head)
                else:
                    self.state.revision = revision
                    await anyio.to_thread.run_sync(self._write_whole)
                    self._append, self._replacing = True, False
            except OSError as exc:
                # what reached the files is unknown: the next save writes the whole state,
                # under a revision above any line that may have
                self.state.revision = revision
                self._append = False
                # a write(2) error names no file: say which one could not be saved
                raise OSError(exc.errno, f"cannot save {self.path}: {exc.strerror}") from None

    async def _compact(self, head: dict[str, Any]) -> None:
        """A new snapshot at the revision just appended, from the phases' TOML as saved."""
        order = list(self.state.phases)
        missing = [pid for pid in order if pid not in self._chunks]
        for n, pid in enumerate(missing, 1):
            # phases this record has not saved (as loaded, or pending): built once, on the
            # loop a slice at a time, since a thread doing it would hold the GIL and stall
            # the loop for longer
            self._chunks[pid] = _phase_chunk(pid, _phase_data(self.state.phases[pid], self.redact))
            if n % 100 == 0:
                await anyio.lowlevel.checkpoint()
        chunks = [self._chunks[pid] for pid in order]
        await anyio.to_thread.run_sync(_write_snapshot, self.path, head, chunks)

    def _write_whole(self) -> None:
        # in a thread, while the caller awaits: a new record's first save (nothing else runs
        # the plan yet), or the one after a failed save
        head = _head_data(self.state, self.redact)
        self._chunks = {
            pid: _phase_chunk(pid, _phase_data(ps, self.redact))
            for pid, ps in self.state.phases.items()
        }
        write_whole_state(self.path, _snapshot(head, list(self._chunks.values())), self._replacing)

    @staticmethod
    def write_first(path: Path, state: PlanState) -> None:
        """A new plan's first state (`PlanState.first`), written whole at `path` before anything
        may run it (the spool, in its thread, into the folder it renames into place); its record
        is then loaded `on_disk` and announces it with `queued()`. The folder is new: no
        journal to end."""
        atomic_write(path, dump_state(state))

    def queued(self, **fields: Any) -> None:
        """Audit a new plan's first state (it has no change before it)."""
        self.log.info(PLAN_EVENTS[self.state.status], seq=self.state.seq, **fields)

    def set_attempt(self, att: AttemptState, new: AttemptStatus) -> None:
        """Change an attempt's state (saved with its phase by the caller; its worker's events
        say why, with what only the runner knows)."""
        check_transition(ATTEMPT_TRANSITIONS, att.status, new)
        att.status = new

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
        if new in PLAN_TERMINAL:
            self.state.finished_at = now_iso()
        if new is PlanStatus.QUEUED:
            self.state.finished_at = None
        if save:
            # a finished plan is left as one whole state.toml, for its archive and its reader
            await self.save(compact=new in PLAN_TERMINAL)
        extra = {"reason": reason} if reason else {}
        self.log.info(PLAN_EVENTS[new], previous=str(old), **extra, **fields)

    async def set_phase(
        self,
        phase_id: str,
        new: PhaseStatus,
        reason: str | None = None,
        save: bool = True,
        **fields: Any,
    ) -> None:
        """Change a phase's state; its audit event (if any) is PHASE_EVENTS' for the change.

        `save=False` where a save follows at once anyway, or where recovery would do the same
        whether the change was saved or not (running and checking both restart the phase).
        """
        ps = self.state.phases[phase_id]
        old = ps.status
        check_transition(PHASE_TRANSITIONS, old, new)
        ps.status = new
        if reason is not None or new is PhaseStatus.PASSED:
            ps.reason = reason
        if save:
            await self.save(phase_id)
        if event := PHASE_EVENTS.get((old, new)):
            extra = {"reason": reason} if reason else {}
            self.log.info(event, phase=phase_id, **extra, **fields)

    async def disown_passes(self, phase_ids: list[str]) -> None:
        """Put back to pending phases the state file claims passed without the daemon's record
        of it (and a succeeded plan to interrupted): not transitions, the state file was wrong
        and this puts it back to the truth."""
        for phase_id in phase_ids:
            self.state.phases[phase_id].status = PhaseStatus.PENDING
        if self.state.status is PlanStatus.SUCCEEDED:
            self.state.status = PlanStatus.INTERRUPTED
        await self.save(*phase_ids)


def recorded_passes(path: Path) -> set[str]:
    """The phases in a plan's `phases-passed.txt` (`<ts> <phase>` lines)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return set()
    return {words[1] for line in lines if len(words := line.split()) == 2}
