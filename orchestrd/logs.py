"""`orchestrd logs`: a worker's log (or a verify command's output) found from the plan's state,
wherever the plan's folder is now; `-f` follows a running worker until it ends."""

from __future__ import annotations

import argparse
import codecs
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from . import status
from .audit import printable
from .config import load_config
from .errors import OrchestrdError
from .fsutil import open_regular
from .plan import check_plan_id
from .spool import Spool
from .state import AttemptState, PlanState, load_state
from .states import AttemptStatus, PhaseStatus
from .store import PlanFolder

FOLLOW_STEP = 0.1
_LIVE = frozenset({AttemptStatus.STARTING, AttemptStatus.RUNNING})


def plan_folder(spool: Spool, plan_id: str) -> Path:
    """The plan's folder in plans/ or archive/, or an error naming where it was looked for."""
    check_plan_id(plan_id, "PLAN")  # a path such as ../x is no plan id
    state_file = status.state_path(spool, plan_id)
    if state_file is None:
        raise OrchestrdError(
            f"plan {plan_id}: not found under {spool.plans} or {spool.archive_dir}"
        )
    return state_file.parent


def pick_phase(state: PlanState, phase_id: str | None) -> str:
    """The named phase, else the current one (the first not passed), else the last one run."""
    if phase_id is not None:
        if phase_id not in state.phases:
            raise OrchestrdError(
                f"plan {state.plan}: no phase {phase_id!r} (it has {', '.join(state.phases)})"
            )
        return phase_id
    current = state.current_phase()
    if current is not None and current[1].attempts:
        return current[0]
    ran = [pid for pid, ps in state.phases.items() if ps.attempts]
    if not ran:
        raise OrchestrdError(f"plan {state.plan}: no worker has run yet")
    return ran[-1]


def pick_attempt(state: PlanState, phase_id: str, n: int | None) -> AttemptState:
    attempts = state.phases[phase_id].attempts
    if not attempts:
        raise OrchestrdError(f"plan {state.plan}: phase {phase_id} has no attempt yet")
    if n is None:
        return attempts[-1]
    for att in attempts:
        if att.n == n:
            return att
    raise OrchestrdError(
        f"plan {state.plan}: phase {phase_id} has attempts "
        f"{', '.join(str(a.n) for a in attempts)}, not {n}"
    )


def log_file(folder: Path, phase_id: str, att: AttemptState, verify: int | None) -> Path:
    """The file as it is named in the plan's folder now (the state keeps the path it had when
    the worker ran; the folder may have been archived since)."""
    name = f"verify-{phase_id}-{att.n}-{verify}.log" if verify is not None else Path(att.log).name
    return PlanFolder(folder).workers / name


def _still_writing(spool: Spool, plan_id: str, phase_id: str, n: int, verify: bool) -> bool:
    """Whether the attempt (or, for a verify output, its checking) is still going on."""
    state_file = status.state_path(spool, plan_id)
    if state_file is None:
        return False
    state = load_state(state_file)
    ps = state.phases[phase_id]
    if not ps.attempts or ps.attempts[-1].n != n:
        return False
    if verify:
        return ps.status is PhaseStatus.CHECKING
    return ps.attempts[-1].status in _LIVE


class _Out:
    """Where the log goes: its bytes as they are into a pipe or a file, escaped text on a
    terminal (a worker's escape sequences must not drive the operator's terminal)."""

    def __init__(self, out: BinaryIO, escape: bool) -> None:
        self.out = out
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if escape else None

    def write(self, chunk: bytes) -> None:
        if self.decoder is None:
            self.out.write(chunk)
        else:
            self.out.write(printable(self.decoder.decode(chunk)).encode())


def _copy(f: BinaryIO, out: _Out) -> int:
    copied = 0
    while chunk := f.read(1 << 16):
        out.write(chunk)
        copied += len(chunk)
    out.out.flush()
    return copied


def _cmd_logs(args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    spool = Spool(config.state_dir)
    folder = plan_folder(spool, args.plan)
    state = load_state(PlanFolder(folder).state_file)
    phase_id = pick_phase(state, args.phase)
    att = pick_attempt(state, phase_id, args.attempt)
    path = log_file(folder, phase_id, att, args.verify)
    out = _Out(sys.stdout.buffer, sys.stdout.isatty())
    is_verify = args.verify is not None

    def writing() -> bool:
        return _still_writing(spool, args.plan, phase_id, att.n, is_verify)

    if not path.exists():
        if not args.follow:
            what = f"verify[{args.verify}] output" if is_verify else "log"
            raise OrchestrdError(
                f"plan {args.plan} phase {phase_id} attempt {att.n}: no {what} "
                f"({path} does not exist)"
            )
        while not path.exists():  # the worker is being launched
            if not writing():
                return 0
            time.sleep(FOLLOW_STEP)
    # a worker may have put a FIFO where its log was: never wait on one
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as f:  # stays readable if the folder is archived meanwhile
        _copy(f, out)
        while args.follow:
            live = writing()
            if _copy(f, out) == 0 and not live:
                break
            time.sleep(FOLLOW_STEP)
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `logs PLAN [PHASE] [--attempt N] [--verify I] [-f]`."""
    p = sub.add_parser(
        "logs",
        parents=[common],
        help="a worker's log or a verify command's output (no path to know)",
    )
    p.add_argument("plan", metavar="PLAN")
    p.add_argument(
        "phase",
        nargs="?",
        metavar="PHASE",
        help="default: the current phase, or the last one that ran",
    )
    p.add_argument("--attempt", type=int, metavar="N", help="default: the latest attempt")
    p.add_argument(
        "--verify",
        type=int,
        metavar="I",
        help="the output of the phase's verify command number I (from 0)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing while the worker runs; end when it ends",
    )
    p.set_defaults(func=_cmd_logs)
