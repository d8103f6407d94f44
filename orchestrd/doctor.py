"""`orchestrd doctor`: what stands between this machine and a working daemon, one line per check
(ok / warn / fail) with the fix. Exit 0 only if nothing failed."""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .config import Config, WorkerProfile, load_config
from .errors import OrchestrdError
from .privsep import check_identities, separation
from .prompt import base_env
from .spool import Spool

VERSION_TIMEOUT = 15.0
MIN_FREE = 100 << 20
LOW_FREE = 1 << 30
UNIT_NAME = "orchestrd.service"
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)
SHIPPED_UNIT = Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME

# How each agent CLI finds its credentials: environment variables, or files under its HOME
# (see /work/shared/AGENTS.md and each CLI's docs).
CREDENTIALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "codex": (("OPENAI_API_KEY", "CODEX_API_KEY"), (".codex/auth.json",)),
    "claude": (
        ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
        (".claude/.credentials.json", ".claude.json"),
    ),
    "gemini": (("GEMINI_API_KEY", "GOOGLE_API_KEY"), (".gemini/oauth_creds.json",)),
    "aider": (("OPENAI_API_KEY", "ANTHROPIC_API_KEY"), ()),
}


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str  # ok, warn, fail
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<4}  {self.what}" + (f" — fix: {self.fix}" if self.fix else "")


def _program(profile: WorkerProfile) -> str:
    first = profile.command[0]
    return sys.executable if first == "{python}" else first


def check_profile(name: str, profile: WorkerProfile, config: Config) -> Iterator[Finding]:
    """Its program on PATH and answering `--version`; its credentials present (not shown)."""
    is_default = name == config.default_worker
    missing = "fail" if is_default else "warn"
    program = _program(profile)
    path = shutil.which(program)
    if path is None:
        yield Finding(
            missing,
            f"worker {name}: {program} is not on PATH",
            f"install it, or drop [workers.{name}] from the config",
        )
        return
    argv = [path, "--version"]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        yield Finding(
            missing,
            f"worker {name}: `{program} --version` did not answer ({exc})",
            f"run `{program} --version` yourself and repair the install",
        )
        return
    version = (done.stdout or done.stderr).strip().splitlines()[:1]
    if done.returncode != 0:
        yield Finding(
            missing,
            f"worker {name}: `{program} --version` exited {done.returncode}",
            f"run `{program} --version` yourself and repair the install",
        )
        return
    yield Finding("ok", f"worker {name}: {path} ({version[0] if version else 'no version'})")
    kind = Path(program).name
    if kind not in CREDENTIALS:
        return
    names, files = CREDENTIALS[kind]
    env = {**base_env(config), **profile.env}
    home = Path(env.get("HOME", os.environ.get("HOME", "~"))).expanduser()
    if found := [n for n in names if env.get(n)]:
        yield Finding("ok", f"worker {name}: {found[0]} is set (value not shown)")
    elif found_files := [f for f in files if (home / f).exists()]:
        yield Finding("ok", f"worker {name}: logged in ({home / found_files[0]})")
    else:
        yield Finding(
            missing,
            f"worker {name}: no login under {home} and none of {', '.join(names)} "
            "reaches the worker",
            f"log in as the daemon's user (`{kind} login`), or set {names[0]} and add it to "
            "env_passthrough",
        )


