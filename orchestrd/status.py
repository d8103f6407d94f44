"""Reading plan state for people: `orchestrd status` as a table or JSON, from the state files
alone (so it works while the daemon is down).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from . import catalog
from .errors import StateError
from .spool import Spool
from .state import PlanState, load_state
from .states import AttemptStatus
from .store import ARCHIVE, ARCHIVE_INDEX, PLANS, PlanFolder
from .text import printable
from .usage import UsageRecord, total


def _elapsed(state: PlanState) -> float | None:
    if state.started_at is None:
        return None
    start = dt.datetime.fromisoformat(state.started_at)
    end = (
        dt.datetime.fromisoformat(state.finished_at)
        if state.finished_at
        else dt.datetime.now().astimezone()
    )
    return (end - start).total_seconds()


def summary(state: PlanState, where: str) -> dict[str, Any]:
    phase_id, attempt, pid = None, None, None
    current = state.current_phase()
    if current is None and state.phases:
        current = list(state.phases.items())[-1]
    if current is not None:
        phase_id, ps = current
        if ps.attempts:
            last = ps.attempts[-1]
            attempt = last.n
            if last.status is AttemptStatus.RUNNING:
                pid = last.pid
    spent = total(records(state))
    return {
        "plan": state.plan,
        "state": str(state.status),
        "tokens": spent.tokens,
        "cost_usd": round(spent.cost_usd, 6),
        "unpriced_attempts": spent.unpriced,
        "phase": phase_id,
        "attempt": attempt,
        "pid": pid,
        "elapsed": _elapsed(state),
        "reason": state.reason,
        "where": where,
        "submitted_at": state.submitted_at,
        **git_fields(state),
    }


def git_fields(state: PlanState) -> dict[str, Any]:
    """A worktree plan's branch, base, merge step and merged commit (none for other plans)."""
    wt = state.worktree
    if wt is None:
        return {}
    merge = wt.merge or {}
    return {
        "branch": wt.branch,
        "base": wt.base,
        "base_branch": wt.base_branch,
        "target": wt.target,
        "merge": merge.get("step"),
        "merged": merge.get("new") if merge.get("step") == "done" else None,
    }


def records(state: PlanState) -> list[UsageRecord]:
    """The plan's ledger: what each attempt spent (those whose profile reads a stream)."""
    return [a.usage for ps in state.phases.values() for a in ps.attempts if a.usage is not None]


def ledger(spool: Spool) -> list[tuple[str, UsageRecord]]:
    """Every attempt's usage, of the plans in plans/ and archive/ (unreadable states skipped:
    `status` reports them)."""
    entries = []
    for base in (spool.plans, spool.archive_dir):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            state_file = PlanFolder(folder).state_file
            if folder.name.startswith(".") or not state_file.exists():
                continue
            try:
                state = load_state(state_file)
            except StateError:
                continue
            entries += [(state.plan, r) for r in records(state)]
    return entries


def collect(spool: Spool, plan_id: str | None = None) -> list[dict[str, Any]]:
    """One summary per plan in plans/ and archive/ (or just `plan_id`), oldest first. The
    archive's come from its summary index (catalog) unless one plan is asked for."""
    rows = []
    for base, where in ((spool.plans, PLANS), (spool.archive_dir, ARCHIVE)):
        if plan_id is None and where == ARCHIVE:
            rows += catalog.rows(base, lambda folder: folder_row(spool, folder, ARCHIVE))
            continue
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if folder.name.startswith(".") or (plan_id is not None and folder.name != plan_id):
                continue  # a plan still being accepted (plans/.<id>.accepting) is not one yet
            row = folder_row(spool, folder, where, detail=plan_id is not None)
            if row is not None:
                rows.append(row)
    rows.sort(key=lambda r: str(r.get("submitted_at", "")))
    return rows


def folder_row(
    spool: Spool, folder: Path, where: str, detail: bool = False
) -> dict[str, Any] | None:
    """The summary of the plan in `folder` (None: not a plan folder); `detail`: with its
    phases."""
    state_file = PlanFolder(folder).state_file
    if not state_file.exists():
        if PlanFolder(folder).set_aside_before():
            return {
                "plan": folder.name,
                "state": "corrupt",
                "where": where,
                "reason": "its state file was unreadable and set aside",
            }
        return None
    try:
        state = load_state(state_file)
    except StateError as exc:
        return {"plan": folder.name, "state": "corrupt", "reason": str(exc), "where": where}
    row = summary(state, where)
    if row["state"] == "running" and not spool.holder_alive(folder):
        # left `running` by a daemon or `orchestrd run` that was killed
        row.update(state="interrupted", pid=None, reason="no process holds the plan")
    if detail:
        row["phases"] = state.model_dump(mode="json", exclude_none=True)["phases"]
    return row


