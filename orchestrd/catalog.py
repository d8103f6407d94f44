"""The archive's summary index: one JSON line per archived plan, so `status` (and the metrics
gauges) read one file instead of parsing every archived state file.

The index is a cache of what the state files say. A line is keyed by the plan's folder name and
its state file's stamp (inode, size, mtime); a folder with no line of its stamp (archived by a
process that did not add one, or changed since) is summarised from its state file again and its
line added, so nothing is lost when the index is missing, behind or deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fsutil import fsync_dir, write_all
from .states import PLAN_TERMINAL
from .store import ARCHIVE_INDEX as INDEX_NAME
from .store import PlanFolder


def index_path(archive_dir: Path) -> Path:
    return archive_dir.parent / INDEX_NAME


Row = dict[str, Any]
Stamp = list[int]


def stamp(folder: Path) -> Stamp | None:
    """What changes whenever the folder's state does: its state file's inode, size, mtime and
    those of its journal (None: no state file)."""
    return _stamp(os.fspath(folder), *_names())


def _names() -> tuple[str, str]:
    """The state file's and its journal's names in a plan folder (as store.py spells them)."""
    files = PlanFolder(Path("."))
    return files.state_file.name, files.journal.name


def _stamp(folder: str, state_name: str, journal_name: str) -> Stamp | None:
    # plain strings and two stat(2)s: with 10,000 archived plans this loop is what `status`
    # costs (a PlanFolder per folder builds some fifteen Path objects)
    try:
        st = os.stat(f"{folder}/{state_name}")
    except FileNotFoundError:
        return None
    try:
        jt = os.stat(f"{folder}/{journal_name}")
    except FileNotFoundError:
        return [st.st_ino, st.st_size, st.st_mtime_ns]
    return [st.st_ino, st.st_size, st.st_mtime_ns, jt.st_size, jt.st_mtime_ns]


def _line(name: str, mark: Stamp, row: Row) -> bytes:
    return (json.dumps({"dir": name, "stamp": mark, "row": row}) + "\n").encode()


def _append(index: Path, data: bytes) -> None:
    """One write(2) on O_APPEND: whole lines even beside another writer, fsync'd like state.
    After a writer killed mid-line the new lines start on a line of their own."""
    fd = os.open(index, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def add(archive_dir: Path, name: str, row: Row | None) -> None:
    """Index the plan just archived as `archive_dir/name` (the archive step's one call).
    A row that may still change (None, or not a finished plan) is not kept."""
    mark = stamp(archive_dir / name)
    if row is not None and mark is not None and cacheable(row):
        _append(index_path(archive_dir), _line(name, mark, row))


def cacheable(row: Row) -> bool:
    """Only a finished plan's row depends on its state file alone (a corrupt one may be
    repaired, an unfinished one's elapsed time still runs)."""
    return row.get("state") in PLAN_TERMINAL


def read(index: Path) -> dict[str, tuple[Stamp, Row, bytes]]:
    """The index's lines by folder name (the last line of a name wins); a torn or foreign line
    is skipped: its folder is summarised again."""
    entries: dict[str, tuple[Stamp, Row, bytes]] = {}
    try:
        data = index.read_bytes()
    except FileNotFoundError:
        return entries
    lines = data.splitlines(keepends=True)
    try:  # one parse of the whole file: 10,000 json.loads calls cost several times more
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
        for e, line in zip(parsed, lines, strict=True):
            entries[str(e["dir"])] = (list(e["stamp"]), dict(e["row"]), line)
        return entries
    except (ValueError, KeyError, TypeError):
        entries.clear()  # a torn or foreign line somewhere: line by line, skipping it
    for line in lines:
        try:
            e = json.loads(line.decode())
            entries[str(e["dir"])] = (list(e["stamp"]), dict(e["row"]), line)
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def rows(archive_dir: Path, summarize: Callable[[Path], Row | None]) -> list[Row]:
    """One row per plan folder in `archive_dir`: from the index where its stamp matches, else
    `summarize(folder)` (then indexed). The index is rewritten when most of it is dead lines
    (plans retried out of the archive, superseded stamps)."""
    index = index_path(archive_dir)
    known = read(index)
    out: list[Row] = []
    fresh: list[bytes] = []
    used: list[bytes] = []
    try:
        names = sorted(e.name for e in os.scandir(archive_dir) if not e.name.startswith("."))
    except FileNotFoundError:
        return out
    base, state_name, journal_name = os.fspath(archive_dir), *_names()
    for name in names:
        mark = _stamp(f"{base}/{name}", state_name, journal_name)
        cached = known.get(name)
        if mark is not None and cached is not None and cached[0] == mark:
            out.append(cached[1])
            used.append(cached[2])
            continue
        row = summarize(archive_dir / name)
        if row is None:
            continue
        out.append(row)
        if mark is not None and cacheable(row):
            fresh.append(_line(name, mark, row))
    dead = len(known) - len(used)
    if fresh or dead > len(used):
        _save(index, used, fresh, rewrite=dead > len(used))
    return out


def _save(index: Path, used: list[bytes], fresh: list[bytes], rewrite: bool) -> None:
    """Add the new lines, or rewrite the index when most of it is dead lines. A reader who may
    not write the archive (another user's `status`) still gets every row: the index only saves
    the next reader work, so a failed write changes nothing it showed."""
    try:
        if not rewrite:
            _append(index, b"".join(fresh))
            return
        tmp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            write_all(fd, b"".join(used + fresh))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, index)
        fsync_dir(index.parent)
    except OSError:
        return  # e.g. read-only for this user: the rows above were read from the state files
