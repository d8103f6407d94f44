"""Plans on a Slurm cluster: a profile with `launcher = "slurm"` runs its phases as batch jobs on
a real two-node cluster (slurm_support.py: its own network namespace, the daemon's client calls
entering it through the wrappers `[launchers.slurm] bin` names). The nodes are this machine, so
the shared filesystem a site needs (repos, plan folders, logs under the same paths) is trivially
there.

What counts is the shim's word, not Slurm's: a controller SIGKILLed mid-job loses no exit code,
and a job run twice (a re-queue after a controller crash) does not run its worker twice.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import agent_profile, alive, make_config, make_plan, phase, run_plan
from daemon_support import Daemon
from slurm_support import Cluster, settings, shared_cluster

from orchestrd.launchers import WorkerSpec
from orchestrd.launchers.slurm import SHIM, SlurmLauncher
from orchestrd.privsep import Identity

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("slurm")]  # one cluster: conftest.py
ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return shared_cluster(request)


def on_slurm(name: str, **env: str) -> dict[str, Any]:
    return {**agent_profile(name, **env), "launcher": "slurm"}


async def test_a_plan_on_slurm_runs_on_both_nodes_stalls_remediates_and_leaves_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    # two plans at once, each job a whole node (--exclusive): the second job goes to the
    # other node; plan A's first attempt hangs silently, is stopped as stalled and remediated.
    # A worker's budget is poll_interval x max_polls = 2 s: room for a python agent started
    # through Slurm on a busy machine; the hang pays it once
    slurm = {"bin": str(cluster.bin), "python": sys.executable, "poll_interval": "0.1s"}
    runs = {}

    async def run(name: str, worker: str, phases: list[dict[str, Any]]) -> None:
        (tmp_path / name).mkdir()
        config = make_config(
            tmp_path / name,
            policy={"poll_interval": "0.5s", "max_polls": 4, "max_remediations": 1},
            workers={
                "pass": on_slurm("pass"),
                "flaky": on_slurm("flaky", AGENT_FIRST="hang"),
            },
            launchers={"slurm": {**slurm, "sbatch_args": ["--exclusive"]}},
        )
        plan = make_plan(tmp_path / name, phases, id=name, worker=worker)
        runs[name] = await run_plan(config, plan)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "A", "flaky", [phase("P01")])
        tg.start_soon(run, "B", "pass", [phase("P01"), phase("P02")])
    why = {n: [e for e in r.events() if "failed" in e["event"]] for n, r in runs.items()}
    assert {n: r.status for n, r in runs.items()} == {"A": "succeeded", "B": "succeeded"}, why
    started = [e for r in runs.values() for e in r.events("worker.started")]
    assert {e["node"] for e in started} == {"n1", "n2"}
    a = runs["A"]
    assert [e["role"] for e in a.events("worker.started")] == ["primary", "remediation"]
    assert [e["attempt"] for e in a.events("worker.stalled")] == [1]
    assert a.agent("P01", 2)["env"]["ORCHESTRD_FAILURE"].startswith("exit_code: stalled")
    # the queue is no stall: each job's wait is an event of its own, then it runs
    for run_ in runs.values():
        pending = run_.events("worker.pending")
        assert [e["job_id"] for e in pending] == [
            e["job_id"] for e in run_.events("worker.started")
        ]
    assert cluster.drained() == []
    pids = [r.agent(e["phase"], e["attempt"])["pid"] for r in runs.values() for e in
            r.events("worker.started")]  # fmt: skip
    assert not any(alive(pid) for pid in pids)


def shim_folder(tmp_path: Path, argv: list[str]) -> Path:
    """An attempt's folder as the launcher writes it, for the shim run here without Slurm."""
    folder = tmp_path / "w.log.slurm"
    folder.mkdir()
    job = {"argv": argv, "env": ENV, "cwd": str(tmp_path), "log": str(tmp_path / "w.log")}
    job |= {"max_log_bytes": 10**6, "grace": 1.0, "tick": 0.05}
    (folder / "spec.json").write_text(json.dumps(job))
    return folder


def test_the_shim_runs_a_worker_once_per_attempt(tmp_path: Path) -> None:
    """A job Slurm runs again (re-queued after a controller crash) exits at once: the worker's
    exit code stays the first run's."""
    count = tmp_path / "runs"
    folder = shim_folder(tmp_path, ["sh", "-c", f"echo run >> {count}; exit 3"])
    first = subprocess.run([sys.executable, str(SHIM), str(folder)], capture_output=True)
    status = json.loads((folder / "status.json").read_text())
    second = subprocess.run([sys.executable, str(SHIM), str(folder)], capture_output=True)
    assert (first.returncode, second.returncode) == (3, 0)
    assert b"ran already" in second.stderr
    assert count.read_text() == "run\n"
    assert json.loads((folder / "status.json").read_text()) == status
    assert status["returncode"] == 3 and status["done"]


def test_a_shim_asked_to_stop_before_it_started_does_not_start_the_worker(
    tmp_path: Path,
) -> None:
    ran = tmp_path / "ran"
    folder = shim_folder(tmp_path, ["touch", str(ran)])
    (folder / "stop").write_text("1.0")
    shim = subprocess.run([sys.executable, str(SHIM), str(folder)])
    status = json.loads((folder / "status.json").read_text())
    assert (status["returncode"], status["signal"], status["done"]) == (-15, "SIGTERM", True)
    assert shim.returncode == 128 + signal.SIGTERM
    assert not ran.exists()


