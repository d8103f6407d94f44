"""Launches one worker through a launcher, prints its handle as JSON, and waits to be killed
(the recovery contract: a daemon SIGKILLed while a worker runs).

`launcher_driver.py STATE_DIR local ARGV...` or `launcher_driver.py STATE_DIR slurm:BIN ARGV...`
(BIN: the folder of the cluster's client programs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from orchestrd.config import SlurmSettings
from orchestrd.launchers import Launcher, WorkerSpec
from orchestrd.launchers.local import LocalLauncher, contain
from orchestrd.launchers.slurm import SlurmLauncher


def _launcher(kind: str, state_dir: Path) -> Launcher:
    if kind.startswith("slurm:"):
        settings = dict(bin=kind.removeprefix("slurm:"), python=sys.executable, poll_interval=0.1)
        return SlurmLauncher(SlurmSettings.model_validate(settings))
    return LocalLauncher(contain(None, state_dir, under_systemd=False))


async def main(state_dir: Path, kind: str, argv: list[str]) -> None:
    launcher = _launcher(kind, state_dir)
    spec = WorkerSpec(
        argv, {"PATH": "/usr/bin:/bin"}, state_dir, state_dir / "w.log", name="driver:P01:1"
    )
    async with launcher.launch(spec, 10**6, 1.0) as worker:
        print(json.dumps(worker.handle.to_dict()), flush=True)
        await anyio.sleep(300)


anyio.run(main, Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
