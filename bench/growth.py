"""Growth with work (issue #21 item 4): CLI start-up, `status` over 10,000 archived plans,
daemon start → READY with 1,000 queued plans, and a 1 GB audit log next to an empty one.

Registered in bench/run.py (`--only cli,restart,auditlog`); `daemon_cls` and `measure` are
run.py's BenchDaemon and measure(), passed in so every daemon runs the same package snapshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Result = tuple[str, dict[str, Any]]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _template(plan_id: str, status: str, phases: int = 3) -> bytes:
    """A finished (or queued) plan's state file, as the daemon writes it; `plan_id` in it is
    replaced per copy (writing 10,000 states through pydantic would take the whole budget)."""
    from orchestrd.state import AttemptState, PhaseState, PlanState, dump_state
    from orchestrd.states import AttemptStatus, PhaseStatus, PlanStatus

    done = status != "queued"
    state = PlanState(
        plan=plan_id,
        status=PlanStatus(status),
        submitted_at="2026-01-01T00:00:00+00:00",
        started_at="2026-01-01T00:00:00+00:00" if done else None,
        finished_at="2026-01-01T00:05:00+00:00" if done else None,
    )
    for i in range(phases):
        attempts = (
            [
                AttemptState(
                    n=1, role="primary", status=AttemptStatus.EXITED, returncode=0, log="w.log"
                )
            ]
            if done
            else []
        )
        state.phases[f"P{i:02d}"] = PhaseState(
            status=PhaseStatus.PASSED if done else PhaseStatus.PENDING, attempts=attempts
        )
    return dump_state(state)


def seed_plans(base: Path, n: int, status: str, plan_doc: Callable[[str], bytes] | None) -> None:
    """`n` plan folders under `base` (archive/ or plans/), ids G-00000…"""
    tpl = _template("G-XXXXX", status)
    for i in range(n):
        plan_id = f"G-{i:05d}"
        folder = base / plan_id
        (folder / "workers").mkdir(parents=True)
        (folder / "state.toml").write_bytes(tpl.replace(b"G-XXXXX", plan_id.encode()))
        if plan_doc is not None:
            (folder / "plan.toml").write_bytes(plan_doc(plan_id))


def _timed(
    argv: list[str], runs: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> list[float]:
    """Wall times of `argv`. Run it in `cwd` (a temp dir): `python -m orchestrd` puts its
    working directory first on sys.path, so from the repo root it would run the working tree,
    not the package snapshot on PYTHONPATH."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            check=True,
            cwd=cwd or tempfile.gettempdir(),
        )
        out.append(time.perf_counter() - t0)
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}ms"


def bench_cli(args: argparse.Namespace, daemon_cls: Any) -> Result:
    """`orchestrd --help`, `status --help`, `validate`, `tail` start-up; `status` and
    `status --json` over 10,000 archived plans, without the index (every state file parsed:
    what status did before it) and with it."""
    n = 1_000 if args.quick else 10_000
    runs = 3 if args.quick else 7
    d = daemon_cls(args.tmp, "cli", allow_root_workers=True)
    env = {**os.environ}
    if d.package_path is not None:
        env["PYTHONPATH"] = str(d.package_path)
    orch = [sys.executable, "-m", "orchestrd"]
    cfg = ["--config", str(d.config_path)]
    try:
        plan = d.tmp / "p.toml"
        import tomli_w

        plan.write_text(tomli_w.dumps(d.plan("V", "v")), encoding="utf-8")
        (d.state_dir / "archive").mkdir(parents=True)
        (d.state_dir / "audit.jsonl").write_bytes(b"")
        starts = {
            "--help": _timed([*orch, "--help"], runs, env),
            "status --help": _timed([*orch, "status", "--help"], runs, env),
            "validate": _timed([*orch, "validate", *cfg, str(plan)], runs, env),
            "tail": _timed([*orch, "tail", *cfg], runs, env),
        }
        log(f"cli: seeding {n} archived plans")
        seed_plans(d.state_dir / "archive", n, "succeeded", None)
        index = d.state_dir / "archive-index.jsonl"
        cold, cold_json = [], []
        for _ in range(1 if args.quick else 3):
            index.unlink(missing_ok=True)
            cold += _timed([*orch, "status", *cfg], 1, env)
            if not args.quick:  # without the index --json costs what status does
                index.unlink(missing_ok=True)
                cold_json += _timed([*orch, "status", "--json", *cfg], 1, env)
        warm = _timed([*orch, "status", *cfg], runs, env)
        warm_json = _timed([*orch, "status", "--json", *cfg], 1 if args.quick else runs, env)
    finally:
        d.cleanup(args.keep)
    worst_start = max(statistics.median(v) for v in starts.values())
    ok_start = worst_start <= 0.150
    ok_status = statistics.median(warm) <= 0.3 and statistics.median(warm_json) <= 0.3
    ok = ok_start and ok_status
    line = (
        "cli: start-up "
        + ", ".join(f"{k} {_ms(v)}" for k, v in starts.items())
        + f" | status with {n:,} archived: no index {_ms(cold)} → index {_ms(warm)}; "
        + (f"--json {_ms(cold_json)} → " if cold_json else "--json ")
        + _ms(warm_json)
        + f" [target any command's start ≤150ms: {_met(ok_start)}; "
        f"status ≤300ms (target at 10,000 archived) at {n:,}: {_met(ok_status)}]"
        + (f" [quick: {n:,} archived, {runs} runs]" if args.quick else "")
    )
    return line, {
        "startup_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in starts.items()},
        "archived": n,
        "status_no_index_ms": round(statistics.median(cold) * 1000, 1),
        "status_index_ms": round(statistics.median(warm) * 1000, 1),
        "status_json_no_index_ms": (
            round(statistics.median(cold_json) * 1000, 1) if cold_json else None
        ),
        "status_json_index_ms": round(statistics.median(warm_json) * 1000, 1),
        "target_met": ok,
    }


