"""State writes cost what changed, not the plan's length, and stay crash safe: state.toml is a
snapshot, state.journal the changes saved since (one line each), folded together off the loop.

The bytes a save writes are read from /proc/self/io (what write(2) was given), so they count
whatever the implementation writes, files and all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon, alive

from orchestrd.audit import AuditLog, Redactor
from orchestrd.errors import StateError
from orchestrd.state import (
    AttemptState,
    PhaseState,
    PlanRecord,
    PlanState,
    load_state,
)
from orchestrd.states import AttemptStatus, PhaseStatus, PlanStatus

HERE = Path(__file__).parent
pytestmark = pytest.mark.anyio


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def tear(journal: Path, line: bytes) -> None:
    """What a crash in the middle of appending `line` leaves."""
    with open(journal, "ab") as f:
        f.write(line[: len(line) // 2])


async def new_record(tmp: Path, phases: int, **kwargs: Any) -> PlanRecord:
    os.makedirs(tmp, exist_ok=True)
    audit = AuditLog(tmp / "audit.jsonl")
    state = PlanState(plan="p", phases={f"P{i:05d}": PhaseState() for i in range(phases)})
    record = PlanRecord(tmp / "state.toml", state, audit.bind(plan="p"), **kwargs)
    await record.save()
    await record.set_status(PlanStatus.RUNNING)
    return record


async def one_phase(record: PlanRecord, phase_id: str) -> int:
    """The saves of one phase as the runner makes them; the bytes they wrote."""
    before = written_bytes()
    ps = record.state.phases[phase_id]
    await record.set_phase(phase_id, PhaseStatus.RUNNING, save=False)
    att = AttemptState(n=1, role="primary", log=f"/state/workers/worker-{phase_id}-1.log")
    ps.attempts.append(att)
    att.status, att.pid = AttemptStatus.RUNNING, 4242
    await record.save(phase_id)
    att.status, att.returncode = AttemptStatus.EXITED, 0
    await record.save(phase_id)
    await record.set_phase(phase_id, PhaseStatus.CHECKING, save=False)
    await record.set_phase(phase_id, PhaseStatus.PASSED)
    return written_bytes() - before


async def test_the_bytes_a_phase_writes_do_not_grow_with_the_plan(tmp_path: Path) -> None:
    short = await new_record(tmp_path / "short", 10)
    long = await new_record(tmp_path / "long", 5_000)
    assert (tmp_path / "long" / "state.toml").stat().st_size > 200_000  # what a rewrite costs

    for phase_id in ("P00000", "P00001", "P00002"):
        small, large = await one_phase(short, phase_id), await one_phase(long, phase_id)
        assert large <= small + 64, (phase_id, small, large)
        assert small < 4_000  # a few lines of the journal and the audit log

    # compactions included: over many phases the bytes per phase stay those of a short plan
    before = written_bytes()
    for i in range(3, 403):
        await one_phase(long, f"P{i:05d}")
    assert (written_bytes() - before) / 400 < 2 * small
    assert load_state(long.path) == long.state


async def test_a_finished_plan_is_one_whole_state_toml_a_person_can_read(tmp_path: Path) -> None:
    record = await new_record(tmp_path, 3)
    await one_phase(record, "P00000")
    assert record.path.with_name("state.journal").exists()
    await record.set_status(PlanStatus.FAILED, "phase P00001 failed: tests")

    assert not record.path.with_name("state.journal").exists()
    data = tomllib.loads(record.path.read_text())
    assert (data["status"], data["reason"]) == ("failed", "phase P00001 failed: tests")
    assert data["phases"]["P00000"]["attempts"][0]["returncode"] == 0
    assert load_state(record.path) == record.state


async def test_journal_lines_are_toml_and_their_free_text_is_redacted(tmp_path: Path) -> None:
    redactor = Redactor(["hunter2-secret"], [])
    record = await new_record(tmp_path, 2, redact=redactor)
    ps = record.state.phases["P00001"]
    await record.set_phase("P00001", PhaseStatus.RUNNING, save=False)
    nasty = 'quote " backslash \\ newline \n tab \t nul \0 del \x7f é 🚀 [a] {b} = # hunter2-secret'
    ps.attempts.append(AttemptState(n=1, role="primary", log="/x/y z.log", failure=nasty))
    await record.set_phase("P00001", PhaseStatus.CHECKING, save=False)
    await record.set_phase("P00001", PhaseStatus.FAILED, nasty)

    journal = record.path.with_name("state.journal").read_text(encoding="utf-8")
    assert "hunter2-secret" not in journal
    lines = journal.splitlines()
    assert len(lines) == 2  # plan running, then the phase: one line per save
    for line in lines:
        tomllib.loads(line)  # each line stands alone
    whole = tomllib.loads(journal)  # and the journal is one TOML document too
    failed = whole[max(whole, key=int)]["phases"]["P00001"]
    assert failed["attempts"][0]["failure"] == nasty.replace("hunter2-secret", "***")
    assert load_state(record.path).phases["P00001"].reason == failed["reason"]


async def test_a_torn_last_journal_line_is_ignored_and_cut_before_the_next(
    tmp_path: Path,
) -> None:
    record = await new_record(tmp_path, 3)
    await one_phase(record, "P00000")
    saved = load_state(record.path)
    journal = record.path.with_name("state.journal")
    last = journal.read_bytes().splitlines(keepends=True)[-1]
    tear(journal, last.replace(b"P00000", b"P00001"))
    assert load_state(record.path) == saved

    # the daemon that comes back goes on from the saved state; its lines follow cleanly
    again = PlanRecord(record.path, saved, record.log, on_disk=True)
    await one_phase(again, "P00001")
    assert load_state(record.path) == again.state
    assert all(line.endswith(b"\n") for line in journal.read_bytes().splitlines(keepends=True))


async def test_a_state_toml_cut_between_two_phases_is_unreadable_not_shorter(
    tmp_path: Path,
) -> None:
    record = await new_record(tmp_path, 3)
    await one_phase(record, "P00000")
    await record.save(compact=True)
    text = record.path.read_bytes()
    cut = text[: text.index(b"[phases.P00002]")]  # still valid TOML, one phase short
    tomllib.loads(cut.decode())
    record.path.write_bytes(cut)
    with pytest.raises(StateError, match="cut off"):
        load_state(record.path)


def test_a_state_toml_of_the_version_before_the_journal_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    path.write_text(
        'plan = "old"\nstatus = "running"\nseq = 3\nsubmitted_at = "2026-11-01T10:00:00+00:00"\n'
        '\n[phases.P01]\nstatus = "passed"\nfailures = 0\n\n[[phases.P01.attempts]]\nn = 1\n'
        'role = "primary"\nstatus = "exited"\nlog = "w.log"\n'
        'started_at = "2026-11-01T10:00:01+00:00"\nreturncode = 0\n'
        '\n[phases.P02]\nstatus = "pending"\nfailures = 0\nattempts = []\n'
    )
    state = load_state(path)
    assert (state.revision, state.phases["P01"].attempts[0].returncode) == (0, 0)
    assert state.current_phase() == ("P02", PhaseState())


def test_random_sigkills_of_a_long_plans_writer_leave_the_old_or_the_new_state(
    tmp_path: Path,
) -> None:
    """After each kill the state reads back as the last save that returned or the one in
    flight — exactly as it was in memory then — never less, never a mix; the plan then ends
    with every phase passed."""
    seed = int(os.environ.get("KILL_LOOP_SEED", time.time_ns() % 100_000))
    out = subprocess.run(
        [sys.executable, str(HERE / "state_kill_driver.py"), str(tmp_path), "300", "30", str(seed)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    start, *cycles = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(cycles) == 31
    context = f"(KILL_LOOP_SEED={seed})"
    revision, digest = start["revision"], start["digest"]
    for c in cycles:
        assert "error" not in c, (c, context)
        assert c["exit"] in (None, 0), ([n for n in c["notes"] if n.startswith("crashed")], context)
        about = dict(n.split()[1:] for n in c["notes"] if n.startswith("about "))
        saved = [int(n.split()[1]) for n in c["notes"] if n.startswith("saved ")]
        acked = saved[-1] if saved else revision
        assert c["revision"] in (acked, acked + 1), (c["cycle"], acked, c["revision"], context)
        expected = about.get(str(c["revision"])) if c["revision"] > revision else digest
        assert c["digest"] == expected, (c["cycle"], context)
        revision, digest = c["revision"], c["digest"]
    # kills that landed while the plan still ran (a writer may also finish before its kill);
    # 300 phases outlast 30 kills of at most 0.1 s (≈ 100 phases done by then on an idle machine)
    kills = [c["killed"] and c["status"] == "running" for c in cycles]
    assert sum(kills) >= 25, (
        [(c["cycle"], c["status"], c["exit"]) for c in cycles if not c["killed"]],
        context,
    )
    assert (cycles[-1]["status"], cycles[-1]["passed"]) == ("succeeded", 300), context
    assert not (tmp_path / "state.journal").exists()


# -- the CLI, reading the journal without the daemon --


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.cleanup()
    assert "Traceback" not in d.stderr(), d.stderr()[-4000:]


def status_json(daemon: Daemon, *args: str) -> Any:
    result = daemon.cli("status", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_and_offline_cancel_and_retry_read_the_journal(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("jr-failed", phases=("P01", "P02"), worker="fail_once")
    daemon.wait_event("plan.archived", plan="jr-failed")
    daemon.submit("jr-stuck", repo="other", phases=("P01", "P02"), worker="stuck")
    [started] = daemon.wait_event("worker.started", plan="jr-stuck")
    log = Path(started["log"])
    daemon.wait_for(lambda: b"daemon agent:" in log.read_bytes(), what="the agent's first line")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    # the running plan's last saves are in its journal, and status reads them
    folder = daemon.state_dir / "plans" / "jr-stuck"
    assert (folder / "state.journal").exists()
    row = status_json(daemon, "jr-stuck")
    # no daemon holds the plan any more: status says so, from the journal's running attempt
    assert (row["state"], row["phase"], row["attempt"]) == ("interrupted", "P01", 1)
    assert row["phases"]["P01"]["attempts"][0]["status"] == "running"
    assert row["phases"]["P01"]["attempts"][0]["pid"] == started["pid"]

    # a finished plan's archive holds one whole state.toml
    archived = daemon.state_dir / "archive" / "jr-failed"
    assert not (archived / "state.journal").exists()
    assert tomllib.loads((archived / "state.toml").read_text())["status"] == "failed"

    result = daemon.cli("cancel", "jr-stuck")
    assert result.returncode == 0, result.stderr
    assert not alive(started["pid"])
    result = daemon.cli("retry", "jr-failed")
    assert result.returncode == 0, result.stderr
    rows = {r["plan"]: r for r in status_json(daemon)}
    assert (rows["jr-stuck"]["state"], rows["jr-stuck"]["where"]) == ("cancelled", "archive")
    assert (rows["jr-failed"]["state"], rows["jr-failed"]["where"]) == ("queued", "plans")
    failed = status_json(daemon, "jr-failed")
    assert {p: s["status"] for p, s in failed["phases"].items()} == {
        "P01": "passed",
        "P02": "failed",
    }

    daemon.start()
    daemon.wait_event("plan.succeeded", plan="jr-failed")
    assert daemon.events("phase.skipped", plan="jr-failed")[0]["phase"] == "P01"
    assert status_json(daemon, "jr-stuck")["state"] == "cancelled"
