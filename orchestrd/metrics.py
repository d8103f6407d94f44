"""Prometheus metrics (prometheus-client): counters and histograms fed by following the audit
log, gauges read from the plans' state; written atomically to `[metrics] textfile` every
`interval` for node_exporter's textfile collector. `Metrics.registry` is what a `/metrics`
endpoint serves."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)

from . import status
from .audit import AuditLog, Logger, Watcher
from .config import Config
from .spool import Spool
from .tail import LineFollower, parse_ts

STEP = 0.2
"""A burst of events is read at most this often."""
OTHERS = 1.0
"""Lines other processes write (`orchestrd run`) are read at least this often; the daemon's
own events wake the task when they are written."""
WANTED = frozenset(
    {
        "worker.started",
        "worker.exited",
        "worker.stalled",
        "worker.failed_to_start",
        "phase.started",
        "phase.passed",
        "phase.failed",
        "check.failed",
        "remediation.started",
    }
)
_RULE = re.compile(r"\[rule: ([\w.-]+)\]")
_WANTED = re.compile(
    rb'"event": "(?:worker\.(?:started|exited|stalled|failed_to_start)|'
    rb'phase\.(?:started|passed|failed)|check\.failed|remediation\.started)"'
)
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200)
REACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.plans = Gauge(
            "orchestrd_plans", "plans in state_dir by status", ["status"], registry=r
        )
        self.workers = Gauge(
            "orchestrd_workers_running", "worker processes running now", registry=r
        )
        self.attempts = Counter(
            "orchestrd_attempts", "worker attempts ended, by outcome", ["outcome"], registry=r
        )
        self.stalls = Counter(
            "orchestrd_stalls", "workers that outlived their last poll", registry=r
        )
        self.remediations = Counter(
            "orchestrd_remediations", "remediation attempts started", registry=r
        )
        self.check_failures = Counter(
            "orchestrd_check_failures",
            "failed checks by check and rule",
            ["check", "rule"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "orchestrd_phase_duration_seconds",
            "a phase's wall time (started to passed or failed)",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reaction = Histogram(
            "orchestrd_reaction_seconds",
            "a worker's exit to the plan's next worker (checks included)",
            buckets=REACTION_BUCKETS,
            registry=r,
        )
        self._phase_start: dict[tuple[str, str], tuple[dt.datetime, str]] = {}
        self._last_exit: dict[str, dt.datetime] = {}

    def observe(self, e: dict[str, Any]) -> None:
        """Count one audit event."""
        name, plan, ts = e.get("event"), str(e.get("plan")), parse_ts(str(e.get("ts", "")))
        if name == "worker.exited":
            self.attempts.labels("ok" if e.get("returncode") == 0 else "error").inc()
            if ts:
                self._last_exit[plan] = ts
        elif name == "worker.stalled":
            self.stalls.inc()
            self.attempts.labels("stalled").inc()
        elif name == "worker.failed_to_start":
            self.attempts.labels("failed_to_start").inc()
        elif name == "worker.started" and ts and (exited := self._last_exit.pop(plan, None)):
            self.reaction.observe((ts - exited).total_seconds())
        elif name == "remediation.started":
            self.remediations.inc()
        elif name == "check.failed":
            check = str(e.get("check"))
            for rule in _RULE.findall(str(e.get("reason", ""))) or [check]:
                self.check_failures.labels(check, rule).inc()
        elif name == "phase.started" and ts:
            self._phase_start[(plan, str(e.get("phase")))] = (ts, str(e.get("kind", "other")))
        elif name in ("phase.passed", "phase.failed") and ts:
            start = self._phase_start.pop((plan, str(e.get("phase"))), None)
            if start is not None:
                self.phase_seconds.labels(start[1], name.partition(".")[2]).observe(
                    (ts - start[0]).total_seconds()
                )

    def observe_lines(self, lines: list[bytes]) -> None:
        # one regex scan over the whole batch, not one per line: most lines are polls
        blob = b"\n".join(lines)
        end = -1
        for m in _WANTED.finditer(blob):
            if m.start() < end:
                continue  # the same line again
            start = blob.rfind(b"\n", 0, m.start()) + 1
            end = blob.find(b"\n", m.end())
            if end < 0:
                end = len(blob)
            try:
                self.observe(json.loads(blob[start:end]))
            except ValueError:
                continue  # a torn line: not an event

    def read_state(self, state_dir: Path) -> None:
        """The gauges, from the state files (what is true now, whatever the log said)."""
        self.set_plans(status.collect(Spool(state_dir)))

    def set_plans(self, rows: list[dict[str, Any]]) -> None:
        """The gauges from `status` rows (one per plan, archived included)."""
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        self.plans.clear()
        for state, n in counts.items():
            self.plans.labels(state).set(n)
        self.workers.set(sum(1 for row in rows if row.get("pid")))


def write_textfile(metrics: Metrics, config: Config) -> None:
    assert config.metrics.textfile is not None
    metrics.read_state(config.state_dir)
    # prometheus-client writes a temporary file and renames it: never half a file
    write_to_textfile(str(config.metrics.textfile), metrics.registry)


def exposition(metrics: Metrics) -> bytes:
    """The Prometheus text of `metrics` (what /metrics serves)."""
    return generate_latest(metrics.registry)


async def run_metrics(
    config: Callable[[], Config],
    log: Logger,
    metrics: Metrics,
    audit: AuditLog | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's metrics task: follow the audit log from now on (started before recovery)
    into `metrics` (which /metrics serves too), and rewrite the textfile every `interval`
    while one is configured. It reads when `audit` (this process's log) writes an event it
    counts, and every `OTHERS` seconds for other writers: an idle daemon reads nothing."""
    follower = LineFollower(config().audit_path, None)
    await anyio.to_thread.run_sync(follower.read)  # the place is fixed now
    watcher = Watcher(WANTED.__contains__)
    if audit is not None:
        audit.watchers.append(watcher)
    task_status.started()
    next_write = 0.0
    failing: str | None = None
    try:
        while True:
            cfg = config()
            now = anyio.current_time()
            watcher.event.clear()
            try:
                metrics.observe_lines(await anyio.to_thread.run_sync(follower.read))
                if cfg.metrics.textfile is not None and now >= next_write:
                    next_write = now + cfg.metrics.interval
                    await anyio.to_thread.run_sync(write_textfile, metrics, cfg)
                    failing = None
            except OSError as exc:  # metrics must never stop supervision
                reason = f"{exc.filename or cfg.metrics.textfile}: {exc.strerror or exc}"
                if reason != failing:  # once per reason, not every interval
                    log.info("daemon.metrics_failed", reason=reason)
                failing = reason
            wait = OTHERS if audit is not None else STEP
            if cfg.metrics.textfile is not None:
                wait = min(wait, next_write - now)
            with anyio.move_on_after(wait):
                await watcher.event.wait()
            if watcher.event.is_set():
                # read STEP after the first event of a burst: once for all of it, and not while
                # the daemon is busy with what it just logged (a worker's exit, its next start)
                await anyio.sleep(STEP)
    finally:
        if audit is not None:
            with contextlib.suppress(ValueError):
                audit.watchers.remove(watcher)
        follower.close()