def bench_restart(args: argparse.Namespace, daemon_cls: Any) -> Result:
    """Daemon start → READY (`daemon.started`, logged right before READY=1) with 1,000 queued
    plans in plans/, as a daemon killed with SIGKILL leaves them."""
    import tomli_w

    n = 200 if args.quick else 1000
    d = daemon_cls(args.tmp, "restart", max_workers=1, allow_root_workers=True)
    try:
        plans = d.state_dir / "plans"
        plans.mkdir(parents=True)
        doc = tomli_w.dumps(d.plan("G-XXXXX", "r")).encode()
        seed_plans(plans, n, "queued", lambda pid: doc.replace(b"G-XXXXX", pid.encode()))
        t0 = time.time()
        d.start(timeout=120)
        ready = d.audit.of("daemon.started")[0]["_t"] - t0
        d.stop()
    finally:
        d.cleanup(args.keep)
    ok = ready <= 1.0
    line = (
        f"restart: start → READY with {n:,} queued plans {ready:.2f}s "
        + (
            f"[target ≤1s with 1,000 queued: not measured in --quick; ≤1s with {n}: {_met(ok)}]"
            if n != 1000
            else f"[target ≤1s with 1,000 queued: {_met(ok)}]"
        )
        + (f" [quick: {n} plans]" if args.quick else "")
    )
    return line, {"queued": n, "ready_s": round(ready, 3), "target_met": ok}


def _audit_log(path: Path, size: int) -> None:
    """`size` bytes of real-looking event lines (one 1 MiB block written again and again)."""
    line = (
        b'{"ts": "2026-01-01T00:00:00.000+00:00", "event": "worker.poll", "plan": "X", '
        b'"phase": "P01", "attempt": 1, "pid": 4242, "cycle": 3, "alive": true}\n'
    )
    block = line * (1024 * 1024 // len(line))
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def bench_auditlog(
    args: argparse.Namespace, daemon_cls: Any, measure: Callable[[int, float], dict[str, Any]]
) -> Result:
    """Start → READY and idle CPU/RSS of a daemon with an empty audit log and with a 1 GB one
    (a status page listening: it reads the log's tail), one after the other."""
    size = (32 if args.quick else 1024) << 20
    window = 1.5 if args.quick else 10.0
    points: dict[str, dict[str, Any]] = {}
    for name, nbytes in (("empty", 0), ("big", size)):
        d = daemon_cls(
            args.tmp, f"audit-{name}", http={"listen": "127.0.0.1:0"}, allow_root_workers=True
        )
        try:
            d.state_dir.mkdir(parents=True)
            t0 = time.monotonic()
            _audit_log(d.state_dir / "audit.jsonl", nbytes)
            made = time.monotonic() - t0
            # the bench's own tail starts at the end: it reads only the daemon's new events
            d.audit.offset = (d.state_dir / "audit.jsonl").stat().st_size
            t0 = time.time()
            d.start(timeout=120)
            ready = d.audit.of("daemon.started")[0]["_t"] - t0
            # settled: the status page reads the log's last 16 MiB once, after READY
            time.sleep(1.5 if args.quick else 3.0)
            m = measure(d.pid, window)
            m.pop("_wall")
            points[name] = {"ready_s": round(ready, 3), "made_s": round(made, 1), **m}
            d.stop()
        finally:
            d.cleanup(args.keep)
    e, g = points["empty"], points["big"]
    # CPU from /proc is counted in clock ticks (10 ms): two ticks over the window is the
    # smallest difference it can tell from noise (1.3 % in a 1.5 s window, 0.2 % in 10 s)
    noise = max(0.5, 2 * 100.0 / os.sysconf("SC_CLK_TCK") / window)
    ok = g["ready_s"] <= e["ready_s"] + 0.25 and g["cpu_pct"] <= e["cpu_pct"] + noise
    line = (
        f"auditlog: empty vs {size >> 20} MiB log: start → READY {e['ready_s']:.2f}s vs "
        f"{g['ready_s']:.2f}s, "
        f"idle cpu {e['cpu_pct']:.1f}% vs {g['cpu_pct']:.1f}%, rss {e['rss_mb']:.0f} vs "
        f"{g['rss_mb']:.0f}MB [target (1 GB log) no slower, CPU within {noise:.1f}%: {_met(ok)}]"
        + (f" [quick: {size >> 20} MiB log, {window:g} s windows]" if args.quick else "")
    )
    return line, {"points": points, "target_met": ok}


def tmpdir(base: Path | None, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"orchestrd-bench-{name}-", dir=base))


def rmtree(path: Path, keep: bool) -> None:
    if keep:
        log(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)
