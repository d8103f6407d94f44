"""The lifecycle states of plans, phases and worker attempts, and their allowed transitions.

This module has no internal imports: everything else may import it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeVar


class PlanStatus(enum.StrEnum):
    QUEUED = "queued"
    """Accepted and waiting for a worker slot or for its repository to be free."""
    RUNNING = "running"
    """A runner is carrying out its phases."""
    SUCCEEDED = "succeeded"
    """Every phase passed its checks."""
    FAILED = "failed"
    """A phase failed after its remediations were exhausted (the state file says why)."""
    CANCELLED = "cancelled"
    """Stopped on request (`orchestrd cancel`)."""
    INTERRUPTED = "interrupted"
    """The daemon stopped while the plan was running; it resumes on the next start."""
    MERGING = "merging"
    """Every phase passed; in its repository's merge queue (`merge = "rebase"`)."""
    MERGE_FAILED = "merge_failed"
    """Every phase passed, but the branch was not merged: a rebase conflict (the files) or a
    red merge_verify (the command); the branch is kept for a person."""
    PAUSED = "paused"
    """A budget was spent (reason `budget:<name>`): nothing is lost; `orchestrd resume` (or
    the next UTC day, for the daily budget) runs its phase again from a fresh worker."""


class PhaseStatus(enum.StrEnum):
    PENDING = "pending"
    """Not started yet."""
    RUNNING = "running"
    """A worker (primary or remediation) is running for it."""
    CHECKING = "checking"
    """The worker has ended; the checkpoints are being inspected."""
    PASSED = "passed"
    """All checkpoints passed."""
    FAILED = "failed"
    """Checks failed and no remediation is left."""


class AttemptStatus(enum.StrEnum):
    STARTING = "starting"
    """The process is being launched."""
    RUNNING = "running"
    """The process is alive and polled."""
    EXITED = "exited"
    """The process ended by itself (see its return code)."""
    STALLED = "stalled"
    """The process outlived its last poll and is being stopped."""
    STOPPED = "stopped"
    """The process group was stopped by the daemon (stall, cancel or shutdown)."""
    FAILED_TO_START = "failed_to_start"
    """The command could not be executed at all."""
    RATE_LIMITED = "rate_limited"
    """It ended on a rate or usage limit: not a failure; its profile is parked and the phase
    starts again with a fresh worker when the limit resets."""
    AUTH_FAILED = "auth_failed"
    """Its login failed: not a failure; its profile is blocked until unblocked."""


PLAN_TERMINAL = frozenset(
    {PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.CANCELLED, PlanStatus.MERGE_FAILED}
)
PHASE_DONE = frozenset({PhaseStatus.PASSED, PhaseStatus.FAILED})

PLAN_TRANSITIONS: dict[PlanStatus, frozenset[PlanStatus]] = {
    # queued → failed: the plan became invalid before it started (e.g. its profile was removed)
    PlanStatus.QUEUED: frozenset(
        {PlanStatus.RUNNING, PlanStatus.CANCELLED, PlanStatus.INTERRUPTED, PlanStatus.FAILED}
    ),
    PlanStatus.RUNNING: frozenset(
        {
            PlanStatus.SUCCEEDED,
            PlanStatus.FAILED,
            PlanStatus.CANCELLED,
            PlanStatus.INTERRUPTED,
            PlanStatus.MERGING,
            PlanStatus.PAUSED,
        }
    ),
    # merging → interrupted: the daemon stopped; on restart the plan (its phases passed) goes
    # back through running to the queue, and its saved merge state carries on
    PlanStatus.MERGING: frozenset(
        {
            PlanStatus.SUCCEEDED,
            PlanStatus.MERGE_FAILED,
            PlanStatus.CANCELLED,
            PlanStatus.INTERRUPTED,
        }
    ),
    # resume: queued again; a paused plan whose file can no longer be loaded fails
    PlanStatus.PAUSED: frozenset({PlanStatus.QUEUED, PlanStatus.CANCELLED, PlanStatus.FAILED}),
    PlanStatus.INTERRUPTED: frozenset(
        {PlanStatus.QUEUED, PlanStatus.RUNNING, PlanStatus.CANCELLED, PlanStatus.FAILED}
    ),
    # retry: a failed or cancelled plan may be queued again
    PlanStatus.FAILED: frozenset({PlanStatus.QUEUED}),
    PlanStatus.CANCELLED: frozenset({PlanStatus.QUEUED}),
    # retry after a person fixed the branch: merged again
    PlanStatus.MERGE_FAILED: frozenset({PlanStatus.QUEUED}),
    PlanStatus.SUCCEEDED: frozenset(),
}

