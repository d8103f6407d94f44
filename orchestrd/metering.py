"""One attempt's spending as it happens: the worker's output, as it is pumped into its log,
goes through its stream adapter into the usage meter, and every change is held against the
plan's budgets and the daemon's daily one. The moment a budget is spent, `stop` is set (the
runner stops the worker and pauses the plan); nothing here touches a process or a state.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio

from .audit import Logger
from .budgets import Crossing, Spent, news
from .streams import Error, Result, StreamEvent, StreamReader, Usage
from .usage import Meter, Price, Totals, UsageRecord, utc_day

Clock = Callable[[], dt.datetime]
DAILY = "daily_max_cost_usd"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Spending:
    """What every plan of this daemon spent per UTC day (known costs), for the daily budget:
    seeded from the ledger at start (so it survives a restart) and kept current by every
    attempt's meter. When one attempt takes the day over its limit, every running attempt is
    told (the daily budget pauses every plan)."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock
        self.days: dict[str, float] = {}
        self.warned: set[str] = set()
        """Days the daily budget was warned about (once a day for the whole daemon)."""
        self.unpriced: set[str] = set()
        """Models warned about having no price (once per daemon run)."""
        self.meters: set[AttemptMeter] = set()

    def seed(self, records: Iterable[UsageRecord]) -> None:
        for r in records:
            for day, spend in r.days.items():
                self.days[day] = self.days.get(day, 0.0) + spend.cost_usd

    def book(self, day: str, cost: float) -> None:
        self.days[day] = self.days.get(day, 0.0) + cost

    def today(self) -> float:
        return self.days.get(utc_day(self.clock()), 0.0)

    def exceeded_today(self, limit: float | None) -> Crossing | None:
        spent = self.today()
        if limit is None or spent < limit:
            return None
        return Crossing(DAILY, spent, limit, "exceeded")

    def broadcast(self, origin: AttemptMeter) -> None:
        """The day's spending went over a daily limit: every other running attempt holds it
        against its own plan's limits (a plan may have set a lower one)."""
        for meter in list(self.meters):
            if meter is not origin:
                meter.check()


class PlanBudget:
    """One plan's budgets while it runs: the limits in force, what it spent before (from its
    ledger: earlier attempts, and wall time of earlier runs), and the warnings already given
    (kept in its state, so a restart does not repeat them)."""

    def __init__(
        self,
        limits: Mapping[str, float],
        before: Totals,
        wall_before: float,
        warned: set[str],
        spending: Spending,
    ) -> None:
        self.limits = dict(limits)
        self.before = before
        self.wall_before = wall_before
        self.run_started = time.monotonic()
        self.warned = warned
        self.spending = spending
        self.announced: set[str] = set()
        """Budgets whose `budget.exceeded` went out in this run (one event per pause)."""

    def wall(self) -> float:
        """The plan's wall-clock time so far: earlier runs plus this one."""
        return self.wall_before + time.monotonic() - self.run_started

    def spent(self, attempt: UsageRecord | None = None) -> Spent:
        a = attempt or UsageRecord()
        return Spent(
            attempt_tokens=a.tokens,
            attempt_cost_usd=a.cost_usd or 0.0,
            plan_tokens=self.before.tokens + a.tokens,
            plan_cost_usd=self.before.cost_usd + (a.cost_usd or 0.0),
            plan_wall=self.wall(),
            day_cost_usd=self.spending.today(),
        )

    def check(
        self, attempt_warned: set[str], attempt: UsageRecord | None = None
    ) -> tuple[list[Crossing], Crossing | None]:
        """New warnings (each budget once: attempt budgets per attempt, plan budgets per plan,
        the daily one per day for the daemon) and the first exceeded budget."""
        day = f"{DAILY}@{utc_day(self.spending.clock())}"
        given = self.warned | attempt_warned | ({DAILY} if day in self.spending.warned else set())
        warnings, exceeded = news(self.limits, self.spent(attempt), given)
        for w in warnings:
            if w.budget == DAILY:
                self.spending.warned.add(day)
            elif w.budget.startswith("attempt_"):
                attempt_warned.add(w.budget)
            else:
                self.warned.add(w.budget)
        return warnings, exceeded

    def exceeded_now(self, log: Logger) -> Crossing | None:
        """A budget already spent before an attempt starts (the plan's own, the wall clock,
        or the day's): the attempt is not started."""
        warnings, exceeded = self.check(set())
        for w in warnings:
            warn(log, w)
        if exceeded is not None and exceeded.budget not in self.announced:
            # not said already by the last worker's final stream line
            log.info(
                "budget.exceeded",
                budget=exceeded.budget,
                spent=_round(exceeded.spent),
                limit=exceeded.limit,
            )
        return exceeded


def warn(log: Logger, crossing: Crossing) -> None:
    log.info(
        "budget.warning", budget=crossing.budget, spent=_round(crossing.spent), limit=crossing.limit
    )


def _round(value: float) -> float:
    return round(value, 6)


