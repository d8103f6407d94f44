"""The audit log: structlog wired to a JSON-lines file (one object per event, flushed), and the
event vocabulary.

No global configuration: an AuditLog is built once at start-up and its loggers are passed down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from .errors import ConfigError
from .fsutil import write_all
from .text import MIN_FRAGMENT as MIN_FRAGMENT  # one copy of the terminal rules: text.py
from .text import Redactor as Redactor
from .text import _escape
from .text import printable as printable

# Every event orchestrd emits, with what it means. The README's event table is generated from,
# and tested against, this mapping.
EVENTS: dict[str, str] = {
    "daemon.started": "the daemon is up and serving (after recovery); privilege_separation "
    "says whether workers run as worker_user, privilege_separation_reason why (not); "
    "containment is cgroup or pgroup, containment_reason why, cgroup where attempts' go",
    "daemon.stopping": "SIGTERM/SIGINT received (daemon or `orchestrd run`): stopping workers",
    "daemon.stopped": "the daemon exited cleanly",
    "daemon.recovered": "a plan found running or queued in state_dir at start-up was resumed",
    "daemon.reloaded": "SIGHUP: the new config is in force",
    "daemon.reload_failed": "SIGHUP: the new config is invalid; the old one is kept",
    "daemon.notify_failed": "sd_notify could not reach $NOTIFY_SOCKET",
    "daemon.dangerous_workers": "allow_dangerous_workers is on: the profiles that bypass sandboxes",
    "daemon.limits_unavailable": "a profile's memory_max/pids_max/cpu_weight cannot be set here "
    "(profile, reason: no cgroup, or the controller is not delegated); once at start",
    "daemon.spool_error": (
        "an inbox or control file could not be handled (e.g. disk full); retried, reported "
        "once per reason"
    ),
    "daemon.request_ignored": (
        "a cancel/retry/unblock request that does not apply to the plan's (or profile's) state"
    ),
    "daemon.request_refused": (
        "a cancel/retry request file not acted on: not a regular file, its owner not in "
        "allowed_submitters, or no plan id (reason, requester)"
    ),
    "daemon.watch_failed": "inotify on the inbox failed; the daemon falls back to rescans",
    "daemon.metrics_failed": "[metrics] textfile could not be written (reason); once per reason",
    "http.listening": "the status page and JSON API serve at url ([http]); token: whether one "
    "is required",
    "plan.accepted": "a file in the inbox passed validation and was moved to plans/<id>/",
    "plan.rejected": "a file in the inbox failed validation; see rejected/<name>.error",
    "plan.queued": "the plan waits for a worker slot",
    "plan.waiting_repo": "the plan waits because another plan runs on the same repo",
    "plan.waiting_quota": (
        "the plan's next worker would use a parked (until) or blocked profile: it waits, its "
        "worker slot free"
    ),
    "plan.started": "the plan's runner started",
    "plan.succeeded": "every phase passed",
    "plan.failed": "a phase failed for good (reason)",
    "plan.error": "the plan's runner raised an unexpected error (traceback); the plan fails",
    "plan.cancelled": "stopped on request",
    "plan.interrupted": "the daemon stopped while the plan ran; it resumes on restart",
    "plan.paused": (
        "a budget was spent (reason budget:<name>): nothing is lost; `orchestrd resume` (or, "
        "for the daily budget, the next UTC day) runs its phase again from a fresh worker"
    ),
    "plan.archived": "the finished plan's folder was moved to archive/ (its final status)",
    "plan.state_corrupt": "a state file could not be read; it was set aside",
    "plan.set_aside": (
        "the plan's file can no longer be loaded (reason): failed if it had not ended, and its "
        "folder moved to archive/"
    ),
    "plan.state_mismatch": "state.toml says phases passed that the audit log never saw pass "
    "(phases); they run again",
    "plan.merge_failed": (
        "every phase passed but the branch was not merged (reason; files of a rebase "
        "conflict); the branch is kept"
    ),
    "phase.started": "a phase began (its primary worker follows)",
    "phase.skipped": "a phase already passed before a restart or retry",
    "phase.passed": "all checkpoints passed",
    "phase.failed": (
        "checks failed and no remediation is left, or remediation is stagnant (reason, "
        "stagnant_attempts)"
    ),
    "worker.started": (
        "a worker process was launched (pid, log, command; on a cluster its node and job_id)"
    ),
    "worker.pending": (
        "a worker's cluster job waited in the queue before it ran (job_id, seconds): no stall"
    ),
    "worker.dangerous": "a worker started with a sandbox-bypassing profile (flags)",
    "worker.failed_to_start": "the worker's command could not be executed (reason)",
    "worker.poll": (
        "a poll of a running worker (cycle, elapsed, log growth; tokens so far and stream "
        "events since the last poll when its profile reads a stream)"
    ),
    "worker.usage": (
        "the attempt's running usage from its stream (tokens by kind, cost_usd, cost_source, "
        "model): at most once a poll, and at its end"
    ),
    "usage.unpriced": (
        "tokens were spent by a model with no [prices] entry and no reported cost: its cost "
        "stays unknown (once per model)"
    ),
    "budget.warning": "a budget is at 80 % (budget, spent, limit): once each",
    "budget.exceeded": (
        "a budget is spent (budget, spent, limit): its running worker is stopped (one ending "
        "with this count may finish) and the plan pauses"
    ),
    "worker.stalled": (
        "the worker outlived its last poll, or was silent for silence_timeout (reason: polls "
        "or silent; log_tail)"
    ),
    "worker.no_exit": "the worker's stream gave its final result and it did not exit within "
    "exit_grace: stopped, and judged by its checks",
    "worker.respawned": "processes carrying a stopped attempt's ORCHESTRD_LOG appeared or were "
    "left after the stop: stopped (pids, commands)",
    "worker.rate_limited": "the attempt ended on a rate or usage limit (message, reset): no "
    "remediation is spent, its profile is parked",
    "worker.auth_failed": "the attempt ended on a failed login (message): its profile is blocked",
    "worker.stopped": "the worker's process group and everything in its cgroup were stopped "
    "(signal, why; processes: what it left running after its exit, with command lines)",
    "worker.exited": "the worker process ended (returncode; oom_killed: the kernel's OOM killer "
    "killed a process of it)",
    "worker.changes": "git snapshot around the attempt: HEAD, status, diff stat before/after "
    "(capped; `cut` counts what was left out)",
    "worker.log_truncated": "the worker's output went over max_log_bytes; its head and tail were "
    "kept in the log, the middle dropped",
    "worker.orphan_stopped": "a worker recorded as live by a previous run was stopped (signal; "
    "null: it was already gone; cgroup and processes: what its cgroup held; found: how one no "
    "state recorded was found)",
    "check.passed": "one checkpoint passed (check, reason)",
    "check.failed": "one checkpoint failed (check, reason)",
    "check.warning": "a checkpoint found something worth reading that does not fail the phase",
    "check.output_truncated": "a verify command's output went over max_log_bytes; its head and "
    "tail were kept in its file, the middle dropped (it was judged whole)",
    "remediation.started": "a remediation attempt begins (failure)",
    "worktree.created": (
        "a worktree plan's worktree was made before its first phase (path, branch "
        "orchestrd/<plan-id>, base commit, base_branch)"
    ),
    "worktree.removed": (
        "the plan's worktree was removed (archived plan, or at start-up one whose plan no "
        "longer exists); branch_deleted with delete_branch"
    ),
    "worktree.kept": (
        "a worktree that was to be removed is kept (reason, e.g. changes nobody committed)"
    ),
    "merge.queued": (
        'a succeeded plan (merge = "rebase") entered its repo\'s merge queue (target, branch)'
    ),
    "merge.rebased": "the plan's branch was rebased onto the target's tip (onto, head)",
    "merge.verified": "merge_verify passed on the rebased branch (head)",
    "merge.blocked": (
        "the target is checked out with uncommitted changes, which are never touched "
        "(checkout, reason); retried every merge_recheck or on `orchestrd merge`"
    ),
    "merge.done": "the target was moved by compare-and-swap from old to new (the merged commit)",
    "merge.failed": "a rebase conflict (files) or a red merge_verify (reason); the branch is kept",
    "profile.parked": "a worker profile hit a rate or usage limit: no worker starts on it until "
    "`until` (the reset it printed + margin, or a backoff)",
    "profile.unparked": "a park ended: plans waiting on the profile start a fresh worker",
    "profile.blocked": "a worker profile's login failed (message): no worker starts on it until "
    "`orchestrd unblock` or a config reload",
    "profile.unblocked": "a block was lifted (why: unblock request or config reload)",
    "profile.holds_unreadable": "the saved parks and blocks (holds.toml) could not be read; set "
    "aside, and the daemon starts without them",
    "notify.sent": "a notification was delivered (for_event, target, attempts)",
    "notify.failed": "a notification attempt failed (HTTP status or returncode, reason); "
    "retried after retry_in, or gave_up after retry_for",
}

FIRST_KEYS = ("ts", "event", "plan", "phase", "attempt", "role", "pid")


# A lone surrogate (undecodable bytes of an agent's output) as a JSON escape: the line stays
# valid UTF-8. printable, Redactor and the rest of the terminal-safety rules live in text.py.
_SURROGATES = re.compile("[\udc80-\udcff]")


def _json_escape(match: re.Match[str]) -> str:
    return "\\" + _escape(match)


_ZONES: dict[int, dt.timezone] = {}


def _now() -> dt.datetime:
    """Local time with the UTC offset in force at that very instant: one localtime(3) per event
    (about a microsecond), so no event after a DST switch carries a time that does not exist."""
    t = time.time()
    offset = time.localtime(t).tm_gmtoff
    tz = _ZONES.get(offset)
    if tz is None:
        tz = _ZONES.setdefault(offset, dt.timezone(dt.timedelta(seconds=offset)))
    return dt.datetime.fromtimestamp(t, tz)


def _timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["ts"] = _now().isoformat(timespec="microseconds")
    return event_dict


def _order_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {k: event_dict.pop(k) for k in FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _to_json(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    return json.dumps(event_dict, default=str, ensure_ascii=False)


class AuditSink:
    """Appends lines to the audit file, each event in one write(2) on an O_APPEND descriptor:
    a line is whole even if the daemon is SIGKILLed, and nothing is buffered in the daemon.

    If the file is rotated or deleted under the daemon (logrotate's `create`), the next write
    notices the inode change and reopens the path (created 0640 if missing).
    """

    def __init__(self, path: Path, echo: TextIO | None = None) -> None:
        self.path = path
        self.echo = echo
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino = -1
        self._torn = 0
        """The length of a line whose write failed, part of which may be in the file."""
        self._later: list[bytes] = []
        """Lines of this loop iteration not written yet (`later`): one write for them all."""
        self.audit: AuditLog | None = None
        """The log whose processors render this sink's events (`frequent` renders as they do)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise ConfigError(
                f"audit.path: cannot open the audit log {path}: {exc.strerror}; create its "
                "folder writable for the daemon's user or set [audit] path elsewhere"
            ) from None

    def _open(self) -> None:
        # read access only to look at the last byte (O_APPEND writes at the end regardless)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            # a line torn by a crash (or another writer): start ours on a line of its own
            os.write(fd, b"\n")
        self._fd, self._ino = fd, st.st_ino

    def _current(self) -> int:
        """The open descriptor, reopened if the path now names another inode (or none).

        One stat per event: cheap next to the write, and no event goes to a file rotated
        away or deleted a moment before."""
        try:
            if self._fd is not None and os.stat(self.path).st_ino == self._ino:
                return self._fd
        except FileNotFoundError:
            pass
        self._close()
        self._open()
        assert self._fd is not None
        return self._fd

    def msg(self, line: str) -> None:
        try:
            data = (line + "\n").encode()
        except UnicodeEncodeError:
            # a lone surrogate: a byte of a file name that is not UTF-8, written as the text
            # `\xff` (a JSON-escaped backslash), as a person sees it elsewhere
            data = (_SURROGATES.sub(_json_escape, line) + "\n").encode("utf-8", "backslashreplace")
        with self._lock:
            if self._later:  # lines emitted before this one go first, in the same write
                data = b"".join([*self._later, data])
                self._later.clear()
            self._write(data)

    def later(self, data: bytes) -> None:
        """Append a whole line (ending in a newline) at the end of this loop iteration, with
        the others emitted until then, in one write(2): the polls of one tick (hundreds at a
        time) cost one write and one stat. Any event written before then takes them first,
        so the file stays in emission order. Outside an event loop: written at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._later.append(data)
            first = len(self._later) == 1
        if loop is None:
            self.flush()
        elif first:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines held by `later`."""
        with self._lock:
            if not self._later:
                return
            data = b"".join(self._later)
            self._later.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Write `data` (whole lines, under the lock)."""
        fd = None
        try:
            fd = self._current()
            if self._torn:
                self._cut_torn(fd)
            write_all(fd, data)
        except OSError as exc:
            # a full disk or a vanished folder must not stop supervision: say so where
            # the journal will see it, with the event, and go on
            line = data.decode(errors="replace").rstrip("\n")
            self._echo(f"orchestrd: audit log {self.path}: {exc.strerror}: {line}")
            self._torn = len(data)
            if fd is not None:
                self._cut_torn_now(fd)

    def _cut_torn(self, fd: int) -> None:
        """Cut off what a failed write left of its line (a full disk takes part of a write):
        the next event starts on a line of its own. The torn part is the end of the file after
        its last newline, within the failed line's length (a JSON line holds no raw newline)."""
        size = os.fstat(fd).st_size
        n = min(self._torn, size)
        tail = os.pread(fd, n, size - n)
        if not tail.endswith(b"\n") and size:
            os.ftruncate(fd, size - n + tail.rfind(b"\n") + 1)
        self._torn = 0

    def _cut_torn_now(self, fd: int) -> None:
        try:
            self._cut_torn(fd)
        except OSError as exc:
            # the next event tries again before it writes
            self._echo(f"orchestrd: audit log {self.path}: torn line not cut yet: {exc.strerror}")

    def _echo(self, text: str) -> None:
        stream = self.echo or sys.stderr
        try:
            stream.write(printable(text, newlines=False) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # no terminal or journal to tell (closed stderr): the audit file is the record

    info = warning = error = debug = msg

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._close()


def _console(data: EventDict) -> str:
    """A short human line for a terminal or the journal: time, event, then key=value."""
    ts = str(data.get("ts", ""))[11:23]
    rest = " ".join(
        f"{k}={_short(v)}"
        for k, v in data.items()
        if k not in ("ts", "event") and not isinstance(v, list | dict)
    )
    # what workers printed or named reaches a terminal here (the echo, `orchestrd tail`)
    return printable(f"{ts} {data.get('event', ''):<22} {rest}", newlines=False)


# Events too frequent for the journal (the audit file has them all).
CHATTY = frozenset({"worker.poll", "worker.usage", "check.passed"})


def _short(value: object, limit: int = 160) -> str:
    text = str(value).replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog:
    """Builds bound loggers that write to one AuditSink, redacting secrets on the way."""

    def __init__(
        self,
        path: Path,
        echo: TextIO | None = None,
        redactor: Redactor | None = None,
        echo_skip: frozenset[str] = frozenset(),
    ) -> None:
        self.sink = AuditSink(path, echo)
        self.sink.audit = self
        self.redactor = redactor or Redactor()
        self.echo_skip = echo_skip
        """Events not echoed (the daemon leaves CHATTY ones out of the journal)."""
        self._processors: list[Any] = [
            _timestamp,
            structlog.processors.format_exc_info,
            self._redact,
            _order_keys,
            self._echo,
            self._tell,
            _to_json,
        ]
        self.watchers: list[Watcher] = []
        """Tasks of this process that follow the file (metrics, notifier): woken by events
        they want instead of reading the file on a timer."""

    def _echo(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if self.sink.echo is not None and event_dict.get("event") not in self.echo_skip:
            self.sink._echo(_console(event_dict))
        return event_dict

    def _tell(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if self.watchers:
            self.tell(str(event_dict.get("event")))
        return event_dict

    def tell(self, event: str) -> None:
        """Wake the watchers that want `event` (it is being written now)."""
        for watcher in self.watchers:
            watcher.tell(event)

    def _redact(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        redacted: EventDict = self.redactor.deep(event_dict)
        return redacted

    def bind(self, **context: Any) -> structlog.typing.FilteringBoundLogger:
        logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
            self.sink,
            processors=self._processors,
            wrapper_class=structlog.make_filtering_bound_logger(0),
            context_class=dict,
        )
        return logger.bind(**context)

    def close(self) -> None:
        self.sink.close()


Logger = structlog.typing.FilteringBoundLogger


class Watcher:
    """Wakes a task of this event loop that follows the audit log when an event it `wants`
    is logged by this process (from the loop or from a worker thread). The wake-up runs on
    the loop after the line is written (`call_soon`), so the follower's read finds it."""

    def __init__(self, wants: Callable[[str], bool]) -> None:
        self.wants = wants
        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def tell(self, event: str) -> None:
        if self.event.is_set() or not self.wants(event):
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            if threading.get_ident() == self._thread:
                self._loop.call_soon(self.event.set)
            else:
                self._loop.call_soon_threadsafe(self.event.set)


class Frequent:
    """One event sent again and again with the same context (a worker's polls: 1,000 workers
    polled every second), rendered as the processors would, at a fraction of the cost: the
    context (redacted, in FIRST_KEYS order) is JSON once, each event adds its timestamp and
    its numbers, and the lines of one loop iteration reach the file in one write (`later`).

    Where the event would be echoed (`orchestrd run` shows polls), or is not an AuditLog's,
    every call goes the ordinary way.
    """

    def __init__(self, log: Logger, event: str) -> None:
        self.log = log
        self.event = event
        self._sink: AuditSink | None = None
        self._head = ""
        self._taken: frozenset[str] = frozenset()
        self._audit: AuditLog | None = None
        sink = getattr(log, "_logger", None)
        context = getattr(log, "_context", None)
        if not isinstance(sink, AuditSink) or sink.audit is None or not isinstance(context, dict):
            return
        audit = sink.audit
        if sink.echo is not None and event not in audit.echo_skip:
            return
        data = audit.redactor.deep({**context, "event": event})
        # structlog sets "event" over a context key of that name; FIRST_KEYS go first
        ordered = _order_keys(None, "", {"ts": "", **data})
        del ordered["ts"]
        body = json.dumps(ordered, default=str, ensure_ascii=False)
        self._sink, self._head, self._taken = sink, body[1:-1], frozenset(ordered) | {"ts"}
        self._audit = audit

    def __call__(self, **fields: Any) -> None:
        sink = self._sink
        plain = all(_plain_number(v) for v in fields.values())
        if sink is None or not plain or not self._taken.isdisjoint(fields):
            self.log.info(self.event, **fields)
            return
        ts = _now().isoformat(timespec="microseconds")
        rest = "".join(f', "{k}": {v!r}' for k, v in fields.items())
        sink.later(f'{{"ts": "{ts}", {self._head}{rest}}}\n'.encode())
        if self._audit is not None and self._audit.watchers:
            self._audit.tell(self.event)


def _plain_number(value: object) -> bool:
    """JSON writes it as Python's repr does (no bool, no nan or infinity)."""
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))  # type: ignore[arg-type]


def passed_in_audit(path: Path, plan_id: str) -> set[str]:
    """The phases of `plan_id` with a `phase.passed` event in the audit log."""
    passed: set[str] = set()
    try:
        with open(path, "rb") as f:
            for line in f:
                if b'"phase.passed"' not in line:
                    continue  # most lines: no JSON parsing
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "phase.passed" and event.get("plan") == plan_id:
                        passed.add(str(event.get("phase")))
    except FileNotFoundError:
        return set()  # no audit log: nothing was ever proven
    return passed
