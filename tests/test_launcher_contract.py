"""The launcher contract: what every launcher (launchers/) must do, whatever runs its workers —
exit codes, signals, stopping a tree that ignores SIGTERM, nothing left behind (a setsid escapee
that closed its fds and cleared its environment included), output capture and caps, the exact
environment, and recovery of a handle after the daemon was SIGKILLed.

`slurm` runs on a real two-node cluster in a network namespace of its own (slurm_support.py);
its nodes share this machine's filesystem, as a site's share the daemon's."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from slurm_support import Cluster, settings, shared_cluster

from orchestrd import cgroups
from orchestrd.launchers import Handle, Launcher, WorkerSpec
from orchestrd.launchers.local import LocalLauncher, contain
from orchestrd.launchers.slurm import SlurmLauncher

pytestmark = pytest.mark.anyio
AGENTS = Path(__file__).parent / "agents"
ENV = {"PATH": os.environ["PATH"], "ORCHESTRD_LOG": "x", "LANG": "C.UTF-8"}


def _local(state_dir: Path) -> Iterator[Launcher]:
    containment = contain(None, state_dir, under_systemd=False)
    if containment.mode != "cgroup":
        print(f"SKIP local launcher contract: {containment.reason}")
        pytest.skip(f"no cgroup containment here: {containment.reason}")
    yield LocalLauncher(containment)
    assert containment.tree is not None
    cgroups.remove(containment.tree.base)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return shared_cluster(request)


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.xdist_group("slurm"))])
def launcher(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Launcher]:
    if request.param == "slurm":
        cluster = request.getfixturevalue("cluster")
        yield SlurmLauncher(settings(cluster))
        assert cluster.drained() == []  # nothing left running on any node
        return
    yield from _local(tmp_path)


def driver_kind(launcher: Launcher) -> str:
    if isinstance(launcher, SlurmLauncher):
        return f"slurm:{launcher.settings.bin}"
    return "local"


def spec(tmp_path: Path, *argv: str, name: str = "T.P01.1") -> WorkerSpec:
    return WorkerSpec(argv, ENV, tmp_path, tmp_path / "w.log", name=name)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


async def until_written(path: Path) -> str:
    # a bound on the wait, not a timing assertion: a cluster job may queue behind the last
    # test's job for a second or two before it runs
    for _ in range(3000):
        if text := _read(path):
            return text
        await anyio.sleep(0.01)
    raise AssertionError(f"{path} was never written")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def test_exit_code_is_the_workers(launcher: Launcher, tmp_path: Path) -> None:
    async with launcher.launch(spec(tmp_path, "sh", "-c", "exit 3"), 10**6, 1.0) as worker:
        assert await worker.wait() == 3
        assert worker.returncode == 3


async def test_a_stopped_worker_dies_of_sigterm(launcher: Launcher, tmp_path: Path) -> None:
    async with launcher.launch(spec(tmp_path, "sleep", "30"), 10**6, 1.0) as worker:
        await anyio.sleep(0.1)
        assert await worker.stop(2.0) is signal.SIGTERM
        assert worker.returncode == -signal.SIGTERM


async def test_a_tree_that_ignores_sigterm_is_killed_after_the_grace(
    launcher: Launcher, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sleep 30 & echo $! > {pids}; wait"
    async with launcher.launch(spec(tmp_path, "sh", "-c", script), 10**6, 1.0) as worker:
        child = int(await until_written(pids))
        started = time.monotonic()
        assert await worker.stop(0.3) is signal.SIGKILL
        assert 0.3 <= time.monotonic() - started < 3
    assert not alive(child)


async def test_a_setsid_escapee_without_fds_or_env_is_stopped_and_named(
    launcher: Launcher, tmp_path: Path
) -> None:
    pidfile = tmp_path / "escapee"
    argv = (sys.executable, str(AGENTS / "escapee.py"), str(pidfile))
    async with launcher.launch(spec(tmp_path, *argv), 10**6, 0.3) as worker:
        assert await worker.wait() == 0
        escapee = int(pidfile.read_text())
        assert alive(escapee)  # the worker is gone, its escapee is not (yet)
    assert not alive(escapee)
    assert [(left.pid, left.command) for left in worker.left_running] == [(escapee, "sleep 300")]


async def test_output_is_captured_and_capped_head_and_tail(
    launcher: Launcher, tmp_path: Path
) -> None:
    script = "import sys; sys.stdout.write('a' * 6000 + 'LAST LINE\\n')"
    argv = (sys.executable, "-c", script)
    async with launcher.launch(spec(tmp_path, *argv), 2000, 1.0) as worker:
        await worker.wait()
    assert worker.output_bytes == worker.log_size() == 6010
    assert worker.dropped_bytes == 4010
    log = (tmp_path / "w.log").read_text()
    assert log.startswith("a" * 1500) and log.endswith("LAST LINE\n")
    assert "log cut at max_log_bytes=2000" in log


async def test_the_worker_gets_exactly_its_environment_and_devnull_stdin(
    launcher: Launcher, tmp_path: Path
) -> None:
    script = (
        "import json, os; print(json.dumps([dict(os.environ), os.readlink('/proc/self/fd/0'),"
        " sorted(os.listdir('/proc/self/fd'))]))"
    )
    async with launcher.launch(spec(tmp_path, sys.executable, "-c", script), 10**6, 1.0) as w:
        await w.wait()
    env, stdin, fds = json.loads((tmp_path / "w.log").read_text())
    assert env == ENV
    assert stdin == "/dev/null"
    assert fds == ["0", "1", "2", "3"]  # 3: the listing's own


async def test_a_handle_survives_the_daemon_being_sigkilled_and_reap_stops_it_all(
    launcher: Launcher, tmp_path: Path
) -> None:
    pidfile = tmp_path / "escapee"
    driver = await anyio.open_process(
        [
            sys.executable,
            str(Path(__file__).with_name("launcher_driver.py")),
            str(tmp_path),
            driver_kind(launcher),
            sys.executable,
            str(AGENTS / "escapee.py"),
            str(pidfile),
        ],
    )
    async with driver:
        assert driver.stdout is not None
        line = b""
        async for chunk in driver.stdout:
            line += chunk
            if line.endswith(b"\n"):
                break
        handle = Handle.from_dict(json.loads(line))
        escapee = int(await until_written(pidfile))
        driver.send_signal(signal.SIGKILL)
        await driver.wait()
    assert alive(escapee)
    reaped = await launcher.reap([handle], 0.3)
    assert not alive(escapee)
    stopped = [left.pid for left in reaped[0].stopped]
    assert escapee in stopped  # (the worker itself too if it had not exited yet)
    assert not any(alive(pid) for pid in stopped)


LOCAL_INTERNALS = (
    "LocalWorker",
    "LocalLauncher",
    "WorkerHandle",
    "stop_group",
    "group_members",
    "stop_orphan",
    "stop_processes",
    "processes_with_env",
    "nsinit_processes",
    "proctree",
    "launchers.local",
    "cgroups.",
    "SlurmWorker",
    "SlurmLauncher",
    "slurm_shim",
)


def test_nothing_outside_the_local_launcher_uses_its_internals() -> None:
    """The runner, the policy, the checks and recovery know workers only by the protocol."""
    package = Path(__file__).parent.parent / "orchestrd"
    allowed = {package / "cgroups.py", package / "launchers" / "local.py"}
    allowed |= {package / "launchers" / "proctree.py", package / "launchers" / "__init__.py"}
    allowed |= {package / "launchers" / "slurm.py", package / "launchers" / "slurm_shim.py"}
    found = [
        f"{path.relative_to(package)}: {name}"
        for path in package.rglob("*.py")
        if path not in allowed
        for name in LOCAL_INTERNALS
        # a module named in prose (`cgroups.py`) is no use of it
        if re.search(rf"\b{re.escape(name)}(?!py\b)\b", path.read_text(encoding="utf-8"))
    ]
    assert found == []
