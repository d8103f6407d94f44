"""Side by side with supervisord (issue #21 item 5): N sleeping programs under supervisord and
N sleeping workers under orchestrd, in one run — each supervisor's RSS and idle CPU, and how
long after a child is killed the supervisor records its exit (supervisord's `exited:` log
line, orchestrd's `worker.exited` event). supervisor is pip-installed into
bench/results/supervisor-pkg (never a dependency of orchestrd)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from growth import Result, log, rmtree, tmpdir

PKG = Path(__file__).resolve().parent / "results" / "supervisor-pkg"
_SPAWNED = re.compile(r"spawned: '(s_\d+)' with pid (\d+)")
_EXITED = re.compile(r"^(\S+ \S+) \w+ exited: (s_\d+) ", re.M)


def _install() -> None:
    if not (PKG / "supervisor").is_dir():
        log(f"supervisord: pip install supervisor --target {PKG}")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(PKG), "supervisor"],
            check=True,
        )


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return result


def _supervisord(
    args: argparse.Namespace, n: int, kills: int, window: float, measure: Any
) -> dict[str, Any]:
    _install()
    tmp = tmpdir(args.tmp, "supervisord")
    conf, logf = tmp / "supervisord.conf", tmp / "supervisord.log"
    conf.write_text(
        f"[supervisord]\nnodaemon=true\nlogfile={logf}\nloglevel=info\n"
        f"pidfile={tmp / 'supervisord.pid'}\nchildlogdir={tmp}\nminfds=8192\n\n"
        "[program:s]\ncommand=/bin/sleep 3600\nnumprocs=%d\n"
        % n
        + "process_name=%(program_name)s_%(process_num)d\nautorestart=false\nstartsecs=0\n"
        "stdout_logfile=NONE\nstderr_logfile=NONE\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(PKG)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def text() -> str:
            return logf.read_text(errors="replace") if logf.exists() else ""

        _wait(lambda: text().count("entered RUNNING state") >= n, 60 + n * 0.1, "programs")
        log(f"supervisord: {n} programs running")
        time.sleep(0.5 if args.quick else 1.0)
        m = measure(proc.pid, window)
        m.pop("_wall")
        pids = dict(_SPAWNED.findall(text()))
        latency = []
        for i in range(1, kills + 1):
            name = f"s_{i}"
            t0 = time.time()
            os.kill(int(pids[name]), signal.SIGKILL)
            stamp = _wait(
                lambda name=name: next((t for t, p in _EXITED.findall(text()) if p == name), None),
                30,
                f"{name} exited",
            )
            when = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            # its log stamps milliseconds, truncated: the exit lies in [when, when + 1 ms)
            latency.append(max(when + 0.0005 - t0, 0.0))
        return {**m, "exit_notice_ms": _median_ms(latency)}
    finally:
        log("supervisord: stopping")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rmtree(tmp, args.keep)


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def _orchestrd(
    args: argparse.Namespace, n: int, kills: int, window: float, daemon_cls: Any, measure: Any
) -> dict[str, Any]:
    d = daemon_cls(
        args.tmp,
        "vs-supervisord",
        max_workers=n + 8,
        default_worker="sleeper",
        allow_root_workers=True,
        policy={"poll_interval": "1s", "max_polls": 1_000_000, "stop_grace": "2s"},
        workers={"sleeper": {"command": ["/bin/sleep", "3600"], "env": {}}},
    )
    try:
        d.start()
        for i in range(n):
            d.drop(d.plan(f"S-{i:04d}", f"s-{i:04d}"))
        d.wait(lambda: d.audit.count("worker.started") >= n, 60 + n * 0.5, "workers", 0.05)
        log(f"supervisord: {n} orchestrd workers running")
        time.sleep(0.5 if args.quick else 2.0)
        m = measure(d.pid, window)
        m.pop("_wall")
        started = {e["plan"]: e["pid"] for e in d.audit.of("worker.started")}
        latency = []
        for i in range(kills):
            plan = f"S-{i:04d}"
            t0 = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started[plan], signal.SIGKILL)
            ev = d.wait(
                lambda plan=plan: next(
                    (e for e in d.audit.of("worker.exited") if e["plan"] == plan), None
                ),
                30,
                f"{plan} worker.exited",
            )
            latency.append(ev["_t"] - t0)
        log("supervisord: orchestrd stopping")
        d.stop(timeout=300)
        d.leftover_workers()
        return {**m, "exit_notice_ms": _median_ms(latency)}
    finally:
        d.cleanup(args.keep)


def bench_supervisord(args: argparse.Namespace, daemon_cls: Any, measure: Any) -> Result:
    n = 30 if args.quick else 1000
    kills = 3 if args.quick else 20
    window = 1.5 if args.quick else 10.0
    sv = _supervisord(args, n, kills, window, measure)
    od = _orchestrd(args, n, kills, window, daemon_cls, measure)

    def ratio(key: str) -> float:
        return round(od[key] / sv[key], 2) if sv[key] else float("inf")

    # supervisord's side is known to ± 0.5 ms (its log's resolution): a ratio against less
    # than 1 ms says nothing
    notice = (
        f"{ratio('exit_notice_ms')}x"
        if sv["exit_notice_ms"] >= 1.0
        else "n/a (supervisord under its log's 1 ms resolution)"
    )

    line = (
        f"supervisord: {n} children — rss orchestrd {od['rss_mb']:.0f}MB / supervisord "
        f"{sv['rss_mb']:.0f}MB = {ratio('rss_mb')}x; idle cpu {od['cpu_pct']:.1f}% / "
        f"{sv['cpu_pct']:.1f}% = {ratio('cpu_pct')}x; exit noticed after "
        f"{od['exit_notice_ms']:.1f}ms / {sv['exit_notice_ms']:.1f}ms = "
        f"{notice} (median of {kills})"
        " [target (#21 item 5): none, the ratios side by side in one run: reported]"
        + (f" [quick: {n} children, {window:g} s windows]" if args.quick else "")
    )
    ratios = {k: ratio(k) for k in ("rss_mb", "cpu_pct", "exit_notice_ms")}
    return line, {"children": n, "orchestrd": od, "supervisord": sv, "ratios": ratios}
