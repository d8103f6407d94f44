"""Runs a long plan's state transitions in a forked writer and SIGKILLs it at random moments,
again and again; after each kill it reads the state back as `orchestrd` would. One JSON line
per kill (after one for the first state) goes to stdout for tests/test_state_writes.py.

The writer goes through the real `PlanRecord` (journal appends and compactions) as fast as it
can, and notes every save in a file with one write(2) each:
`about <revision> <digest>` before it starts (the digest of the state it is about to save)
and `saved <revision>` once it returned. It resumes from the state it finds, as recovery
does: an interrupted phase starts over.

    python tests/state_kill_driver.py STATE_DIR PHASES KILLS SEED
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import anyio

from orchestrd.audit import AuditLog
from orchestrd.errors import StateError
from orchestrd.state import (
    AttemptState,
    PhaseState,
    PlanRecord,
    PlanState,
    dump_state,
    load_state,
    mark_left_stopped,
    now_iso,
    write_whole_state,
)
from orchestrd.states import AttemptStatus, PhaseStatus, PlanStatus


def digest(state: PlanState, revision: int) -> str:
    data = state.model_dump(mode="json")
    data["revision"] = revision
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class NotedRecord(PlanRecord):
    notes_fd = -1

    def note(self, line: str) -> None:
        os.write(self.notes_fd, f"{line}\n".encode())

    async def save(self, *phase_ids: str, compact: bool = False) -> None:
        self.note(f"about {self.state.revision + 1} {digest(self.state, self.state.revision + 1)}")
        await super().save(*phase_ids, compact=compact)
        self.note(f"saved {self.state.revision}")


async def write(path: Path, notes: Path, seed: int) -> None:
    rng = random.Random(seed)
    audit = AuditLog(path.parent / "audit.jsonl")
    log = audit.bind(plan="long")
    NotedRecord.notes_fd = os.open(notes, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    record = NotedRecord(path, load_state(path), log, on_disk=True)
    state = record.state
    if state.status is PlanStatus.SUCCEEDED:
        return  # a kill meant for the last phase came after it
    if state.status is not PlanStatus.RUNNING:
        await record.set_status(PlanStatus.RUNNING)
    while (current := state.current_phase()) is not None:
        phase_id, ps = current
        if ps.status in (PhaseStatus.RUNNING, PhaseStatus.CHECKING):  # resumed after a kill
            for att in ps.attempts:
                if att.status in (AttemptStatus.STARTING, AttemptStatus.RUNNING):
                    mark_left_stopped(att)
            await record.set_phase(phase_id, PhaseStatus.PENDING)
        await record.set_phase(phase_id, PhaseStatus.RUNNING, save=False)
        att = AttemptState(n=len(ps.attempts) + 1, role="primary", log=f"worker-{phase_id}.log")
        ps.attempts.append(att)
        att.status, att.pid = AttemptStatus.RUNNING, os.getpid()
        await record.save(phase_id)
        att.status, att.returncode, att.ended_at = AttemptStatus.EXITED, 0, now_iso()
        # now and then a compaction of its own, so kills land in one often
        await record.save(phase_id, compact=rng.random() < 0.05)
        await record.set_phase(phase_id, PhaseStatus.CHECKING, save=False)
        await record.set_phase(phase_id, PhaseStatus.PASSED)
    await record.set_status(PlanStatus.SUCCEEDED)


def read_back(path: Path) -> dict[str, Any]:
    try:
        state = load_state(path)
    except StateError as exc:
        return {"error": str(exc)}
    passed = sum(ps.status is PhaseStatus.PASSED for ps in state.phases.values())
    return {
        "revision": state.revision,
        "digest": digest(state, state.revision),
        "status": str(state.status),
        "passed": passed,
    }


def kill_at_random(pid: int, notes: Path, rng: random.Random) -> int:
    """SIGKILL the writer at a random moment of its work; its wait status. The moment counts
    from its first save, not from the fork: on a loaded machine its start-up alone can outlast
    the whole delay."""
    deadline = time.monotonic() + 30
    while not notes.stat().st_size and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status  # it ended before saving anything (crashed): reported by the caller
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.1))
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def main(state_dir: Path, phases: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    path = state_dir / "state.toml"
    notes = state_dir / "notes.txt"
    # the first state, as the spool writes it when it accepts a plan
    state = PlanState(plan="long", phases={f"P{i:04d}": PhaseState() for i in range(phases)})
    write_whole_state(path, dump_state(state))
    print(json.dumps({"cycle": "start", **read_back(path)}), flush=True)
    for cycle in range(kills + 1):
        notes.write_bytes(b"")
        pid = os.fork()
        if pid == 0:  # the writer
            code = 0
            try:
                anyio.run(write, path, notes, seed * 1000 + cycle)
            except BaseException:  # noqa: BLE001 - a writer's failure goes to the test, not lost
                with open(notes, "a") as f:
                    f.write("crashed " + traceback.format_exc().replace("\n", " | ") + "\n")
                code = 3
            finally:
                os._exit(code)
        status = kill_at_random(pid, notes, rng) if cycle < kills else os.waitpid(pid, 0)[1]
        result = {
            "cycle": cycle,
            "killed": os.WIFSIGNALED(status),
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "notes": notes.read_text().splitlines(),
            **read_back(path),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
