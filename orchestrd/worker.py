"""A worker's log, read back: its end without the echoed prompt (for the log scan and the
remediation prompt), its last lines; and the child watcher every worker launch relies on.
Launching and stopping workers is the launchers' (`launchers/`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVarTuple

from .fsutil import FileRefused, read_tail


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, asyncio waits for every child in a thread of its own (1,000 workers:
    1,000 threads); a pidfd watcher waits in the event loop instead, as 3.12+ does by default.
    Call from inside the running loop, before the first worker starts.

    Not 3.11's PidfdChildWatcher: the child watcher is one per process, and that one is bound
    to the loop that was running when it was set. Once that loop ends, every later loop of the
    process — the next `anyio.run`, a loop in another thread — gets a watcher of a dead loop
    (a child started there is refused or never reaped), and a loop closed with a child still
    running warns (an error under -W error) and leaves the child unreaped. `_LoopPidfdWatcher`
    waits on the loop the child was started from, whichever it is, as 3.12's does."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel may be too old (< 5.3)
    except OSError:
        return
    if not isinstance(asyncio.get_child_watcher(), _LoopPidfdWatcher):
        asyncio.set_child_watcher(_LoopPidfdWatcher())


_Ts = TypeVarTuple("_Ts")


class _LoopPidfdWatcher(asyncio.AbstractChildWatcher):
    """A child's exit seen through its pidfd, in the event loop that started it (3.12's
    `_PidfdChildWatcher`): no thread, no signal handler, no loop of its own."""

    def add_child_handler(
        self, pid: int, callback: Callable[[int, int, *_Ts], object], *args: *_Ts
    ) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        loop._add_reader(pidfd, self._do_wait, pid, pidfd, callback, args)  # type: ignore[attr-defined]

    def _do_wait(self, pid: int, pidfd: int, callback: Any, args: tuple[Any, ...]) -> None:
        asyncio.get_running_loop()._remove_reader(pidfd)  # type: ignore[attr-defined]
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        os.close(pidfd)
        callback(pid, returncode, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return False  # asyncio never calls it; a handler ends with its child

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass  # bound to no loop: each child is watched from the loop that started it

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> _LoopPidfdWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


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
