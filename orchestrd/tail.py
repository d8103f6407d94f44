"""`orchestrd tail`: the audit log filtered, as coloured lines or unchanged JSON, optionally
followed across rotation; and `LineFollower`, which the notifier reuses to follow the log.

Filtering is cheap first: a plan or phase is a byte search over large chunks, `--since` a
bisection on the timestamps that open every line; only lines that pass are parsed as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .config import load_config, parse_duration
from .errors import OrchestrdError
from .text import console

CHUNK = 8 << 20
FOLLOW_STEP = 0.2
_TS = re.compile(rb'^\{"ts": "([^"]+)"')
_EVENT = re.compile(rb'"event": "([^"]*)"')

GREEN, RED, YELLOW, DIM, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"
_WARN_EVENTS = frozenset(
    {
        "check.warning",
        "worker.log_truncated",
        "plan.interrupted",
        "plan.waiting_repo",
        "daemon.spool_error",
        "daemon.notify_failed",
        "daemon.watch_failed",
        "worker.dangerous",
        "daemon.dangerous_workers",
        "daemon.request_ignored",
        "remediation.started",
        "worker.orphan_stopped",
    }
)


def colour_of(event: str) -> str | None:
    """Passed green, failed or stalled red, what deserves a look yellow."""
    if event in _WARN_EVENTS:
        return YELLOW
    last = event.rpartition(".")[2]
    if last in ("passed", "succeeded"):
        return GREEN
    if "failed" in last or last in ("stalled", "error", "rejected", "state_corrupt"):
        return RED
    return None


def human_line(data: dict[str, Any], colour: bool) -> str:
    """The same line `orchestrd run` echoes, its event coloured by outcome on a terminal."""
    text = console(data)
    code = colour_of(str(data.get("event", ""))) if colour else None
    if not colour:
        return text
    ts, _, rest = text.partition(" ")
    event, sep, fields = rest.partition(" ")
    painted = f"{code}{event}{RESET}" if code else event
    return f"{DIM}{ts}{RESET} {painted}{sep}{fields}"


def parse_ts(value: bytes | str) -> dt.datetime | None:
    try:
        stamp = dt.datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        return None
    return stamp if stamp.tzinfo else stamp.astimezone()


def line_time(line: bytes) -> dt.datetime | None:
    m = _TS.match(line)
    return parse_ts(m.group(1)) if m else None


@dataclasses.dataclass(frozen=True)
class Filter:
    """What `tail` keeps. `match` tests bytes cheaply, then the parsed event exactly."""

    plan: str | None = None
    phase: str | None = None
    event: str | None = None
    since: dt.datetime | None = None

    def needle(self) -> bytes | None:
        """A byte string every matching line contains, to skip to with a fast find()."""
        if self.plan is not None:
            return f'"plan": {json.dumps(self.plan)}'.encode()
        if self.phase is not None:
            return f'"phase": {json.dumps(self.phase)}'.encode()
        if self.event is not None and (prefix := re.split(r"[*?\[]", self.event)[0]):
            return f'"event": {json.dumps(prefix)[:-1]}'.encode()  # the quote left open
        return None

    def match(self, line: bytes) -> dict[str, Any] | None:
        for key, want in (("plan", self.plan), ("phase", self.phase)):
            if want is not None and f'"{key}": {json.dumps(want)}'.encode() not in line:
                return None
        if self.event is not None:
            m = _EVENT.search(line)
            if m is None or not fnmatch.fnmatchcase(
                m.group(1).decode(errors="replace"), self.event
            ):
                return None
        if self.since is not None and ((t := line_time(line)) is None or t < self.since):
            return None
        try:
            data = json.loads(line)
        except ValueError:
            return None  # a torn line a crash left behind: never shown as an event
        if not isinstance(data, dict):
            return None
        for key, want in (("plan", self.plan), ("phase", self.phase)):
            if want is not None and data.get(key) != want:
                return None
        return data


def seek_since(f: BinaryIO, size: int, since: dt.datetime) -> int:
    """An offset at or before the first line stamped `since` or later (lines are written in
    time order): a bisection reading a few lines, not the whole file."""
    lo, hi = 0, size
    while hi - lo > 65536:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # the rest of a line cut by the seek
        stamp = None
        while stamp is None:
            line = f.readline()
            if not line:
                break
            stamp = line_time(line)
        if stamp is not None and stamp < since:
            lo = mid
        else:
            hi = mid
    return lo


class _Reader:
    """Whole lines from `start` on (the first one skipped if `start` cut it) that contain
    `needle`; `offset` ends up just after the last whole line, where a follower goes on (a line
    being written as the file is read is left to it)."""

    def __init__(self, f: BinaryIO, start: int, needle: bytes | None) -> None:
        self.f, self.start, self.needle = f, start, needle
        self.offset = start

    def __iter__(self) -> Iterator[bytes]:
        self.f.seek(self.start)
        rest = b""
        skip_first = self.start > 0
        while chunk := self.f.read(CHUNK):
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            data, rest = data[:end], data[end:]
            self.offset += end
            pos = 0
            if skip_first and end:
                pos = data.find(b"\n") + 1
                skip_first = False
            if self.needle is None:
                yield from data[pos:].splitlines()
                continue
            while (hit := data.find(self.needle, pos)) >= 0:
                line_start = data.rfind(b"\n", 0, hit) + 1
                line_end = data.find(b"\n", hit)
                yield data[line_start:line_end]
                pos = line_end + 1


def scan(path: Path, filt: Filter, keep: bool = False) -> tuple[list[bytes], int]:
    """The matching lines of the file now, and the offset where a follower goes on. `keep`:
    the file is left open for `follow_from` (a rotation after the scan must not skip lines)."""
    f = open(path, "rb")  # noqa: SIM115 - handed to the follower when kept
    if keep:
        _scanned[path] = f
    with contextlib.nullcontext(f) if keep else f:
        size = os.fstat(f.fileno()).st_size
        start = seek_since(f, size, filt.since) if filt.since is not None else 0
        reader = _Reader(f, start, filt.needle())
        lines = [ln for ln in reader if filt.match(ln) is not None]
    return lines, reader.offset


_scanned: dict[Path, BinaryIO] = {}
"""Files `scan(keep=True)` left open for the follower."""


class LineFollower:
    """New whole lines of a file as it grows, across rotation: when the path names a new
    inode the old file is read to its end first, then the new one from its start; a file
    truncated in place is read again from its start. Half a line is kept until it is whole."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        self._f: BinaryIO | None = None
        self._ino = -1
        self._buf = b""
        self._start = offset
        """Where to begin in the file open now (None: at its end)."""

    @classmethod
    def after_scan(cls, path: Path, offset: int) -> LineFollower:
        """A follower going on from `offset` in the very file `scan(path, keep=True)` read: the
        path may name another file by now (rotated), which `read` then takes up from its start."""
        follower = cls(path, offset)
        if (f := _scanned.pop(path, None)) is not None:
            f.seek(offset)
            follower._f, follower._ino = f, os.fstat(f.fileno()).st_ino
        return follower

    def _open(self, at_start: bool) -> None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open across calls
        except FileNotFoundError:
            return
        st = os.fstat(f.fileno())
        if at_start:
            f.seek(0)
        elif self._start is not None:
            f.seek(min(self._start, st.st_size))
        else:
            f.seek(0, os.SEEK_END)
        self._f, self._ino = f, st.st_ino

    def read(self) -> list[bytes]:
        if self._f is None:
            self._open(at_start=self._ino != -1 or self._start == 0)
            if self._f is None:
                return []
        lines = self._drain()
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = None  # rotated away, not recreated yet: wait for it
        if ino != self._ino:
            lines += self._drain()
            if self._buf:  # the old file ended without a newline: that line is whole now
                lines.append(self._buf)
                self._buf = b""
            self.close()
            self._ino = 0
            if ino is not None:
                self._open(at_start=True)
                lines += self._drain()
        return lines

    def _drain(self) -> list[bytes]:
        f = self._f
        if f is None:
            return []
        if os.fstat(f.fileno()).st_size < f.tell():  # truncated in place (copytruncate)
            f.seek(0)
            self._buf = b""
        data = self._buf + f.read()
        end = data.rfind(b"\n") + 1
        self._buf = data[end:]
        return data[:end].splitlines()

    def position(self) -> tuple[int, int] | None:
        """(inode, offset) just after the last whole line returned; None with no file open."""
        if self._f is None:
            return None
        return self._ino, self._f.tell() - len(self._buf)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _print(line: bytes, data: dict[str, Any], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        out.write(line.decode("utf-8", "replace") + "\n")
    else:
        out.write(human_line(data, args.colour) + "\n")


def since_time(text: str) -> dt.datetime:
    """`10m`, `12h`, `2d` before now, `now`, or an ISO-8601 time."""
    if text == "now":
        return dt.datetime.now().astimezone()
    stamp = parse_ts(text)
    if stamp is not None:
        return stamp
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise OrchestrdError(
            f"--since {text}: {exc}; write e.g. 10m, 12h or 2026-01-31T08:00"
        ) from None
    return dt.datetime.now().astimezone() - dt.timedelta(seconds=seconds)


def _cmd_tail(args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    path = config.audit_path
    filt = Filter(args.plan, args.phase, args.event, since_time(args.since) if args.since else None)
    args.colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    out = sys.stdout
    offset = 0
    if path.exists():
        lines, offset = scan(path, filt, keep=args.follow)
        for line in lines:
            data = filt.match(line)
            assert data is not None
            _print(line, data, args, out)
    elif not args.follow:
        raise OrchestrdError(f"{path}: no audit log yet (is [audit] path right in the config?)")
    out.flush()
    if not args.follow:
        return 0
    follower = LineFollower.after_scan(path, offset)
    while True:
        for line in follower.read():
            if (data := filt.match(line)) is not None:
                _print(line, data, args, out)
        out.flush()
        time.sleep(FOLLOW_STEP)


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `tail [-f] [--plan ID] [--phase P] [--event GLOB] [--since 10m] [--json]`."""
    p = sub.add_parser("tail", parents=[common], help="the audit log, filtered (daemon not needed)")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new events (across log rotation) until Ctrl-C",
    )
    p.add_argument("--plan", metavar="ID", help="only this plan's events")
    p.add_argument("--phase", metavar="P", help="only this phase's events")
    p.add_argument("--event", metavar="GLOB", help="only events named so, e.g. 'check.*'")
    p.add_argument(
        "--since", metavar="WHEN", help="only events after: 10m, 12h, now, or an ISO time"
    )
    p.add_argument("--json", action="store_true", help="the matching JSON lines, unchanged")
    p.set_defaults(func=_cmd_tail)