def check_state_dir(config: Config) -> Iterator[Finding]:
    """The modes and owners the daemon's start checks demand (it refuses otherwise)."""
    spool = Spool(config.state_dir)
    if not spool.root.is_dir():
        yield Finding(
            "warn",
            f"state_dir {spool.root} does not exist yet",
            "`orchestrd init` (or the daemon's first start) creates it",
        )
        return
    for folder in (spool.root, spool.inbox, spool.plans, spool.archive_dir):
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        owner = _user(st.st_uid)
        if mode & stat.S_IWOTH:
            yield Finding(
                "fail", f"{folder} is writable by anyone (mode {mode:04o})", f"chmod o-w {folder}"
            )
        elif st.st_uid not in (os.geteuid(), 0) and owner != "orchestrd":
            yield Finding(
                "fail",
                f"{folder} is owned by {owner}, not by the daemon's user",
                f"chown orchestrd {folder} (or the user the daemon runs as)",
            )
        else:
            yield Finding("ok", f"{folder}: mode {mode:04o}, owner {owner}")
    free = shutil.disk_usage(spool.root).free
    level = "fail" if free < MIN_FREE else "warn" if free < LOW_FREE else "ok"
    yield Finding(
        level,
        f"free disk under {spool.root}: {free >> 20} MiB",
        "" if level == "ok" else "free some space: workers' logs and state live here",
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _last_event(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 65536))
            lines = f.read().splitlines()
    except OSError:
        return "no audit log"
    for raw in reversed(lines):
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        return f"last event {data.get('event')} at {data.get('ts')}"
    return "no event yet"


def check_daemon(config: Config) -> Iterator[Finding]:
    spool = Spool(config.state_dir)
    last = _last_event(config.audit_path)
    if spool.daemon_running():
        try:
            pid = spool.lock_path.read_text().strip()
        except OSError:
            pid = "?"
        yield Finding("ok", f"daemon running (pid {pid}, lock {spool.lock_path}); {last}")
    else:
        yield Finding(
            "warn",
            f"no daemon serves {config.state_dir}; {last}",
            "`sudo systemctl start orchestrd`, or `orchestrd daemon` for a local one",
        )


def check_unit() -> Iterator[Finding]:
    installed = [d / UNIT_NAME for d in UNIT_DIRS if (d / UNIT_NAME).exists()]
    if not installed:
        yield Finding(
            "warn",
            "systemd unit not installed (fine for local use)",
            f"sudo install -m 0644 systemd/{UNIT_NAME} /etc/systemd/system/",
        )
        return
    unit = installed[0]
    if SHIPPED_UNIT.exists() and not filecmp.cmp(unit, SHIPPED_UNIT, shallow=False):
        yield Finding(
            "warn",
            f"{unit} differs from the shipped {SHIPPED_UNIT}",
            "diff them; put local changes in a drop-in (systemctl edit orchestrd)",
        )
    else:
        yield Finding("ok", f"systemd unit {unit}")


def check_privileges(config: Config) -> Iterator[Finding]:
    """Whether workers run as a user of their own (issue #22): without it a worker can rewrite
    the daemon's state and signal it."""
    try:
        check_identities(config)
    except OrchestrdError as exc:
        yield Finding("fail", f"worker user: {exc}", "fix worker_user / worker_group")
        return
    on, why = separation(config)
    if on:
        yield Finding("ok", f"privilege separation: {why}")
    else:
        yield Finding(
            "warn",
            f"privilege separation off: {why}",
            "set worker_user (systemd/orchestrd.sysusers creates orchestrd-worker) "
            "and run the daemon as root or with CAP_SETUID CAP_SETGID CAP_KILL",
        )


def run_checks(config_arg: str | None) -> list[Finding]:
    try:
        config, path = load_config(config_arg)
    except OrchestrdError as exc:
        return [Finding("fail", f"config: {exc}", "correct the key it names")]
    findings = [Finding("ok", f"config {path} validates")]
    for name, profile in config.workers.items():
        findings += check_profile(name, profile, config)
    if shutil.which("git"):
        findings.append(Finding("ok", f"git: {shutil.which('git')}"))
    else:
        findings.append(
            Finding("warn", "git not found: no worker.changes, no git rules", "install git")
        )
    findings += check_state_dir(config)
    findings += check_privileges(config)
    findings += check_unit()
    findings += check_daemon(config)
    return findings


def _cmd_doctor(args: argparse.Namespace) -> int:
    findings = run_checks(args.config)
    for f in findings:
        print(f.line())
    failed = sum(f.level == "fail" for f in findings)
    return 1 if failed else 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `doctor [--config FILE]`."""
    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check config, agents, state_dir, unit and daemon; exit 1 if any fail",
    )
    p.set_defaults(func=_cmd_doctor)
