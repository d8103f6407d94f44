"""Plan ids from the command line, and plans left behind by a killed `orchestrd run`.

- Every plan id given to `retry`, `cancel` and `status` passes the rule of a plan file's `id`
  before it becomes part of a path: `../archive/F1` is refused (exit 2), nothing is written.
- `orchestrd run` killed by SIGKILL leaves its plan `running` in its state file; as no process
  holds the plan's lock any more, `status` says `interrupted`, and the next `run` goes ahead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from conftest import make_config, make_plan, run_cli
from daemon_support import Daemon, wait_for

from orchestrd.errors import PlanError, StateError
from orchestrd.spool import check_plan_id
from orchestrd.state import load_state


@pytest.mark.parametrize(
    "plan_id", ["../archive/F1", "..", ".", "a/b", "", "x" * 129, "caf\u00e9", "a\nb"]
)
def test_check_plan_id_refuses_what_a_plan_file_may_not_be_named(plan_id: str) -> None:
    with pytest.raises(PlanError, match=r"PLAN_ID: id: .*use letters, digits"):
        check_plan_id(plan_id, "PLAN_ID")


def test_a_plan_id_that_is_a_path_is_refused_with_the_daemon_up_or_down(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("F1", phases=("P01", "P02"), worker="fail_once")
    daemon.wait_event("plan.archived", plan="F1")
    state_file = daemon.state_dir / "archive" / "F1" / "state.toml"
    before = state_file.read_bytes()

    result = daemon.cli("retry", "../archive/F1")
    assert result.returncode == 2
    assert "'../archive/F1'" in result.stderr and "use letters, digits" in result.stderr
    assert not (daemon.state_dir / "archive" / "F1.retry").exists()
    assert os.listdir(daemon.state_dir / "control") == []

    assert daemon.stop() == 0
    for args in (
        ("retry", "../archive/F1"),
        ("cancel", "../archive/F1"),
        ("status", "../archive/F1"),
        ("logs", "../archive/F1"),
        ("report", "../archive/F1"),
    ):
        result = daemon.cli(*args)
        assert result.returncode == 2, args
        assert "use letters, digits" in result.stderr, args
    assert state_file.read_bytes() == before
    assert tomllib.loads(before.decode())["status"] == "failed"


def test_a_plan_of_a_killed_run_is_interrupted_and_runs_again(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, worker="hang")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrd", "run", str(plan), "--config", str(config), "-q"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = tmp_path / "state/plans/T/state.toml"

    def worker_pid() -> int | None:
        with contextlib.suppress(OSError, StateError, KeyError, IndexError):
            state = load_state(state_file).model_dump(mode="json")
            pid = state["phases"]["P01"]["attempts"][0].get("pid")
            return int(pid) if pid else None
        return None

    try:
        pid = wait_for(worker_pid, what="the worker's pid in the state file")
    finally:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # its own session: SIGKILL of `run` left it

    assert load_state(state_file).status == "running"
    result = run_cli("status", "T", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "interrupted" in result.stdout.splitlines()[1], result.stdout
    assert "running" not in result.stdout.splitlines()[1]

    data = tomllib.loads(plan.read_text())
    plan.write_text(tomli_w.dumps({**data, "worker": "pass"}))
    result = run_cli("run", plan, "--config", config, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan T: succeeded")
    archived = load_state(tmp_path / "state/archive/T/state.toml").model_dump(mode="json")
    assert archived["status"] == "interrupted"
