"""The audit log under faults: a full disk that cuts an event's write short leaves no torn line
for the next event to be glued to, and every event's UTC offset is the one in force at that
instant (no cached offset after a daylight-saving switch).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_faults import small_tmpfs

from orchestrd.audit import AuditLog


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of `disk` up, then free `leave` bytes (whole pages)."""
    filler = disk / "fill"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 65536)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 512)
    os.ftruncate(fd, os.fstat(fd).st_size - leave)
    os.close(fd)
    return filler


def test_a_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "1m"):
        echo = io.StringIO()
        audit = AuditLog(disk / "audit.jsonl", echo=echo)
        log = audit.bind(plan="T")
        log.info("plan.queued", seq=1)
        filler = fill(disk, 4096)
        # events of 1.5 KB: one of them goes past the free space and is cut short
        for n in range(6):
            log.info("worker.poll", n=n, padding="p" * 1500)
        assert "No space left on device" in echo.getvalue()
        filler.unlink()  # space comes back; no reopen happens
        log.info("plan.succeeded", after="space")
        audit.close()
        text = (disk / "audit.jsonl").read_text()
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert events[-1]["event"] == "plan.succeeded"
    written = [e["n"] for e in events if e["event"] == "worker.poll"]
    assert written == list(range(len(written))) and len(written) < 6


@contextlib.contextmanager
def local_zone(tz: str) -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.parametrize("zones", [("UTC0", "XST-5"), ("CET-1", "CEST-2")])
def test_each_event_carries_the_utc_offset_in_force_when_it_happened(
    tmp_path: Path, zones: tuple[str, str]
) -> None:
    # a zone change seconds apart is what a DST switch looks like to the process (POSIX TZ
    # strings: no zone database needed); the offset must follow at once, not a minute later
    audit = AuditLog(tmp_path / "audit.jsonl")
    log = audit.bind()
    stamps = []
    for tz in zones:
        with local_zone(tz):
            log.info("plan.queued")
            stamps.append((time.time(), dt.datetime.now().astimezone().utcoffset()))
    audit.close()
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    for event, (when, offset) in zip(events, stamps, strict=True):
        ts = dt.datetime.fromisoformat(event["ts"])
        assert ts.utcoffset() == offset
        assert abs(ts.timestamp() - when) < 1.0  # the instant itself is right
    assert events[0]["ts"][-6:] != events[1]["ts"][-6:]
