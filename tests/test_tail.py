"""`orchestrd tail`: the real daemon's audit log filtered, followed across a logrotate-style
rotation (rename + a new file, and copytruncate) without a lost, doubled or half line."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon_support import Daemon

from orchestrd.tail import Filter, LineFollower, scan


def test_tail_filters_a_real_daemons_log_by_plan_phase_event_and_since(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("A", phases=("P01", "P02"))
    daemon.submit("B", repo="other")
    daemon.wait_plans_end(["A", "B"])

    out = daemon.cli("tail", "--plan", "A", "--json")
    assert out.returncode == 0, out.stderr
    # --json prints the matching lines unchanged
    raw = daemon.audit_path.read_text().splitlines()
    assert out.stdout.splitlines() == [ln for ln in raw if json.loads(ln).get("plan") == "A"]

    out = daemon.cli("tail", "--plan", "A", "--phase", "P02", "--event", "check.*", "--json")
    events = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert events and all(
        e["plan"] == "A" and e["phase"] == "P02" and e["event"].startswith("check.") for e in events
    )

    later = daemon.cli("tail", "--since", "now", "--json")
    assert later.returncode == 0 and later.stdout == ""  # nothing happened after now
    everything = daemon.cli("tail", "--since", "1h", "--json")
    assert everything.stdout.splitlines() == raw

    human = daemon.cli("tail", "--plan", "B", "--event", "plan.succeeded")
    (line,) = human.stdout.splitlines()
    assert "plan.succeeded" in line and "plan=B" in line
    assert "\033[" not in line  # no colour when stdout is not a terminal


def _follow(daemon: Daemon) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrd",
            "tail",
            "-f",
            "--json",
            "--event",
            "plan.*",
            "--config",
            str(daemon.config_path),
        ],
        cwd=daemon.tmp,
        env=daemon.env(),
        stdout=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background without job control (a
        # CI step, `make test &`) ignores SIGINT, and a python started so keeps ignoring it
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    return [json.loads(line) for line in out.splitlines()]  # every line whole JSON


def test_tail_follows_across_rename_rotation_and_copytruncate(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("R1")
    daemon.wait_plans_end(["R1"])
    proc = _follow(daemon)
    seen: list[dict[str, object]] = []
    try:
        assert proc.stdout is not None
        # the follower has read what was there (R1's end is its last plan.* line) before the
        # first rotation: under load it may take longer than any fixed sleep to start
        while not seen or seen[-1].get("event") != "plan.archived":
            seen.append(json.loads(proc.stdout.readline()))
        # logrotate's default: rename, the writer opens a new file at its next event
        os.rename(daemon.audit_path, daemon.audit_path.with_suffix(".jsonl.1"))
        daemon.submit("R2", repo="r2")
        daemon.wait_plans_end(["R2"])
        time.sleep(0.5)
        # copytruncate: the same file emptied in place
        os.truncate(daemon.audit_path, 0)
        daemon.submit("R3", repo="r3")
        daemon.wait_plans_end(["R3"])
        time.sleep(0.6)
    finally:
        events = seen + _stop(proc)
    ends = [(e["plan"], e["event"]) for e in events if e["event"] == "plan.succeeded"]
    # what was there, then what came after each rotation: each plan's end exactly once
    assert ends == [("R1", "plan.succeeded"), ("R2", "plan.succeeded"), ("R3", "plan.succeeded")]
    assert len([e for e in events if e["event"] == "plan.accepted"]) == 3


def test_follower_never_returns_half_a_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    follower = LineFollower(path, offset=0)
    assert follower.read() == [b'{"a": 1}']
    with open(path, "ab") as f:
        f.write(b'{"b": ')
        f.flush()
        assert follower.read() == []
        f.write(b'2}\n{"c"')
        f.flush()
        assert follower.read() == [b'{"b": 2}']
    os.rename(path, tmp_path / "log.jsonl.1")  # the old file ends mid-line: still whole
    path.write_bytes(b'{"d": 4}\n')
    assert follower.read() == [b'{"c"', b'{"d": 4}']
    follower.close()


def test_since_on_a_large_log_reads_only_its_end(tmp_path: Path) -> None:
    """A 60 MB log: --since, --plan and --event answer without parsing every line."""
    log = tmp_path / "audit.jsonl"
    pad = "x" * 200
    with open(log, "w") as f:
        for hour in range(24):
            rows = [
                json.dumps(
                    {
                        "ts": f"2026-01-01T{hour:02d}:{m:02d}:{s:02d}.000000+00:00",
                        "event": "worker.poll",
                        "plan": f"P{(m * 60 + s) % 97}",
                        "pad": pad,
                    }
                )
                for m in range(60)
                for s in range(60)
            ]
            f.write("\n".join(rows) + "\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\ndefault_worker = "w"\n[workers.w]\ncommand = ["true"]\n'
    )
    cmd = [sys.executable, "-m", "orchestrd", "tail", "--config", str(config), "--json"]
    t0 = time.monotonic()
    out = subprocess.run(
        [*cmd, "--since", "2026-01-01T23:59:00+00:00"], capture_output=True, text=True, check=True
    )
    assert len(out.stdout.splitlines()) == 60
    out = subprocess.run([*cmd, "--plan", "P5"], capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) == 24 * (3600 // 97 + (1 if 5 < 3600 % 97 else 0))
    out = subprocess.run([*cmd, "--event", "plan.*"], capture_output=True, text=True, check=True)
    assert out.stdout == ""
    assert time.monotonic() - t0 < 6


def test_tail_on_a_terminal_colours_events_by_outcome(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    rows = [
        ("phase.passed", "P01"),
        ("check.failed", "P02"),
        ("check.warning", "P02"),
        ("phase.started", "P03"),
    ]
    log.write_text(
        "".join(
            json.dumps(
                {
                    "ts": f"2026-01-01T00:00:0{i}.000000+00:00",
                    "event": name,
                    "plan": "T",
                    "phase": phase,
                }
            )
            + "\n"
            for i, (name, phase) in enumerate(rows)
        )
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\ndefault_worker = "w"\n[workers.w]\ncommand = ["true"]\n'
    )
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrd", "tail", "--config", str(config)], stdout=slave, env=env
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=10) == 0
    text = out.decode()
    assert "\033[32mphase.passed\033[0m" in text  # green
    assert "\033[31mcheck.failed\033[0m" in text  # red
    assert "\033[33mcheck.warning\033[0m" in text  # yellow
    assert "phase.started " in text and "plan=T phase=P03" in text


def test_a_rotation_between_the_scan_and_the_follow_loses_no_line(tmp_path: Path) -> None:
    """`tail -f` goes on in the file its scan read: the log renamed away and a new one
    written before the follower's first read (a slow start under load) is read from its start."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event": "plan.archived"}\n')
    lines, offset = scan(path, Filter(None, None, None, None), keep=True)
    assert lines == [b'{"event": "plan.archived"}']
    os.rename(path, tmp_path / "audit.jsonl.1")
    path.write_bytes(b'{"event": "plan.accepted"}\n')
    follower = LineFollower.after_scan(path, offset)
    assert follower.read() == [b'{"event": "plan.accepted"}']
    follower.close()
