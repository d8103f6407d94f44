"""The usage ledger: what each worker attempt spent (tokens by kind, the cost and where the
cost came from), accumulated from its stream's events, split by UTC day, and summed over
attempts, plans, profiles and models.

A cost is `reported` when the agent CLI said it, `estimated` from the `[prices]` table of the
config (USD per million tokens of each kind) when it did not, and `unknown` without a price:
never a made-up number.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from .streams import Session, StreamEvent, Usage

CostSource = Literal["reported", "estimated", "unknown"]


class Price(Protocol):
    """USD per million tokens of each kind (the config's `[prices.MODEL]`)."""

    @property
    def input(self) -> float: ...
    @property
    def cached_input(self) -> float: ...
    @property
    def output(self) -> float: ...


def find_price(prices: Mapping[str, Price], model: str | None) -> Price | None:
    """The price of `model`: its own entry, else the longest entry it starts with (a dated
    model id such as `claude-sonnet-4-5-20250929` under `claude-sonnet-4-5`)."""
    if not model:
        return None
    if model in prices:
        return prices[model]
    stems = [k for k in prices if k and model.startswith(k)]
    return prices[max(stems, key=len)] if stems else None


def estimate(
    price: Price, input_tokens: int, cached_input_tokens: int, output_tokens: int
) -> float:
    return (
        input_tokens * price.input
        + cached_input_tokens * price.cached_input
        + output_tokens * price.output
    ) / 1_000_000


def utc_day(now: dt.datetime) -> str:
    """The UTC calendar day of `now` (aware) as YYYY-MM-DD: budgets and `usage` count by it."""
    return now.astimezone(dt.UTC).date().isoformat()


class DaySpend(BaseModel):
    """What an attempt spent on one UTC day (an attempt may run past midnight)."""

    tokens: int = 0
    cost_usd: float = 0.0


class UsageRecord(BaseModel):
    """One attempt's entry in the ledger (kept in state.toml with the attempt)."""

    profile: str | None = None
    model: str | None = None
    input_tokens: int = 0
    """Input not read from a cache (cache writes included)."""
    cached_input_tokens: int = 0
    output_tokens: int = 0
    """Output, reasoning included."""
    tokens: int = 0
    """All three kinds together: what token budgets count."""
    cost_usd: float | None = None
    cost_source: CostSource = "unknown"
    days: dict[str, DaySpend] = Field(default_factory=dict)
    """UTC day → what was spent that day (the daily budget and `orchestrd usage` read these)."""


class Meter:
    """One attempt's usage as its stream goes by: the running totals, the cost, and the share
    of each UTC day. Stream events are totals, so a later one replaces an earlier one; what
    changed since is booked on the day it was seen."""

    def __init__(
        self,
        prices: Mapping[str, Price],
        profile: str | None = None,
        model: str | None = None,
        record: UsageRecord | None = None,
        on_book: Callable[[str, float], None] | None = None,
    ) -> None:
        self.prices = prices
        self.on_book = on_book
        """Told (day, cost) of every cost booked: the daemon's spending per day."""
        self.record = record if record is not None else UsageRecord(profile=profile, model=model)
        self._stream_model: str | None = None
        self._reported: float | None = None

    def observe(self, event: StreamEvent, now: dt.datetime) -> bool:
        """Take one stream event in; True if the usage (or the model it is priced by)
        changed."""
        if isinstance(event, Session) and event.model:
            self._stream_model = event.model
            return self._update(now, None)
        if isinstance(event, Usage):
            if event.model:
                self._stream_model = event.model
            if event.cost_usd is not None:
                self._reported = event.cost_usd
            return self._update(now, event)
        return False

    @property
    def model(self) -> str | None:
        """The stream's model when it names one, else the profile's."""
        return self._stream_model or self.record.model

    @property
    def unpriced(self) -> bool:
        """Tokens were spent, the CLI gave no cost and `[prices]` has none for the model."""
        return self.record.cost_source == "unknown" and self.record.tokens > 0

    def _update(self, now: dt.datetime, usage: Usage | None) -> bool:
        r = self.record
        before = (r.tokens, r.cost_usd or 0.0, r.model, r.cost_source)
        if usage is not None:
            r.input_tokens = usage.input_tokens
            r.cached_input_tokens = usage.cached_input_tokens
            r.output_tokens = usage.output_tokens
            r.tokens = usage.tokens
        r.model = self.model
        price = find_price(self.prices, r.model)
        if self._reported is not None:
            r.cost_usd, r.cost_source = self._reported, "reported"
        elif price is not None:
            r.cost_usd = estimate(price, r.input_tokens, r.cached_input_tokens, r.output_tokens)
            r.cost_source = "estimated"
        else:
            r.cost_usd, r.cost_source = None, "unknown"
        tokens, cost = r.tokens - before[0], (r.cost_usd or 0.0) - before[1]
        if tokens or cost:
            day = r.days.setdefault(utc_day(now), DaySpend())
            day.tokens += tokens
            day.cost_usd += cost
            if cost and self.on_book is not None:
                self.on_book(utc_day(now), cost)
        return (r.tokens, r.cost_usd or 0.0, r.model, r.cost_source) != before


@dataclasses.dataclass
class Totals:
    """Usage summed over ledger entries. The cost is the sum of the known costs; `unpriced`
    counts the entries that spent tokens at no known cost (so a sum is a floor, and says so)."""

    tokens: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    unpriced: int = 0

    def add(self, r: UsageRecord) -> None:
        self.tokens += r.tokens
        self.input_tokens += r.input_tokens
        self.cached_input_tokens += r.cached_input_tokens
        self.output_tokens += r.output_tokens
        self.cost_usd += r.cost_usd or 0.0
        self.attempts += 1
        if r.cost_usd is None and r.tokens:
            self.unpriced += 1

    def as_dict(self) -> dict[str, int | float]:
        data = dataclasses.asdict(self)
        data["cost_usd"] = round(self.cost_usd, 6)
        return data


def total(records: Iterable[UsageRecord]) -> Totals:
    t = Totals()
    for r in records:
        t.add(r)
    return t


@dataclasses.dataclass
class Report:
    """`orchestrd usage`: the ledger summed per plan, per UTC day, per profile and per model."""

    total: Totals = dataclasses.field(default_factory=Totals)
    plans: dict[str, Totals] = dataclasses.field(default_factory=dict)
    days: dict[str, Totals] = dataclasses.field(default_factory=dict)
    profiles: dict[str, Totals] = dataclasses.field(default_factory=dict)
    models: dict[str, Totals] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total.as_dict(),
            **{
                name: {k: v.as_dict() for k, v in sorted(getattr(self, name).items())}
                for name in ("plans", "days", "profiles", "models")
            },
        }