PHASE_TRANSITIONS: dict[PhaseStatus, frozenset[PhaseStatus]] = {
    PhaseStatus.PENDING: frozenset({PhaseStatus.RUNNING}),
    PhaseStatus.RUNNING: frozenset({PhaseStatus.CHECKING, PhaseStatus.PENDING}),
    # checking → running: a remediation attempt starts
    PhaseStatus.CHECKING: frozenset(
        {PhaseStatus.PASSED, PhaseStatus.FAILED, PhaseStatus.RUNNING, PhaseStatus.PENDING}
    ),
    PhaseStatus.PASSED: frozenset(),
    PhaseStatus.FAILED: frozenset({PhaseStatus.PENDING}),
}

ATTEMPT_TRANSITIONS: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    AttemptStatus.STARTING: frozenset({AttemptStatus.RUNNING, AttemptStatus.FAILED_TO_START}),
    AttemptStatus.RUNNING: frozenset(
        {AttemptStatus.EXITED, AttemptStatus.STALLED, AttemptStatus.STOPPED}
    ),
    AttemptStatus.STALLED: frozenset({AttemptStatus.STOPPED}),
    # judged after its end: the account, not the work, was the trouble
    AttemptStatus.EXITED: frozenset({AttemptStatus.RATE_LIMITED, AttemptStatus.AUTH_FAILED}),
    AttemptStatus.STOPPED: frozenset({AttemptStatus.RATE_LIMITED, AttemptStatus.AUTH_FAILED}),
    AttemptStatus.FAILED_TO_START: frozenset(),
    AttemptStatus.RATE_LIMITED: frozenset(),
    AttemptStatus.AUTH_FAILED: frozenset(),
}


# the ends a plan may be queued again from (`orchestrd retry`), as the table says
PLAN_RETRYABLE = frozenset(s for s in PLAN_TERMINAL if PlanStatus.QUEUED in PLAN_TRANSITIONS[s])


# The audit event of each change (None: none of its own; the save or a later event tells).
PLAN_EVENTS: dict[PlanStatus, str] = {
    PlanStatus.QUEUED: "plan.queued",
    PlanStatus.RUNNING: "plan.started",
    PlanStatus.SUCCEEDED: "plan.succeeded",
    PlanStatus.FAILED: "plan.failed",
    PlanStatus.CANCELLED: "plan.cancelled",
    PlanStatus.INTERRUPTED: "plan.interrupted",
    PlanStatus.MERGING: "merge.queued",
    PlanStatus.MERGE_FAILED: "plan.merge_failed",
    PlanStatus.PAUSED: "plan.paused",
}

PHASE_EVENTS: dict[tuple[PhaseStatus, PhaseStatus], str] = {
    (PhaseStatus.PENDING, PhaseStatus.RUNNING): "phase.started",
    (PhaseStatus.CHECKING, PhaseStatus.RUNNING): "remediation.started",
    (PhaseStatus.CHECKING, PhaseStatus.PASSED): "phase.passed",
    (PhaseStatus.CHECKING, PhaseStatus.FAILED): "phase.failed",
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run (or a merge) of a plan ended, as its runner says; the plan's lifecycle records
    it (the runner never sets the plan's status itself)."""

    status: PlanStatus
    reason: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    """More for the status' audit event (the failed phase, the budget spent, the merge)."""


class InvalidTransition(RuntimeError):
    """A state change that the transition table does not allow: a bug, never user input."""


S = TypeVar("S", PlanStatus, PhaseStatus, AttemptStatus)


def check_transition(table: dict[S, frozenset[S]], old: S, new: S) -> None:
    """Raise InvalidTransition unless `old → new` is in `table`."""
    if new not in table[old]:
        raise InvalidTransition(f"{type(old).__name__}: {old} → {new} is not allowed")
