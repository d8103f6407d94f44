"""Notifications, delivered at least once. The notifier follows the audit log (as `tail -f`
does), writes each event a `[[notify]]` target wants into an outbox under state_dir, and only
then sends it (a command, or an HTTP POST with httpx), retried with backoff until `retry_for`.
The outbox and the place in the log survive a daemon restart; a slow or dead endpoint only
delays its own deliveries, never a plan.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import pydantic

from . import status
from .audit import AuditLog, Logger, Redactor, Watcher
from .config import Config, NotifyTarget
from .spool import Spool
from .state import atomic_write
from .store import PlanFolder
from .tail import LineFollower

if TYPE_CHECKING:
    import httpx  # imported at the first webhook delivery

STEP = 0.2
"""A burst of events is read (and the outbox listed) at most this often."""
OTHERS = 1.0
"""Lines other processes write (`orchestrd run`) are read at least this often; the daemon's
own events a target wants wake the notifier when they are written."""
MAX_BACKOFF = 300.0
REPORT_WAIT = 30.0
"""A plan's end is sent with its report.md, written just after: wait this long for it."""
ARCHIVED_REPORT_WAIT = 5.0
CURSOR_EVERY = 2.0
PLAN_ENDS = frozenset({"plan.succeeded", "plan.failed", "plan.cancelled", "plan.merge_failed"})
_EVENT = re.compile(rb'"event": "([^"]*)"')
_ENV_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


class DeliveryError(Exception):
    """One failed delivery: what to put in notify.failed."""

    def __init__(self, reason: str, **fields: Any) -> None:
        super().__init__(reason)
        self.fields = fields


def wanted(target: NotifyTarget, event: str) -> bool:
    if event.startswith("notify."):
        return False  # a failed notification must never notify about itself in a loop
    return any(fnmatch.fnmatchcase(event, pattern) for pattern in target.on)


def describe(target: NotifyTarget) -> str:
    """A target as it may appear in the audit log: a webhook's path is often its secret."""
    if target.url is not None:
        url = urlsplit(target.url)
        return f"{url.scheme}://{url.hostname or ''}"
    assert target.command is not None
    return target.command[0]


def summary(event: dict[str, Any]) -> str:
    """One line for a person (Slack text, ntfy body)."""
    where = " ".join(f"{k} {event[k]}" for k in ("plan", "phase") if event.get(k))
    text = f"orchestrd {event.get('event')}" + (f": {where}" if where else "")
    if event.get("reason"):
        text += f" — {event['reason']}"
    return text