async def test_a_stop_as_soon_as_slurm_says_running_is_a_sigterm_stop(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Slurm says RUNNING before the shim (python starting on the node) has set its SIGTERM
    handler: the stop waits for the shim's first word (a SIGTERM sooner would end the shim
    unheard, and the stop would look like a SIGKILL)."""
    launcher = SlurmLauncher(settings(cluster))
    stops = []

    async def stop_at_once(attempt: int) -> None:
        folder = tmp_path / str(attempt)
        folder.mkdir()
        spec = WorkerSpec(["sleep", "30"], ENV, folder, folder / "w.log", name=f"T:P01:{attempt}")
        async with launcher.launch(spec, 10**6, 1.0) as worker:
            stops.append((await worker.stop(2.0), worker.returncode))

    async with anyio.create_task_group() as tg:  # three at once: the race each time
        for attempt in range(3):
            tg.start_soon(stop_at_once, attempt)
    assert stops == [(signal.SIGTERM, -signal.SIGTERM)] * 3
    assert cluster.drained() == []


async def test_with_a_worker_user_the_job_and_the_worker_are_that_users(
    cluster: Cluster,
) -> None:
    """sbatch --uid (the daemon is root when it has a worker user); the shim, stdlib only,
    runs with the nodes' python3."""
    nobody = pwd.getpwnam("nobody")
    scratch = Path(tempfile.mkdtemp(prefix="orchestrd-slurm-user-"))
    os.chmod(scratch, 0o755)  # the worker user's cwd
    try:
        launcher = SlurmLauncher(settings(cluster, python="/usr/bin/python3"))
        who = Identity("nobody", nobody.pw_uid, nobody.pw_gid, (), "/nonexistent")
        argv = ["sh", "-c", "id -u; ls /root >/dev/null 2>&1 || echo no-root"]
        spec = WorkerSpec(argv, ENV, scratch, scratch / "w.log", who, name="T:P01:1")
        async with launcher.launch(spec, 10**6, 1.0) as worker:
            assert await worker.wait() == 0
        assert (scratch / "w.log").read_text() == f"{nobody.pw_uid}\nno-root\n"
        assert (scratch / "w.log.slurm").stat().st_uid == nobody.pw_uid
        assert (scratch / "w.log.slurm" / "spec.json").stat().st_mode & 0o077 == 0
    finally:
        shutil.rmtree(scratch)


def test_a_sigkilled_daemon_restarted_cancels_its_running_job_by_name_and_goes_on(
    cluster: Cluster, daemon: Daemon
) -> None:
    """The real daemon: its job outlives it (it runs on a node, not below the daemon); the next
    start finds the job of the recorded attempt by id and name, stops it, and runs the phase
    again."""
    slurm = {"bin": str(cluster.bin), "python": sys.executable, "poll_interval": "0.1s"}
    data = daemon.config_data()
    workers = {name: {**p, "launcher": "slurm"} for name, p in data["workers"].items()}
    daemon.write_config(workers=workers, launchers={"slurm": slurm})
    daemon.start()
    daemon.submit("k", worker="stuck")
    (started,) = daemon.wait_event("worker.started")
    assert started["node"] in ("n1", "n2")
    agent = daemon.agent_pid("k")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert alive(agent) and any(line.startswith(f"{started['pid']} ") for line in cluster.jobs())

    daemon.start()
    daemon.wait_plans_end(["k"])
    (orphan,) = daemon.events("worker.orphan_stopped")
    assert (orphan["pid"], orphan["signal"]) == (started["pid"], "SIGTERM")
    assert [e["plan"] for e in daemon.events("plan.succeeded")] == ["k"]
    assert not alive(agent)
    assert cluster.drained() == []


async def test_a_controller_killed_mid_job_does_not_lose_the_exit_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    """slurmctld SIGKILLed while the job runs; the worker ends while no controller can hear of
    it: its exit code is the shim's file's, the restarted controller ends the job (slurmstepd
    tells it), and the worker ran once."""
    launcher = SlurmLauncher(settings(cluster))
    go, runs = tmp_path / "go", tmp_path / "runs"
    script = f"echo run >> {runs}; while [ ! -e {go} ]; do sleep 0.05; done; exit 7"
    spec = WorkerSpec(["sh", "-c", script], ENV, tmp_path, tmp_path / "w.log", name="T:P01:1")
    assert cluster.drained() == []
    async with launcher.launch(spec, 10**6, 1.0) as worker:
        # mid-job as a crash finds it: the controller's saved table has this job running and
        # every earlier job's end (SIGKILLed within 5 s of an earlier job's end, it would come
        # back with that job RUNNING, a ghost no node runs, until it drops it 20 s later)
        await anyio.to_thread.run_sync(cluster.save_state, worker.job_id)
        cluster.kill_controller()
        go.touch()
        with anyio.fail_after(10):
            assert await worker.wait() == 7
        cluster.start_controller()
    assert worker.returncode == 7
    assert await anyio.to_thread.run_sync(cluster.drained, 15) == []
    assert runs.read_text() == "run\n"
    await anyio.to_thread.run_sync(cluster.rejoin)  # for the tests after this one