def report(entries: Iterable[tuple[str, UsageRecord]], since: str | None = None) -> Report:
    """Sum `(plan, record)` entries; with `since` (YYYY-MM-DD) only what was spent on that
    UTC day or later (an entry's days split it by day)."""
    out = Report()
    for plan, r in entries:
        days = {d: s for d, s in r.days.items() if since is None or d >= since}
        if since is not None and not days:
            continue
        part = r if since is None or len(days) == len(r.days) else _share(r, days)
        out.total.add(part)
        out.plans.setdefault(plan, Totals()).add(part)
        out.profiles.setdefault(r.profile or "?", Totals()).add(part)
        out.models.setdefault(r.model or "?", Totals()).add(part)
        for d in days:
            out.days.setdefault(d, Totals()).add(_share(r, {d: days[d]}))
    return out


def _share(r: UsageRecord, days: Mapping[str, DaySpend]) -> UsageRecord:
    """The part of an entry spent on `days`: tokens and cost from the day split; the kinds
    (not split by day) in the same proportion."""
    tokens = sum(s.tokens for s in days.values())
    ratio = tokens / r.tokens if r.tokens else 0.0
    return r.model_copy(
        update={
            "tokens": tokens,
            "input_tokens": round(r.input_tokens * ratio),
            "cached_input_tokens": round(r.cached_input_tokens * ratio),
            "output_tokens": round(r.output_tokens * ratio),
            "cost_usd": sum(s.cost_usd for s in days.values()) if r.cost_usd is not None else None,
            "days": dict(days),
        }
    )
