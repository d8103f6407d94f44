#!/usr/bin/env python3
"""Micro-benchmarks of the daemon's per-event costs, to check a fix in isolation.

    python bench/micro.py            # all
    python bench/micro.py state      # one of: state, fsync, take, audit, hop, spawn, group, waiters

Each line: what, then p50 (and p99 where it varies) per call. Uses the package's own functions
(orchestrd.state.dump_state/atomic_write, orchestrd.audit.AuditLog, orchestrd.worker.*),
on a temp dir on the same file system as $TMPDIR.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import AGENT, dist  # noqa: E402  (re-execs with the venv python if needed)

from orchestrd.audit import AuditLog  # noqa: E402
from orchestrd.state import AttemptState, PhaseState, PlanState, atomic_write, dump_state  # noqa: E402
from orchestrd.worker import group_members  # noqa: E402


def timeit(fn, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dist(times)


def fmt(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:.3f} ms  p99 {d['p99']:.3f} ms  (n={d['n']})"


def state_of(phases: int) -> PlanState:
    st = PlanState(plan="P", seq=1)
    for i in range(phases):
        ps = PhaseState(status="passed")
        ps.attempts.append(
            AttemptState(
                n=1,
                role="primary",
                status="exited",
                pid=123456,
                pgid=123456,
                start_time=99999999,
                boot_id="0f0e0d0c-0b0a-0908-0706-050403020100",
                returncode=0,
                log=f"/var/lib/orchestrd/plans/P/workers/worker-P{i:03d}-1.log",
                ended_at="2025-11-25T16:57:01.123456+00:00",
            )
        )
        st.phases[f"P{i:03d}"] = ps
    return st


def bench_state() -> None:
    for k in (1, 10, 50, 200, 1000):
        st = state_of(k)
        size = len(dump_state(st))
        d = timeit(lambda st=st: dump_state(st), 50 if k <= 200 else 10)
        d2 = timeit(
            lambda st=st: st.model_dump(mode="json", exclude_none=True), 50 if k <= 200 else 10
        )
        print(
            f"dump_state, {k:4d} phases ({size:6d} B): {fmt(d)}   of which model_dump "
            f"p50 {d2['p50']:.3f} ms"
        )


def bench_take(tmp: Path) -> None:
    """Spool.take of a one-phase plan: read, parse + validate, 2 atomic writes, unlink."""
    import tomli_w

    from orchestrd.config import config_from_dict
    from orchestrd.spool import Spool

    for fsync in (True, False):
        root = tmp / f"take-{fsync}"
        spool = Spool(root / "state")
        spool.ensure()
        config = config_from_dict(
            {
                "state_dir": str(spool.root),
                "allowed_repo_roots": [str(root)],
                "default_worker": "t",
                "workers": {"t": {"command": ["true"]}},
            },
            "micro",
        )
        names = []
        for i in range(200):
            repo = root / "repos" / f"r{i}"
            repo.mkdir(parents=True)
            plan = {
                "id": f"M-{i:04d}",
                "repo": str(repo),
                "phases": [{"id": "P01", "prompt": "Do P01.", "markers": [f"@plan:M-{i:04d}.P01"]}],
            }
            (spool.inbox / f"M-{i:04d}.toml").write_text(tomli_w.dumps(plan))
            names.append(f"M-{i:04d}.toml")
        real = os.fsync
        if not fsync:
            os.fsync = lambda fd: None  # type: ignore[assignment]
        try:
            it = iter(range(len(names)))
            d = timeit(
                lambda spool=spool, names=names, it=it, config=config: spool.take(
                    names[next(it)], config, 1
                ),
                len(names),
            )
        finally:
            os.fsync = real
        print(f"Spool.take, one-phase plan, {'with' if fsync else 'without'} fsync: {fmt(d)}")
    from orchestrd.plan import parse_plan_bytes

    raw = tomli_w.dumps(plan).encode()
    print(
        f"  of which parse_plan_bytes (tomllib + pydantic + confine): "
        f"{fmt(timeit(lambda: parse_plan_bytes(raw, 'x', config), 200))}"
    )


def bench_fsync(tmp: Path) -> None:
    data = dump_state(state_of(1))
    target = tmp / "state.toml"
    d = timeit(lambda: atomic_write(target, data), 200)
    print(f"atomic_write ({len(data)} B, 2 fsyncs): {fmt(d)}")

    def no_fsync() -> None:
        t = target.with_name(".x.tmp")
        t.write_bytes(data)
        os.replace(t, target)

    print(f"write+rename, no fsync:          {fmt(timeit(no_fsync, 200))}")


def bench_audit(tmp: Path) -> None:
    for echo, label in ((None, "no echo"), (io.StringIO(), "echo to a buffer (as stderr)")):
        a = AuditLog(tmp / f"audit-{label[:4]}.jsonl", echo=echo)
        log = a.bind(plan="PLAN-0001").bind(phase="P01", attempt=1, role="primary", pid=12345)
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            log.info(
                "worker.poll", cycle=3, max_polls=6, elapsed=3.001, log_bytes=1234, log_growth=12
            )
        per = (time.perf_counter() - t0) / n
        print(f"audit event worker.poll, {label:28s}: {per * 1e6:.1f} µs per event (mean of {n})")
        a.close()


def bench_spawn(tmp: Path) -> None:
    """Launching a worker, as the runner does it (loop-thread time until the handle exists)."""
    import anyio

    from orchestrd import worker as w

    env = {
        "PATH": os.environ["PATH"],
        "ORCHESTRD_REPORT": "r.md",
        "ORCHESTRD_COMPLETION": "c.md",
        "ORCHESTRD_MARKERS": "m",
    }

    async def main() -> tuple[list[float], list[float]]:
        starts, totals = [], []
        for i in range(30):
            spec = w.WorkerSpec([sys.executable, str(AGENT), "x"], env, tmp, tmp / f"w{i}.log")
            t0 = time.perf_counter()
            if hasattr(w, "launch"):  # launch(spec, max_log_bytes, grace): a context manager
                async with w.launch(spec, 1 << 20, 2.0) as worker:
                    starts.append(time.perf_counter() - t0)
                    await worker.wait()
            else:
                worker = await w.start_worker(spec)
                starts.append(time.perf_counter() - t0)
                await worker.wait()
            totals.append(time.perf_counter() - t0)
        return starts, totals

    starts, totals = anyio.run(main)
    print(f"launch → handle (mkdir, open log, fork/exec):  {fmt(dist(starts))}")
    print(f"launch → exit → cleanup, trivial agent:        {fmt(dist(totals))}")


def bench_hop(tmp: Path) -> None:
    """One anyio.to_thread.run_sync round trip (the daemon does ~20 per one-phase plan)."""
    import resource

    import anyio
    import anyio.to_thread

    def noop() -> None:
        return None

    async def main(n: int) -> tuple[float, float]:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(n):
            await anyio.to_thread.run_sync(noop)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return wall / n, cpu / n

    wall, cpu = anyio.run(main, 5000)
    print(
        f"anyio.to_thread.run_sync(noop) round trip: {wall * 1e6:.0f} µs wall, "
        f"{cpu * 1e6:.0f} µs CPU (both threads), mean of 5000"
    )


def bench_group(tmp: Path) -> None:
    procs = [subprocess.Popen(["/bin/sleep", "60"], start_new_session=True) for _ in range(500)]
    try:
        n = len([e for e in os.listdir("/proc") if e.isdigit()])
        d = timeit(lambda: group_members(procs[0].pid), 20)
        print(f"group_members(live group) with {n} processes on the machine: {fmt(d)}")
        d = timeit(lambda: group_members(999_999), 200)
        print(f"group_members(gone group):                    {fmt(d)}")
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def bench_waiters(tmp: Path) -> None:
    """asyncio on 3.11: a cancelled Process.wait() leaves its future in _exit_waiters."""
    import anyio

    async def main() -> int:
        proc = await anyio.open_process(
            ["/bin/sleep", "30"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(1000):
            with anyio.move_on_after(0.0005):
                await proc.wait()
        n = len(proc._process._transport._exit_waiters)  # type: ignore[attr-defined]
        proc.kill()
        await proc.wait()
        return n

    print(
        f"Process.wait() cancelled 1000× (as watch() polls): {anyio.run(main)} futures left "
        "in asyncio's _exit_waiters (anyio waits on its own Event: no leak)"
    )


def main() -> int:
    which = sys.argv[1:] or ["state", "fsync", "take", "audit", "hop", "spawn", "group", "waiters"]
    with tempfile.TemporaryDirectory(prefix="orchestrd-micro-") as t:
        tmp = Path(t)
        for w in which:
            if w == "state":
                bench_state()
            else:
                globals()[f"bench_{w}"](tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
