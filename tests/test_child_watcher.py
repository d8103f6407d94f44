"""The pidfd child watcher the daemon and `orchestrd run` install (Python 3.11): after the loop
that installed it has ended, children started from a new loop, and from a loop in another
thread, are still reaped with their exit status, and a loop that ends with a child still
running does not warn. The cases run in a fresh interpreter (the watcher is one per process)
with RuntimeWarning an error, as in the suite (the stock watcher's warning; the unclosed
transport the early end leaves is the ResourceWarning Python ignores by default)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import subprocess, sys, threading
    import anyio
    from orchestrd.worker import use_pidfd_child_watcher

    async def first() -> int:
        use_pidfd_child_watcher()  # as Daemon.serve does
        return (await anyio.run_process([sys.executable, "-c", "exit(3)"], check=False)).returncode

    async def child(code: int) -> int:
        done = await anyio.run_process([sys.executable, "-c", f"exit({code})"], check=False)
        return done.returncode

    async def left_running() -> None:
        nothing = subprocess.DEVNULL  # the loop ends before it does
        await anyio.open_process(["sleep", "30"], stdin=nothing, stdout=nothing, stderr=nothing)

    print(anyio.run(first))
    print(anyio.run(child, 4))  # a later loop of this thread
    out = []
    thread = threading.Thread(target=lambda: out.append(anyio.run(child, 5)))
    thread.start()
    thread.join(20)
    print(out[0] if out else "thread hung")
    anyio.run(left_running)
    print(anyio.run(child, 6))
    """
)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ uses asyncio's own pidfd watcher")
def test_children_of_every_later_loop_are_reaped_and_an_early_end_does_not_warn() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert done.stderr == ""
    assert done.stdout.split() == ["3", "4", "5", "6"]
