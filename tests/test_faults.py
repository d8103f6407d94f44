"""Faults, each with real processes against the real daemon: workers that ignore SIGTERM, leave
a family behind, flood their output or cannot be executed; a repo that disappears; a log folder
that cannot be written or a full disk; the audit log rotated or deleted under the daemon.

In every case the plan ends with a reason a person can act on, no process is left behind, and
the daemon serves the next plan. (The SIGKILL loop is in test_fault_kill_loop.py.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon, alive, wait_for

from orchestrd.launchers import WorkerLogError, WorkerSpec, open_launcher
from orchestrd.state import atomic_write

AGENTS = Path(__file__).parent / "agents"
ROOT = Path(__file__).parent.parent
IS_ROOT = os.geteuid() == 0


def fault(name: str, **env: object) -> dict[str, Any]:
    return {
        "command": ["{python}", str(AGENTS / f"{name}.py"), "{prompt}"],
        "env": {k: str(v) for k, v in env.items()},
    }


def with_profiles(d: Daemon, **overrides: Any) -> None:
    """The daemon's usual config plus the fault profiles (and `overrides`)."""
    workers = {
        **d.config_data()["workers"],
        "deaf": fault("fault_deaf", DEAF_ONCE=1),
        "spawn": fault("fault_spawn", SPAWN_CHILDREN=3),
        "flood": fault("fault_flood", FLOOD_BYTES=FLOOD_BYTES),
        "rmrepo": fault("fault_rmrepo"),
        "missing": {"command": ["/nonexistent/agent-cli", "exec", "{prompt}"]},
    }
    overrides.setdefault("policy", {**d.config_data()["policy"], "max_remediations": 1})
    d.write_config(workers=workers, **overrides)


def serves_on(d: Daemon, plan_id: str = "next") -> None:
    """The daemon is alive and a plain plan still succeeds."""
    d.submit(plan_id, repo=f"repo-{plan_id}")
    # its last event, not plan.succeeded: the plan's events go on until it is archived
    d.wait_event("plan.archived", plan=plan_id)
    assert d.proc is not None and d.proc.poll() is None


def pids_of(repo: Path, phase: str = "P01", attempt: int = 1) -> list[int]:
    return [int(p) for p in (repo / f"pids-{phase}-{attempt}.txt").read_text().split()]


# -- workers that misbehave --


def test_a_worker_ignoring_sigterm_is_killed_after_the_grace_and_remediated(
    daemon: Daemon,
) -> None:
    with_profiles(
        daemon,
        policy={
            "poll_interval": "0.1s",
            # 2 s: the deaf attempt stalls; the remediation must start and finish in time
            # on a loaded machine
            "max_polls": 20,
            "stop_grace": "0.3s",
            "max_remediations": 1,
        },
    )
    daemon.start()
    daemon.submit("deaf", worker="deaf")
    daemon.wait_event("plan.succeeded", plan="deaf")

    [pid] = pids_of(daemon.repo("repo"))
    assert not alive(pid)
    [stalled] = daemon.events("worker.stalled", plan="deaf")
    [stopped] = daemon.events("worker.stopped", plan="deaf", why="stalled")
    assert (stalled["pid"], stopped["pid"], stopped["signal"]) == (pid, pid, "SIGKILL")
    assert "not listening" in stalled["log_tail"]
    [remediation] = daemon.events("remediation.started", plan="deaf")
    assert "stalled" in remediation["reason"]
    assert [e["role"] for e in daemon.events("worker.started", plan="deaf")] == [
        "primary",
        "remediation",
    ]
    serves_on(daemon)


def test_grandchildren_of_a_worker_that_exited_are_stopped_with_its_group(
    daemon: Daemon,
) -> None:
    with_profiles(daemon)
    daemon.start()
    daemon.submit("family", worker="spawn")
    daemon.wait_event("plan.succeeded", plan="family")

    family = pids_of(daemon.repo("repo"))
    assert len(family) == 6  # 3 children, 3 grandchildren, all ignoring SIGTERM
    assert not any(alive(pid) for pid in family)
    [stopped] = daemon.events("worker.stopped", plan="family")
    assert (stopped["why"], stopped["signal"]) == ("left running after exit", "SIGKILL")
    [exited] = daemon.events("worker.exited", plan="family")
    assert exited["returncode"] == 0
    serves_on(daemon)


FLOOD_BYTES = 256 << 20
"""What the flood profile prints; the flood test lets the daemon grow by 1/16 of it (measured:
6 MiB, the same as for 1 GiB: the memory is flat in the output)."""
FLOOD_RSS_KIB = 16 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