class Entry(pydantic.BaseModel):
    """One pending delivery: the target as configured when the event was read (a reload does
    not redirect what is already queued) and the event as the audit log has it."""

    id: str
    target: NotifyTarget
    event: dict[str, Any]
    created: float
    attempts: int = 0
    next_try: float

    def dump(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Outbox:
    """`state_dir/notify/`: outbox/ (one JSON file per pending delivery), failed/ (given up),
    cursor.json (how far in the audit log the notifier got)."""

    def __init__(self, state_dir: Path) -> None:
        root = state_dir / "notify"
        self.dir = root / "outbox"
        self.failed = root / "failed"
        self.cursor = root / "cursor.json"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.failed.mkdir(exist_ok=True, mode=0o750)

    def put(self, entries: list[Entry]) -> None:
        for entry in entries:
            atomic_write(self.dir / f"{entry.id}.json", entry.dump())

    def pending(self) -> tuple[list[tuple[Path, Entry]], list[str]]:
        """The entries waiting, and the names of files that were no entry (moved to failed/)."""
        out, bad = [], []
        for path in sorted(self.dir.glob("*.json")):
            try:
                entry = Entry.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                continue  # delivered meanwhile
            except pydantic.ValidationError:
                os.replace(path, self.failed / path.name)
                bad.append(path.name)
                continue
            out.append((path, entry))
        return out, bad

    def load_cursor(self) -> tuple[int, int] | None:
        try:
            data = json.loads(self.cursor.read_text(encoding="utf-8"))
            return int(data["ino"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_cursor(self, ino: int, offset: int) -> None:
        atomic_write(self.cursor, json.dumps({"ino": ino, "offset": offset}).encode())


def resume(path: Path, cursor: tuple[int, int] | None) -> tuple[list[bytes], LineFollower]:
    """Where to go on reading the audit log: at the cursor (in the current file, or in the
    rotated file that has its inode, then the current one from its start); at the end on the
    very first start. Lines read twice are sent twice: at least once, never lost."""
    if cursor is None:
        follower = LineFollower(path, None if path.exists() else 0)
        follower.read()  # fixes the place now: what is logged from here on is seen
        return [], follower
    ino, offset = cursor
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == ino:
            return [], LineFollower(path, offset)
    backlog: list[bytes] = []
    for old in sorted(path.parent.glob(path.name + ".*")):
        if old.stat().st_ino == ino:
            with open(old, "rb") as f:
                f.seek(offset)
                backlog = f.read().splitlines()
            break
    return backlog, LineFollower(path, 0)


class Notifier:
    def __init__(
        self, config: Callable[[], Config], log: Logger, audit: AuditLog | None = None
    ) -> None:
        self.config = config
        self.log = log
        self.audit = audit
        """This process's audit log: its events wake the follower (None: read every STEP)."""
        self._wants: dict[str, bool] = {}
        self._wants_of: object = None
        """`_wants` caches `wanted` per event name for these targets (a reload resets it)."""
        self._due_changed: anyio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self.outbox = Outbox(config().state_dir)
        self._inflight: set[Path] = set()
        self._next_due = 0.0
        self._trouble: str | None = None
        """The outbox's last write error, reported once."""
        """When the outbox next holds something due (wall time): it is only listed then."""
        self._seq = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the audit log into the outbox, and deliver the outbox, until cancelled."""
        await anyio.to_thread.run_sync(self.outbox.ensure)
        path = self.config().audit_path
        cursor = await anyio.to_thread.run_sync(self.outbox.load_cursor)
        if not self.config().notify:
            # nothing wanted, and no cursor kept: a later start with targets begins at the
            # end, not at a stale place that would send old events again
            cursor = None
            await anyio.to_thread.run_sync(
                functools.partial(self.outbox.cursor.unlink, missing_ok=True)
            )
        backlog, follower = await anyio.to_thread.run_sync(resume, path, cursor)
        watcher = Watcher(self._wanted_by_any)
        if self.audit is not None:
            self.audit.watchers.append(watcher)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._deliver_loop, tg)
                await self._take(backlog)
                await self._follow(follower, watcher)
        finally:
            if self.audit is not None:
                with contextlib.suppress(ValueError):
                    self.audit.watchers.remove(watcher)
            follower.close()
            if self._client is not None:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made at the first webhook delivery (a daemon without webhook
        targets never builds its transport: ≈ 0.1 s of imports at start-up)."""
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=None)
        return self._client

    def _wanted_by_any(self, event: str) -> bool:
        """Whether a configured target wants `event` (called for every event logged)."""
        targets = self.config().notify
        if targets is not self._wants_of:
            self._wants, self._wants_of = {}, targets
        got = self._wants.get(event)
        if got is None:
            got = self._wants[event] = any(wanted(t, event) for t in targets)
        return got

    async def _follow(self, follower: LineFollower, watcher: Watcher) -> None:
        """Lines → outbox; the cursor is saved only once what was read is in the outbox.

        Read when this process logs an event a target wants, and every OTHERS seconds (other
        writers, the cursor); at most every STEP."""
        saved_at = 0.0
        saved: tuple[int, int] | None = None
        unsaved: list[Entry] = []
        while True:
            watcher.event.clear()
            unsaved += self._entries(await anyio.to_thread.run_sync(follower.read))
            place, now = follower.position(), time.monotonic()
            try:
                if unsaved:
                    await anyio.to_thread.run_sync(self.outbox.put, unsaved)
                    took, unsaved = True, []
                    self._due_at(0.0)
                else:
                    took = False
                # no targets, no cursor writes: a busy daemon without notifications pays nothing
                if (
                    place is not None
                    and place != saved
                    and self.config().notify
                    and (took or now - saved_at > CURSOR_EVERY)
                ):
                    await anyio.to_thread.run_sync(self.outbox.save_cursor, *place)
                    saved, saved_at = place, now
                self._trouble = None
                wait = OTHERS if self.audit is not None else STEP
            except OSError as exc:  # a full disk: keep the entries, try again next step
                self._outbox_error(exc)
                wait = STEP
            with anyio.move_on_after(wait):
                await watcher.event.wait()
            if watcher.event.is_set():
                # read STEP after the first event of a burst: once for all of it, and not while
                # the daemon is busy with what it just logged (a worker's exit, its next start)
                await anyio.sleep(STEP)

    def _outbox_error(self, exc: OSError) -> None:
        reason = f"outbox {exc.filename or self.outbox.dir}: {exc.strerror or exc}"
        if reason != self._trouble:  # once per reason, not every step
            self.log.info("notify.failed", reason=reason)
        self._trouble = reason

    async def _take(self, lines: list[bytes]) -> None:
        """The backlog read at start-up into the outbox (a failure here stops the notifier's
        start, and the daemon's: nothing is lost)."""
        if entries := self._entries(lines):
            await anyio.to_thread.run_sync(self.outbox.put, entries)

    def _entries(self, lines: list[bytes]) -> list[Entry]:
        """An outbox entry per (line, target) that wants it."""
        targets = self.config().notify
        entries: list[Entry] = []
        if not targets:
            return entries
        for line in lines:
            m = _EVENT.search(line)
            if not targets or m is None:
                continue
            name = m.group(1).decode(errors="replace")
            chosen = [t for t in targets if wanted(t, name)]
            if not chosen:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: not an event
            for target in chosen:
                self._seq += 1
                now = time.time()
                entries.append(
                    Entry(
                        id=f"{time.time_ns()}-{os.getpid()}-{self._seq}",
                        target=target,
                        event=event,
                        created=now,
                        next_try=now,
                    )
                )
        return entries

    def _due_at(self, when: float) -> None:
        if when < self._next_due:
            self._next_due = when
            if self._due_changed is not None:
                self._due_changed.set()

    async def _deliver_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """List the outbox when an entry is due (at most every STEP), and sleep until then."""
        while True:
            began = now = time.time()
            if now >= self._next_due:
                self._next_due = now + MAX_BACKOFF  # an idle outbox is listed now and then
                try:
                    entries, bad = await anyio.to_thread.run_sync(self.outbox.pending)
                except OSError as exc:
                    self._outbox_error(exc)
                    entries, bad = [], []
                for name in bad:
                    self.log.info(
                        "notify.failed",
                        reason=f"{self.outbox.dir / name}: not an "
                        "outbox entry (hand-edited, or from another version); moved "
                        "to failed/",
                        gave_up=True,
                    )
                for path, entry in entries:
                    if entry.next_try > now:
                        self._due_at(entry.next_try)
                    elif path not in self._inflight:
                        self._inflight.add(path)
                        tg.start_soon(self._deliver, path, entry)
            self._due_changed = anyio.Event()
            with anyio.move_on_after(self._next_due - time.time()):
                await self._due_changed.wait()
            await anyio.sleep(max(0.0, began + STEP - time.time()))

    def _report_file(self, event: dict[str, Any]) -> tuple[Path | None, bool]:
        """The plan's report.md if it is there; and whether the plan is archived already."""
        plan = event.get("plan")
        if not isinstance(plan, str):
            return None, False
        spool = Spool(self.config().state_dir)
        state = status.state_path(spool, plan)
        if state is None:
            return None, False
        report = PlanFolder(state.parent).report
        return (report if report.exists() else None), state.parent.parent == spool.archive_dir

    async def _deliver(self, path: Path, entry: Entry) -> None:
        try:
            event, target = entry.event, entry.target
            report, archived = await anyio.to_thread.run_sync(self._report_file, event)
            age = time.time() - entry.created
            # the daemon writes report.md just after moving the folder to archive/; archived
            # long ago without one, the daemon died in between: send without it
            if (
                report is None
                and event.get("event") in PLAN_ENDS
                and age < (ARCHIVED_REPORT_WAIT if archived else REPORT_WAIT)
            ):
                self._due_at(time.time() + STEP)
                return  # its report.md is being written: the next round sends both
            try:
                with anyio.fail_after(target.timeout):
                    await self._send(target, event, report)
            except Exception as exc:  # noqa: BLE001 - whatever a delivery meets, it is
                # retried and reported (notify.failed); a notification never stops the daemon
                await self._failed(path, entry, target, exc)
                return
            await anyio.to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))
            self.log.info(
                "notify.sent",
                for_event=event.get("event"),
                plan=event.get("plan"),
                target=describe(target),
                attempts=entry.attempts + 1,
            )
        except OSError as exc:  # the outbox entry could not be updated: tried again later
            self._outbox_error(exc)
            self._due_at(time.time() + STEP)
        finally:
            self._inflight.discard(path)

    async def _failed(self, path: Path, entry: Entry, target: NotifyTarget, exc: Exception) -> None:
        entry.attempts += 1
        fields = exc.fields if isinstance(exc, DeliveryError) else {}
        reason = (
            f"timed out after {target.timeout}s"
            if isinstance(exc, TimeoutError)
            else (str(exc) or type(exc).__name__)
        )
        now = time.time()
        delay = min(target.backoff * 2 ** (entry.attempts - 1), MAX_BACKOFF)
        gave_up = now + delay - entry.created > target.retry_for
        event = entry.event
        self.log.info(
            "notify.failed",
            for_event=event.get("event"),
            plan=event.get("plan"),
            target=describe(target),
            attempts=entry.attempts,
            reason=reason,
            **fields,
            **({"gave_up": True} if gave_up else {"retry_in": round(delay, 3)}),
        )
        if gave_up:
            await anyio.to_thread.run_sync(os.replace, path, self.outbox.failed / path.name)
        else:
            entry.next_try = now + delay
            await anyio.to_thread.run_sync(atomic_write, path, entry.dump())
            self._due_at(entry.next_try)

    async def _send(
        self,
        target: NotifyTarget,
        event: dict[str, Any],
        report: Path | None,
    ) -> None:
        redactor = Redactor.from_config(self.config())
        event = redactor.deep(event)
        if target.command is not None:
            await _run_command(target.command, event, report)
            return
        assert target.url is not None
        headers = {k: _expand(k, v) for k, v in target.headers.items()}
        text = redactor(summary(event) + (f"\nreport: {report}" if report else ""))
        if target.format == "json":
            body, kind = json.dumps(event).encode(), "application/json"
        elif target.format == "slack":
            body, kind = json.dumps({"text": text}).encode(), "application/json"
        else:
            body, kind = text.encode(), "text/plain; charset=utf-8"
            headers.setdefault("Title", f"orchestrd {event.get('event')}")
            bad = "failed" in str(event.get("event")) or "stalled" in str(event.get("event"))
            headers.setdefault("Priority", "high" if bad else "default")
        response = await self._http().post(
            target.url, content=body, headers={"Content-Type": kind, **headers}
        )
        if response.status_code >= 300:
            raise DeliveryError(f"HTTP {response.status_code}", status=response.status_code)


