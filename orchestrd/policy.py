"""The poll policy: one timeout task per worker, polling every `poll_interval` at most
`max_polls` times. The exit is noticed at once (the task awaits it); after the last poll the
worker is stalled.
"""

from __future__ import annotations

import dataclasses

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

    @property
    def stalled(self) -> bool:
        return self.returncode is None


async def watch(worker: LocalWorker, policy: Policy, log: Logger) -> WatchOutcome:
    """Wait for the worker's exit, polling (an audit event each) until it exits or stalls."""
    last_size = 0
    for cycle in range(1, policy.max_polls + 1):
        with anyio.move_on_after(policy.poll_interval):
            return WatchOutcome(await worker.wait(), cycle - 1)
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
    # a worker can exit right at the last poll: give it that, rather than call it stalled
    if worker.returncode is not None:
        return WatchOutcome(worker.returncode, policy.max_polls)
    return WatchOutcome(None, policy.max_polls)
