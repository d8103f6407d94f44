"""The inbox watch (orchestrd/inotify.py) on real folders: a rename, a write and a delete each
end a wait (a write may end more than one: its create, modify and close can come apart);
nothing ends it while nothing happens; a folder removed and made again is
watched again; names that are not UTF-8 are no problem (names are never decoded)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from orchestrd.inotify import Inotify


async def _changed_within(watch: Inotify, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        await watch.changed()
        return True
    return False


async def _quiet(watch: Inotify) -> None:
    """Read what earlier actions left queued, so the next wait is ended by the next action."""
    for _ in range(50):
        if not await _changed_within(watch, 0.1):
            return
    raise AssertionError("the watch never went quiet")


def _later(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def _watching(folders: list[Path], body: Callable[[Inotify], Awaitable[None]]) -> None:
    """Run `body` on an event loop with a watch of `folders`, closed after it whatever happens."""

    async def main() -> None:
        watch = Inotify(folders)
        try:
            await body(watch)
        finally:
            watch.close()

    anyio.run(main)


def test_a_rename_a_write_and_a_delete_each_end_a_wait(tmp_path: Path) -> None:
    inbox, control = tmp_path / "inbox", tmp_path / "control"
    inbox.mkdir()
    control.mkdir()
    outside = tmp_path / "plan.toml"
    outside.write_text("id = 'x'\n")

    async def body(watch: Inotify) -> None:
        assert not await _changed_within(watch, 0.3)  # nothing happened: no wake-up
        _later(0.05, lambda: os.rename(outside, inbox / "plan.toml"))
        assert await _changed_within(watch, 5)
        await _quiet(watch)
        _later(0.05, lambda: (control / "cancel-x").write_text("x"))
        assert await _changed_within(watch, 5)
        await _quiet(watch)
        _later(0.05, lambda: (inbox / "plan.toml").unlink())
        assert await _changed_within(watch, 5)

    _watching([inbox, control], body)


def test_a_folder_removed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    async def body(watch: Inotify) -> None:
        _later(0.05, lambda: shutil.rmtree(inbox))
        assert await _changed_within(watch, 5)
        await _quiet(watch)  # the watch's removal (IN_IGNORED) read
        inbox.mkdir()
        await _quiet(watch)  # this wait watches it again
        _later(0.05, lambda: (inbox / b"\xff.toml".decode(errors="surrogateescape")).touch())
        assert await _changed_within(watch, 5)

    _watching([inbox], body)


def test_a_missing_folder_is_an_oserror_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(OSError) as err:
        Inotify([missing])
    assert str(missing) in str(err.value)
