"""`orchestrd logs`: a real daemon's worker logs and verify outputs by plan and phase, in plans/
or archive/, and `-f` following a running worker until it ends."""

from __future__ import annotations

import subprocess
import sys

from daemon_support import Daemon


def test_logs_prints_the_latest_attempt_or_a_named_one_and_verify_output(daemon: Daemon) -> None:
    daemon.start()
    data = daemon.plan_data("L", phases=("P01", "P02"))
    data["phases"][1]["verify"] = [{"run": "echo verified-output-P02", "expect": "pass"}]
    daemon.drop("L.toml", data)
    daemon.wait_plans_end(["L"])
    daemon.wait_event("plan.archived", plan="L")

    last = daemon.cli("logs", "L")  # the plan ended: its last phase
    assert last.returncode == 0, last.stderr
    assert "plan L, phase P02, attempt 1" in last.stdout
    first = daemon.cli("logs", "L", "P01", "--attempt", "1")
    assert "plan L, phase P01, attempt 1" in first.stdout
    verify = daemon.cli("logs", "L", "P02", "--verify", "0")
    assert "verified-output-P02" in verify.stdout

    missing = daemon.cli("logs", "L", "P01", "--attempt", "7")
    assert missing.returncode == 2 and "has attempts 1, not 7" in missing.stderr
    unknown = daemon.cli("logs", "nope")
    assert unknown.returncode == 2 and "plan nope: not found" in unknown.stderr


def test_logs_follow_prints_a_running_workers_output_and_ends_with_it(daemon: Daemon) -> None:
    daemon.start()
    daemon.hold("F")
    daemon.submit("F", worker="held")
    daemon.agent_pid("F")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrd", "logs", "F", "-f", "--config", str(daemon.config_path)],
        cwd=daemon.tmp,
        env=daemon.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "plan F, phase P01, attempt 1" in proc.stdout.readline()
        assert proc.poll() is None  # still following the held worker
        daemon.release("F")
        out, _ = proc.communicate(timeout=15)  # ends on its own when the worker ends
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    daemon.wait_plans_end(["F"])
