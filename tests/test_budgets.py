"""The usage ledger and budgets end to end: fake agents replay recorded-shape streams of all
three CLIs through real workers; the ledger's totals equal the sums in the streams; a plan over
a budget is stopped within one stream event of the cap, paused, and finished after `resume`;
a restart keeps what was spent; the daily budget pauses every plan until the next UTC day (an
injected clock)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import AGENTS, make_config, make_plan, phase, run_cli, run_plan
from daemon_support import Daemon

from orchestrd.config import load_config
from orchestrd.daemon import Daemon as InProcessDaemon
from orchestrd.errors import StateError
from orchestrd.state import load_state
from orchestrd.states import PhaseStatus, PlanStatus

PRICES = {
    "gpt-5-codex": {"input": 1.25, "cached_input": 0.125, "output": 10.0},
    "gemini-2.5-pro": {"input": 1.25, "cached_input": 0.31, "output": 10.0},
}
OUTPUT = {"codex": "codex-json", "claude": "claude-stream-json", "gemini": "gemini-stream-json"}


def stream_profile(agent: str, model: str | None = None, **env: object) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "command": ["{python}", str(AGENTS / f"stream_{agent}.py"), "{prompt}"],
        "output": OUTPUT[agent],
        "env": {k: str(v) for k, v in env.items()},
    }
    if model:
        profile["model"] = model
    return profile


def said(repo: Path, phase_id: str = "P01", attempt: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (repo / ".agent" / f"stream-{phase_id}-{attempt}.json").read_text()
    )
    return data


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("agent", "model", "prices", "source"),
    [
        ("codex", "gpt-5-codex", PRICES, "estimated"),
        ("claude", None, {}, "reported"),
        ("gemini", None, PRICES, "estimated"),
        ("gemini", None, {}, "unknown"),
    ],
)
async def test_the_ledger_equals_the_sums_in_the_streams(
    tmp_path: Path, agent: str, model: str | None, prices: dict[str, Any], source: str
) -> None:
    cfg = make_config(
        tmp_path,
        default_worker="agent",
        prices=prices,
        policy={"poll_interval": "30ms"},
        workers={
            "agent": stream_profile(
                agent, model, STREAM_STEPS=4, STREAM_DELAY=0.02, STREAM_GARBAGE=1
            )
        },
    )
    run = await run_plan(cfg, make_plan(tmp_path, [phase("P01"), phase("P02")]))
    assert run.status is PlanStatus.SUCCEEDED
    state = load_state(run.folder / "state.toml")
    usages = []
    for phase_id in ("P01", "P02"):
        (att,) = state.phases[phase_id].attempts
        u = att.usage
        assert u is not None
        s = said(run.repo, phase_id)
        assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (
            s["input"],
            s["cached"],
            s["output"],
        )
        assert u.tokens == s["input"] + s["cached"] + s["output"]
        assert u.cost_source == source and u.profile == "agent"
        if source == "reported":
            assert u.cost_usd == s["cost"]
        elif source == "estimated":
            price = PRICES[u.model or ""]
            assert u.cost_usd == pytest.approx(
                (
                    s["input"] * price["input"]
                    + s["cached"] * price["cached_input"]
                    + s["output"] * price["output"]
                )
                / 1e6
            )
        else:
            assert u.cost_usd is None
        usages.append(u)
    final = [e for e in run.events("worker.usage")]
    assert [e["tokens"] for e in final if e["phase"] == "P02"][-1] == usages[1].tokens
    polls = run.events("worker.poll")
    assert polls and all("tokens" in p and "events" in p for p in polls)
    assert sum(p["events"] for p in polls if p["phase"] == "P01") > 0
    unpriced = run.events("usage.unpriced")
    assert len(unpriced) == (1 if source == "unknown" else 0)  # once, not once per phase


def test_a_plan_over_its_token_budget_pauses_and_resume_finishes_it(
    tmp_path: Path, daemon: Daemon
) -> None:
    d = daemon  # stopped and checked by the fixture, whatever fails
    # 1,350 tokens a model request, one request every 0.15 s; the plan may spend 5,000 (the
    # config 50,000); resumed, its phase's fresh worker spends 2,700
    d.write_config(
        default_worker="claude",
        budgets={"plan_max_tokens": 50_000},
        workers={
            "claude": stream_profile(
                "claude", STREAM_STEPS=20, STREAM_DELAY=0.05, STREAM_STEPS_LATER=2
            )
        },
    )
    d.start()
    try:
        d.submit("T", budgets={"plan_max_tokens": 5000})
        d.wait_event("plan.paused")
        folder = d.state_dir / "plans" / "T"
        log = (folder / "workers" / "worker-P01-1.log").read_text()
        # the request that took it over 5,000 tokens was the 4th; the worker saw no 6th
        seen = sorted(set(re.findall(r'"id":"msg_01(\d{4})"', log)))
        assert "0004" in seen and max(seen) <= "0005"
        (warning,) = d.events("budget.warning")
        (exceeded,) = d.events("budget.exceeded")
        assert (warning["budget"], warning["limit"]) == ("plan_max_tokens", 5000)
        assert exceeded["budget"] == "plan_max_tokens" and exceeded["spent"] == 5400
        state = load_state(folder / "state.toml")
        assert (state.status, state.reason) == (PlanStatus.PAUSED, "budget:plan_max_tokens")
        assert state.phases["P01"].status is PhaseStatus.PENDING
        (att,) = state.phases["P01"].attempts
        assert att.status == "stopped" and att.usage is not None and att.usage.tokens == 5400
        assert [e["why"] for e in d.events("worker.stopped")] == ["budget"]
        status = run_cli("status", "--config", d.config_path, cwd=tmp_path)
        assert re.search(r"T\s+paused\s+P01\s+1\s+-\s+\S+\s+5\.4k", status.stdout), status.stdout

        if os.geteuid() == 0:  # a submitter (not root, not the daemon's user) asks for more
            request = d.state_dir / "control" / ".T.resume.tmp"
            request.write_text("plan_max_tokens=100000.0\n")
            os.chown(request, 65534, 65534)
            request.rename(request.with_name("T.resume"))
            (refused,) = d.wait_event("daemon.request_refused", plan="T")
            assert "only the operator" in refused["reason"]
            assert "plan_max_tokens=100000 (the config's is 50000)" in refused["reason"]
            assert load_state(folder / "state.toml").status is PlanStatus.PAUSED
        resumed = run_cli(
            "resume",
            "T",
            "--budget",
            "plan_max_tokens=100000",
            "--config",
            d.config_path,
            cwd=tmp_path,
        )
        assert resumed.returncode == 0, resumed.stderr
        d.wait_event("plan.archived")
        queued = d.events("plan.queued", previous="paused")
        assert queued[0]["raised"] == {"plan_max_tokens": 100000.0}
        # a fresh worker for the phase; the plan's spending went on from 5,400
        done = load_state(d.state_dir / "archive" / "T" / "state.toml")
        assert [a.status for a in done.phases["P01"].attempts] == ["stopped", "exited"]
        # the archive keeps the ledger: 5,400 + 2,700 is over the plan's own 5,000
        assert [a.usage.tokens for a in done.phases["P01"].attempts if a.usage] == [5400, 2700]
        assert done.budget_raises == {"plan_max_tokens": 100000.0}
    finally:
        d.stop()


def test_a_restart_keeps_what_was_spent(tmp_path: Path, daemon: Daemon) -> None:
    d = daemon  # stopped and checked by the fixture, whatever fails
    d.write_config(
        default_worker="claude",
        budgets={"plan_max_tokens": 20_000},
        workers={"claude": stream_profile("claude", STREAM_STEPS=40, STREAM_DELAY=0.03)},
    )
    d.start()
    d.submit("T")
    folder = d.state_dir / "plans" / "T"

    def saved_tokens() -> int:
        if not (folder / "state.toml").exists():
            return 0
        atts = load_state(folder / "state.toml").phases["P01"].attempts
        return atts[0].usage.tokens if atts and atts[0].usage else 0

    d.wait_for(lambda: saved_tokens() >= 6000, what="usage saved at a poll")
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    before = saved_tokens()
    d.start()
    try:
        d.wait_event("plan.paused")
        (exceeded,) = d.events("budget.exceeded")
        state = load_state(folder / "state.toml")
        first, second = state.phases["P01"].attempts
        assert first.usage is not None and first.usage.tokens == before
        assert second.usage is not None
        # the cap counted the first attempt's spending, read back from the ledger
        assert exceeded["spent"] == before + second.usage.tokens >= 20_000
        assert second.usage.tokens < 20_000 - 6000 + 1350
    finally:
        d.stop()


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.mark.anyio
async def test_the_daily_budget_pauses_every_plan_until_the_next_utc_day(tmp_path: Path) -> None:
    d = Daemon(tmp_path)  # its files and config; the daemon itself runs here, on our clock
    # $0.00255 a turn at the gpt-5-codex price; all plans together may spend $0.01 a day
    d.write_config(
        default_worker="codex",
        budgets={"daily_max_cost_usd": 0.01},
        prices=PRICES,
        workers={
            "codex": stream_profile(
                "codex", "gpt-5-codex", STREAM_STEPS=30, STREAM_DELAY=0.03, STREAM_STEPS_LATER=1
            )
        },
    )
    config, path = load_config(d.config_path)
    clock = Clock(dt.datetime(2026, 12, 4, 23, 0, tzinfo=dt.UTC))
    daemon = InProcessDaemon(config, path, echo=False, clock=clock)

    def states() -> dict[str, PlanStatus]:
        out = {}
        for base in ("plans", "archive"):
            for f in (d.state_dir / base).glob("*/state.toml"):
                with contextlib.suppress(StateError):  # moved to archive/ as we read
                    out[f.parent.name] = load_state(f).status
        return out

    async def until(what: str, test: Any) -> None:
        with anyio.fail_after(20):
            while True:
                if test(states()):
                    return
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.serve)
        await until("the inbox is made", lambda s: d.inbox.is_dir())
        d.submit("A", repo="a")
        d.submit("B", repo="b")
        await until("both paused", lambda s: s == {"A": "paused", "B": "paused"})
        exceeded = d.events("budget.exceeded")
        assert {e["plan"] for e in exceeded} == {"A", "B"}
        assert {e["budget"] for e in exceeded} == {"daily_max_cost_usd"}
        paused = d.events("plan.paused")
        assert {e["resumes_at"] for e in paused} == {"2026-12-05T00:00:00+00:00"}
        await anyio.sleep(0.5)  # the same day: they stay paused
        assert states() == {"A": "paused", "B": "paused"}
        clock.now += dt.timedelta(hours=2)  # 01:00 UTC the next day
        await until("both done", lambda s: s == {"A": "succeeded", "B": "succeeded"})
        tg.cancel_scope.cancel()
    resumed = d.events("plan.queued", previous="paused")
    assert sorted(e["plan"] for e in resumed) == ["A", "B"]
    used = run_cli("usage", "--json", "--config", d.config_path, cwd=tmp_path)
    days = json.loads(used.stdout)["days"]
    assert set(days) == {"2026-12-04", "2026-12-05"}
    assert days["2026-12-04"]["cost_usd"] >= 0.01 > days["2026-12-05"]["cost_usd"]


def test_usage_sums_the_ledger_with_the_daemon_down(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        default_worker="codex",
        prices=PRICES,
        workers={
            "codex": stream_profile("codex", "gpt-5-codex"),
            "claude": stream_profile("claude"),
        },
    )
    plan_a = make_plan(tmp_path, [phase("P01")], name="a.toml", id="A")
    plan_b = make_plan(
        tmp_path, [phase("P01")], name="b.toml", id="B", worker="claude", repo=tmp_path / "repo-b"
    )
    for plan in (plan_a, plan_b):
        assert run_cli("run", plan, "--config", cfg, "-q", cwd=tmp_path).returncode == 0
    result = run_cli("usage", "--json", "--config", cfg, cwd=tmp_path)
    data = json.loads(result.stdout)
    a, b = said(tmp_path / "repo"), said(tmp_path / "repo-b")
    assert data["plans"]["A"]["tokens"] == a["input"] + a["cached"] + a["output"]
    assert data["plans"]["B"]["cost_usd"] == b["cost"]
    assert set(data["profiles"]) == {"codex", "claude"}
    assert set(data["models"]) == {"gpt-5-codex", "claude-sonnet-4-5-20250929"}
    assert data["total"]["attempts"] == 2
    text = run_cli("usage", "--config", cfg, cwd=tmp_path).stdout
    assert "MODEL" in text and "gpt-5-codex" in text and "total:" in text
    later = json.loads(
        run_cli("usage", "--since", "2999-01-01", "--json", "--config", cfg, cwd=tmp_path).stdout
    )
    assert later["total"]["attempts"] == 0
    bad = run_cli("usage", "--since", "yesterday", "--config", cfg, cwd=tmp_path)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    detail = run_cli("status", "B", "--config", cfg, cwd=tmp_path).stdout
    assert "tokens" in detail and "reported" in detail
    rows = json.loads(run_cli("status", "--json", "--config", cfg, cwd=tmp_path).stdout)
    assert {r["plan"]: r["cost_usd"] for r in rows}["B"] == b["cost"]
    kept = tomllib.loads((tmp_path / "state/plans/A/state.toml").read_text())
    assert kept["phases"]["P01"]["attempts"][0]["usage"]["cost_source"] == "estimated"


def test_run_pauses_and_resume_and_cancel_work_offline(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        default_worker="codex",
        prices=PRICES,
        workers={
            "codex": stream_profile("codex", "gpt-5-codex", STREAM_STEPS=3, STREAM_DELAY=0.02)
        },
    )
    # $0.00255 a turn; the plan may spend $0.004: the second turn's total goes over, and the
    # thread goes on with a third (so the worker is stopped)
    plan = make_plan(tmp_path, budgets={"plan_max_cost_usd": 0.004})
    ran = run_cli("run", plan, "--config", cfg, "-q", cwd=tmp_path)
    assert ran.returncode == 1 and "plan T: paused" in ran.stdout
    bad = run_cli("resume", "T", "--budget", "plan_max_cost=1", "--config", cfg, cwd=tmp_path)
    assert bad.returncode == 2 and "NAME one of" in bad.stderr
    resumed = run_cli(
        "resume", "T", "--budget", "plan_max_cost_usd=1", "--config", cfg, cwd=tmp_path
    )
    assert resumed.returncode == 0 and "plan T: queued" in resumed.stdout, resumed.stderr
    state = load_state(tmp_path / "state/plans/T/state.toml")
    assert state.budget_raises == {"plan_max_cost_usd": 1.0}
    again = run_cli("resume", "T", "--config", cfg, cwd=tmp_path)
    assert again.returncode == 1 and "only a paused plan can be resumed" in again.stdout
    # a paused plan can be cancelled too
    other = make_plan(
        tmp_path,
        name="u.toml",
        id="U",
        repo=tmp_path / "repo-u",
        budgets={"plan_max_cost_usd": 0.004},
    )
    assert run_cli("run", other, "--config", cfg, "-q", cwd=tmp_path).returncode == 1
    cancelled = run_cli("cancel", "U", "--config", cfg, cwd=tmp_path)
    assert cancelled.returncode == 0 and "plan U: cancelled" in cancelled.stdout


@pytest.mark.anyio
async def test_a_budget_spent_by_the_last_line_pauses_before_the_next_worker(
    tmp_path: Path,
) -> None:
    """gemini reports its counts only in its result: the worker has exited by then, so its
    work is checked as usual, and the plan pauses before the next phase's worker."""
    cfg = make_config(
        tmp_path,
        default_worker="gemini",
        budgets={"plan_max_tokens": 1000},
        workers={"gemini": stream_profile("gemini")},
    )
    run = await run_plan(cfg, make_plan(tmp_path, [phase("P01"), phase("P02")]))
    assert run.status is PlanStatus.PAUSED
    state = load_state(run.folder / "state.toml")
    assert state.phases["P01"].status is PhaseStatus.PASSED
    assert state.phases["P02"].status is PhaseStatus.PENDING and not state.phases["P02"].attempts
    assert [e["budget"] for e in run.events("budget.exceeded")] == ["plan_max_tokens"]
    (paused,) = run.events("plan.paused")
    assert paused["reason"] == "budget:plan_max_tokens" and paused["spent"] > 1000
