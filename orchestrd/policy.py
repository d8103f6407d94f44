"""The poll policy: one timeout task per worker, polling every `poll_interval` at most
`max_polls` times. The exit is noticed at once (the task awaits it); after the last poll the
worker is stalled.
"""

from __future__ import annotations

import dataclasses

import anyio

from .audit import Logger
from .config import Policy
from .launchers import Worker


@dataclasses.dataclass(frozen=True)
class WatchOutcome:
    returncode: int | None
    """The exit code, or None if the worker stalled."""
    polls: int
    """How many polls happened before the exit (or all of them, when stalled)."""

    @property
    def stalled(self) -> bool:
        return self.returncode is None


async def watch(worker: Worker, policy: Policy, log: Logger) -> WatchOutcome:
    """Wait for the worker's exit, polling (an audit event each) until it exits or stalls.

    The timeout task sleeps between polls while a sibling task awaits the exit; the exit
    cancels the timeout task at once. (A cancel scope around the wait at every poll would cost
    a cancellation per poll: at 1,000 workers polled every second that showed in profiles.)
    """
    returncode: int | None = None
    polls = 0

    async def await_exit(scope: anyio.CancelScope) -> None:
        nonlocal returncode
        returncode = await worker.wait()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(await_exit, tg.cancel_scope)
        last_size = 0
        for cycle in range(1, policy.max_polls + 1):
            await anyio.sleep(policy.poll_interval)
            polls = cycle
            size = worker.log_size()
            log.info(
                "worker.poll",
                cycle=cycle,
                max_polls=policy.max_polls,
                elapsed=round(worker.elapsed(), 3),
                log_bytes=size,
                log_growth=size - last_size,
            )
            last_size = size
        tg.cancel_scope.cancel()
    if returncode is not None:
        return WatchOutcome(returncode, polls)
    # a worker can exit right at the last poll: give it that, rather than call it stalled
    return WatchOutcome(worker.returncode, polls)
