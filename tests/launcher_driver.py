"""Launches one worker through a launcher, prints its handle as JSON, and waits to be killed
(the recovery contract: a daemon SIGKILLed while a worker runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from orchestrd.launchers import WorkerSpec
from orchestrd.launchers.local import LocalLauncher, contain


async def main(state_dir: Path, argv: list[str]) -> None:
    launcher = LocalLauncher(contain(None, state_dir, under_systemd=False))
    spec = WorkerSpec(
        argv, {"PATH": "/usr/bin:/bin"}, state_dir, state_dir / "w.log", name="driver.P01.1"
    )
    async with launcher.launch(spec, 10**6, 1.0) as worker:
        print(json.dumps(worker.handle.to_dict()), flush=True)
        await anyio.sleep(300)


anyio.run(main, Path(sys.argv[1]), sys.argv[2:])
