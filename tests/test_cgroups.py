"""cgroup v2 containment on this machine: finding the hierarchy (hybrid hosts too), an attempt
cgroup killed whole and removed, limits only where a controller is delegated, and the fallback
with its reason when no writable cgroup v2 can be had. Real cgroups: needs root (or a
delegated cgroup) and cgroup v2; skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

from orchestrd import cgroups
from orchestrd.launchers import WorkerSpec
from orchestrd.launchers.local import Containment, LocalLauncher, contain

HYBRID = """\
24 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""


@contextlib.asynccontextmanager
async def spawned(*argv: str) -> AsyncIterator[anyio.abc.Process]:
    """A process with no pipes, killed and reaped at the end whatever the test did (one left
    running would be garbage-collected in some later test, on a closed loop)."""
    nothing = subprocess.DEVNULL
    process = await anyio.open_process(argv, stdin=nothing, stdout=nothing, stderr=nothing)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


def test_the_v2_hierarchy_is_found_where_a_hybrid_host_mounts_it() -> None:
    assert cgroups.v2_mount(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert cgroups.v2_mount(HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup")) is None


def test_own_cgroup_is_the_v2_line_after_the_v1_ones() -> None:
    text = Path("/proc/self/cgroup").read_text()
    line = next(li for li in text.splitlines() if li.startswith("0::"))
    assert cgroups.own_cgroup() == line[3:]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[cgroups.Tree]:
    containment = contain(None, tmp_path, under_systemd=False)
    if containment.tree is None:
        print(f"SKIP real cgroup tests: {containment.reason}")
        pytest.skip(containment.reason)
    yield containment.tree
    cgroups.remove(containment.tree.base)


@pytest.mark.anyio
async def test_cgroup_kill_stops_every_process_and_the_empty_cgroup_is_removed(
    tree: cgroups.Tree,
) -> None:
    path = tree.attempt("T.P01.1")
    await cgroups.create(path, {}, tree.controllers)
    # a process of its own session inside: a process group signal would miss it
    async with spawned("setsid", "sleep", "30") as inside:
        cgroups.join(path, inside.pid)
        assert cgroups.populated(path)
        assert cgroups.members(path) == [inside.pid]
        with anyio.fail_after(10):  # setsid execs sleep once it has its session
            while cgroups.command_line(inside.pid) != "sleep 30":  # noqa: ASYNC110 - /proc
                await anyio.sleep(0.01)
        assert not cgroups.remove(path)  # busy: left in place
        started = time.monotonic()
        assert cgroups.kill(path)
        with anyio.fail_after(2):
            await cgroups.wait_empty(path)
        assert await inside.wait() == -9
        assert time.monotonic() - started < 1
    assert cgroups.remove(path) and not path.exists()
    assert not cgroups.kill(path)  # gone: nothing to kill


@pytest.mark.anyio
async def test_a_leftover_attempt_cgroup_is_found_and_a_new_one_of_its_name_starts_empty(
    tree: cgroups.Tree,
) -> None:
    path = tree.attempt("T.P01.1")
    await cgroups.create(path, {}, tree.controllers)
    async with spawned("sleep", "30") as left:
        cgroups.join(path, left.pid)
        assert cgroups.leftover_attempts(tree) == [path]
        await cgroups.create(path, {}, tree.controllers)  # the same name again (a crash's leftover)
        with anyio.fail_after(2):
            assert await left.wait() == -9
    assert cgroups.members(path) == []
    cgroups.remove(path)


@pytest.mark.anyio
async def test_limits_are_written_where_the_controller_is_delegated_and_reported_where_not(
    tree: cgroups.Tree,
) -> None:
    limits = {"memory_max": 64 * 1024 * 1024, "pids_max": 50, "cpu_weight": 50}
    path = tree.attempt("T.P01.1")
    await cgroups.create(path, limits, tree.controllers)
    missing = cgroups.missing_controllers(limits, tree.controllers)
    for key, name in cgroups.LIMIT_FILES.items():
        controller = name.split(".")[0]
        assert (controller in missing) is (controller not in tree.controllers)
        if controller in tree.controllers:
            assert (path / name).read_text().strip() == str(limits[key])
    assert cgroups.oom_kills(path) == 0
    cgroups.remove(path)


def test_no_writable_cgroup_falls_back_to_process_groups_with_the_reason(
    tmp_path: Path,
) -> None:
    containment = contain(Path("/proc/orchestrd"), tmp_path, under_systemd=False)
    assert containment.mode == "pgroup"
    assert containment.tree is None
    assert "/proc/orchestrd" in containment.reason
    assert "process group only" in containment.reason


def test_two_state_folders_get_two_trees_and_the_same_folder_the_same_tree(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups here")
    a = contain(None, tmp_path / "a", under_systemd=False)
    b = contain(None, tmp_path / "b", under_systemd=False)
    again = contain(None, tmp_path / "a", under_systemd=False)
    if a.tree is None or b.tree is None or again.tree is None:
        pytest.skip(a.reason)
    assert a.tree.base != b.tree.base
    assert again.tree.base == a.tree.base
    for c in (a, b):
        assert c.tree is not None
        cgroups.remove(c.tree.base)


@pytest.mark.anyio
async def test_a_worker_the_oom_killer_hit_is_reported_as_such(
    tree: cgroups.Tree, tmp_path: Path
) -> None:
    if "memory" not in tree.controllers:
        reason = f"the memory controller is not delegated to {tree.workers}"
        print(f"SKIP oom_kill: {reason}")
        pytest.skip(reason)
    launcher = LocalLauncher(Containment("cgroup", "test", tree))
    hog = "x = bytearray(256 * 1024 * 1024); print(len(x))"
    spec = WorkerSpec(
        ["python3", "-c", hog], {"PATH": os.environ["PATH"]}, tmp_path, tmp_path / "w.log",
        name="T.P01.1", limits={"memory_max": "32M"},
    )  # fmt: skip
    async with launcher.launch(spec, 10**6, 0.5) as worker:
        assert await worker.wait() != 0
        assert worker.oom_killed