@pytest.mark.timeout(90)  # the daemon judges every byte: ~6 s of CPU, more when shared
def test_a_flood_of_output_is_cut_at_max_log_bytes_and_the_daemon_stays_small(
    daemon: Daemon,
) -> None:
    # 256 MiB through a 1 MiB log: a daemon that held even 1/16 of the output would fail
    max_log = 1 << 20
    with_profiles(daemon, max_log_bytes=max_log)
    daemon.start()
    serves_on(daemon, "warm-up")  # the daemon's own start-up allocations are done
    before = rss_kib(daemon.pid)

    daemon.submit("flood", worker="flood")
    daemon.wait_event("plan.succeeded", plan="flood", timeout=80)
    daemon.wait_event("plan.archived", plan="flood", timeout=80)  # the log is read from there

    peak = rss_kib(daemon.pid, "VmHWM")  # the most it ever held, the flood included
    assert peak - before < FLOOD_RSS_KIB, f"RSS grew from {before} KiB to a peak of {peak} KiB"
    log = daemon.state_dir / "archive" / "flood" / "workers" / "worker-P01-1.log"
    output = FLOOD_BYTES + len(b"done: Status: PASS\n")
    [truncated] = daemon.events("worker.log_truncated", plan="flood")
    assert truncated["max_log_bytes"] == max_log
    assert truncated["dropped_bytes"] == output - max_log  # every byte counted
    assert max_log < log.stat().st_size < max_log + 200
    kept = log.read_bytes()
    # the head and the tail are kept, the cut marked between them
    assert (
        f"[orchestrd: log cut at max_log_bytes={max_log}; {output - max_log} more bytes "
        "dropped here; the last ".encode()
        in kept
    )
    assert kept.endswith(b"done: Status: PASS\n")
    serves_on(daemon)


def test_a_command_that_does_not_exist_fails_to_start_gets_remediation_and_a_reason(
    daemon: Daemon,
) -> None:
    with_profiles(daemon)
    daemon.start()
    daemon.submit("missing", worker="missing")
    [failed] = daemon.wait_event("plan.failed", plan="missing")

    why = "cannot execute '/nonexistent/agent-cli': No such file or directory; is it installed"
    starts = daemon.events("worker.failed_to_start", plan="missing")
    assert [(e["attempt"], e["role"]) for e in starts] == [(1, "primary"), (2, "remediation")]
    assert all(why in e["reason"] for e in starts)
    [remediation] = daemon.events("remediation.started", plan="missing")
    assert why in remediation["reason"]
    assert failed["reason"].startswith("phase P01 failed: start: worker failed to start: ")
    assert why in failed["reason"]
    assert daemon.events("worker.started", plan="missing") == []
    daemon.wait_event("plan.archived", plan="missing")  # plan.failed comes before the move
    ledger = (daemon.state_dir / "archive" / "missing" / "worker-pids.txt").read_text()
    assert ledger.count("failed_to_start") == 2
    serves_on(daemon)


def test_a_repo_deleted_mid_plan_fails_the_plan_with_the_reason(daemon: Daemon) -> None:
    with_profiles(daemon)
    daemon.start()
    repo = daemon.repo("doomed")
    daemon.submit("doomed", repo="doomed", worker="rmrepo", phases=("P01", "P02"))
    [failed] = daemon.wait_event("plan.failed", plan="doomed")

    assert not repo.exists()
    assert failed["reason"].startswith("phase P01 failed:")
    [remediation] = daemon.wait_event("worker.failed_to_start", plan="doomed")
    assert remediation["reason"] == f"the repo {repo} does not exist (any more)"
    assert f"the repo {repo} does not exist (any more)" in failed["reason"]
    assert daemon.events("phase.started", plan="doomed", phase="P02") == []
    daemon.wait_event("plan.archived", plan="doomed")
    serves_on(daemon)


def test_a_symlink_loop_left_where_the_report_is_read_fails_the_plan_not_the_daemon(
    daemon: Daemon,
) -> None:
    with_profiles(daemon)
    daemon.write_config(
        workers={**daemon.config_data()["workers"], "loop": fault("fault_symlink_loop")}
    )
    daemon.start()
    daemon.submit("loopy", worker="loop")
    [failed] = daemon.wait_event("plan.failed", plan="loopy")
    assert "Symlink loop" in failed["reason"] or "symbolic links" in failed["reason"]
    [archived] = daemon.wait_event("plan.archived", plan="loopy")
    assert archived["path"] == str(daemon.state_dir / "archive" / "loopy")
    skipped = archived["evidence_skipped"]
    assert [s.split(":")[0] for s in skipped] == ["reports/P01-worker.md", ".completed/P01.md"]
    serves_on(daemon)
    # and a restart does not trip over it again
    assert daemon.stop() == 0
    daemon.start()
    serves_on(daemon, "after-restart")


