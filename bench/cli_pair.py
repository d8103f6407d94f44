#!/usr/bin/env python3
"""CLI start-up and `status` over a big archive, two packages side by side in one run (#21).

    python bench/cli_pair.py --before /tmp/base            # a folder holding orchestrd/
    python bench/cli_pair.py --before /tmp/base --after /tmp/other --runs 9 --archived 10000

`--before`/`--after` are folders holding an `orchestrd/` package (e.g. `git archive REV
orchestrd | tar -x -C DIR`); `--after` defaults to this working tree. The commands run
alternately (before, after; then after, before) in a temp dir, each package first on
PYTHONPATH, over one state_dir with `--archived` finished plans and their archive index. Prints
a markdown table: median wall time and least CPU time (user + sys) of each, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import growth  # bench/ is on sys.path when run as a script

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, default=REPO_ROOT)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--archived", type=int, default=10_000)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orchestrd-cli-pair-"))
    try:
        state = tmp / "state"
        (state / "archive").mkdir(parents=True)
        (state / "audit.jsonl").write_bytes(b"")
        config = tmp / "orchestrd.toml"
        config.write_text(
            f'state_dir = "{state}"\nallow_root = true\ndefault_worker = "w"\n'
            f'allowed_repo_roots = ["{tmp}"]\n[workers.w]\ncommand = ["/bin/true"]\n',
            encoding="utf-8",
        )
        plan = tmp / "p.toml"
        plan.write_text(f'id = "P"\nrepo = "{tmp}"\n[[phases]]\nid = "A"\nprompt = "x"\n')
        growth.seed_plans(state / "archive", args.archived, "succeeded", None)
        cfg = ["--config", str(config)]
        n = f"{args.archived:,}"
        commands = {
            "--help": ["--help"],
            "status --help": ["status", "--help"],
            "validate": ["validate", *cfg, str(plan)],
            "tail": ["tail", *cfg],
            f"status ({n} archived)": ["status", *cfg],
            f"status --json ({n} archived)": ["status", "--json", *cfg],
        }
        packages = {"before": args.before.resolve(), "after": args.after.resolve()}
        # the first status builds the archive index: both sides then read it
        subprocess.run(
            [sys.executable, "-m", "orchestrd", "status", *cfg],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(packages["after"])},
            cwd=tmp,
            check=True,
        )
        wall: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):
            for name, argv in commands.items():
                for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    env = {**os.environ, "PYTHONPATH": str(packages[side])}
                    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "orchestrd", *argv],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        env=env,
                        cwd=tmp,  # python -m puts the working directory first on sys.path
                    )
                    wall.setdefault((name, side), []).append(time.perf_counter() - t0)
                    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu.setdefault((name, side), []).append(
                        r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
                    )
        print(
            "| command | before wall (median) | after wall | before CPU (least) | after CPU "
            "| after / before |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name in commands:
            b, a = statistics.median(wall[name, "before"]), statistics.median(wall[name, "after"])
            print(
                f"| `{name}` | {b * 1000:.0f} ms | {a * 1000:.0f} ms | "
                f"{min(cpu[name, 'before']) * 1000:.0f} ms | "
                f"{min(cpu[name, 'after']) * 1000:.0f} ms | {a / b:.2f} |"
            )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"\n{args.runs} runs each, alternating; load average {load}; "
            f"{time.strftime('%F %T %Z')}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
