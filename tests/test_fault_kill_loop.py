"""The daemon SIGKILLed at random moments of a multi-plan run, restarted each time, then left to
finish: every plan finishes exactly once, no phase runs again once it passed, no state file is
corrupt, and no worker is left.

Plans arrive in waves during the loop, so kills also land while a file is being accepted, a
plan recovered, a worker launched or checked, a plan archived. The fake agent (fault_ledger)
appends `<plan> <phase> <attempt> <pid> <start time>` to a ledger on start: the ground truth
of which workers ran, whatever the daemon managed to record before it died.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import Daemon, alive, wait_for

from orchestrd.state import load_state
from orchestrd.states import PhaseStatus, PlanStatus

AGENTS = Path(__file__).parent / "agents"
KILLS = 20
PHASES = ("P01", "P02", "P03")
WAVES = {0: 4, 3: 2, 6: 2, 9: 2}  # cycle → plans dropped before that start


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.cleanup()
    assert "Traceback" not in d.stderr(), d.stderr()[-4000:]


def ts(event: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(event["ts"])).timestamp()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_random_sigkills_lose_nothing_and_run_nothing_twice(daemon: Daemon) -> None:
    seed = int(os.environ.get("KILL_LOOP_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    ledger = daemon.tmp / "ledger.txt"
    agent = {
        "command": ["{python}", str(AGENTS / "fault_ledger.py"), "{prompt}"],
        "env": {"LEDGER": str(ledger), "AGENT_SLEEP": "0.1"},
    }
    daemon.write_config(
        max_workers=3,
        default_worker="ledger",
        workers={**daemon.config_data()["workers"], "ledger": agent},
    )
    daemon.inbox.mkdir(parents=True)
    ids: list[str] = []

    for cycle in range(KILLS):
        for _ in range(WAVES.get(cycle, 0)):
            plan_id = f"k{len(ids):02d}"
            daemon.submit(plan_id, repo=f"r{len(ids) % 5}", phases=PHASES)
            ids.append(plan_id)
        if rng.random() < 0.25:  # during start-up and recovery
            daemon.start(wait=False)
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # while plans run
            daemon.start()
            time.sleep(rng.uniform(0.0, 0.5))
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL, (
            f"seed {seed}: the daemon died on its own:\n{daemon.stderr()[-3000:]}"
        )

    context = f"(KILL_LOOP_SEED={seed})"
    daemon.start()
    # the files, not the events: a plan.succeeded may have died with a daemon that had saved
    # the state (the restart then only archives the plan)
    archive = daemon.state_dir / "archive"
    daemon.wait_for(
        lambda: archive.is_dir() and {p.name for p in archive.iterdir()} >= set(ids),
        timeout=60,
        what=f"every plan archived {context}",
    )
    assert daemon.stop(signal.SIGTERM) == 0

    # exactly one archive folder per plan, each plan succeeded with every phase passed
    assert sorted(p.name for p in archive.iterdir()) == sorted(ids), context
    assert list((daemon.state_dir / "plans").iterdir()) == [], context
    for plan_id in ids:
        state = load_state(archive / plan_id / "state.toml")
        assert state.status is PlanStatus.SUCCEEDED, (plan_id, state.reason, context)
        assert {ps.status for ps in state.phases.values()} == {PhaseStatus.PASSED}, context
    # no state file anywhere is corrupt, and none was set aside as corrupt
    for path in daemon.state_dir.rglob("state.toml*"):
        assert path.name == "state.toml", f"{path} {context}"
        load_state(path)
    assert daemon.events("plan.state_corrupt") == [], context
    assert daemon.events("plan.rejected") == [], context
    assert daemon.events("plan.failed") == [] and daemon.events("plan.error") == [], context
    succeeded = Counter(e["plan"] for e in daemon.events("plan.succeeded"))
    assert set(succeeded.values()) <= {1}, context
    # (a plan.archived may have died with a daemon too: the folder is the proof above)
    archived = [(e["plan"], e["status"]) for e in daemon.events("plan.archived")]
    assert len(set(archived)) == len(archived) and {s for _, s in archived} == {"succeeded"}

    # no phase ran again once it had passed: a phase has passed at its phase.passed event, or
    # at the latest when a later phase of its plan started (the event may have died with a
    # daemon, the state change had been saved before)
    passed_at: dict[tuple[str, str], float] = {}
    for e in daemon.events():
        if e["event"] == "phase.passed":
            key = (e["plan"], e["phase"])
            passed_at[key] = min(passed_at.get(key, ts(e)), ts(e))
        elif e["event"] in ("phase.started", "phase.skipped"):
            for earlier in PHASES[: PHASES.index(e["phase"])]:
                key = (e["plan"], earlier)
                passed_at[key] = min(passed_at.get(key, ts(e)), ts(e))
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    pids = []
    for line in ledger.read_text().splitlines():
        plan_id, phase, _, pid, started = line.split()
        starts[(plan_id, phase)].append(float(started))
        pids.append(int(pid))
    assert set(starts) == {(p, ph) for p in ids for ph in PHASES}, context
    late = {k: v for k, v in starts.items() if k in passed_at and max(v) > passed_at[k]}
    assert late == {}, f"phases re-run after they passed {context}"

    # no worker left: the daemon stopped what earlier daemons left, and its own on SIGTERM
    wait_for(
        lambda: not any(alive(pid) for pid in pids),
        timeout=5,
        what=f"every worker of the ledger to be gone {context}",
    )
