"""What starting a worker as another user costs (issue #22): one spawn of `/bin/true`, from
`anyio.open_process` until its exit is reaped, four ways:

- `plain`: as the daemon's user (no privilege separation; Python's subprocess can use vfork);
- `user=`: `open_process(user=, group=, extra_groups=)` (the child calls setgroups/setresgid/
  setresuid before exec, so subprocess cannot use vfork);
- `nsinit`: as above, through `orchestrd/nsinit.py` without namespaces (one more interpreter);
- `nsinit+pidns`: the default: nsinit with a user + PID + mount namespace and its own /proc
  (two forks inside, one mount).

Needs root (or CAP_SETUID+CAP_SETGID) and an interpreter the worker user may execute: run it
with the system python, e.g.
    sudo PYTHONPATH=.:.venv/lib/python3.11/site-packages /usr/bin/python3 bench/privsep_spawn.py
Prints one line per way: median and p90 in ms over N spawns (sequential, after 5 warm-ups).
"""

from __future__ import annotations

import argparse
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from orchestrd.privsep import Identity, wrap


async def spawn(argv: list[str], kwargs: dict[str, object]) -> float:
    started = time.perf_counter()
    proc = await anyio.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **kwargs,  # type: ignore[arg-type]
    )
    await proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:6]} exited {proc.returncode}")
    return (time.perf_counter() - started) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--user", default="nobody")
    args = parser.parse_args()
    pw = pwd.getpwnam(args.user)
    who = Identity(pw.pw_name, pw.pw_uid, pw.pw_gid, (pw.pw_gid,), pw.pw_dir)
    log = Path(tempfile.gettempdir()) / "privsep-bench.log"
    ways: dict[str, tuple[list[str], dict[str, object]]] = {
        "plain": (["/bin/true"], {}),
        "user=": (["/bin/true"], dict(who.process_kwargs())),
        "nsinit": (wrap(["/bin/true"], False, log), dict(who.process_kwargs())),
        "nsinit+pidns": (wrap(["/bin/true"], True, log), dict(who.process_kwargs())),
    }
    print(f"python {sys.version.split()[0]}, n = {args.n}, worker user {args.user}")
    for name, (argv, kwargs) in ways.items():
        for _ in range(5):
            await spawn(argv, kwargs)
        times = sorted([await spawn(argv, kwargs) for _ in range(args.n)])
        p90 = times[int(len(times) * 0.9)]
        print(f"{name:14} median {statistics.median(times):6.2f} ms   p90 {p90:6.2f} ms")


if __name__ == "__main__":
    anyio.run(main)
