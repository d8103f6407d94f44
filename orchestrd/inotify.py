"""inotify(7) on a few folders, read on the event loop: `changed()` returns when something in
them changed (or the kernel's queue overflowed: the caller rescans either way). No thread and
no timer: a daemon with nothing to do sleeps in epoll until a file moves."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import anyio

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: Path | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path) if path else None)
    return result


class Inotify:
    """One inotify descriptor watching `folders` (not recursively)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders = list(folders)
        self.fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        try:
            self._watches = {self._add(folder) for folder in self.folders}
        except OSError:
            os.close(self.fd)
            raise

    def _add(self, folder: Path) -> int:
        return _check(
            _libc.inotify_add_watch(self.fd, os.fsencode(folder), MASK), "inotify_add_watch", folder
        )

    async def changed(self) -> None:
        """Wait until something in the folders changed; read every event queued by then.

        A folder removed (its watch gone) is watched again at the next call where it exists
        again: the caller's rescans cover the time in between."""
        if len(self._watches) < len(self.folders):
            for folder in self.folders:
                with contextlib.suppress(OSError):  # still gone: the rescans see it
                    self._watches.add(self._add(folder))  # the same wd if watched already
        while True:
            await anyio.wait_readable(self.fd)
            data = self._drain()
            if data:
                break
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if mask & IN_IGNORED:
                self._watches.discard(wd)

    def _drain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
