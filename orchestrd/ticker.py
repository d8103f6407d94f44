"""One timer for every periodic wake-up of the daemon's workers: a heap keyed by due time.

A timer per worker (an `anyio.sleep` per poll) costs a timer handle, its cancellation and a
task switch per poll: at 1,000 workers polled every second that was half the daemon's idle CPU.
Here each entry is due at `start + k × interval` (no drift however late a tick runs), rounded
up to a slot of its own resolution (`interval / 20`, at most SLOT seconds), and one timer handle
is armed for the earliest slot. When it fires, every entry due by then runs, in due order, in
that one callback: N workers cost at most one wake-up per slot, whatever N.

Callbacks run on the event loop, synchronously; they must not raise (a poll's own errors are
caught and handed to its watch). `sleep` is the awaitable form, for a task that waits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from collections.abc import Callable

SLOT = 0.02
"""The widest slot: how late (at most, besides the loop's own lag) a due entry runs."""


def resolution(interval: float) -> float:
    """The slot width for an entry every `interval` seconds: a twentieth of it, at most SLOT."""
    return min(interval / 20, SLOT)


class Periodic:
    """A callback every `interval` seconds from `start` (loop time) until cancelled; `cycle`
    counts the calls so far."""

    def __init__(
        self, ticker: Ticker, interval: float, callback: Callable[[], None], start: float
    ) -> None:
        self.ticker = ticker
        self.interval = interval
        self.callback = callback
        self.start = start
        self.cycle = 0
        self.cancelled = False
        self.slot = resolution(interval) if interval > 0 else 0.0

    @property
    def due(self) -> float:
        return self.start + (self.cycle + 1) * self.interval

    def cancel(self) -> None:
        """No more calls (its heap entry is dropped when its slot comes)."""
        self.cancelled = True


class Ticker:
    """The heap of due entries of one event loop, and its one timer handle."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Periodic]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.wakeups = 0
        """How many times the timer fired (the test that N workers share it reads this)."""

    def every(
        self, interval: float, callback: Callable[[], None], start: float | None = None
    ) -> Periodic:
        """Call `callback` at `start + k × interval` (k = 1, 2, …), each at most a slot late."""
        entry = Periodic(self, interval, callback, self._loop.time() if start is None else start)
        self._push(entry)
        self._arm()
        return entry

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds (at most a slot more) on the shared timer."""
        await self.sleep_until(self._loop.time() + delay, delay)

    async def sleep_until(self, deadline: float, interval: float) -> None:
        """Wait until `deadline` (loop time), at most the slot of `interval` more."""
        woken: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            entry.cancel()
            if not woken.done():
                woken.set_result(None)

        entry = self.every(interval, wake, start=deadline - interval)
        try:
            await woken
        finally:
            entry.cancel()

    def time(self) -> float:
        """The loop's clock, which due times are on."""
        return self._loop.time()

    def _push(self, entry: Periodic) -> None:
        due = entry.due
        at = math.ceil(due / entry.slot) * entry.slot if entry.slot > 0 else due
        heapq.heappush(self._heap, (at, next(self._order), entry))

    def _arm(self) -> None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)  # cancelled entries: no wake-up for them
        at = self._heap[0][0] if self._heap else math.inf
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._tick), at

    def _tick(self) -> None:
        # the loop runs a timer up to its clock resolution early: what is due at the armed
        # time is due now
        limit = max(self._loop.time(), self._timer_at)
        self._timer, self._timer_at = None, math.inf
        self.wakeups += 1
        again: list[Periodic] = []
        try:
            while self._heap and self._heap[0][0] <= limit:
                _, _, entry = heapq.heappop(self._heap)
                if entry.cancelled:
                    continue
                entry.cycle += 1
                entry.callback()
                again.append(entry)
        finally:
            # queued after this tick: a loop that lagged a whole interval calls an entry once
            # now and its next time at the next tick, not twice in a row
            for entry in again:
                if not entry.cancelled:
                    self._push(entry)
            self._arm()


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


def ticker() -> Ticker:
    """The running event loop's ticker."""
    loop = asyncio.get_running_loop()
    found = _TICKERS.get(loop)
    if found is None:
        found = _TICKERS[loop] = Ticker(loop)
    return found
