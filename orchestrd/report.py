"""`orchestrd report`: what a person reads in the morning. One plan as markdown (or JSON) from
its state, its plan file and its audit events; or one line per plan that ended or is stuck.
The daemon writes the same markdown as `report.md` into a plan's folder when it ends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio.to_thread

from . import status
from .audit import Redactor, printable
from .config import Config, load_config
from .errors import OrchestrdError, StateError
from .logs import plan_folder
from .spool import Spool
from .state import AttemptState, atomic_write, load_state
from .store import PlanFolder
from .tail import Filter, parse_ts, scan, since_time
from .usage import total

_RULE = re.compile(r"\[rule: ([\w.-]+)\]")
# --since: what needs a person first
_ORDER = {
    "failed": 0,
    "merge_failed": 0,
    "corrupt": 0,
    "cancelled": 1,
    "interrupted": 2,
    "running": 3,
    "queued": 3,
    "merging": 3,
    "succeeded": 4,
}


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = parse_ts(start or ""), parse_ts(end or "")
    return (b - a).total_seconds() if a and b else None


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _plan_events(config: Config, plan_id: str, since: str | None) -> list[dict[str, Any]]:
    """The plan's audit events since it was submitted (a bisection and a byte search, so a
    large log costs little)."""
    path = config.audit_path
    if not path.exists():
        return []
    filt = Filter(plan=plan_id, since=parse_ts(since) if since else None)
    lines, _ = scan(path, filt)
    return [json.loads(line) for line in lines]


def _usage(attempts: list[AttemptState]) -> dict[str, float]:
    """Tokens and cost from the usage ledger (attempts whose profile reads a stream)."""
    records = [a.usage for a in attempts if a.usage is not None]
    if not records:
        return {}
    t = total(records)
    return {"tokens": t.tokens, "cost": round(t.cost_usd, 4)}


def gather(config: Config, folder: Path) -> dict[str, Any]:
    """Everything the report says, as data (`report --json`)."""
    files = PlanFolder(folder)
    state = load_state(files.state_file)
    try:
        plan = tomllib.loads(files.plan_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        plan = {}
    kinds = {p.get("id"): p.get("kind", "other") for p in plan.get("phases", [])}
    events = _plan_events(config, state.plan, state.submitted_at)
    phases = []
    for phase_id, ps in state.phases.items():
        mine = [e for e in events if e.get("phase") == phase_id]
        started = [e["ts"] for e in mine if e["event"] == "phase.started"]
        ended = [e["ts"] for e in mine if e["event"] in ("phase.passed", "phase.failed")]
        wall = _seconds(started[0], ended[-1]) if started and ended else None
        if wall is None and ps.attempts:
            wall = _seconds(ps.attempts[0].started_at, ps.attempts[-1].ended_at)
        phases.append(
            {
                "phase": phase_id,
                "kind": kinds.get(phase_id, "other"),
                "status": str(ps.status),
                "reason": ps.reason,
                "attempts": [
                    {"n": a.n, "role": a.role, "status": str(a.status), "returncode": a.returncode}
                    for a in ps.attempts
                ],
                "wall_seconds": wall,
                "failed_checks": [
                    {
                        "attempt": e.get("attempt"),
                        "check": e.get("check"),
                        "reason": e.get("reason", ""),
                        "rules": _RULE.findall(e.get("reason", "")),
                    }
                    for e in mine
                    if e["event"] == "check.failed"
                ],
                "changes": [
                    {"attempt": e.get("attempt"), "diffstat": e.get("diffstat", "")}
                    for e in mine
                    if e["event"] == "worker.changes"
                ],
                "logs": [str(files.workers / Path(a.log).name) for a in ps.attempts],
                **_usage(ps.attempts),
            }
        )
    return {
        "plan": state.plan,
        "status": str(state.status),
        "reason": state.reason,
        "repo": plan.get("repo"),
        "submitted_at": state.submitted_at,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "wall_seconds": _seconds(state.started_at, state.finished_at),
        "folder": str(folder),
        **status.git_fields(state),
        "phases": phases,
    }


def _attempts_cell(attempts: list[dict[str, Any]]) -> str:
    remediations = sum(1 for a in attempts if a["role"] != "primary")
    return f"{len(attempts)}" + (f" ({remediations} remediation)" if remediations else "")


def _checks_cell(failed: list[dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"#{c['attempt']} {c['check']}" + (f" ({', '.join(c['rules'])})" if c["rules"] else "")
            for c in failed
        )
        or "-"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(data: dict[str, Any]) -> str:
    phases = data["phases"]
    usage = [k for k in ("tokens", "cost") if any(k in p for p in phases)]
    out = [f"# Plan {data['plan']}: {data['status']}", ""]
    if data.get("reason"):
        out += [f"**Reason:** {data['reason']}", ""]
    out += [
        f"- repo: `{data.get('repo') or '?'}`",
        f"- started: {data.get('started_at') or '-'}",
        f"- ended: {data.get('finished_at') or '-'}",
        f"- wall time: {_fmt(data.get('wall_seconds'))}",
        f"- files: `{data['folder']}`",
        *([f"- git: {status.git_line(data)}"] if data.get("branch") else []),
        "",
        "| phase | kind | status | attempts | wall time | failed checks |"
        + "".join(f" {k} |" for k in usage),
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(usage),
    ]
    for p in phases:
        out.append(
            f"| {p['phase']} | {p['kind']} | {p['status']} | {_attempts_cell(p['attempts'])} "
            f"| {_fmt(p['wall_seconds'])} | {_cell(_checks_cell(p['failed_checks']))} |"
            + "".join(f" {p.get(k, '-')} |" for k in usage)
        )
    failed = [(p["phase"], c) for p in phases for c in p["failed_checks"]]
    if failed:
        out += ["", "## Failed checks", ""]
        out += [
            f"- {pid} attempt {c['attempt']}, `{c['check']}`: {c['reason']}" for pid, c in failed
        ]
    changed = [(p["phase"], c) for p in phases for c in p["changes"] if c["diffstat"]]
    if changed:
        out += ["", "## What changed", ""]
        for pid, c in changed:
            out += [f"{pid} attempt {c['attempt']}:", "", "```", c["diffstat"].rstrip(), "```", ""]
    out += ["", "## Logs", ""]
    for p in phases:
        for att, log in zip(p["attempts"], p["logs"], strict=True):
            out.append(
                f"- {p['phase']} #{att['n']} {att['role']} ({att['status']}): `{log}` — "
                f"`orchestrd logs {data['plan']} {p['phase']} --attempt {att['n']}`"
            )
    # reasons and diffstats quote what workers printed and named: a report is read on a terminal
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"
    return printable(text)


def write_report(config: Config, folder: Path) -> Path:
    """`report.md` in the plan's folder (the daemon calls this when a plan ends)."""
    dest = PlanFolder(folder).report
    text = Redactor.from_config(config)(markdown(gather(config, folder)))
    atomic_write(dest, text.encode())
    return dest