def test_leftovers_the_state_file_does_not_know_are_found_at_restart_and_stopped(
    daemon: Daemon,
) -> None:
    with_profiles(daemon)
    daemon.write_config(
        workers={**daemon.config_data()["workers"], "escape": fault("fault_setsid")}
    )
    daemon.start()
    daemon.submit("esc", worker="escape")
    repo = daemon.repo("repo")
    worker, escaped = wait_for(lambda: (repo / "pids-P01-1.txt").exists() and pids_of(repo))
    assert os.getsid(escaped) == escaped != os.getsid(worker), "it left the worker's group"
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    # and a worker whose PID the crash kept from being saved: only its environment knows it
    workers = daemon.state_dir / "plans" / "esc" / "workers"
    unsaved = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
        env={**os.environ, "ORCHESTRD_LOG": str(workers / "worker-P01-2.log")},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    elsewhere = subprocess.Popen(  # another plan's folder: not this plan's business
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
        env={**os.environ, "ORCHESTRD_LOG": str(daemon.tmp / "workers" / "worker-P01-1.log")},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert all(alive(p) for p in (worker, escaped, unsaved.pid))
        daemon.start()
        daemon.wait_event("plan.succeeded", plan="esc")

        assert not any(alive(p) for p in (worker, escaped, unsaved.pid))
        assert unsaved.wait(5) == -signal.SIGTERM
        orphans = daemon.events("worker.orphan_stopped", plan="esc")
        recorded = [e for e in orphans if "found" not in e]
        by_env = sorted(e["pid"] for e in orphans if e.get("found") == "by its environment")
        assert [e["pid"] for e in recorded] == [worker]
        if daemon.events("daemon.started")[0]["containment"] == "cgroup":
            # the escapee is in the recorded worker's cgroup: stopped with it, exactly
            assert escaped in [p["pid"] for p in recorded[0]["processes"]]
            assert by_env == [unsaved.pid]
        else:
            assert by_env == sorted([escaped, unsaved.pid])
        assert elsewhere.poll() is None
    finally:
        for proc in (unsaved, elsewhere):
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(escaped, signal.SIGKILL)


# -- the disk --


def test_an_unwritable_log_folder_fails_the_plan_and_the_daemon_serves_on(
    daemon: Daemon,
) -> None:
    with_profiles(daemon)
    daemon.start()
    daemon.hold("first")
    daemon.submit("first", worker="held")
    daemon.wait_event("worker.started", plan="first")
    daemon.submit("blocked")  # same repo: waits for `first`, its folder made already
    daemon.wait_event("plan.waiting_repo", plan="blocked")
    workers = daemon.state_dir / "plans" / "blocked" / "workers"
    shutil.rmtree(workers)
    workers.write_text("a file where the log folder should be\n")
    daemon.release("first")

    [failed] = daemon.wait_event("plan.failed", plan="blocked")
    assert "Not a directory" in failed["reason"], failed["reason"]
    assert failed["reason"].startswith("phase P01 failed: start: worker failed to start: ")
    assert len(daemon.events("worker.failed_to_start", plan="blocked")) == 2
    assert daemon.events("plan.succeeded", plan="first")
    serves_on(daemon)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_fails_the_plan_with_the_reason_and_the_daemon_serves_on(
    daemon: Daemon,
) -> None:
    # state_dir on an 8 MiB tmpfs; the audit log elsewhere, so the test can read it
    daemon.audit_path = daemon.tmp / "audit.jsonl"
    with small_tmpfs(daemon.state_dir, "8m"):
        workers = {
            **daemon.config_data()["workers"],
            "flood": fault("fault_flood", FLOOD_BYTES=32 << 20),
        }
        daemon.write_config(
            workers=workers,
            audit={"path": str(daemon.audit_path)},
            policy={**daemon.config_data()["policy"], "max_remediations": 1},
        )
        daemon.start()
        daemon.submit("fill", worker="flood")
        [failed] = daemon.wait_event("plan.failed", plan="fill")
        # the first write that failed says so, naming its file (here the state save after the
        # worker exited: its log had filled the disk)
        assert "No space left on device" in failed["reason"], failed["reason"]
        assert str(daemon.state_dir / "plans" / "fill") in failed["reason"]
        assert daemon.events("plan.error") == [], "a full disk is no bug: no traceback"
        daemon.wait_event("plan.archived", plan="fill")

        # the operator frees space; the daemon never stopped serving
        for log in daemon.state_dir.rglob("worker-*.log"):
            log.unlink()
        serves_on(daemon)
        assert daemon.stop() == 0


@pytest.mark.anyio
async def test_worker_output_that_cannot_be_written_is_drained_and_reported(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "1m"):
        flood = [sys.executable, str(AGENTS / "fault_flood.py")]
        env = {"FLOOD_BYTES": str(8 << 20), "ORCHESTRD_REPORT": "r.md", "ORCHESTRD_PHASE_ID": "P"}
        spec = WorkerSpec(flood, env, tmp_path, disk / "worker.log")
        with pytest.raises(WorkerLogError) as raised:
            launch = open_launcher("local", None).launch
            async with launch(spec, max_log_bytes=64 << 20, grace=0.2) as worker:
                assert await worker.wait() == 0  # never blocked on a pipe nobody read
        assert worker.output_bytes == (8 << 20) + len(b"done: Status: PASS\n")
        assert str(raised.value).startswith(
            f"cannot write the log {disk / 'worker.log'}: No space left on device; "
        )
        assert "free space on that file system" in str(raised.value)


def test_atomic_write_on_a_nearly_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "1m"):
        state = disk / "state.toml"
        state.write_text("old = true\n")
        filler = os.open(disk / "fill", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(filler, b"x" * 4096)
        os.ftruncate(filler, os.fstat(filler).st_size - 8192)  # two pages left
        os.close(filler)
        new = b"new = true\n" + b"# padding\n" * 1500  # 15 KB: more than fits
        with contextlib.suppress(OSError):
            atomic_write(state, new)
        assert state.read_bytes() in (b"old = true\n", new)


# -- the audit log --


def test_the_audit_log_rotated_or_deleted_under_the_daemon_is_reopened(daemon: Daemon) -> None:
    daemon.start()
    serves_on(daemon, "before")
    rotated = daemon.audit_path.with_name("audit.jsonl.1")
    # logrotate's `create`: rename, then a new empty file with the configured mode
    os.rename(daemon.audit_path, rotated)
    fd = os.open(daemon.audit_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.close(fd)
    serves_on(daemon, "rotated")
    daemon.audit_path.unlink()  # deleted outright
    serves_on(daemon, "deleted")

    old = rotated.read_text()
    assert '"plan": "before"' in old and '"plan": "rotated"' not in old
    events = daemon.events()  # the file the daemon made again
    assert {e.get("plan") for e in events} == {"deleted"}
    assert events[0]["event"] == "plan.accepted"
    assert stat.S_IMODE(daemon.audit_path.stat().st_mode) == 0o640


LOGROTATE = shutil.which("logrotate") or next(
    (p for p in ("/usr/sbin/logrotate", "/sbin/logrotate") if os.access(p, os.X_OK)), None
)


def test_the_shipped_logrotate_conf_rotates_by_rename_and_create() -> None:
    conf = (ROOT / "config" / "logrotate.conf").read_text()
    directives = {
        line.strip().split()[0]
        for line in conf.splitlines()
        if line.strip() and not line.strip().startswith(("#", "}", "/"))
    }
    wanted = {"rotate", "compress", "delaycompress", "missingok", "notifempty", "create"}
    assert wanted <= directives
    assert "create 0640 orchestrd orchestrd" in conf
    assert "copytruncate" not in directives, "the daemon reopens by inode: rename is safe"
    assert "postrotate" not in directives, "no signal needed: the next event reopens the file"
    assert "/var/log/orchestrd/audit.jsonl" in conf


@pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed")
@pytest.mark.skipif(not IS_ROOT, reason="the conf's `su`/`create` name users: run as root")
def test_real_logrotate_rotates_the_audit_log_of_a_running_daemon(daemon: Daemon) -> None:
    assert LOGROTATE is not None
    conf = (ROOT / "config" / "logrotate.conf").read_text()
    conf = conf.replace("/var/log/orchestrd/audit.jsonl", str(daemon.audit_path))
    conf = conf.replace("orchestrd orchestrd", "root root")
    conf_path = daemon.tmp / "logrotate.conf"
    conf_path.write_text(conf)
    conf_path.chmod(0o644)
    status = daemon.tmp / "logrotate.status"

    def logrotate(*args: str) -> None:
        result = subprocess.run(
            [LOGROTATE, "-s", str(status), *args, str(conf_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr

    logrotate("-d")  # the config parses
    daemon.start()
    serves_on(daemon, "one")
    logrotate("-f")
    serves_on(daemon, "two")
    logrotate("-f")  # delaycompress: the previous rotation is compressed now
    serves_on(daemon, "three")

    names = sorted(p.name for p in daemon.state_dir.glob("audit.jsonl*"))
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2.gz"]
    assert {e.get("plan") for e in daemon.events()} == {"three"}
    assert '"plan": "two"' in (daemon.state_dir / "audit.jsonl.1").read_text()
    assert stat.S_IMODE(daemon.audit_path.stat().st_mode) == 0o640
    wait_for(lambda: daemon.proc is not None and daemon.proc.poll() is None)
