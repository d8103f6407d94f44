"""The poll policy: one timeout task per worker, polling every `poll_interval` at most
`max_polls` times. The exit is noticed at once (the task awaits it); after the last poll the
worker is stalled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .audit import Logger
from .config import Policy
from .worker import LocalWorker


@dataclasses.dataclass(frozen=True)
class WatchOutcome:
    returncode: int | None
    """The exit code, or None if the worker stalled."""
    polls: int
    """How many polls happened before the exit (or all of them, when stalled)."""

    halted: bool = False
    """Stopped early on request (a budget was spent), neither exited nor stalled."""

    @property
    def stalled(self) -> bool:
        return self.returncode is None and not self.halted


async def watch(
    worker: LocalWorker,
    policy: Policy,
    log: Logger,
    on_poll: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    halt: anyio.Event | None = None,
) -> WatchOutcome:
    """Wait for the worker's exit, polling (an audit event each) until it exits or stalls.

    The timeout task sleeps between polls while a sibling task awaits the exit; the exit
    cancels the timeout task at once. (A cancel scope around the wait at every poll would cost
    a cancellation per poll: at 1,000 workers polled every second that showed in profiles.)
    `on_poll` adds fields to each poll (and may save what it saw); `halt`, once set, ends the
    watch at once (the caller stops the worker).
    """
    returncode: int | None = None
    polls = 0
    halted = False

    async def await_halt(scope: anyio.CancelScope, halt: anyio.Event) -> None:
        nonlocal halted
        await halt.wait()
        halted = True
        scope.cancel()

    async def await_exit(scope: anyio.CancelScope) -> None:
        nonlocal returncode
        returncode = await worker.wait()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(await_exit, tg.cancel_scope)
        if halt is not None:
            tg.start_soon(await_halt, tg.cancel_scope, halt)
        last_size = 0
        for cycle in range(1, policy.max_polls + 1):
            await anyio.sleep(policy.poll_interval)
            polls = cycle
            size = worker.log_size()
            extra = await on_poll() if on_poll is not None else {}
            log.info(
                "worker.poll",
                cycle=cycle,
                max_polls=policy.max_polls,
                elapsed=round(worker.elapsed(), 3),
                log_bytes=size,
                log_growth=size - last_size,
                **extra,
            )
            last_size = size
        tg.cancel_scope.cancel()
    if returncode is not None:
        return WatchOutcome(returncode, polls)
    if halted:
        return WatchOutcome(worker.returncode, polls, halted=worker.returncode is None)
    # a worker can exit right at the last poll: give it that, rather than call it stalled
    return WatchOutcome(worker.returncode, polls)
