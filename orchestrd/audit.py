"""The audit log: structlog wired to a JSON-lines file (one object per event, flushed), and the
event vocabulary.

No global configuration: an AuditLog is built once at start-up and its loggers are passed down.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from .config import SECRET_NAME, Config

# Every event orchestrd emits, with what it means. The README's event table is generated from,
# and tested against, this mapping.
EVENTS: dict[str, str] = {
    "daemon.started": "the daemon is up and serving (after recovery)",
    "daemon.stopping": "SIGTERM/SIGINT received: stopping workers, saving state",
    "daemon.stopped": "the daemon exited cleanly",
    "daemon.recovered": "a plan found running or queued in state_dir at start-up was resumed",
    "daemon.reloaded": "SIGHUP: the new config is in force",
    "daemon.reload_failed": "SIGHUP: the new config is invalid; the old one is kept",
    "daemon.notify_failed": "sd_notify could not reach $NOTIFY_SOCKET",
    "daemon.dangerous_workers": "allow_dangerous_workers is on: the profiles that bypass sandboxes",
    "daemon.spool_error": "an inbox file could not be handled (e.g. disk full); retried later",
    "daemon.request_ignored": "a cancel/retry request that does not apply to the plan's state",
    "daemon.watch_failed": "inotify on the inbox failed; the daemon falls back to rescans",
    "plan.accepted": "a file in the inbox passed validation and was moved to plans/<id>/",
    "plan.rejected": "a file in the inbox failed validation; see rejected/<name>.error",
    "plan.queued": "the plan waits for a worker slot",
    "plan.waiting_repo": "the plan waits because another plan runs on the same repo",
    "plan.started": "the plan's runner started",
    "plan.succeeded": "every phase passed",
    "plan.failed": "a phase failed for good (reason)",
    "plan.error": "the plan's runner raised an unexpected error (traceback); the plan fails",
    "plan.cancelled": "stopped on request",
    "plan.interrupted": "the daemon stopped while the plan ran; it resumes on restart",
    "plan.archived": "the finished plan's folder was moved to archive/",
    "plan.state_corrupt": "a state file could not be read; it was set aside",
    "phase.started": "a phase began (its primary worker follows)",
    "phase.skipped": "a phase already passed before a restart or retry",
    "phase.passed": "all checkpoints passed",
    "phase.failed": "checks failed and no remediation is left (reason)",
    "worker.started": "a worker process was launched (pid, log, command)",
    "worker.dangerous": "a worker started with a sandbox-bypassing profile (flags)",
    "worker.failed_to_start": "the worker's command could not be executed (reason)",
    "worker.poll": "a poll of a running worker (cycle, elapsed, log growth)",
    "worker.stalled": "the worker outlived its last poll (log_tail)",
    "worker.stopped": "the worker's process group was signalled (signal, why)",
    "worker.exited": "the worker process ended (returncode)",
    "worker.log_truncated": "the worker's output went over max_log_bytes; the rest was dropped",
    "worker.orphan_stopped": "a worker left over from a previous daemon run was stopped",
    "check.passed": "one checkpoint passed (check, reason)",
    "check.failed": "one checkpoint failed (check, reason)",
    "check.warning": "a checkpoint found something worth reading that does not fail the phase",
    "remediation.started": "a remediation attempt begins (failure)",
}

FIRST_KEYS = ("ts", "event", "plan", "phase", "attempt", "role", "pid")


class Redactor:
    """Replaces secrets in text with `***`: values of secret-looking environment variables
    (the daemon's and the worker profiles') and the config's `redact` regexes."""

    def __init__(self, values: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        alternatives = [re.escape(v) for v in sorted(set(values), key=len, reverse=True)]
        alternatives += [f"(?:{p})" for p in patterns]
        self._regex = re.compile("|".join(alternatives)) if alternatives else None

    @classmethod
    def from_config(cls, config: Config) -> Redactor:
        env = dict(os.environ)
        for profile in config.workers.values():
            env.update(profile.env)
        values = [v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 4]
        return cls(values, config.redact)

    def __call__(self, text: str) -> str:
        return self._regex.sub("***", text) if self._regex is not None else text

    def deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


def _timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["ts"] = dt.datetime.now().astimezone().isoformat(timespec="microseconds")
    return event_dict


def _order_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {k: event_dict.pop(k) for k in FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _to_json(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    return json.dumps(event_dict, default=str, ensure_ascii=False)


class AuditSink:
    """Appends lines to the audit file, flushed per event.

    If the file is rotated or deleted under the daemon (logrotate's `create`), the next write
    notices the inode change and reopens the path.
    """

    def __init__(self, path: Path, echo: TextIO | None = None) -> None:
        self.path = path
        self.echo = echo
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self._open()

    def _open(self) -> TextIO:
        f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the daemon's life
        self._ino = os.fstat(f.fileno()).st_ino
        return f

    def _current(self) -> TextIO:
        """The open file, reopened if the path now names another inode (or none)."""
        try:
            if self._file is not None and os.stat(self.path).st_ino == self._ino:
                return self._file
        except FileNotFoundError:
            pass
        if self._file is not None:
            self._file.close()
            self._file = None
        self._file = self._open()
        return self._file

    def msg(self, line: str) -> None:
        with self._lock:
            try:
                f = self._current()
                f.write(line + "\n")
                f.flush()
            except OSError as exc:
                # a full disk or a vanished folder must not stop supervision: say so where
                # the journal will see it, with the event, and go on
                sys.stderr.write(f"orchestrd: audit log {self.path}: {exc.strerror}: {line}\n")
        if self.echo is not None:
            self.echo.write(_console(line) + "\n")
            self.echo.flush()

    info = warning = error = debug = msg

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _console(line: str) -> str:
    """A short human line for a terminal or the journal: time, event, then key=value."""
    data = json.loads(line)
    ts = str(data.pop("ts", ""))[11:23]
    event = data.pop("event", "")
    rest = " ".join(
        f"{k}={_short(v)}" for k, v in data.items() if not isinstance(v, list | dict)
    )
    return f"{ts} {event:<22} {rest}"


def _short(value: object, limit: int = 160) -> str:
    text = str(value).replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog:
    """Builds bound loggers that write to one AuditSink, redacting secrets on the way."""

    def __init__(
        self, path: Path, echo: TextIO | None = None, redactor: Redactor | None = None
    ) -> None:
        self.sink = AuditSink(path, echo)
        self.redactor = redactor or Redactor()
        self._processors: list[Any] = [
            _timestamp, structlog.processors.format_exc_info, self._redact, _order_keys, _to_json
        ]

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


def stderr_echo(enabled: bool) -> TextIO | None:
    return sys.stderr if enabled else None


Logger = structlog.typing.FilteringBoundLogger
