"""Containment by the real daemon: a cgroup per attempt (nothing a worker starts outlives its
attempt, a setsid escapee with no fds and no environment included), exact recovery of a recorded
cgroup after the daemon was SIGKILLed, and the fallback to process groups, said in
daemon.started, when no writable cgroup v2 is there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, make_plan, phase, run_plan
from daemon_support import Daemon, alive, wait_for

from orchestrd.launchers.local import contain

AGENTS = Path(__file__).parent / "agents"


@pytest.fixture
def cgroup_daemon(daemon: Daemon) -> Iterator[Daemon]:
    probe = contain(None, daemon.tmp / "probe", under_systemd=False)
    if probe.mode != "cgroup":
        print(f"SKIP cgroup containment: {probe.reason}")
        pytest.skip(probe.reason)
    assert probe.tree is not None
    os.rmdir(probe.tree.workers)
    os.rmdir(probe.tree.base)
    daemon.write_config(workers={**daemon.config_data()["workers"], "escapee": escapee()})
    yield daemon


def escapee(**env: object) -> dict[str, Any]:
    return {
        "command": ["{python}", str(AGENTS / "escapee_agent.py"), "{prompt}"],
        "env": {k: str(v) for k, v in env.items()},
    }


def escapee_pid(repo: Path, attempt: int = 1) -> int:
    path = repo / f"escapee-P01-{attempt}.txt"
    return int(wait_for(lambda: path.exists() and path.read_text()))


def test_an_escapee_without_fds_or_env_is_stopped_when_its_attempt_ends_and_named(
    cgroup_daemon: Daemon,
) -> None:
    d = cgroup_daemon
    d.start()
    started = d.events("daemon.started")[0]
    assert started["containment"] == "cgroup"
    d.submit("esc", worker="escapee")
    d.wait_event("plan.succeeded", plan="esc")
    escaped = escapee_pid(d.repo("repo"))
    assert not alive(escaped)
    stopped = d.events("worker.stopped", plan="esc")
    assert [e["why"] for e in stopped] == ["left running after exit"]
    assert stopped[0]["processes"] == [{"pid": escaped, "command": "sleep 300"}]
    workers = Path(started["cgroup"])
    assert [p for p in workers.iterdir() if p.is_dir()] == [], "its empty cgroup is removed"


def test_recovery_after_a_sigkill_kills_the_recorded_cgroup(cgroup_daemon: Daemon) -> None:
    d = cgroup_daemon
    d.write_config(workers={**d.config_data()["workers"], "escapee": escapee(AGENT_HANG=1)})
    d.start()
    d.submit("esc", worker="escapee")
    escaped = escapee_pid(d.repo("repo"))
    record = d.repo("repo") / ".agent" / "P01-1.json"
    worker = json.loads(record.read_text())["pid"]
    try:
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        assert alive(escaped) and alive(worker)
        d.start()
        d.wait_event("worker.orphan_stopped", plan="esc")
        assert not alive(escaped) and not alive(worker)
        orphan = d.events("worker.orphan_stopped", plan="esc")[0]
        assert "cgroup" in orphan
        assert escaped in [p["pid"] for p in orphan["processes"]]
        assert not Path(orphan["cgroup"]).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(escaped, signal.SIGKILL)


def test_without_a_writable_cgroup_the_daemon_falls_back_to_process_groups_and_says_why(
    daemon: Daemon,
) -> None:
    daemon.write_config(containment={"cgroup_parent": "/proc/orchestrd"})
    daemon.start()
    started = daemon.events("daemon.started")[0]
    assert started["containment"] == "pgroup"
    assert "/proc/orchestrd" in started["containment_reason"]
    daemon.submit("p")
    daemon.wait_event("plan.succeeded", plan="p")


def test_under_systemd_with_delegate_yes_the_service_cgroup_holds_every_attempt(
    daemon: Daemon,
) -> None:
    """The daemon as a transient service with the unit's Delegate=yes and KillMode=mixed."""
    if not Path("/run/systemd/system").is_dir() or not shutil.which("systemd-run"):
        reason = "systemd is not running as PID 1 here (no /run/systemd/system)"
        print(f"SKIP the systemd unit test: {reason}")
        pytest.skip(reason)
    unit = f"orchestrd-test-{os.getpid()}"
    setenv = [f"--setenv={k}={v}" for k, v in daemon.env().items()]
    daemon.prefix = [
        "systemd-run", f"--unit={unit}", "--quiet", "--wait", "--collect", "--pipe",
        "--same-dir", "-p", "Delegate=yes", "-p", "KillMode=mixed", *setenv,
    ]  # fmt: skip
    daemon.write_config(workers={**daemon.config_data()["workers"], "escapee": escapee()})
    try:
        daemon.start()
        started = daemon.events("daemon.started")[0]
        assert started["containment"] == "cgroup", started["containment_reason"]
        assert started["cgroup"].endswith(f"/{unit}.service/workers")
        daemon.submit("esc", worker="escapee")
        daemon.wait_event("plan.succeeded", plan="esc")
        escaped = escapee_pid(daemon.repo("repo"))
        assert not alive(escaped)
        stopped = daemon.events("worker.stopped", plan="esc")
        assert stopped[0]["processes"] == [{"pid": escaped, "command": "sleep 300"}]
    finally:
        subprocess.run(["systemctl", "stop", f"{unit}.service"], check=False)


