"""`orchestrd run`'s live view on a terminal (rich): the plan, phase n/N, attempt and role,
elapsed time, polls done of max and the last check, updated in place. It follows the audit log
like `orchestrd tail -f`, so the runner knows nothing of it; finished phases stay printed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .plan import Plan
from .tail import LineFollower, colour_of

STEP = 0.1
_STYLE = {"\033[32m": "green", "\033[31m": "red", "\033[33m": "yellow"}


def _style(event: str) -> str:
    return _STYLE.get(colour_of(event) or "", "")


class View:
    """What the live region shows, rendered afresh at every refresh (so elapsed ticks)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.order = [p.id for p in plan.phases]
        self.kinds = {p.id: p.kind for p in plan.phases}
        self.started = time.monotonic()
        self.phase: str | None = None
        self.attempt: Any = None
        self.role = "-"
        self.polls = "-"
        self.check = Text("-")
        self.state = Text("starting")

    def update(self, e: dict[str, Any]) -> str | None:
        """Take one event; a line to print for good above the live region, if any."""
        name = str(e.get("event"))
        if name == "phase.started":
            self.phase, self.attempt, self.role, self.polls = e.get("phase"), "-", "-", "-"
            self.check = Text("-")
        elif name == "worker.started":
            self.attempt, self.role = e.get("attempt"), str(e.get("role"))
            self.polls = "0"
        elif name == "worker.poll":
            self.polls = f"{e.get('cycle')}/{e.get('max_polls')}"
        elif name.startswith("check."):
            self.check = Text(
                f"{e.get('check')}: {e.get('reason', '')}",
                style=_style(name),
                no_wrap=True,
                overflow="ellipsis",
            )
        if name.startswith(("plan.", "worker.")) and name != "worker.poll":
            self.state = Text(name, style=_style(name))
        if name in ("phase.passed", "phase.failed"):
            reason = f" — {e['reason']}" if e.get("reason") else ""
            return f"[{_style(name)}]{name}[/] {e.get('phase')}{reason}"
        return None

    def __rich__(self) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(no_wrap=True, overflow="ellipsis")
        n = self.order.index(self.phase) + 1 if self.phase in self.order else 0
        phase = f"{n}/{len(self.order)} {self.phase or '-'}"
        if self.phase:
            phase += f" ({self.kinds[self.phase]})"
        elapsed = int(time.monotonic() - self.started)
        table.add_row("plan", f"{self.plan.id}  [dim]{elapsed // 60}m{elapsed % 60:02d}s[/]")
        table.add_row("phase", phase)
        table.add_row("attempt", f"{self.attempt or '-'} {self.role}")
        table.add_row("polls", self.polls)
        table.add_row("last check", self.check)
        table.add_row("state", self.state)
        return table


async def show(
    audit_path: Path,
    plan: Plan,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Follow the audit log for `plan`'s events and show them until cancelled."""
    # the file exists: the runner's AuditLog opened it before this task starts
    follower = LineFollower(audit_path, None)
    await anyio.to_thread.run_sync(follower.read)  # from here on
    view = View(plan)
    needle = f'"plan": {json.dumps(plan.id)}'.encode()
    console = Console()
    task_status.started()
    with Live(view, console=console, refresh_per_second=8, transient=False) as live:
        try:
            while True:
                await anyio.sleep(STEP)
                await _show_new(follower, needle, view, console)
        finally:
            with anyio.CancelScope(shield=True):
                # the plan's last events, written as the runner ended, still reach the screen
                await _show_new(follower, needle, view, console)
                live.refresh()
                follower.close()


async def _show_new(follower: LineFollower, needle: bytes, view: View, console: Console) -> None:
    for line in await anyio.to_thread.run_sync(follower.read):
        if needle in line and (e := _parse(line)) and (out := view.update(e)):
            console.print(out)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
