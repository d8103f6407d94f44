"""Cancel and retry requests against the real daemon: who may make them, what the audit log says
about them, plans that can no longer be loaded, and the attempts a cancel leaves in state.

- A file in `control/` is held to the inbox's trust rules: a regular file, owned by someone in
  `allowed_submitters` (when set); anything else is refused with a reason, and every request's
  event names its requester (uid and user name). The daemon refuses to start on a `control/`
  others can write.
- A retry of a plan the daemon is running is not dropped silently.
- A plan whose plan file cannot be loaded any more is set aside (archive/) with a reason, and
  `retry` names its real state instead of "not found".
- A cancel that lands before the worker started leaves no attempt in state without its
  `worker.started` event and its ledger line.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
from daemon_support import Daemon

from orchestrd.state import load_state

IS_ROOT = os.geteuid() == 0
NOBODY = 65534


def request(d: Daemon, name: str, uid: int | None = None) -> Path:
    """A request file dropped as the CLI does (written aside, renamed in), owned by `uid`."""
    control = d.state_dir / "control"
    tmp = control / f".{name}.tmp"
    tmp.write_bytes(b"")
    if uid is not None:
        os.chown(tmp, uid, uid)
    os.rename(tmp, control / name)
    return control / name


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_a_request_from_someone_not_in_allowed_submitters_is_refused(daemon: Daemon) -> None:
    daemon.write_config(allowed_submitters=["root"])
    daemon.start()
    daemon.submit("c1", worker="stuck")
    [started] = daemon.wait_event("worker.started", plan="c1")

    path = request(daemon, "c1.cancel", uid=NOBODY)
    [refused] = daemon.wait_event("daemon.request_refused", plan="c1")
    assert refused["request"] == "cancel"
    assert refused["requester"] == {"uid": NOBODY, "user": "nobody"}
    assert "allowed_submitters" in refused["reason"] and "nobody (uid 65534)" in refused["reason"]
    assert not path.exists()  # taken, not tried again at every scan
    assert daemon.events("plan.cancelled") == []

    # the same request from a listed user works, and the event says who asked
    request(daemon, "c1.cancel", uid=0)
    [cancelled] = daemon.wait_event("plan.cancelled", plan="c1")
    assert cancelled["requester"] == {"uid": 0, "user": "root"}
    assert started["pid"] not in daemon.live_workers()


def test_the_cli_says_at_once_when_the_daemon_would_refuse_its_request(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("c3", worker="stuck")
    daemon.wait_event("worker.started", plan="c3")
    daemon.write_config(allowed_submitters=["no-such-group-or-user"])  # as the CLI reads it
    result = daemon.cli("cancel", "c3")
    assert result.returncode == 2
    assert f"uid {os.geteuid()} is not in allowed_submitters" in result.stderr
    assert os.listdir(daemon.state_dir / "control") == []


def test_a_request_that_is_not_a_regular_file_is_refused(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("c2", worker="stuck")
    daemon.wait_event("worker.started", plan="c2")
    control = daemon.state_dir / "control"
    os.symlink(daemon.tmp / "elsewhere", control / "c2.cancel")
    [refused] = daemon.wait_event("daemon.request_refused", plan="c2")
    assert "symbolic link" in refused["reason"]
    assert not os.path.lexists(control / "c2.cancel")
    assert daemon.events("plan.cancelled") == []
    # a request whose name is no plan id is refused with the same reason the CLI gives
    request(daemon, "a b.retry")
    [bad] = daemon.wait_event("daemon.request_refused", file="a b.retry")
    assert "id" in bad["reason"]


def test_the_daemon_refuses_a_control_folder_others_can_write(daemon: Daemon) -> None:
    control = daemon.state_dir / "control"
    control.mkdir(parents=True)
    control.chmod(0o777)
    proc = daemon.start(wait=False)
    assert proc.wait(15) == 2, daemon.stderr()
    assert f"{control} is writable by anyone (mode 0777)" in daemon.stderr()
    assert f"chmod o-w {control}" in daemon.stderr()
    assert stat.S_IMODE(control.stat().st_mode) == 0o777  # checked, never changed


def test_a_retry_of_an_active_plan_says_why_it_is_ignored(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("r1", worker="stuck")
    daemon.wait_event("worker.started", plan="r1")
    result = daemon.cli("retry", "r1")
    assert result.returncode == 1
    assert "r1 is running" in result.stdout and "cancel it first" in result.stdout
    # the request reaches the daemon anyway (the state file said failed a moment ago): it
    # says why it does nothing
    request(daemon, "r1.retry")
    [ignored] = daemon.wait_event("daemon.request_ignored", plan="r1", request="retry")
    assert "running" in ignored["reason"]
    assert ignored["requester"]["uid"] == os.geteuid()


def _fail_and_unarchive(daemon: Daemon, plan_id: str) -> Path:
    """Run a plan to `failed`, then put its folder back under plans/ as a crash between the
    end and the archiving leaves it; its completion folder becomes a link out of the repo."""
    daemon.start()
    daemon.submit(plan_id, phases=("P01", "P02"), worker="fail_once")
    daemon.wait_event("plan.archived", plan=plan_id)
    assert daemon.stop() == 0
    shutil.move(daemon.state_dir / "archive" / plan_id, daemon.state_dir / "plans" / plan_id)
    repo = daemon.repo("repo")
    outside = daemon.tmp / "outside"
    outside.mkdir()
    shutil.rmtree(repo / ".completed")
    os.symlink(outside, repo / ".completed")
    return repo


def test_a_plan_that_cannot_be_reloaded_is_set_aside_with_a_reason(daemon: Daemon) -> None:
    _fail_and_unarchive(daemon, "u1")
    daemon.start()
    [aside] = daemon.wait_event("plan.set_aside", plan="u1")
    assert "completion" in aside["reason"] and "outside" in aside["reason"]
    assert aside["status"] == "failed"
    assert aside["moved_to"] == str(daemon.state_dir / "archive" / "u1")
    assert not (daemon.state_dir / "plans" / "u1").exists()

    result = daemon.cli("retry", "u1")
    assert result.returncode == 2
    assert "u1 is failed" in result.stderr and "cannot be loaded" in result.stderr
    assert "not found" not in result.stderr
    assert (daemon.state_dir / "archive" / "u1").is_dir()


def test_retry_while_the_daemon_is_down_names_an_unloadable_plans_state(daemon: Daemon) -> None:
    _fail_and_unarchive(daemon, "u2")
    result = daemon.cli("retry", "u2")
    assert result.returncode == 2
    assert "u2 is failed" in result.stderr and "cannot be loaded" in result.stderr
    assert "not found" not in result.stderr
    # nothing was half done: the plan is where it was, still failed
    state = load_state(daemon.state_dir / "plans" / "u2" / "state.toml").model_dump(mode="json")
    assert state["status"] == "failed"


def test_a_cancel_before_the_worker_starts_leaves_no_attempt_without_its_events(
    daemon: Daemon,
) -> None:
    # a `git` that waits until the cancel was made holds the attempt between its record and its
    # worker's start (a fixed sleep was too short for a slow `cancel` on a loaded machine)
    bin_dir = daemon.tmp / "bin"
    bin_dir.mkdir()
    git = bin_dir / "git"
    cancelled = daemon.tmp / "cancelled"
    git.write_text(
        f"#!/bin/sh\ni=0\nwhile [ ! -e '{cancelled}' ] && [ $i -lt 300 ]; do\n"
        "  sleep 0.05; i=$((i+1))\ndone\n"
        "echo 'fatal: not a git repository' >&2\nexit 128\n"
    )
    git.chmod(0o755)
    (daemon.repo("repo") / ".git").mkdir()
    daemon.start(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    daemon.submit("k1")
    daemon.wait_event("phase.started", plan="k1")
    assert daemon.cli("cancel", "k1").returncode == 0
    cancelled.touch()
    daemon.wait_event("plan.archived", plan="k1")
    assert daemon.cli("retry", "k1").returncode == 0
    daemon.wait_event("plan.succeeded", plan="k1")
    daemon.wait_event("plan.archived", plan="k1", count=2)

    folder = daemon.state_dir / "archive" / "k1"
    state = load_state(folder / "state.toml").model_dump(mode="json")
    attempts = [a["n"] for a in state["phases"]["P01"]["attempts"]]
    started = [e["attempt"] for e in daemon.events("worker.started", plan="k1")]
    ledger = (folder / "worker-pids.txt").read_text()
    assert attempts == started
    for n in attempts:
        assert f" P01 attempt={n} role=" in ledger
    assert daemon.stop(signal.SIGTERM) == 0
