"""The JSON-lines audit log (key order, timestamps, the event vocabulary, flushed per event) and
the state file a run leaves behind."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path

import anyio
import pytest
from conftest import Run, agent_profile, make_config, make_plan, phase, read_events, run_plan

from orchestrd.audit import EVENTS, FIRST_KEYS

ISO_MICROS_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$")

ISSUE_EVENTS = {
    "plan.started",
    "plan.succeeded",
    "plan.failed",
    "phase.started",
    "phase.passed",
    "phase.failed",
    "worker.started",
    "worker.poll",
    "worker.stalled",
    "worker.stopped",
    "worker.exited",
    "check.passed",
    "check.failed",
    "remediation.started",
}


async def _two_plans(tmp_path: Path) -> tuple[Run, Run]:
    config = make_config(
        tmp_path,
        policy={"poll_interval": "0.5s", "max_polls": 2, "max_remediations": 1},
        workers={"flaky": agent_profile("flaky", AGENT_FIRST="hang")},
    )
    ok = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    bad = await run_plan(
        config,
        make_plan(
            tmp_path,
            name="bad.toml",
            repo=tmp_path / "repo-u",
            id="U",
            worker="fail_report",
            phases=[phase("P01", policy={"max_remediations": 0})],
        ),
    )
    return ok, bad


@pytest.fixture(scope="module")
def two_plans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """A plan that stalls, is remediated and succeeds, then one whose phase fails for good
    (sharing one audit log); run once for the tests that read what they left."""
    return anyio.run(_two_plans, tmp_path_factory.mktemp("two_plans"))


def test_audit_lines_have_the_leading_keys_in_order_and_iso_timestamps(
    two_plans: tuple[Run, Run],
) -> None:
    ok, bad = two_plans
    assert (ok.status, bad.status) == ("succeeded", "failed")
    events = ok.events()
    assert len(events) > 20
    previous = None
    for event in events:
        keys = list(event)
        leading = [k for k in FIRST_KEYS if k in event]
        assert keys[: len(leading)] == leading, keys
        assert keys[:2] == ["ts", "event"]
        assert ISO_MICROS_OFFSET.match(event["ts"]), event["ts"]
        when = dt.datetime.fromisoformat(event["ts"])
        assert when.utcoffset() is not None
        assert previous is None or when >= previous
        previous = when
    assert FIRST_KEYS == ("ts", "event", "plan", "phase", "attempt", "role", "pid")


def test_worker_events_carry_plan_phase_attempt_role_and_pid(
    two_plans: tuple[Run, Run],
) -> None:
    events = two_plans[0].events()
    for plan in ("T", "U"):
        worker_events = [
            e
            for e in events
            if e["plan"] == plan and e["event"].split(".")[0] in ("worker", "check")
        ]
        assert worker_events
        for event in worker_events:
            assert list(event)[:7] == list(FIRST_KEYS), event
            assert event["phase"] == "P01"
        attempts = sorted({(e["attempt"], e["role"], e["pid"]) for e in worker_events})
        expected = [(1, "primary"), (2, "remediation")] if plan == "T" else [(1, "primary")]
        assert [a[:2] for a in attempts] == expected


def test_every_event_is_in_the_vocabulary_and_the_issue_events_all_occur(
    two_plans: tuple[Run, Run],
) -> None:
    names = set(two_plans[0].names())
    assert set(EVENTS) >= ISSUE_EVENTS
    assert names <= set(EVENTS), names - set(EVENTS)
    assert names >= ISSUE_EVENTS, ISSUE_EVENTS - names


@pytest.mark.anyio
async def test_events_are_in_the_audit_file_while_the_worker_still_runs(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, policy={"poll_interval": "0.1s", "max_polls": 30, "max_remediations": 0}
    )
    audit = tmp_path / "state/audit.jsonl"
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_plan, config, make_plan(tmp_path, worker="hang"))
        with anyio.fail_after(10):
            while "worker.poll" not in seen:
                await anyio.sleep(0.02)
                if audit.exists():
                    seen = [e["event"] for e in read_events(audit)]
        assert "worker.stalled" not in seen, "the worker should still be running"
        assert seen[:3] == ["plan.started", "phase.started", "worker.started"]
        tg.cancel_scope.cancel()  # a cancelled runner stops its worker on the way out
    [stopped] = read_events(audit, "worker.stopped")
    assert stopped["why"] == "cancelled"


def test_state_file_records_phases_attempts_and_outcome(two_plans: tuple[Run, Run]) -> None:
    ok, bad = two_plans
    state = tomllib.loads((ok.folder / "state.toml").read_text())
    assert state["plan"] == "T"
    assert state["status"] == "succeeded"
    assert dt.datetime.fromisoformat(state["finished_at"]) >= dt.datetime.fromisoformat(
        state["started_at"]
    )
    p01 = state["phases"]["P01"]
    assert p01["status"] == "passed"
    assert p01["failures"] == 1
    first, second = p01["attempts"]
    assert (first["n"], first["role"], first["status"]) == (1, "primary", "stopped")
    assert "returncode" not in first
    pids = [e["pid"] for e in ok.events("worker.started") if e["plan"] == "T"]
    assert first["pid"] == first["pgid"] == pids[0]
    assert second["pid"] == second["pgid"] == pids[1]
    assert first["log"] == str(ok.folder / "workers/worker-P01-1.log")
    assert (second["n"], second["role"], second["status"]) == (2, "remediation", "exited")
    assert second["returncode"] == 0
    for attempt in (first, second):
        assert attempt["ended_at"] >= attempt["started_at"]

    failed = tomllib.loads((bad.folder / "state.toml").read_text())
    assert failed["status"] == "failed"
    assert failed["reason"] == "phase P01 failed: report: reports/P01-worker.md says Status: FAIL"
    assert failed["phases"]["P01"]["status"] == "failed"
    assert failed["phases"]["P01"]["reason"] == "report: reports/P01-worker.md says Status: FAIL"