def write_after_run(config: Config, folder: Path) -> None:
    """`orchestrd run`'s report.md; a report that cannot be written is said, and the run's
    exit code stays the plan's."""
    try:
        write_report(config, folder)
    except (OSError, OrchestrdError, ValueError) as exc:
        print(f"orchestrd: {PlanFolder(folder).report} not written: {exc}", file=sys.stderr)


async def archive_report(config: Config, folder: Path) -> dict[str, str]:
    """Write `report.md` off the event loop; the field for the plan.archived event (where it
    is, or why there is none: a report must never stop the daemon)."""
    try:
        path = await anyio.to_thread.run_sync(write_report, config, folder)
    except (OSError, OrchestrdError, ValueError) as exc:
        return {"report_error": str(exc)}
    return {"report": str(path)}


def since_summary(config: Config, since: dt.datetime) -> list[str]:
    """One line per plan that ended after `since` or has not ended, failures first."""
    spool = Spool(config.state_dir)
    rows = []
    for row in status.collect(spool):
        folder = plan_folder(spool, row["plan"]) if row["state"] != "corrupt" else None
        ended = None
        if folder is not None:
            try:
                ended = parse_ts(load_state(PlanFolder(folder).state_file).finished_at or "")
            except StateError:
                ended = None
        if row["state"] == "succeeded" and (ended is None or ended < since):
            continue
        done = ("failed", "cancelled", "merge_failed")
        if row["state"] in done and ended is not None and ended < since:
            continue
        rows.append((row, folder))
    rows.sort(key=lambda rf: (_ORDER.get(rf[0]["state"], 3), str(rf[0].get("submitted_at"))))
    lines = []
    for row, folder in rows:
        where = f"phase {row['phase']}" if row.get("phase") else ""
        reason = f": {row['reason']}" if row.get("reason") else ""
        report = PlanFolder(folder).report if folder else None
        more = f" — {report}" if report and report.exists() else ""
        lines.append(
            f"- **{row['plan']}** {row['state']} ({where}, "
            f"{_fmt(row.get('elapsed'))}){reason}{more}"
        )
    return lines


def _cmd_report(args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    redact = Redactor.from_config(config)
    if args.plan is None:
        if args.since is None:
            raise OrchestrdError("report: name a PLAN, or --since 12h for every plan")
        when = since_time(args.since)
        lines = since_summary(config, when)
        print(redact(f"# Plans since {when.isoformat(timespec='minutes')}\n"))
        print(printable(redact("\n".join(lines))) if lines else "nothing ended or is running")
        return 0
    data = gather(config, plan_folder(Spool(config.state_dir), args.plan))
    if args.json:
        print(json.dumps(redact.deep(data), indent=2))
    else:
        sys.stdout.write(redact(markdown(data)))
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `report PLAN [--json]` and `report --since 12h`."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="a plan's morning report (markdown), or every plan since a time",
    )
    p.add_argument("plan", nargs="?", metavar="PLAN")
    p.add_argument("--since", metavar="WHEN", help="every plan that ended or is running: 12h, …")
    p.add_argument("--json", action="store_true", help="the report as data")
    p.set_defaults(func=_cmd_report)
