"""Budget arithmetic, as pure functions of what was spent and an injected `now`: the limits in
force for a plan, which budget is at 80 % (a warning) or 100 % (the plan is paused), and the
UTC day the daily budget counts by.

Limits come from `[budgets]` in the config and in the plan (a plan may only lower them), and
from `orchestrd resume --budget NAME=VALUE` (the operator's own raise for one plan).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Literal

from .config import parse_duration

BUDGETS: dict[str, str] = {
    "attempt_max_tokens": "tokens one worker attempt may spend",
    "attempt_max_cost_usd": "USD one worker attempt may spend",
    "plan_max_tokens": "tokens a plan may spend, all attempts together",
    "plan_max_cost_usd": "USD a plan may spend, all attempts together",
    "plan_max_wall": "wall-clock time of the whole plan, remediations included (seconds)",
    "daily_max_cost_usd": "USD all plans of the daemon may spend in one UTC day",
}
"""Every budget, with what it limits."""

WARN_AT = 0.8
"""The share of a limit at which one `budget.warning` is given."""

Level = Literal["warning", "exceeded"]


@dataclasses.dataclass(frozen=True)
class Spent:
    """What has been spent, in the units of each budget."""

    attempt_tokens: int = 0
    attempt_cost_usd: float = 0.0
    plan_tokens: int = 0
    plan_cost_usd: float = 0.0
    plan_wall: float = 0.0
    day_cost_usd: float = 0.0

    def of(self, budget: str) -> float:
        return {
            "attempt_max_tokens": self.attempt_tokens,
            "attempt_max_cost_usd": self.attempt_cost_usd,
            "plan_max_tokens": self.plan_tokens,
            "plan_max_cost_usd": self.plan_cost_usd,
            "plan_max_wall": self.plan_wall,
            "daily_max_cost_usd": self.day_cost_usd,
        }[budget]


@dataclasses.dataclass(frozen=True)
class Crossing:
    """A budget at or past a threshold: `warning` at 80 %, `exceeded` at 100 %."""

    budget: str
    spent: float
    limit: float
    level: Level


def limits(
    config: Mapping[str, float | None],
    plan: Mapping[str, float | None] | None = None,
    raised: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The limits in force for one plan: the config's, lowered where the plan sets less, then
    the operator's raises for this plan (`resume --budget`). A budget nobody sets is absent."""
    out = {k: v for k, v in config.items() if v is not None}
    for name, value in (plan or {}).items():
        if value is not None:
            out[name] = min(value, out.get(name, value))
    out.update(raised or {})
    return out


def raised_above(config: Mapping[str, float | None], plan: Mapping[str, float | None]) -> list[str]:
    """The budgets a plan sets higher than the config (not allowed: a plan may only lower)."""
    return [
        name
        for name, value in plan.items()
        if value is not None and (limit := config.get(name)) is not None and value > limit
    ]


def crossings(limits: Mapping[str, float], spent: Spent) -> list[Crossing]:
    """Every limited budget at 80 % or more of its limit, in BUDGETS order."""
    out = []
    for name in BUDGETS:
        limit = limits.get(name)
        if limit is None:
            continue
        value = spent.of(name)
        if value >= limit:
            out.append(Crossing(name, value, limit, "exceeded"))
        elif value >= WARN_AT * limit:
            out.append(Crossing(name, value, limit, "warning"))
    return out


def news(
    limits: Mapping[str, float], spent: Spent, warned: set[str]
) -> tuple[list[Crossing], Crossing | None]:
    """The warnings not given before (`warned` is updated) and the first exceeded budget, if
    any. An exceeded budget that was never warned about is warned about too: every budget
    crosses 80 % before it crosses 100 %, even when one stream event takes it over both."""
    new_warnings = []
    exceeded = None
    for c in crossings(limits, spent):
        if c.budget not in warned:
            warned.add(c.budget)
            new_warnings.append(dataclasses.replace(c, level="warning"))
        if c.level == "exceeded" and exceeded is None:
            exceeded = c
    return new_warnings, exceeded


def next_utc_midnight(now: dt.datetime) -> dt.datetime:
    """When the UTC day after `now` begins: a plan paused by the daily budget resumes then."""
    day = now.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def parse_raise(text: str) -> tuple[str, float]:
    """`NAME=VALUE` of `orchestrd resume --budget` → (name, limit); `plan_max_wall` takes a
    duration ("2h"). ValueError saying what to write."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in BUDGETS:
        raise ValueError(
            f"--budget {text!r}: write NAME=VALUE with NAME one of " + ", ".join(BUDGETS)
        )
    if name == "plan_max_wall":
        try:
            return name, parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"--budget {text!r}: {exc}") from None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--budget {text!r}: {value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"--budget {text!r}: the limit must be a number greater than zero")
    return name, number
