"""The poll policy: a worker is polled every `poll_interval`, at most `max_polls` times, on
the loop's one shared ticker. The exit is noticed at once (a task awaits it); after the last
poll the worker is stalled. Two rules end a worker earlier: silence (no output, or no stream
event, and no CPU for `silence_timeout`) and a result without an exit (`exit_grace` after its
stream's final result).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from .audit import Frequent, Logger
from .config import Policy
from .launchers import Worker
from .ticker import ticker


class Ended(enum.StrEnum):
    EXIT = "exit"
    """The worker exited by itself."""
    POLLS = "polls"
    """It outlived its last poll: stalled."""
    SILENT = "silent"
    """Nothing from it, and no CPU used, for silence_timeout: stalled early."""
    NO_EXIT = "no_exit"
    """Its stream gave its final result, and it did not exit within exit_grace."""


@dataclasses.dataclass(frozen=True)
class WatchOutcome:
    returncode: int | None
    """The exit code, or None if the worker did not exit by itself."""
    polls: int
    """How many polls happened before the exit (or all of them, when stalled)."""
    ended: Ended = Ended.EXIT
    silent_for: float | None = None
    """Seconds without output or CPU (silent only)."""
    halted: bool = False
    """Stopped early on request (a budget was spent), neither exited nor stalled."""

    @property
    def stalled(self) -> bool:
        """Stopped without an end of its own: after its polls, or silent."""
        return self.returncode is None and self.ended is not Ended.NO_EXIT and not self.halted


class Liveness:
    """What the worker's output says: how many stream events it gave (None: a text worker,
    whose log growth is all there is) and whether its final result came."""

    def __init__(self, stream: bool) -> None:
        self.events: int | None = 0 if stream else None
        self.result = anyio.Event()

    def event(self, final: bool = False) -> None:
        if self.events is not None:
            self.events += 1
        if final:
            self.result.set()


async def watch(
    worker: Worker,
    policy: Policy,
    log: Logger,
    silence_timeout: float | None = None,
    liveness: Liveness | None = None,
    on_poll: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    halt: anyio.Event | None = None,
) -> WatchOutcome:
    """Wait for the worker's exit, polling (an audit event each) until it exits or stalls.

    A sibling task awaits the exit and cancels the rest at once. The polls run on the loop's
    shared ticker (`ticker.py`): one timer for every worker, not a timer, a wake-up and a task
    switch per worker and poll. Silence and the exit grace are sibling tasks of their own,
    cancelling the same way. `on_poll` adds fields to each poll (and may save what it saw);
    `halt`, once set, ends the watch at once (the caller stops the worker).
    """
    returncode: int | None = None
    early: list[tuple[Ended, float | None]] = []
    halted = False
    polls = _Polls(worker, policy, log, on_poll)

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
        if silence_timeout is not None:
            progress = _progress(worker, liveness)
            tg.start_soon(_silence, worker, silence_timeout, progress, tg.cancel_scope, early)
        if liveness is not None and liveness.events is not None:
            tg.start_soon(_exit_grace, liveness, policy.exit_grace, tg.cancel_scope, early)
        if halt is not None:
            tg.start_soon(await_halt, tg.cancel_scope, halt)
        await polls.run(tg.cancel_scope)
    if polls.error is not None:
        raise polls.error
    # a worker can exit right at the last poll (or the moment it went silent): give it that,
    # rather than call it stalled
    returncode = returncode if returncode is not None else worker.returncode
    if returncode is not None:
        return WatchOutcome(returncode, polls.done)
    if halted:
        return WatchOutcome(None, polls.done, halted=True)
    if early:
        ended, silent_for = early[0]
        return WatchOutcome(None, polls.done, ended, silent_for)
    return WatchOutcome(None, polls.done, Ended.POLLS)


class _Polls:
    """A worker's polls, `start + k × poll_interval` for k = 1 … max_polls; after the last one
    the watch ends (stalled). Without `on_poll` each poll is a callback of the shared ticker
    (no task wakes up); with it, the watch's task sleeps on the ticker and awaits `on_poll`."""

    def __init__(
        self,
        worker: Worker,
        policy: Policy,
        log: Logger,
        on_poll: Callable[[], Awaitable[dict[str, Any]]] | None,
    ) -> None:
        self.worker = worker
        self.policy = policy
        self.on_poll = on_poll
        self.done = 0
        """How many polls happened."""
        self.error: Exception | None = None
        """What a poll on the ticker raised (re-raised by the watch)."""
        self._event = Frequent(log, "worker.poll")
        self._last_size = 0

    def _emit(self, cycle: int, size: int, extra: dict[str, Any]) -> None:
        self._event(
            cycle=cycle,
            max_polls=self.policy.max_polls,
            elapsed=round(self.worker.elapsed(), 3),
            log_bytes=size,
            log_growth=size - self._last_size,
            **extra,
        )
        self._last_size = size
        self.done = cycle

    async def run(self, scope: anyio.CancelScope) -> None:
        """Poll until the last poll (then cancel `scope`) or until cancelled."""
        shared = ticker()
        interval, last = self.policy.poll_interval, self.policy.max_polls
        if self.on_poll is not None:
            start = shared.time()
            for cycle in range(1, last + 1):
                await shared.sleep_until(start + cycle * interval, interval)
                size = self.worker.log_size()
                self._emit(cycle, size, await self.on_poll())
            scope.cancel()
            return
        if last < 1:
            scope.cancel()
            return

        def poll() -> None:
            try:
                self._emit(entry.cycle, self.worker.log_size(), {})
            except Exception as exc:  # on the ticker: the watch raises it
                self.error = exc
                entry.cancel()
                scope.cancel()
                return
            if entry.cycle >= last:
                entry.cancel()
                scope.cancel()

        entry = shared.every(interval, poll)
        try:
            # until cancelled (by the exit, or the last poll); not sleep_forever, which arms
            # a timer (of infinite delay) per worker
            await anyio.Event().wait()
        finally:
            entry.cancel()


def _progress(worker: Worker, liveness: Liveness | None) -> Callable[[], int]:
    """What counts as the worker saying something: a stream event, or else log growth (a
    stream worker's banner or a tool's output is not the agent speaking)."""
    if liveness is not None and liveness.events is not None:
        return lambda: liveness.events or 0
    return worker.log_size


async def _silence(
    worker: Worker,
    limit: float,
    progress: Callable[[], int],
    scope: anyio.CancelScope,
    early: list[tuple[Ended, float | None]],
) -> None:
    """Cancel `scope` once the worker has said nothing and its processes used no CPU for
    `limit` seconds (a long build is busy, never silent). Looked at five times per limit."""
    tick = min(max(limit / 5, 0.02), 60.0)
    said = progress()
    cpu = await anyio.to_thread.run_sync(worker.cpu_sample)
    quiet_since = time.monotonic()
    shared = ticker()
    while True:
        await shared.sleep(tick)
        now_said = progress()
        now_cpu = await anyio.to_thread.run_sync(worker.cpu_sample)
        if now_said != said or now_cpu != cpu:  # CPU used, or processes came or went
            quiet_since = time.monotonic()
        said, cpu = now_said, now_cpu
        quiet = time.monotonic() - quiet_since
        if quiet >= limit:
            early.append((Ended.SILENT, round(quiet, 3)))
            scope.cancel()
            return


async def _exit_grace(
    liveness: Liveness,
    grace: float,
    scope: anyio.CancelScope,
    early: list[tuple[Ended, float | None]],
) -> None:
    await liveness.result.wait()
    await anyio.sleep(grace)
    early.append((Ended.NO_EXIT, None))
    scope.cancel()
