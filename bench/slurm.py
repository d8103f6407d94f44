"""Workers through Slurm: submit → running, and a worker's exit → the next phase's worker
running, on the tests' two-node cluster (tests/slurm_support.py; root, the Debian packages).

    python bench/slurm.py [-n 20] [--poll-interval 0.1]

Phases one after another as the runner launches them: launch, wait, leave; each worker writes
the time it started and, last of all, the time it exits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from slurm_support import Cluster, reap_stale, settings  # noqa: E402

from orchestrd.launchers import WorkerSpec  # noqa: E402
from orchestrd.launchers.slurm import SlurmLauncher  # noqa: E402

WORKER = "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()} '); " + (
    "open(sys.argv[2], 'a').write(f'{time.time()}\\n')"
)


async def phases(cluster: Cluster, n: int, poll: float, folder: Path) -> None:
    launcher = SlurmLauncher(settings(cluster, poll_interval=poll))
    submit_to_running, exit_to_next = [], []
    starts, exits = folder / "starts", folder / "exits"
    for i in range(n):
        argv = [sys.executable, "-c", WORKER, str(starts), str(exits)]
        spec = WorkerSpec(argv, {"PATH": "/usr/bin:/bin"}, folder, folder / f"w{i}.log")
        began = time.monotonic()
        async with launcher.launch(spec, 10**6, 1.0) as worker:
            submit_to_running.append(time.monotonic() - began)
            await worker.wait()
    started = [float(t) for t in starts.read_text().split()]
    ended = [float(t) for t in exits.read_text().split()]
    exit_to_next = [b - a for a, b in zip(ended, started[1:], strict=False)]
    for name, values in (("submit → running", submit_to_running), ("exit → next", exit_to_next)):
        q = statistics.quantiles(values, n=100)
        print(f"{name}: p50 {statistics.median(values):.3f} s, p95 {q[94]:.3f} s (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    args = parser.parse_args()
    if why := Cluster.unavailable():
        sys.exit(f"bench/slurm.py: {why}")
    reap_stale()
    cluster = Cluster()
    try:
        cluster.start()
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(phases, cluster, args.n, args.poll_interval, Path(tmp))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
