"""`orchestrd run` on a terminal (a real pty): a live view updated in place (phase n/N, attempt,
polls, the last check); event lines instead with --plain or when stdout is not a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, make_config, make_plan, phase


def run_on_pty(tmp_path: Path, *extra: str) -> tuple[str, str]:
    """`orchestrd run` with a pty as stdout; (what the terminal got, stderr)."""
    config = make_config(tmp_path)
    make_plan(tmp_path, [phase("P01", kind="stub"), phase("P02")])
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRD_CONFIG", "NO_COLOR")}
    env.update(PYTHONPATH=str(REPO_ROOT), TERM="xterm-256color", COLUMNS="100", LINES="30")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrd", "run", "plan.toml", "--config", str(config), *extra],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, raw_err = proc.communicate(timeout=30)
    err = raw_err.decode()
    assert proc.returncode == 0, err
    return b"".join(chunks).decode(errors="replace"), err


def test_run_on_a_terminal_shows_a_live_view_updated_in_place(tmp_path: Path) -> None:
    screen, err = run_on_pty(tmp_path)
    assert "\x1b[1A" in screen  # the cursor goes back up: the view is redrawn in place
    assert "1/2 P01 (stub)" in screen and "2/2 P02 (other)" in screen
    assert "1 primary" in screen
    assert "last check" in screen and "verify" not in err
    assert "phase.passed\x1b[0m P01" in screen and "phase.passed\x1b[0m P02" in screen
    assert "plan.succeeded" in screen
    assert "phase.started" not in err  # no event lines besides the view


def test_plain_on_a_terminal_and_any_run_into_a_pipe_print_event_lines(tmp_path: Path) -> None:
    screen, err = run_on_pty(tmp_path, "--plain")
    assert "\x1b[1A" not in screen
    assert "phase.started" in err and "plan.succeeded" in err
    (tmp_path / "state").rename(tmp_path / "state-1")
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrd",
            "run",
            "plan.toml",
            "--config",
            str(tmp_path / "orchestrd.toml"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert "phase.passed" in piped.stderr and "\x1b[" not in piped.stdout
