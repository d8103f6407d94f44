#!/usr/bin/env python3
"""What-if table: one benchmark with the daemon patched in memory by each variant
(bench/variants/sitecustomize.py), interleaved with plain runs, repeated; medians.

    python bench/ablate.py reaction   plain nofsync jsonstate nofsync+jsonstate
    python bench/ablate.py throughput plain nofsync jsonstate batchaccept --repeat 2
    python bench/ablate.py scale      plain noecho quietpoll pidfd

Every run is `bench/run.py --only BENCH --variant V --out …` (its own daemon, its own snapshot
of orchestrd/); extra options after `--` go to run.py (e.g. `-- --scale-steps 100,1000`).
Prints a markdown table; writes bench/results/ablate-BENCH.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

METRICS: dict[str, list[tuple[str, Any]]] = {
    "reaction": [
        ("exit→next p50 ms", lambda r: r["exit_to_next"]["samples"]["p50"]),
        ("exit→next p99 ms", lambda r: r["exit_to_next"]["samples"]["p99"]),
        ("last 10% p50 ms", lambda r: list(r["exit_to_next"]["drift_ms"].values())[1]["p50"]),
        ("inbox→start p50 ms", lambda r: r["inbox_to_start"]["samples"]["p50"]),
        ("inbox→start p99 ms", lambda r: r["inbox_to_start"]["samples"]["p99"]),
    ],
    "throughput": [
        ("ratio daemon/bare", lambda r: r["ratio"]),
        (
            "daemon s",
            lambda r: statistics.median(x["wall_s"] for x in r["rounds"] if x["kind"] == "daemon"),
        ),
        (
            "bare s",
            lambda r: statistics.median(x["wall_s"] for x in r["rounds"] if x["kind"] == "bare"),
        ),
        (
            "daemon CPU ms/plan",
            lambda r: statistics.median(
                x["daemon_cpu_ms_per_plan"] for x in r["rounds"] if x["kind"] == "daemon"
            ),
        ),
        (
            "loop thread ms/plan",
            lambda r: statistics.median(
                x["cpu_ms_per_plan_split"]["loop_thread_user"]
                + x["cpu_ms_per_plan_split"]["loop_thread_sys"]
                for x in r["rounds"]
                if x["kind"] == "daemon"
            ),
        ),
        (
            "other threads ms/plan",
            lambda r: statistics.median(
                x["cpu_ms_per_plan_split"]["other_threads"]
                for x in r["rounds"]
                if x["kind"] == "daemon"
            ),
        ),
        (
            "worker CPU ms (bare)",
            lambda r: statistics.median(
                x["worker_cpu_ms_each"] for x in r["rounds"] if x["kind"] == "bare"
            ),
        ),
    ],
    "scale": [
        ("RSS MB", lambda r: r["points"][-1]["rss_mb"]),
        ("CPU %", lambda r: r["points"][-1]["cpu_pct"]),
        ("threads", lambda r: r["points"][-1]["threads"]),
        ("fds", lambda r: r["points"][-1]["fds"]),
        ("poll lag p99 ms", lambda r: r["points"][-1]["poll_lag_ms"].get("p99", float("nan"))),
        ("SIGTERM→exit s", lambda r: r["daemon_stop"]["seconds"]),
    ],
}


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser()
    p.add_argument("bench", choices=list(METRICS))
    p.add_argument("variants", nargs="+", help="plain, or a +-joined list of variants")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--table-only",
        action="store_true",
        help="no runs: rebuild the table from bench/results/ablate/*.json",
    )
    args = p.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for rep in range(args.repeat):
        for v in args.variants:
            out = RESULTS / "ablate" / f"{args.bench}-{v}-{rep}.json"
            cmd = [
                sys.executable,
                str(BENCH / "run.py"),
                "--only",
                args.bench,
                "--out",
                str(out),
                *extra,
            ]
            if v != "plain":
                cmd += ["--variant", v.replace("+", ",")]
            if not args.table_only:
                print(f"[ablate] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
                subprocess.run(cmd, check=False, stdout=sys.stderr)
            data = json.loads(out.read_text())
            if "error" in data.get(args.bench, {}):
                print(f"[ablate] {v}: {data[args.bench]['error']}", file=sys.stderr)
                continue
            runs[v].append(data[args.bench])
    names = [m for m, _ in METRICS[args.bench]]
    lines = [
        f"| variant ({args.repeat} runs, median) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    table = {}
    for v, rs in runs.items():
        vals = [
            statistics.median(f(r) for r in rs) if rs else float("nan")
            for _, f in METRICS[args.bench]
        ]
        table[v] = dict(zip(names, vals, strict=False))
        lines.append(f"| {v} | " + " | ".join(f"{x:g}" for x in vals) + " |")
    print("\n".join(lines))
    (RESULTS / f"ablate-{args.bench}.json").write_text(
        json.dumps({"extra": extra, "repeat": args.repeat, "table": table, "runs": runs}, indent=1)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
