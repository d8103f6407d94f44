"""Low-level file handling in one place: whole writes, durable renames, and reading files a
worker could have touched (a FIFO must not block us, a sparse gigabyte must not be read).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import OrchestrdError

DEFAULT_MAX_BYTES = 1024 * 1024
"""`[checks] max_evidence_bytes` unless configured: reports and completion files are short."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 65536

KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


class FileRefused(OrchestrdError):
    """A file orchestrd will not read: not a regular file, or larger than its bound.
    The message says what it is, without the path (the caller names it)."""


def _not_regular(st: os.stat_result) -> str:
    return f"is {KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a regular file"


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a write(2) may be short (a filling disk, a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_regular(path: Path, follow: bool = True) -> tuple[int, os.stat_result]:
    """Open `path` for reading without blocking (a FIFO opens at once with O_NONBLOCK) and
    refuse anything but a regular file. Returns the descriptor (the caller closes it) and its
    fstat. OSError as open(2) gives it (FileNotFoundError: missing); FileRefused otherwise.
    O_NONBLOCK stays set: it changes nothing for a regular file."""
    fd = os.open(path, _OPEN_FLAGS | (0 if follow else os.O_NOFOLLOW))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(_not_regular(st))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_for_writing(path: Path, append: bool = False) -> int:
    """Open (create) `path` for writing where a worker could have put something first: never
    through a symlink, and a FIFO fails at once (ENXIO with O_NONBLOCK and no reader) instead
    of blocking; anything else but a regular file is refused (FileRefused)."""
    how = os.O_APPEND if append else os.O_TRUNC
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | how | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
        )
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        raise FileRefused(_not_regular(os.lstat(path))) from None  # a FIFO nobody reads
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(_not_regular(st))
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file(path: Path, data: bytes) -> None:
    """Replace the content of `path` (see open_for_writing)."""
    fd = open_for_writing(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def read_regular(
    path: Path, max_bytes: int, limit: str = "[checks] max_evidence_bytes", follow: bool = True
) -> bytes:
    """The whole of a regular file of at most `max_bytes` (`limit` names the setting in the
    message); a larger one is refused unread, one that grows past it while read too.
    `follow=False` for a path already resolved: a link swapped in since is not followed."""
    fd, st = open_regular(path, follow)
    try:
        if st.st_size > max_bytes:
            raise FileRefused(f"{st.st_size} bytes, over {limit} ({max_bytes}); not read")
        data = _read_upto(fd, max_bytes + 1)
        if len(data) > max_bytes:
            raise FileRefused(f"over {limit} ({max_bytes}) while read (it grew); not read")
        return data
    finally:
        os.close(fd)


def read_head(path: Path, max_bytes: int) -> bytes:
    """At most the first `max_bytes` of a regular file (FileRefused for anything else)."""
    fd, _ = open_regular(path)
    try:
        return _read_upto(fd, max_bytes)
    finally:
        os.close(fd)


def read_tail(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """At most the last `max_bytes` of a regular file, and its size when opened."""
    fd, st = open_regular(path)
    try:
        os.lseek(fd, max(0, st.st_size - max_bytes), os.SEEK_SET)
        return _read_upto(fd, max_bytes), st.st_size
    finally:
        os.close(fd)


def _read_upto(fd: int, max_bytes: int) -> bytes:
    chunks, total = [], 0
    while total < max_bytes and (chunk := os.read(fd, min(_CHUNK, max_bytes - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def copy_regular(src: Path, dest: Path, max_bytes: int, limit: str, follow: bool = True) -> None:
    """Copy a regular file of at most `max_bytes` to `dest`, making its folder (FileRefused
    for anything else): what the copy reads is what was checked, not a FIFO swapped in after
    a stat. `follow` as for read_regular."""
    fd, st = open_regular(src, follow)
    try:
        if st.st_size > max_bytes:
            raise FileRefused(f"{st.st_size} bytes, over {limit} ({max_bytes}); not copied")
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
        )
        try:
            copied = 0
            while copied <= max_bytes and (chunk := os.read(fd, _CHUNK)):
                write_all(out, chunk)
                copied += len(chunk)
        finally:
            os.close(out)
        if copied > max_bytes:
            os.unlink(dest)
            raise FileRefused(f"over {limit} ({max_bytes}) while copied (it grew); not copied")
    finally:
        os.close(fd)
