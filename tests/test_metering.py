"""An attempt's spending as its output is pumped: the fake agents' streams, fed chunk by chunk
to the observer, give worker.usage with the stream's totals, budget.warning at 80 % once,
budget.exceeded within one stream event of the cap, and the daily budget stops every running
attempt and starts afresh on the next UTC day (an injected clock)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from test_streams import replay
from test_usage_ledger import PRICES

from orchestrd.audit import AuditLog
from orchestrd.metering import AttemptMeter, PlanBudget, Spending, new_meter
from orchestrd.streams import open_stream
from orchestrd.usage import Totals

NOON = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def events(path: Path, name: str | None = None) -> list[dict[str, object]]:
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in found if name is None or e["event"] == name]


def attempt(
    tmp_path: Path,
    output: str,
    limits: dict[str, float] | None = None,
    spending: Spending | None = None,
    model: str | None = None,
    before: Totals | None = None,
) -> tuple[AttemptMeter, AuditLog]:
    audit = AuditLog(tmp_path / f"audit-{output}.jsonl")
    spending = spending or Spending(Clock(NOON))
    budget = PlanBudget(limits or {}, before or Totals(), 0.0, set(), spending)
    meter = new_meter(PRICES, output.split("-")[0], model, spending)
    return AttemptMeter(open_stream(output), meter, budget, audit.bind(plan="T")), audit


@pytest.mark.parametrize(
    ("agent", "model", "source"),
    [
        ("codex", "gpt-5-codex", "estimated"),
        ("claude", None, "reported"),
        ("gemini", None, "unknown"),
    ],
)
def test_usage_events_carry_the_streams_totals(
    tmp_path: Path, agent: str, model: str | None, source: str
) -> None:
    data, code, said = replay(tmp_path, agent, STREAM_STEPS="3", STREAM_GARBAGE="1")
    output = {
        "codex": "codex-json",
        "claude": "claude-stream-json",
        "gemini": "gemini-stream-json",
    }[agent]
    meter, audit = attempt(tmp_path, output, model=model)
    with meter:
        half = len(data) // 2
        for i in range(0, half, 7):  # pieces, as from a pipe
            meter.feed(data[i : min(i + 7, half)])
        poll = meter.poll_fields()
        assert 0 < poll["events"] == meter.reader.events  # type: ignore[union-attr]
        meter.feed(data[half:])
        meter.finish(code)
        assert meter.poll_fields()["events"] > 0
        assert meter.poll_fields() == {"tokens": meter.record.tokens, "events": 0}
    audit.close()
    usage = events(audit.sink.path, "worker.usage")
    last = usage[-1]
    assert (last["input_tokens"], last["cached_input_tokens"], last["output_tokens"]) == (
        said["input"],
        said["cached"],
        said["output"],
    )
    assert last["cost_source"] == source
    if source == "reported":
        assert last["cost_usd"] == said["cost"]
    # once per change, not once per stream event
    assert len(usage) <= 2 and last["unparsed_lines"] >= 4
    unpriced = events(audit.sink.path, "usage.unpriced")
    assert [e["model"] for e in unpriced] == (["gemini-2.5-pro"] if source == "unknown" else [])


def test_plan_tokens_stop_within_one_stream_event_of_the_cap(tmp_path: Path) -> None:
    data, _, _ = replay(
        tmp_path,
        "claude",
        STREAM_STEPS="10",
        STREAM_INPUT="1000",
        STREAM_CACHED="0",
        STREAM_OUTPUT="0",
    )
    # 1,000 tokens a message; 2,500 spent by earlier attempts; the cap is 6,000
    meter, audit = attempt(
        tmp_path, "claude-stream-json", {"plan_max_tokens": 6000}, before=Totals(tokens=2500)
    )
    lines = data.splitlines(keepends=True)
    with meter:
        for line in lines:
            meter.feed(line)
            if meter.stop.is_set():
                break
    audit.close()
    assert meter.exceeded is not None and meter.exceeded.budget == "plan_max_tokens"
    # the line that took it to 4,000 tokens (2,500 + 4,000 ≥ 6,000) set it, not a later one
    assert meter.record.tokens == 4000 and b'"msg_010004"' in line
    names = [e["event"] for e in events(audit.sink.path)]
    assert names.count("budget.warning") == 1 and names.count("budget.exceeded") == 1
    warning, exceeded = (e for e in events(audit.sink.path) if e["event"].startswith("budget"))
    assert warning["spent"] == 5500 and warning["limit"] == 6000  # 3 messages: ≥ 80 %
    assert exceeded["spent"] == 6500 and exceeded["budget"] == "plan_max_tokens"


def test_attempt_cost_from_estimates_before_claude_reports_it(tmp_path: Path) -> None:
    data, _, _ = replay(
        tmp_path,
        "codex",
        STREAM_STEPS="4",
        STREAM_INPUT="100000",
        STREAM_CACHED="0",
        STREAM_OUTPUT="0",
    )
    # codex at $1.25 per million input: $0.125 a turn (running totals), cap $0.3
    meter, audit = attempt(
        tmp_path, "codex-json", {"attempt_max_cost_usd": 0.3}, model="gpt-5-codex"
    )
    with meter:
        meter.feed(data)
    audit.close()
    assert meter.exceeded is not None and meter.exceeded.spent == pytest.approx(0.375)


def test_the_daily_budget_stops_every_attempt_and_resets_the_next_day(tmp_path: Path) -> None:
    clock = Clock(NOON)
    spending = Spending(clock)
    limits = {"daily_max_cost_usd": 0.05}
    a, audit_a = attempt(tmp_path, "claude-stream-json", limits, spending)
    b, audit_b = attempt(tmp_path, "codex-json", limits, spending, model="gpt-5-codex")
    data, _, _ = replay(tmp_path, "claude", STREAM_STEPS="5", STREAM_COST="0.02")
    with a, b:
        a.feed(data)  # the result reports $0.10: over the day's $0.05
        assert a.exceeded is not None and b.stop.is_set()
        assert b.exceeded is not None and b.exceeded.budget == "daily_max_cost_usd"
    assert spending.today() == pytest.approx(0.10)
    assert PlanBudget(limits, Totals(), 0, set(), spending).exceeded_now(audit_a.bind()) is not None
    clock.now = NOON + dt.timedelta(hours=12)  # past midnight UTC
    assert spending.today() == 0
    assert PlanBudget(limits, Totals(), 0, set(), spending).exceeded_now(audit_a.bind()) is None
    audit_a.close()
    audit_b.close()
    assert len(events(audit_b.sink.path, "budget.exceeded")) == 1


def test_spending_is_seeded_from_the_ledger(tmp_path: Path) -> None:
    """After a restart, what the day already spent comes from the saved records."""
    spending = Spending(Clock(NOON))
    first, audit = attempt(tmp_path, "claude-stream-json", spending=spending)
    data, _, said = replay(tmp_path, "claude")
    with first:
        first.feed(data)
    audit.close()
    again = Spending(Clock(NOON))
    again.seed([first.record])
    assert again.today() == pytest.approx(said["cost"]) == pytest.approx(spending.today())


def test_a_plans_lower_daily_limit_stops_only_that_plan(tmp_path: Path) -> None:
    spending = Spending(Clock(NOON))
    low, audit_low = attempt(tmp_path, "claude-stream-json", {"daily_max_cost_usd": 0.05}, spending)
    high, audit_high = attempt(
        tmp_path, "codex-json", {"daily_max_cost_usd": 1.0}, spending, model="gpt-5-codex"
    )
    data, _, _ = replay(tmp_path, "claude", STREAM_STEPS="5", STREAM_COST="0.02")
    with low, high:
        low.feed(data)  # $0.10 today: over the first plan's $0.05, not the other's $1
    audit_low.close()
    audit_high.close()
    assert low.stop.is_set() and not high.stop.is_set() and high.exceeded is None