def _expand(header: str, value: str) -> str:
    """`Bearer ${NTFY_TOKEN}`: the token stays in the daemon's environment, not the config."""

    def lookup(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise DeliveryError(
                f"header {header} names ${name}, which the daemon's environment "
                "lacks (set it in the unit's EnvironmentFile)"
            )
        return os.environ[name]

    return _ENV_REF.sub(lookup, value)


async def _run_command(argv: list[str], event: dict[str, Any], report: Path | None) -> None:
    """The command with the event on stdin and a minimal environment (no daemon secrets).
    A command that never reads its stdin (`true`, a curl with its own body) is fine."""
    env = {
        "PATH": _MINIMAL_PATH,
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/"),
        "ORCHESTRD_EVENT": str(event.get("event")),
        "ORCHESTRD_REPORT_FILE": str(report) if report else "",
    }
    stderr = bytearray()
    async with await anyio.open_process(argv, env=env, stdout=subprocess.DEVNULL) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        errors = proc.stderr

        async def feed(stdin: anyio.abc.ByteSendStream) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stdin.send((json.dumps(event) + "\n").encode())
            await stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed, proc.stdin)
            async for chunk in errors:
                stderr += chunk[: max(0, 4096 - len(stderr))]
        returncode = await proc.wait()
    if returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-200:]
        raise DeliveryError(
            f"exited {returncode}" + (f": {tail}" if tail else ""), returncode=returncode
        )


async def run_notifier(
    config: Callable[[], Config],
    log: Logger,
    audit: AuditLog | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's notifier task (started before recovery, so no event of this run is missed)."""
    await Notifier(config, log, audit).run(task_status=task_status)
