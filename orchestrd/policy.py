"""The poll policy: one timeout task per worker, polling every `poll_interval` at most
`max_polls` times. The exit is noticed at once (the task awaits it); after the last poll the
worker is stalled. Two rules end a worker earlier: silence (no output, or no stream event, and
no CPU for `silence_timeout`) and a result without an exit (`exit_grace` after its stream's
final result).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from .audit import Logger
from .config import Policy
from .launchers import Worker


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

    The timeout task sleeps between polls while a sibling task awaits the exit; the exit
    cancels the timeout task at once. (A cancel scope around the wait at every poll would cost
    a cancellation per poll: at 1,000 workers polled every second that showed in profiles.)
    Silence and the exit grace are sibling tasks of their own, cancelling the same way.
    `on_poll` adds fields to each poll (and may save what it saw); `halt`, once set, ends the
    watch at once (the caller stops the worker).
    """
    returncode: int | None = None
    polls = 0
    early: list[tuple[Ended, float | None]] = []
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
        if silence_timeout is not None:
            progress = _progress(worker, liveness)
            tg.start_soon(_silence, worker, silence_timeout, progress, tg.cancel_scope, early)
        if liveness is not None and liveness.events is not None:
            tg.start_soon(_exit_grace, liveness, policy.exit_grace, tg.cancel_scope, early)
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
    # a worker can exit right at the last poll (or the moment it went silent): give it that,
    # rather than call it stalled
    returncode = returncode if returncode is not None else worker.returncode
    if returncode is not None:
        return WatchOutcome(returncode, polls)
    if halted:
        return WatchOutcome(None, polls, halted=True)
    if early:
        ended, silent_for = early[0]
        return WatchOutcome(None, polls, ended, silent_for)
    return WatchOutcome(None, polls, Ended.POLLS)


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
    while True:
        await anyio.sleep(tick)
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
