"""A worker's log, read back: its end without the echoed prompt (for the log scan and the
remediation prompt), its last lines; and the child watcher every worker launch relies on.
Launching and stopping workers is the launchers' (`launchers/`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from .fsutil import FileRefused, read_tail


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, asyncio waits for every child in a thread of its own (1,000 workers:
    1,000 threads); a pidfd watcher waits in the event loop instead, as 3.12+ does by default.
    Call from inside the running loop, before the first worker starts."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel may be too old (< 5.3)
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


LOG_SCAN_BYTES = 4 * 1024 * 1024  # the end of the log is where runtime errors are


def log_without_prompt(log: Path, prompt: str, instead: str = "") -> str:
    """The end of a worker's log (LOG_SCAN_BYTES) with the prompt the agent echoed into it
    replaced by `instead`: the prompt is not the worker's output (a remediation prompt even
    quotes the failed worker's traceback). FileRefused if the worker replaced its log with
    something else than a file (a FIFO would block the reader)."""
    try:
        data, size = read_tail(log, LOG_SCAN_BYTES)
    except OSError:
        return ""
    text = _last_lines(data, size, LOG_SCAN_BYTES, 10**9)
    prompt = prompt.strip()
    return text.replace(prompt, instead) if prompt else text


def tail_file(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last `lines` lines of a file, reading at most `max_bytes` from its end. The worker
    may have replaced its log: anything but a regular file is not read ('')."""
    try:
        data, size = read_tail(path, max_bytes)
    except (OSError, FileRefused):
        return ""
    return _last_lines(data, size, max_bytes, lines)


def _last_lines(data: bytes, size: int, max_bytes: int, lines: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        # the first line was cut in two: half a line (half a secret, for the redactor) helps
        # nobody
        text = text[text.index("\n") + 1 :]
    return "\n".join(text.splitlines()[-lines:])
