"""What the status page shows, read off the event loop and cached: plan summaries keyed by their
state files' mtime and size, the audit log followed from where it was last read, log tails.

Everything here runs in worker threads (`anyio.to_thread`); the web app only awaits it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import threading
import tomllib
from pathlib import Path
from typing import Any

from ..errors import StateError
from ..spool import Spool
from ..state import PlanState, load_state
from ..states import PlanStatus
from ..status import summary
from ..store import ARCHIVE, PLAN_FILE, PLANS, STATE_FILE, PlanFolder

TAIL_BYTES = 64 * 1024
"""A log tail: at most this much from the end, then followed."""
AUDIT_START_BYTES = 16 * 1024 * 1024
"""At start-up only the audit log's last this many bytes are read (a long-lived log is big)."""
AUDIT_READ_BYTES = 4 * 1024 * 1024
"""Bytes read from the audit log per poll, so one poll never holds a thread for long."""
EVENTS_KEPT = 20_000
PLAN_EVENTS_KEPT = 500


@dataclasses.dataclass
class _Cached:
    key: tuple[int, int, int]
    row: dict[str, Any]
    state: PlanState | None


class PlanIndex:
    """Summaries of every plan in plans/ and archive/, rebuilt only for state files that
    changed since the last scan. Thread-safe; scans run one at a time."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._cache: dict[str, _Cached] = {}
        """By folder path (str: pathlib's overhead was half a 1,000-plan scan)."""
        self._lock = threading.Lock()

    def rows(self) -> list[dict[str, Any]]:
        """One row per plan, newest first (the same fields as `status --json`, plus repo,
        phase position and, when the state has them, usage)."""
        with self._lock:
            seen: set[str] = set()
            rows = []
            for base, where in ((self.spool.plans, PLANS), (self.spool.archive_dir, ARCHIVE)):
                try:
                    entries = list(os.scandir(base))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue  # a plan still being accepted is not one yet
                    seen.add(entry.path)
                    row = self._row(entry.path, where)
                    if row is not None:
                        rows.append(row)
            for gone in self._cache.keys() - seen:
                del self._cache[gone]
        rows.sort(key=lambda r: str(r.get("submitted_at", "")), reverse=True)
        return rows

    def state(self, plan_id: str) -> tuple[Path, PlanState, dict[str, Any]] | None:
        """The folder, (cached) state and row of one plan, in plans/ or archive/."""
        if not plan_id or plan_id.startswith(".") or "/" in plan_id:
            return None
        for base in (self.spool.plans, self.spool.archive_dir):
            folder = base / plan_id
            with self._lock:
                row = self._row(str(folder), PLANS if base == self.spool.plans else ARCHIVE)
                cached = self._cache.get(str(folder))
            if row is not None and cached is not None and cached.state is not None:
                return folder, cached.state, row
        return None

    def _row(self, folder: str, where: str) -> dict[str, Any] | None:
        try:
            st = os.stat(os.path.join(folder, STATE_FILE))
        except FileNotFoundError:
            if PlanFolder(Path(folder)).set_aside_before():
                return {
                    "plan": os.path.basename(folder),
                    "state": "corrupt",
                    "where": where,
                    "reason": "its state file was unreadable and set aside",
                }
            return None
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(folder)
        if cached is None or cached.key != key:
            cached = self._load(Path(folder), where, key)
            self._cache[folder] = cached
        row = dict(cached.row)
        if row["state"] == "running" and not self.spool.holder_alive(Path(folder)):
            row.update(state="interrupted", pid=None, reason="no process holds the plan")
        if cached.state is not None and cached.state.status is PlanStatus.RUNNING:
            row["elapsed"] = summary(cached.state, where)["elapsed"]  # it grows
        return row

    def _load(self, folder: Path, where: str, key: tuple[int, int, int]) -> _Cached:
        try:
            state = load_state(folder / STATE_FILE)
        except StateError as exc:
            corrupt = {"plan": folder.name, "state": "corrupt", "reason": str(exc), "where": where}
            return _Cached(key, corrupt, None)
        row = summary(state, where)
        plan = plan_file(folder)
        row["repo"] = plan.get("repo")
        phase_ids = list(state.phases)
        row["phases_total"] = len(phase_ids)
        row["phase_index"] = phase_ids.index(row["phase"]) + 1 if row["phase"] in phase_ids else 0
        current = state.phases.get(row["phase"] or "")
        row["role"] = current.attempts[-1].role if current and current.attempts else None
        usage = getattr(state, "usage", None)  # the usage ledger, where the state has one
        if usage is not None:
            row["usage"] = usage.model_dump(mode="json") if hasattr(usage, "model_dump") else usage
        return _Cached(key, row, state)


def plan_file(folder: Path) -> dict[str, Any]:
    """The accepted plan file as data (only what the page shows is used: repo, phase kinds and
    prompts); an unreadable one shows as nothing."""
    try:
        with open(folder / PLAN_FILE, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class AuditIndex:
    """The audit log followed by offset: the recent events of the whole daemon, and per plan.
    A rotated or truncated log is read again from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0
        self.events: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=EVENTS_KEPT
        )
        self.by_plan: dict[str, collections.deque[dict[str, Any]]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        """The last daemon-wide event of each name (daemon.reloaded, ...)."""
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()

    def poll(self) -> bool:
        """Read what was appended since the last poll; True if there were new events."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_ino != self._inode or st.st_size < self._offset:
                        first = self._inode is None
                        self._inode, self._partial = st.st_ino, b""
                        self._offset = max(0, st.st_size - AUDIT_START_BYTES) if first else 0
                    if st.st_size == self._offset:
                        return False
                    f.seek(self._offset)
                    data = f.read(AUDIT_READ_BYTES)
            except FileNotFoundError:
                return False
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            before = self.seq
            for line in lines:
                self._add(line)
            return self.seq != before

    def _add(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # the first, cut line of a log read from the middle
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            return
        self.seq += 1
        self.events.append((self.seq, event))
        plan = event.get("plan")
        if isinstance(plan, str):
            kept = self.by_plan.get(plan)
            if kept is None:
                kept = self.by_plan[plan] = collections.deque(maxlen=PLAN_EVENTS_KEPT)
            kept.append(event)
        else:
            self.last[event["event"]] = event

    def since(self, seq: int, plan: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Events after `seq` (of `plan`, if given) and the newest seq."""
        with self._lock:
            newest = self.seq
            if seq >= newest:
                return newest, []
            out = []
            # from the newest back: a wake-up costs the new events, not the 20,000 kept
            for s, e in reversed(self.events):
                if s <= seq:
                    break
                if plan is None or e.get("plan") == plan:
                    out.append(e)
        out.reverse()
        return newest, out

    def plan_events(self, plan: str) -> tuple[int, list[dict[str, Any]]]:
        """The plan's kept events and the seq they run up to, taken together: a live update
        from that seq neither repeats nor misses one."""
        with self._lock:
            return self.seq, list(self.by_plan.get(plan, ()))

    def daemon_events(self) -> dict[str, dict[str, Any]]:
        """The last daemon-wide event of each name."""
        with self._lock:
            return dict(self.last)

    def last_events(self) -> dict[str, dict[str, Any]]:
        """Each plan's last event."""
        with self._lock:
            return {p: ev[-1] for p, ev in self.by_plan.items() if ev}


def read_tail(path: Path, limit: int = TAIL_BYTES) -> tuple[int, bytes]:
    """The last `limit` bytes of `path` (from a line start where one is near) and the offset
    after them; (0, b"") for a missing file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - limit)
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return 0, b""
    end = start + len(data)
    if start > 0 and (nl := data.find(b"\n")) != -1:
        data = data[nl + 1 :]  # a cut first line is only noise
    return end, data


def read_from(path: Path, offset: int, limit: int = TAIL_BYTES) -> tuple[int, bytes]:
    """Bytes appended to `path` after `offset` (at most `limit`) and the new offset; a file
    that shrank (truncated, replaced) is read again from its start."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
            if size == offset:
                return offset, b""
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return offset, b""
    return offset + len(data), data
