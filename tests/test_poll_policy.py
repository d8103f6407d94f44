"""The poll policy: a poll event per interval, the exit noticed at once, the stall after the
last poll, the stop escalation (SIGTERM, SIGKILL after stop_grace) of the whole process group,
and the remediation worker that follows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from conftest import agent_profile, alive, make_config, make_plan, phase, run_plan

pytestmark = pytest.mark.anyio


def ts(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["ts"])


async def test_worker_exit_is_noticed_at_once_not_at_the_next_poll(tmp_path: Path) -> None:
    config = make_config(tmp_path, policy={"poll_interval": "5s", "max_polls": 6})
    run = await run_plan(config, make_plan(tmp_path))
    assert run.status == "succeeded"
    [started] = run.events("worker.started")
    [exited] = run.events("worker.exited")
    assert run.events("worker.poll") == []
    # the first poll would come 5 s after the start; the exit event came long before it
    assert (ts(exited) - ts(started)).total_seconds() < 2.5
    assert exited["elapsed"] < 2.5
    assert exited["returncode"] == 0


async def test_each_poll_is_an_event_with_cycle_elapsed_and_log_growth(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        policy={"poll_interval": "0.2s", "max_polls": 4, "max_remediations": 0},
        workers={"hang": agent_profile("hang", AGENT_TICK="0.02")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="hang"))
    polls = run.events("worker.poll")
    assert [p["cycle"] for p in polls] == [1, 2, 3, 4]
    assert all(p["max_polls"] == 4 for p in polls)
    elapsed = [p["elapsed"] for p in polls]
    assert elapsed == sorted(elapsed)
    for p in polls:
        assert p["elapsed"] >= 0.2 * p["cycle"] - 0.01
    sizes = [p["log_bytes"] for p in polls]
    growth = [b - a for a, b in zip([0, *sizes[:-1]], sizes, strict=True)]
    assert [p["log_growth"] for p in polls] == growth
    # the agent prints a line every 20 ms: the log grew between the later polls
    assert polls[2]["log_growth"] > 0 and polls[3]["log_growth"] > 0
    # the polls are the worker's: they carry its identity
    [started] = run.events("worker.started")
    assert all(p["pid"] == started["pid"] and p["attempt"] == 1 for p in polls)


async def test_stalled_worker_is_stopped_with_sigterm_and_a_remediation_worker_started(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        # the remediation worker must finish within the same 2 polls, on a loaded machine too
        policy={"poll_interval": "0.5s", "max_polls": 2, "max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="hang")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    assert run.status == "succeeded"
    events = run.events()
    names = [e["event"] for e in events]
    stalled_at = names.index("worker.stalled")
    stalled, stopped = events[stalled_at], events[stalled_at + 1]
    assert names[stalled_at - 2 : stalled_at] == ["worker.poll"] * 2
    assert stalled["polls"] == 2 and stalled["attempt"] == 1 and stalled["role"] == "primary"
    # the last lines of its log go into the event
    assert stalled["log_tail"].splitlines()[-1] == "primary attempt 1: failing by hang"
    assert stopped["event"] == "worker.stopped"
    assert stopped["signal"] == "SIGTERM" and stopped["why"] == "stalled"
    [exit_check] = [e for e in events if e.get("check") == "exit_code" and e["attempt"] == 1]
    assert exit_check["event"] == "check.failed"
    assert exit_check["reason"].startswith("stalled")
    remediation_at = names.index("remediation.started")
    assert stalled_at < remediation_at
    second = events[remediation_at + 1]
    assert second["event"] == "worker.started"
    assert (second["attempt"], second["role"]) == (2, "remediation")
    assert not alive(run.agent("P01", 1)["pid"])


async def test_worker_ignoring_sigterm_is_killed_together_with_its_grandchild(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={
            "poll_interval": "0.6s",
            "max_polls": 2,
            "stop_grace": "0.2s",
            "max_remediations": 0,
        },
    )
    run = await run_plan(config, make_plan(tmp_path, worker="unkillable"))
    assert run.status == "failed"
    [stalled] = run.events("worker.stalled")
    [stopped] = run.events("worker.stopped")
    assert "ready" in stalled["log_tail"].splitlines(), "the agent was not ready before the stall"
    assert stopped["signal"] == "SIGKILL"
    # SIGKILL came only after SIGTERM had stop_grace to work
    assert (ts(stopped) - ts(stalled)).total_seconds() >= 0.2
    worker_pid, grandchild_pid = run.pids()
    assert worker_pid == stopped["pid"]
    assert not alive(worker_pid)
    assert not alive(grandchild_pid), "a grandchild outlived its worker's attempt"


async def test_process_left_running_by_a_worker_that_exited_is_stopped(tmp_path: Path) -> None:
    run = await run_plan(make_config(tmp_path), make_plan(tmp_path, worker="leave_grandchild"))
    assert run.status == "succeeded"
    [grandchild] = run.pids()
    assert not alive(grandchild), "the background process outlived its worker's attempt"
    names = run.names()
    [stopped] = run.events("worker.stopped")
    assert stopped["why"] == "left running after exit"
    assert stopped["signal"] == "SIGTERM"
    assert (
        names.index("worker.exited") < names.index("worker.stopped") < names.index("check.passed")
    )


async def test_phase_policy_overrides_plan_policy_which_overrides_config(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"poll_interval": "5s", "max_polls": 40, "max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="hang")},
    )
    plan = make_plan(
        tmp_path,
        worker="flaky",
        policy={"poll_interval": "0.4s", "max_polls": 3},
        phases=[phase("P01", policy={"max_polls": 2}), phase("P02")],
    )
    run = await run_plan(config, plan)
    assert run.status == "succeeded"
    polls = {
        pid: [e for e in run.events("worker.poll") if e["phase"] == pid] for pid in ("P01", "P02")
    }
    assert [(p["cycle"], p["max_polls"]) for p in polls["P01"]] == [(1, 2), (2, 2)]
    assert [(p["cycle"], p["max_polls"]) for p in polls["P02"]] == [(1, 3), (2, 3), (3, 3)]
    # the interval came from the plan, not from the config's 5 s
    for poll in run.events("worker.poll"):
        assert 0.4 * poll["cycle"] - 0.01 <= poll["elapsed"] < 5
