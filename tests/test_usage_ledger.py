"""The usage ledger (tokens by kind, cost reported / estimated / unknown, split by UTC day)
and the budget arithmetic (limits in force, 80 % warnings, 100 % exceeded, the UTC day), as
pure functions with an injected `now`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from orchestrd import budgets
from orchestrd.budgets import Crossing, Spent
from orchestrd.streams import Session, Tool, Usage
from orchestrd.usage import Meter, UsageRecord, find_price, report, total, utc_day


@dataclasses.dataclass(frozen=True)
class P:
    input: float
    cached_input: float
    output: float


PRICES = {"gpt-5-codex": P(1.25, 0.125, 10.0), "claude-sonnet-4-5": P(3.0, 0.3, 15.0)}
NOON = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def test_codex_cost_is_estimated_from_prices_with_the_profiles_model() -> None:
    meter = Meter(PRICES, profile="codex", model="gpt-5-codex")
    assert meter.observe(Session("thread-1"), NOON) is False  # codex names no model
    assert meter.observe(Usage(800_000, 200_000, 100_000), NOON)
    r = meter.record
    assert (r.input_tokens, r.cached_input_tokens, r.output_tokens, r.tokens) == (
        800_000,
        200_000,
        100_000,
        1_100_000,
    )
    assert r.cost_source == "estimated"
    assert r.cost_usd == pytest.approx(1.0 + 0.025 + 1.0)
    # a later total replaces the earlier one; only the growth is booked again
    meter.observe(Usage(1_600_000, 400_000, 200_000), NOON)
    assert r.tokens == 2_200_000 and r.cost_usd == pytest.approx(4.05)
    assert r.days[utc_day(NOON)].tokens == 2_200_000
    assert not meter.observe(Tool("ls", 0), NOON)


def test_claude_cost_is_reported_and_a_dated_model_finds_its_price() -> None:
    meter = Meter(PRICES, profile="claude")
    meter.observe(Session("s", "claude-sonnet-4-5-20250929"), NOON)
    meter.observe(Usage(1000, 0, 0), NOON)
    # before the result: an estimate from the model the stream named
    assert meter.record.cost_source == "estimated"
    assert meter.record.cost_usd == pytest.approx(0.003)
    meter.observe(Usage(2000, 500, 100, cost_usd=0.25), NOON)
    assert meter.record.cost_source == "reported" and meter.record.cost_usd == 0.25
    assert meter.record.model == "claude-sonnet-4-5-20250929"
    assert meter.record.days[utc_day(NOON)].cost_usd == pytest.approx(0.25)


def test_no_price_no_estimate() -> None:
    meter = Meter(PRICES, profile="gemini")
    assert not meter.unpriced
    meter.observe(Usage(10, 0, 5, model="gemini-2.5-pro"), NOON)
    assert meter.record.cost_source == "unknown" and meter.record.cost_usd is None
    assert meter.unpriced and meter.model == "gemini-2.5-pro"
    assert Meter({}, model=None).record.cost_source == "unknown"
    assert find_price(PRICES, "gpt-5") is None and find_price(PRICES, None) is None


def test_spending_past_midnight_is_booked_on_each_day() -> None:
    meter = Meter(PRICES, model="gpt-5-codex")
    late = dt.datetime(2026, 12, 4, 23, 59, tzinfo=dt.UTC)
    # a local time zone does not move the UTC day
    early = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    meter.observe(Usage(1_000_000, 0, 0), late)
    meter.observe(Usage(3_000_000, 0, 0), early + dt.timedelta(hours=1))
    days = meter.record.days
    assert sorted(days) == ["2026-12-04", "2026-12-05"]
    assert days["2026-12-04"].tokens == 1_000_000 and days["2026-12-05"].tokens == 2_000_000
    assert days["2026-12-05"].cost_usd == pytest.approx(2.5)
    assert utc_day(early) == "2026-12-04"  # 01:00+02:00 is 23:00 UTC the day before


def test_a_record_round_trips_and_sums() -> None:
    a = Meter(PRICES, profile="codex", model="gpt-5-codex")
    a.observe(Usage(1000, 200, 300), NOON)
    b = Meter({}, profile="gemini", model="gemini-2.5-pro")
    b.observe(Usage(50, 0, 5), NOON + dt.timedelta(days=1))
    again = UsageRecord.model_validate(a.record.model_dump(mode="json"))
    assert again == a.record
    t = total([a.record, b.record])
    assert (t.tokens, t.attempts, t.unpriced) == (1555, 2, 1)
    assert t.cost_usd == pytest.approx(a.record.cost_usd or 0)
    rep = report([("A", a.record), ("B", b.record)])
    assert set(rep.days) == {"2026-12-04", "2026-12-05"}
    assert rep.profiles["gemini"].tokens == 55 and rep.models["gpt-5-codex"].tokens == 1500
    assert rep.plans["A"].cost_usd == pytest.approx(t.cost_usd)
    only_b = report([("A", a.record), ("B", b.record)], since="2026-12-05")
    assert set(only_b.plans) == {"B"} and only_b.total.tokens == 55
    assert only_b.as_dict()["total"] == {**only_b.total.as_dict()}


def test_limits_a_plan_only_lowers_the_operator_raises() -> None:
    config = {"plan_max_tokens": 1000.0, "daily_max_cost_usd": 5.0, "attempt_max_tokens": None}
    plan = {"plan_max_tokens": 500.0, "daily_max_cost_usd": 9.0, "plan_max_wall": 60.0}
    assert budgets.limits(config, plan) == {
        "plan_max_tokens": 500.0,
        "daily_max_cost_usd": 5.0,
        "plan_max_wall": 60.0,
    }
    assert budgets.raised_above(config, plan) == ["daily_max_cost_usd"]
    assert budgets.limits(config, plan, {"plan_max_tokens": 2000.0})["plan_max_tokens"] == 2000


def test_warning_at_80_percent_once_and_exceeded_at_100() -> None:
    limits = {"plan_max_tokens": 1000.0, "plan_max_cost_usd": 2.0}
    warned: set[str] = set()
    assert budgets.news(limits, Spent(plan_tokens=799), warned) == ([], None)
    assert budgets.news(limits, Spent(plan_tokens=800), warned) == (
        [Crossing("plan_max_tokens", 800, 1000.0, "warning")],
        None,
    )
    assert budgets.news(limits, Spent(plan_tokens=900), warned) == ([], None)
    warnings, exceeded = budgets.news(limits, Spent(plan_tokens=1000), warned)
    assert warnings == [] and exceeded == Crossing("plan_max_tokens", 1000, 1000.0, "exceeded")
    # one event that takes a budget from below 80 % past 100 % still warns first
    warnings, exceeded = budgets.news(limits, Spent(plan_tokens=10, plan_cost_usd=3.0), set())
    assert warnings == [Crossing("plan_max_cost_usd", 3.0, 2.0, "warning")]
    assert exceeded is not None and exceeded.budget == "plan_max_cost_usd"


def test_every_budget_is_counted_in_its_own_unit() -> None:
    spent = Spent(1, 2.0, 3, 4.0, 5.0, 6.0)
    assert [spent.of(b) for b in budgets.BUDGETS] == [1, 2.0, 3, 4.0, 5.0, 6.0]
    all_at_limit = dict(zip(budgets.BUDGETS, [1, 2.0, 3, 4.0, 5.0, 6.0], strict=True))
    assert [c.level for c in budgets.crossings(all_at_limit, spent)] == ["exceeded"] * 6


def test_the_next_utc_day() -> None:
    berlin_evening = dt.datetime(2026, 12, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert budgets.next_utc_midnight(berlin_evening) == dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    last = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert budgets.next_utc_midnight(last) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("plan_max_tokens=5000", ("plan_max_tokens", 5000.0)),
        ("plan_max_wall=2h", ("plan_max_wall", 7200.0)),
        ("daily_max_cost_usd=12.5", ("daily_max_cost_usd", 12.5)),
    ],
)
def test_parse_raise(text: str, parsed: tuple[str, float]) -> None:
    assert budgets.parse_raise(text) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("plan_tokens=5", "NAME one of"),
        ("plan_max_tokens", "NAME=VALUE"),
        ("plan_max_tokens=lots", "not a number"),
        ("plan_max_cost_usd=-1", "greater than zero"),
        ("plan_max_wall=soon", "not a duration"),
    ],
)
def test_parse_raise_says_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        budgets.parse_raise(text)


def test_config_keys_match_the_adapters_and_budgets() -> None:
    from typing import get_args

    from orchestrd.config import Budgets, OutputFormat
    from orchestrd.streams import OUTPUTS

    assert get_args(OutputFormat) == OUTPUTS
    assert list(Budgets.model_fields) == list(budgets.BUDGETS)


def test_a_plan_may_only_lower_a_budget(tmp_path: Path) -> None:
    from conftest import make_config, make_plan

    from orchestrd.config import load_config
    from orchestrd.errors import PlanError
    from orchestrd.plan import load_plan

    config, _ = load_config(
        make_config(tmp_path, budgets={"plan_max_tokens": 1000, "plan_max_wall": "1h"})
    )
    lower = make_plan(tmp_path, budgets={"plan_max_tokens": 10, "plan_max_cost_usd": 1.5})
    assert load_plan(lower, config).budgets is not None
    higher = make_plan(tmp_path, budgets={"plan_max_tokens": 5000, "plan_max_wall": "2h"})
    with pytest.raises(PlanError) as err:
        load_plan(higher, config)
    text = str(err.value)
    assert "budgets.plan_max_tokens: 5000 is above the config's 1000" in text
    assert "budgets.plan_max_wall: 7200 is above the config's 3600" in text
    assert "orchestrd resume T --budget plan_max_tokens=" in text
