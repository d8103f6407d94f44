"""`orchestrd init` and `orchestrd doctor`: a config and spool written for a folder, then checked
line by line (ok/warn/fail with the fix) against it and against a real running daemon."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from conftest import run_cli
from daemon_support import Daemon


def _lines(out: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"ok": [], "warn": [], "fail": []}
    for line in out.splitlines():
        level, _, what = line.partition("  ")
        found[level.strip()].append(what.strip())
    return found


def test_init_writes_a_valid_config_and_spool_that_doctor_accepts(tmp_path: Path) -> None:
    home = tmp_path / "setup"
    done = run_cli("init", home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = home / "orchestrd.toml"
    data = tomllib.loads(config.read_text())
    assert data["state_dir"] == str(home / ".orchestrd")
    assert data["allowed_repo_roots"] == [str(home)]
    assert config.read_text().startswith("# Written by `orchestrd init")  # commented
    for name in ("inbox", "plans", "rejected", "archive", "control"):
        mode = (home / ".orchestrd" / name).stat().st_mode
        assert not mode & 0o002, name  # the daemon refuses world-writable spools
    assert f"orchestrd doctor --config {config}" in done.stdout  # the next commands

    again = run_cli("init", home, cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr

    doctor = run_cli(
        "doctor", "--config", config, cwd=tmp_path, env_extra={"PATH": "/usr/bin:/bin"}
    )
    assert doctor.returncode == 0, doctor.stdout
    found = _lines(doctor.stdout)
    assert f"config {config} validates" in found["ok"]
    assert any(line.startswith("worker demo: ") for line in found["ok"])
    assert any("worker codex: codex is not on PATH" in w for w in found["warn"])
    assert any("no daemon serves" in w for w in found["warn"])
    # a local config runs workers as whoever runs orchestrd: doctor says so
    assert any(w.startswith("privilege separation off: ") for w in found["warn"])


def test_init_system_fills_in_repo_roots_and_the_agent_clis_on_path(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "claude"
    fake.write_text("#!/bin/sh\necho '2.0.1 (Claude Code)'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    config = tmp_path / "etc" / "orchestrd.toml"
    done = run_cli(
        "init",
        "--system",
        "--config",
        config,
        "--state-dir",
        tmp_path / "state",
        "--repo-root",
        "/srv/a",
        "--repo-root",
        "/srv/b",
        cwd=tmp_path,
        env_extra=env,
    )
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(config.read_text())
    assert data["allowed_repo_roots"] == ["/srv/a", "/srv/b"]
    assert data["default_worker"] == "claude" and "codex" not in data["workers"]
    assert data["allow_dangerous_workers"] is True
    assert (tmp_path / "state" / "inbox").stat().st_mode & 0o7777 == 0o2770

    doctor = run_cli("doctor", "--config", config, cwd=tmp_path, env_extra=env)
    found = _lines(doctor.stdout)
    assert any("worker claude: " in o and "2.0.1 (Claude Code)" in o for o in found["ok"])
    # the default worker has no login and no API key: that fails, with the fix
    (cred,) = [f for f in found["fail"] if "worker claude: no login" in f]
    assert "ANTHROPIC_API_KEY" in cred and "claude login" in cred
    assert doctor.returncode == 1

    secret = "sk-ant-doctor-must-not-print-this"
    with_key = run_cli(
        "doctor", "--config", config, cwd=tmp_path, env_extra={**env, "ANTHROPIC_API_KEY": secret}
    )
    assert secret not in with_key.stdout
    assert "worker claude: no login" in with_key.stdout  # not passed through to workers yet
    config.write_text(
        config.read_text().replace(
            "env_passthrough = []", 'env_passthrough = ["ANTHROPIC_API_KEY"]'
        )
    )
    passed = run_cli(
        "doctor", "--config", config, cwd=tmp_path, env_extra={**env, "ANTHROPIC_API_KEY": secret}
    )
    assert "ok    worker claude: ANTHROPIC_API_KEY is set (value not shown)" in passed.stdout
    assert secret not in passed.stdout and passed.returncode == 0, passed.stdout


def test_doctor_sees_the_running_daemon_and_fails_on_a_world_writable_spool(
    daemon: Daemon,
) -> None:
    daemon.start()
    out = daemon.cli("doctor")
    found = _lines(out.stdout)
    (running,) = [o for o in found["ok"] if o.startswith("daemon running")]
    assert f"pid {daemon.pid}" in running and "last event daemon.started" in running
    assert out.returncode == 0, out.stdout

    os.chmod(daemon.inbox, 0o777)
    try:
        out = daemon.cli("doctor")
    finally:
        os.chmod(daemon.inbox, 0o770)
    assert out.returncode == 1
    assert (
        f"fail  {daemon.inbox} is writable by anyone (mode 0777) — fix: chmod o-w "
        f"{daemon.inbox}" in out.stdout
    )


def test_doctor_fails_on_an_invalid_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('state_dir = "x"\nmax_workers = "many"\n')
    out = run_cli("doctor", "--config", config, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout.startswith("fail  config: ") and "max_workers" in out.stdout