class AttemptMeter:
    """The `on_output` observer of one worker: stream adapter → usage meter → budgets."""

    def __init__(
        self,
        reader: StreamReader | None,
        meter: Meter,
        budget: PlanBudget,
        log: Logger,
    ) -> None:
        self.reader = reader
        self.meter = meter
        self.budget = budget
        self.log = log
        self.clock = budget.spending.clock
        self.exceeded: Crossing | None = None
        self.stop = anyio.Event()
        """Set when a budget is spent: the worker must be stopped."""
        self.warned: set[str] = set()
        self.ending = False
        """The budget was spent by the agent's closing count: it is about to exit by itself."""
        self.more = anyio.Event()
        """Set by a stream event after the budget was spent: the agent was not ending."""
        self._reported = (0, -1.0)  # nothing spent, nothing to report
        self._polled_events = 0
        self.unsaved = False
        """A `worker.usage` went out that the plan's state does not hold yet."""
        self.watchers: list[Callable[[StreamEvent], None]] = []
        """Also told every event (liveness and limits read them)."""

    def __enter__(self) -> AttemptMeter:
        self.budget.spending.meters.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.budget.spending.meters.discard(self)

    @property
    def record(self) -> UsageRecord:
        return self.meter.record

    def feed(self, chunk: bytes) -> None:
        """Called with every chunk of output, in the pump's task: never raises, never waits."""
        if self.reader is not None:
            self._take(self.reader.feed(chunk))

    def finish(self, returncode: int | None) -> bool:
        """The output ended: a last line without a line break, the exit code's meaning, and
        the final `worker.usage`; whether the usage changed since it was last reported."""
        if self.reader is not None:
            self._take(self.reader.finish(returncode))
        # at the end: claude reports its cost only in its last line
        if self.meter.unpriced and (model := self.meter.model or "?") not in (
            self.budget.spending.unpriced
        ):
            self.budget.spending.unpriced.add(model)
            self.log.info("usage.unpriced", model=model, profile=self.record.profile)
        return self.report()

    def _take(self, events: list[StreamEvent]) -> None:
        now = self.clock()
        for event in events:
            for watcher in self.watchers:
                watcher(event)
            if self.exceeded is not None and not isinstance(event, Result | Error):
                self.more.set()  # it works on: not ending
            if self.meter.observe(event, now):
                self.ending = isinstance(event, Usage) and event.final
                self.check()

    def check(self) -> None:
        """Hold what was spent against the budgets: warnings, and a trip when one is spent."""
        if self.exceeded is not None:
            return
        warnings, exceeded = self.budget.check(self.warned, self.record)
        for w in warnings:
            warn(self.log, w)
        if exceeded is not None:
            self.trip(exceeded)
            if exceeded.budget == DAILY:
                self.budget.spending.broadcast(self)

    def trip(self, crossing: Crossing) -> None:
        """A budget is spent: say which, and ask for the worker to be stopped."""
        if self.exceeded is not None:
            return
        self.exceeded = crossing
        self.budget.announced.add(crossing.budget)
        self.log.info(
            "budget.exceeded",
            budget=crossing.budget,
            spent=_round(crossing.spent),
            limit=crossing.limit,
        )
        self.stop.set()

    async def wall_timer(self) -> None:
        """Trip the wall-clock budget when its time is up, stream events or not."""
        limit = self.budget.limits.get("plan_max_wall")
        if limit is None:
            await anyio.sleep_forever()
            return
        await anyio.sleep(max(0.0, limit - self.budget.wall()))
        self.check()

    def poll_fields(self) -> dict[str, Any]:
        """`tokens` (so far) and `events` (stream events since the last poll) for
        `worker.poll`; a `worker.usage` goes out first if the usage changed (so at most one a
        poll)."""
        self.report()
        events = self.reader.events if self.reader is not None else 0
        since, self._polled_events = events - self._polled_events, events
        return {"tokens": self.record.tokens, "events": since}

    def report(self) -> bool:
        """`worker.usage` with the running totals, if they changed since the last one."""
        r = self.record
        now = (r.tokens, r.cost_usd if r.cost_usd is not None else -1.0)
        if now == self._reported or self.reader is None:
            return False
        self._reported = now
        self.unsaved = True
        extra: dict[str, Any] = {}
        if self.reader.unparsed or self.reader.skipped:
            extra = {"unparsed_lines": self.reader.unparsed, "skipped_lines": self.reader.skipped}
        self.log.info(
            "worker.usage",
            model=r.model,
            input_tokens=r.input_tokens,
            cached_input_tokens=r.cached_input_tokens,
            output_tokens=r.output_tokens,
            tokens=r.tokens,
            cost_usd=None if r.cost_usd is None else _round(r.cost_usd),
            cost_source=r.cost_source,
            **extra,
        )
        return True


def new_meter(
    prices: Mapping[str, Price], profile: str, model: str | None, spending: Spending
) -> Meter:
    """A usage meter whose spending per day is booked in the daemon's `spending` too."""
    return Meter(prices, profile=profile, model=model, on_book=spending.book)
