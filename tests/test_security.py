"""Who may submit, dangerous workers, and secrets — against the real daemon.

- The daemon refuses to start (exit 2, a message saying the fix) on a spool others can write,
  or as root without `allow_root`, before it creates anything.
- Profiles that bypass the agent's sandbox may be configured; plans using them are rejected
  unless the operator opted in, and then every such start is logged.
- Workers get a minimal environment; secret values never reach the audit log, the state files
  that `status` reads, `status` itself, error files or the daemon's stderr — log tails and
  verify output included, even when a length limit cuts a secret in two.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_support import AGENT, Daemon

from orchestrd.audit import Redactor
from orchestrd.config import WorkerProfile
from orchestrd.prompt import BASE_ENV

AGENTS = Path(__file__).parent / "agents"
IS_ROOT = os.geteuid() == 0


def refused(d: Daemon) -> str:
    """Start the daemon, expect exit 2 without a traceback; its stderr."""
    proc = d.start(wait=False)
    assert proc.wait(15) == 2, d.stderr()
    err = d.stderr()
    assert err.startswith("orchestrd: ") and "Traceback" not in err, err
    return err


# -- who may submit --


@pytest.mark.skipif(not IS_ROOT, reason="the tests run as root in CI; this checks that case")
def test_the_daemon_refuses_to_run_as_root_without_allow_root(daemon: Daemon) -> None:
    daemon.write_config(allow_root=False)
    err = refused(daemon)
    assert "refusing to run the daemon as root: workers would run as root too" in err
    assert "set allow_root = true in the config" in err
    assert not daemon.state_dir.exists(), "nothing is created before the checks"


@pytest.mark.parametrize("folder", ["state_dir", "inbox"])
def test_the_daemon_refuses_a_spool_others_can_write(daemon: Daemon, folder: str) -> None:
    path = daemon.state_dir if folder == "state_dir" else daemon.inbox
    path.mkdir(parents=True)
    path.chmod(0o777)
    err = refused(daemon)
    assert f"{path} is writable by anyone (mode 0777)" in err
    assert f"Fix it with: chmod o-w {path}" in err
    assert not daemon.audit_path.exists(), "no audit log opened in a spool others can write"
    assert daemon.events("daemon.started") == []


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_the_daemon_refuses_a_spool_owned_by_another_user(daemon: Daemon) -> None:
    daemon.state_dir.mkdir()
    os.chown(daemon.state_dir, 65534, 65534)
    err = refused(daemon)
    assert f"{daemon.state_dir} is owned by uid 65534, not by the daemon's user" in err
    assert "chown it to the daemon's user" in err


def test_a_group_writable_setgid_inbox_is_the_intended_set_up(daemon: Daemon) -> None:
    daemon.inbox.mkdir(parents=True)
    daemon.state_dir.chmod(0o750)
    daemon.inbox.chmod(0o2770)  # what orchestrd.tmpfiles makes
    daemon.start()
    daemon.submit("ok")
    daemon.wait_event("plan.succeeded", plan="ok")
    assert stat.S_IMODE(daemon.inbox.stat().st_mode) == 0o2770, "checked, never changed"


def test_nothing_the_daemon_creates_is_writable_by_others_even_with_umask_0(
    daemon: Daemon,
) -> None:
    with open(daemon.tmp / "umask0.stderr", "wb") as err:
        daemon.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys, runpy; os.umask(0); sys.argv = sys.argv[1:]; "
                "runpy.run_module('orchestrd', run_name='__main__')",
                "orchestrd",
                "daemon",
                "--config",
                str(daemon.config_path),
            ],
            cwd=daemon.tmp,
            env=daemon.env(),
            stdin=subprocess.DEVNULL,
            stderr=err,
        )
    daemon.wait_event("daemon.started")
    for path in [daemon.state_dir, *daemon.state_dir.iterdir()]:
        assert not path.stat().st_mode & stat.S_IWOTH, f"{path} is world-writable (umask 0)"
    assert daemon.stop() == 0


# -- dangerous workers --

BYPASS = "--dangerously-bypass-approvals-and-sandbox"


def dangerous_profiles(d: Daemon) -> dict[str, Any]:
    pids = str(d.pid_dir)
    env = {"AGENT_PID_DIR": pids, "AGENT_SLEEP": "0.05"}
    return {
        **d.config_data()["workers"],
        "yolo": {"command": ["{python}", str(AGENT), BYPASS, "{prompt}"], "env": env},
        "marked": {"command": ["{python}", str(AGENT), "{prompt}"], "env": env, "dangerous": True},
    }


def test_a_dangerous_profile_is_configurable_but_plans_using_it_are_rejected(
    daemon: Daemon,
) -> None:
    daemon.write_config(workers=dangerous_profiles(daemon))
    daemon.start()
    daemon.submit("bypass", worker="yolo")
    daemon.submit("marked", worker="marked", repo="other")
    daemon.submit("safe", repo="third")

    [bypass] = daemon.wait_event("plan.rejected", file="bypass.toml")
    assert bypass["reason"].startswith(
        f"inbox/bypass.toml: worker: profile 'yolo' is dangerous ({BYPASS}"
    )
    assert "allow_dangerous_workers = true" in bypass["reason"]
    [marked] = daemon.wait_event("plan.rejected", file="marked.toml")
    assert "profile 'marked' is dangerous (dangerous = true" in marked["reason"]
    assert "allow_dangerous_workers = true" in marked["reason"]
    daemon.wait_event("plan.succeeded", plan="safe")
    assert "allow_dangerous_workers" not in daemon.stderr()
    assert daemon.events("daemon.dangerous_workers") == []
    assert daemon.events("worker.dangerous") == []


def test_allowed_dangerous_workers_are_announced_once_and_logged_at_every_start(
    daemon: Daemon,
) -> None:
    daemon.write_config(workers=dangerous_profiles(daemon), allow_dangerous_workers=True)
    daemon.start()
    daemon.submit("bypass", worker="yolo", phases=("P01", "P02"))
    daemon.submit("safe", repo="other")
    daemon.wait_plans_end(["bypass", "safe"])

    err = daemon.stderr()
    assert err.count("allow_dangerous_workers = true") == 1, err
    assert f"yolo ({BYPASS})" in err and "marked (dangerous = true)" in err
    [announced] = daemon.events("daemon.dangerous_workers")
    assert announced["profiles"] == {"yolo": [BYPASS], "marked": ["dangerous = true"]}
    dangerous = daemon.events("worker.dangerous")
    started = daemon.events("worker.started", plan="bypass")
    assert [(e["plan"], e["phase"], e["pid"]) for e in dangerous] == [
        (e["plan"], e["phase"], e["pid"]) for e in started
    ]
    assert len(dangerous) == 2 and all(e["flags"] == [BYPASS] for e in dangerous)
    assert daemon.events("plan.succeeded", plan="bypass")


@pytest.mark.parametrize(
    "flag",
    [
        "--dangerously-bypass-approvals-and-sandbox",
        "--dangerously-skip-permissions",
        "--yolo",
        "--approval-mode=yolo",
    ],
)
def test_known_sandbox_bypass_flags_make_a_profile_dangerous(flag: str) -> None:
    assert WorkerProfile(command=["agent", "exec", flag, "{prompt}"]).dangerous_flags == [flag]
    assert WorkerProfile(command=["agent", "exec", "{prompt}"]).dangerous_flags == []


@pytest.mark.parametrize(
    "args",
    [
        ["--approval-mode", "yolo"],
        ["--sandbox", "danger-full-access"],
        ["-s", "danger-full-access"],
        ["--permission-mode", "bypassPermissions"],
    ],
)
def test_two_argument_sandbox_bypasses_make_a_profile_dangerous(args: list[str]) -> None:
    assert WorkerProfile(command=["agent", *args, "{prompt}"]).dangerous_flags != []


def test_turning_dangerous_workers_off_by_reload_stops_new_dangerous_starts(
    daemon: Daemon,
) -> None:
    workers = dangerous_profiles(daemon)
    workers["yolo"]["env"]["AGENT_HOLD_DIR"] = str(daemon.hold_dir)
    daemon.write_config(workers=workers, allow_dangerous_workers=True)
    daemon.start()
    daemon.hold("bypass")
    daemon.submit("bypass", worker="yolo", phases=("P01", "P02"))
    daemon.wait_event("worker.dangerous", plan="bypass", phase="P01")
    daemon.write_config(workers=workers, allow_dangerous_workers=False)
    daemon.send(signal.SIGHUP)
    daemon.wait_event("daemon.reloaded")
    daemon.release("bypass")
    daemon.wait_plans_end(["bypass"])
    assert daemon.events("worker.started", plan="bypass", phase="P02") == []


# -- secrets --

OPENAI = "sk-test-openai-0123456789abcdefABCDEF"  # in the daemon's env only
GITHUB = "ghp_passthrough0123456789abcdefXYZ"  # passed on to workers (env_passthrough)
DB = "db-password-not-for-workers-42"
PROFILE_TOKEN = "profile-token-0123456789abcdef"  # a profile's own env
PATTERN_HIT = "hunter2-31337"  # matches the config's `redact` pattern
SECRETS = (OPENAI, GITHUB, DB, PROFILE_TOKEN, PATTERN_HIT)
# the log check quotes a log line cut at 200 characters: this puts the cut inside the token
CUT_LINE = "y" * 160 + GITHUB


def secrets_profile(**env: str) -> dict[str, Any]:
    return {
        "command": ["{python}", str(AGENTS / "fault_secrets.py"), "{prompt}"],
        "env": {"SERVICE_TOKEN": PROFILE_TOKEN, **env},
    }


def leaks(text: str) -> list[str]:
    """Secrets (or 8+ characters of one, as a cut leaves them) found in `text`."""
    found = [s for s in SECRETS if s in text]
    found += [s[:13] for s in (OPENAI, GITHUB) if s[:13] in text]
    return found + (["hunter2-"] if "hunter2-" in text else [])


def test_secrets_reach_neither_workers_nor_the_audit_log_status_or_error_files(
    daemon: Daemon,
) -> None:
    daemon.write_config(
        env_passthrough=["GITHUB_TOKEN"],
        redact=[r"hunter2-\d+"],
        workers={
            "tell": secrets_profile(SECRETS_SAY=CUT_LINE),
            "tell-and-hang": secrets_profile(SECRETS_SAY=PATTERN_HIT, SECRETS_HANG="1"),
        },
        default_worker="tell",
    )
    daemon.start(OPENAI_API_KEY=OPENAI, GITHUB_TOKEN=GITHUB, DB_PASSWORD=DB)
    # stalled: its log tail (with the secrets it printed) goes into worker.stalled
    daemon.submit("stall", worker="tell-and-hang", policy={"poll_interval": "0.1s", "max_polls": 3})
    # the log check quotes the `Error:` line, cut inside the token; verify output is quoted too
    verify = {"run": f'echo "token $GITHUB_TOKEN {PATTERN_HIT}"; exit 3', "expect": "pass"}
    data = daemon.plan_data("verify", repo="other")
    data["phases"][0].update(verify=[verify], fail_on_log_errors=True)
    daemon.drop("verify.toml", data)
    # a rejection whose reason quotes a `redact` match
    daemon.drop(
        "rejected.toml", daemon.plan_data("rejected") | {"repo": f"/nonexistent/{PATTERN_HIT}"}
    )
    daemon.wait_plans_end(["stall", "verify"])
    daemon.wait_event("plan.rejected", file="rejected.toml")

    # the worker's environment: minimal, plus passthrough and its profile's env
    facts = json.loads((daemon.repo("other") / ".agent" / "P01-1.json").read_text())
    env = facts["env"]
    assert "OPENAI_API_KEY" not in env and "DB_PASSWORD" not in env
    assert env["GITHUB_TOKEN"] == GITHUB and env["SERVICE_TOKEN"] == PROFILE_TOKEN
    allowed = {*BASE_ENV, "GITHUB_TOKEN", "SERVICE_TOKEN", "SECRETS_SAY"}
    assert {k for k in env if not k.startswith("ORCHESTRD_")} <= allowed, sorted(env)
    # the secrets really were in the output the events quote (the worker's own log keeps them)
    daemon.wait_event("plan.archived", plan="verify")  # the end event comes before the move
    log = (daemon.state_dir / "archive" / "verify" / "workers" / "worker-P01-1.log").read_text()
    assert GITHUB in log and CUT_LINE in log

    [stalled] = daemon.events("worker.stalled", plan="stall")
    assert "GITHUB_TOKEN=***" in stalled["log_tail"] and "SERVICE_TOKEN=***" in stalled["log_tail"]
    [verify_failed] = daemon.events("check.failed", plan="verify", check="verify[0]")
    assert verify_failed["output_tail"].strip() == "token *** ***"
    [log_failed] = daemon.events("check.failed", plan="verify", check="log_errors")
    assert log_failed["reason"].endswith("y***"), log_failed["reason"]
    [failed] = daemon.events("plan.failed", plan="verify")
    assert "log_errors" in failed["reason"]

    status = daemon.cli("status", "--json")  # run as a user would: without the daemon's env
    assert status.returncode == 0, status.stderr
    rows = {r["plan"]: r for r in json.loads(status.stdout)}
    assert "log_errors" in rows["verify"]["reason"]
    detail = daemon.cli("status", "verify", "--json")
    assert detail.returncode == 0, detail.stderr
    places: dict[str, str] = {
        "audit log": daemon.audit_path.read_text(),
        "daemon stderr": daemon.stderr(),
        "status --json": status.stdout,
        "status verify --json": detail.stdout,
    }
    for state in daemon.state_dir.rglob("state.toml"):
        places[str(state)] = state.read_text()
    errors = list((daemon.state_dir / "rejected").glob("*.error"))
    assert errors, "the rejection left its error file"
    for error in errors:
        places[str(error)] = error.read_text()
    assert "/nonexistent/***" in places[str(errors[0])]
    assert {where: leaks(text) for where, text in places.items() if leaks(text)} == {}


def test_redactor_hides_values_patterns_and_the_pieces_a_cut_leaves() -> None:
    redact = Redactor([GITHUB, "short"], [r"hunter2-\d+"])
    assert redact(f"a {GITHUB} b") == "a *** b"
    assert redact(f"{PATTERN_HIT}!") == "***!"
    assert redact("left alone: shor") == "left alone: shor"
    assert redact("short") == "***"  # a whole value is hidden whatever its length (>= 4)
    # a quoted line cut inside the secret, then joined with more text
    assert redact(f"line: {GITHUB[:12]}; next: ok") == "line: ***; next: ok"
    # a log tail starting inside the secret
    assert redact(f"{GITHUB[-10:]} rest") == "*** rest"
    # fewer than 8 characters of it are left alone
    assert redact(f"{GITHUB[:7]} and {GITHUB[-7:]}") == f"{GITHUB[:7]} and {GITHUB[-7:]}"
    assert redact.deep({"a": [GITHUB, {"b": (PATTERN_HIT,)}], "n": 3}) == {
        "a": ["***", {"b": ["***"]}],
        "n": 3,
    }
