"""Many workers share one ticker: the timers armed while N real workers are polled do not grow
with N, and every worker still gets each of its polls, on time, as an audit event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path

import anyio
import pytest

from orchestrd.audit import AuditLog, Frequent, Redactor
from orchestrd.config import Policy
from orchestrd.launchers import WorkerSpec, open_launcher
from orchestrd.policy import Ended, watch
from orchestrd.ticker import resolution, ticker

pytestmark = pytest.mark.anyio

INTERVAL = 0.1
POLLS = 4


async def _watch_sleepers(tmp_path: Path, n: int) -> tuple[int, int, list[dict[str, object]]]:
    """Watch `n` real `sleep` workers until each has had its POLLS polls (then it is stalled);
    the most timer handles the loop held meanwhile, the ticker's wake-ups, the poll events."""
    loop = asyncio.get_running_loop()
    audit = AuditLog(tmp_path / f"audit-{n}.jsonl")
    launcher = open_launcher("local", None)
    policy = Policy(poll_interval=INTERVAL, max_polls=POLLS, stop_grace=0.5)
    env = {"PATH": os.environ["PATH"]}
    started: dict[int, float] = {}
    peak = 0
    watching: set[int] = set()

    async def one(i: int) -> None:
        spec = WorkerSpec(["sleep", "30"], env, tmp_path, tmp_path / f"w{n}-{i}.log")
        async with launcher.launch(spec, 1 << 20, 0.5) as worker:
            started[worker.pid] = time.time()
            watching.add(i)
            outcome = await watch(worker, policy, audit.bind(pid=worker.pid))
            watching.discard(i)
        assert outcome.ended is Ended.POLLS and outcome.polls == POLLS

    async def sample() -> None:
        nonlocal peak
        while True:
            # while every worker is being polled (their starts and stops arm timers of
            # their own: grace periods)
            if len(watching) == n:
                armed = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
                peak = max(peak, len(armed))
            await asyncio.sleep(0.002)

    wakeups = ticker().wakeups
    with anyio.fail_after(20):
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(sample)
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
            watchers.cancel_scope.cancel()
    wakeups = ticker().wakeups - wakeups
    audit.close()
    lines = (tmp_path / f"audit-{n}.jsonl").read_text().splitlines()
    polls = [e for e in map(json.loads, lines) if e["event"] == "worker.poll"]
    for p in polls:
        p["_late"] = _ts(p) - started[int(str(p["pid"]))] - INTERVAL * int(str(p["cycle"]))
    return peak, wakeups, polls


def _ts(event: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(event["ts"])).timestamp()


async def test_many_workers_share_one_ticker(tmp_path: Path) -> None:
    peak_1, wakeups_1, polls_1 = await _watch_sleepers(tmp_path, 1)
    peak_n, wakeups_n, polls_n = await _watch_sleepers(tmp_path, 40)
    # every worker got each of its polls, as an event of its own
    assert sorted(p["cycle"] for p in polls_1) == list(range(1, POLLS + 1))
    by_worker: dict[object, list[object]] = {}
    for p in polls_n:
        by_worker.setdefault(p["pid"], []).append(p["cycle"])
    assert len(by_worker) == 40
    assert all(cycles == list(range(1, POLLS + 1)) for cycles in by_worker.values())
    # none early; late by the ticker's slot at most, plus the loaded machine's scheduling
    assert min(float(str(p["_late"])) for p in polls_n) > -0.005
    assert max(float(str(p["_late"])) for p in polls_n) < resolution(INTERVAL) + 0.25
    # the timer handles armed do not grow with the number of workers (a timer each: ≥ 40)
    assert peak_n <= peak_1 + 3, (peak_1, peak_n)
    # and the ticker woke at most once per slot, not once per worker and poll (160 polls)
    slots = POLLS * INTERVAL / resolution(INTERVAL)
    assert wakeups_n <= slots + 10, (wakeups_1, wakeups_n)


def test_a_frequent_event_is_the_line_the_processors_write(tmp_path: Path) -> None:
    """The pre-rendered poll line says what the ordinary path says: same keys, same order,
    the context redacted; a field that is not a plain number goes the ordinary way."""
    audit = AuditLog(tmp_path / "audit.jsonl", redactor=Redactor(["s3cr3t-value"]))
    log = audit.bind(plan="P-s3cr3t-value", phase="P01", attempt=1, role="primary").bind(pid=7)
    fields = {"cycle": 2, "max_polls": 6, "elapsed": 2.001, "log_bytes": 10, "log_growth": 3}
    log.info("worker.poll", **fields)
    Frequent(log, "worker.poll")(**fields)
    Frequent(log, "worker.poll")(**fields, tokens={"input": 5})
    audit.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    plain, fast, mixed = (json.loads(line) for line in lines)
    assert [lines[0].split('"ts": ')[1][34:]] == [lines[1].split('"ts": ')[1][34:]]
    assert list(plain) == list(fast) and plain["plan"] == "P-***"
    assert {k: v for k, v in plain.items() if k != "ts"} == {
        k: v for k, v in fast.items() if k != "ts"
    }
    assert mixed["tokens"] == {"input": 5}