def index_archived(spool: Spool, dest: Path) -> dict[str, str]:
    """Add the plan just archived to `dest` to the archive's summary index; what went wrong
    for the `plan.archived` event (the next `status` indexes the plan from its state file)."""
    try:
        catalog.add(spool.archive_dir, dest.name, folder_row(spool, dest, ARCHIVE))
    except OSError as exc:
        return {"index_failed": f"{exc.filename or ARCHIVE_INDEX}: {exc.strerror or exc}"}
    return {}


def _fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def fmt_tokens(tokens: int | None) -> str:
    if not tokens:
        return "-"
    return (
        f"{tokens / 1e6:.2f}M"
        if tokens >= 1_000_000
        else (f"{tokens / 1e3:.1f}k" if tokens >= 1000 else str(tokens))
    )


def fmt_cost(cost: float | None, unpriced: int = 0) -> str:
    """Dollars; `+?` when some spending has no known cost (the sum is a floor)."""
    if cost is None or (not cost and not unpriced):
        return "-"
    return f"${cost:.2f}" + ("+?" if unpriced else "")


def table(rows: list[dict[str, Any]]) -> str:
    header = ("PLAN", "STATE", "PHASE", "ATTEMPT", "PID", "ELAPSED", "TOKENS", "COST")
    lines: list[tuple[str, ...]] = [header]
    add = lines.append
    for r in rows:
        # plan ids and phase ids come from folder names and files others wrote
        add(
            (
                printable(str(r["plan"]), newlines=False),
                printable(str(r["state"]), newlines=False),
                printable(str(r.get("phase") or "-"), newlines=False),
                printable(str(r.get("attempt") or "-"), newlines=False),
                printable(str(r.get("pid") or "-"), newlines=False),
                _fmt_elapsed(r.get("elapsed")),
                fmt_tokens(r.get("tokens")),
                fmt_cost(r.get("cost_usd"), r.get("unpriced_attempts", 0)),
            )
        )
    # one pass per column and str.ljust mapped over a line: 10,000 archived plans render in
    # a few tens of milliseconds
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(map(str.ljust, line, widths)).rstrip() for line in lines)


def git_line(row: dict[str, Any]) -> str:
    """`branch orchestrd/p (base main @ abc1234); merge into main: done → def5678`."""
    base = str(row.get("base") or "")[:12]
    on = f"{row['base_branch']} @ {base}" if row.get("base_branch") else base
    text = f"branch {row['branch']} (base {on})"
    if row.get("merge"):
        text += f"; merge into {row.get('target')}: {row['merge']}"
    if row.get("merged"):
        text += f" → {str(row['merged'])[:12]}"
    return text


def detail(row: dict[str, Any]) -> str:
    lines = [table([row])]
    if row.get("reason"):
        # a reason may quote what a worker printed: colours, OSC titles, clear-screen
        lines.append(f"reason: {printable(str(row['reason']))}")
    if row.get("branch"):
        lines.append(printable(git_line(row), newlines=False))
    for phase_id, ps in row.get("phases", {}).items():
        attempts = ", ".join(
            f"#{a['n']} {a['role']} {a['status']}"
            + (f" rc={a['returncode']}" if "returncode" in a else "")
            + _attempt_usage(a.get("usage"))
            for a in ps.get("attempts", [])
        )
        spent = [
            UsageRecord.model_validate(a["usage"]) for a in ps.get("attempts", []) if a.get("usage")
        ]
        t = total(spent)
        usage = (
            f" {fmt_tokens(t.tokens)} tokens {fmt_cost(t.cost_usd, t.unpriced)};" if spent else ""
        )
        line = f"  {phase_id:<10} {ps['status']:<9}{usage} {attempts}"
        lines.append(printable(line, newlines=False))
    return "\n".join(lines)


def _attempt_usage(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    cost = usage.get("cost_usd")
    priced = f"${cost:.4f} {usage.get('cost_source')}" if cost is not None else "cost unknown"
    return f" [{fmt_tokens(usage.get('tokens'))} tokens, {priced}]"


def state_path(spool: Spool, plan_id: str) -> Path | None:
    folder = spool.find(plan_id)
    return folder.state_file if folder is not None else None