def test_limits_a_controller_is_missing_for_are_said_once_at_start_never_a_failure(
    cgroup_daemon: Daemon,
) -> None:
    d = cgroup_daemon
    capped = {**escapee(), "memory_max": "256M", "pids_max": 64}
    d.write_config(workers={**d.config_data()["workers"], "capped": capped})
    d.start()
    started = d.events("daemon.started")[0]
    warned = d.events("daemon.limits_unavailable")
    missing = [c for c in ("memory", "pids") if c not in cgroup_controllers(started["cgroup"])]
    if not missing:
        assert warned == []
        return
    assert [e["profile"] for e in warned] == ["capped"]
    assert all(c in warned[0]["reason"] for c in missing)
    d.submit("capped", worker="capped")
    d.wait_event("plan.succeeded", plan="capped")


def cgroup_controllers(workers: str) -> set[str]:
    return set((Path(workers) / "cgroup.subtree_control").read_text().split())


@pytest.mark.anyio
async def test_a_verify_command_runs_in_a_cgroup_of_its_own_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    probe = contain(None, tmp_path / "state", under_systemd=False)
    if probe.tree is None:
        pytest.skip(probe.reason)
    escapee_agent = AGENTS / "escapee.py"
    run = f"{sys.executable} {escapee_agent} verify-escapee.txt; cat /proc/self/cgroup"
    plan = make_plan(tmp_path, phases=[phase("P01", verify=[{"run": run}])])
    result = await run_plan(make_config(tmp_path), plan)
    escaped = int((result.repo / "verify-escapee.txt").read_text())
    assert not alive(escaped)
    output = (result.folder / "workers" / "verify-P01-1-0.log").read_text()
    assert "/workers/T:P01:1:verify0" in output


def test_a_cgroup_no_state_recorded_is_found_in_the_tree_at_start_and_emptied(
    cgroup_daemon: Daemon,
) -> None:
    """A worker started in the instant before a crash: its handle never saved."""
    d = cgroup_daemon
    d.start()  # makes the spool and the tree
    d.stop()
    tree = contain(None, d.state_dir, under_systemd=False).tree
    assert tree is not None
    path = tree.attempt("lost:P01:1")
    path.mkdir()
    stray = subprocess.Popen(["setsid", "sleep", "300"], env={})
    try:
        (path / "cgroup.procs").write_text(str(stray.pid))
        d.start()
        assert stray.wait(5) == -signal.SIGTERM
        [orphan] = d.events("worker.orphan_stopped")
        assert orphan["found"] == "in its cgroup" and orphan["cgroup"] == str(path)
        assert orphan["processes"] == [{"pid": stray.pid, "command": "sleep 300"}]
        assert not path.exists()
    finally:
        stray.kill()
        stray.wait()
