"""`orchestrd init`: a commented config (the local default for a folder, or the system one with
the repo roots and the agent CLIs found on PATH), the spool folders with the modes the daemon's
start checks demand, and the next commands to type."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
from importlib import resources
from pathlib import Path

from .config import config_from_dict, parse_toml_bytes
from .errors import ConfigError, OrchestrdError
from .spool import Spool

SYSTEM_CONFIG = Path("/etc/orchestrd/orchestrd.toml")
SYSTEM_STATE = Path("/var/lib/orchestrd")
SERVICE_USER = "orchestrd"

# Agent CLIs a system config gets a profile for when found on PATH (the commands of
# config/orchestrd.toml; see /README "Worker profiles").
AGENT_PROFILES = {
    "codex": '["codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "{prompt}"]',
    "claude": '["claude", "-p", "{prompt}", "--dangerously-skip-permissions"]',
    "gemini": '["gemini", "-p", "{prompt}", "--yolo"]',
    "aider": '["aider", "--yes-always", "--message", "{prompt}"]',
}

_SYSTEM_TEMPLATE = """\
# orchestrd system config, written by `orchestrd init --system`. Every key, with what it does:
# config/orchestrd.toml in the source, and the README's "Configuration reference".
state_dir = "{state_dir}"
# The agent CLI new plans use unless they name a `worker`.
default_worker = "{default_worker}"
max_workers = 4
# Plans may only run in repos under these folders (add each to the unit's ReadWritePaths too).
allowed_repo_roots = [{roots}]
# Environment variables handed to workers (API keys; their values are redacted in the log).
env_passthrough = []
# The profiles below bypass the agents' own sandboxes; the service's sandbox is the fence.
allow_dangerous_workers = {dangerous}

[audit]
path = "/var/log/orchestrd/audit.jsonl"

[policy]
poll_interval = "5m"
max_polls = 6
stop_grace = "10s"
max_remediations = 2

{profiles}
[workers.demo]
# The bundled scripted stand-in for an agent: try a plan without one.
command = ["{{python}}", "-m", "orchestrd.demo_agent", "{{prompt_file}}"]
"""


def local_config_text(folder: Path) -> str:
    """The bundled local default, its state and repo root pinned to `folder`."""
    text = resources.files("orchestrd").joinpath("local.toml").read_text(encoding="utf-8")
    text = text.replace('state_dir = ".orchestrd"', f'state_dir = "{folder / ".orchestrd"}"')
    text = text.replace('allowed_repo_roots = ["."]', f'allowed_repo_roots = ["{folder}"]')
    header = f"# Written by `orchestrd init {folder}`; state and repos under {folder}.\n"
    return header + text


def system_config_text(roots: list[str], state_dir: Path = SYSTEM_STATE) -> str:
    found = [name for name in AGENT_PROFILES if shutil.which(name)]
    profiles = "".join(f"[workers.{name}]\ncommand = {AGENT_PROFILES[name]}\n\n" for name in found)
    return _SYSTEM_TEMPLATE.format(
        state_dir=state_dir,
        default_worker=found[0] if found else "demo",
        roots=", ".join(f'"{r}"' for r in roots),
        dangerous="true" if set(found) - {"aider"} else "false",
        profiles=profiles or "# No agent CLI (codex, claude, gemini, aider) was found on PATH.\n",
    )


def service_user() -> tuple[int, int] | None:
    """The `orchestrd` user's uid and gid when it exists and we may give it files (root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def make_spool(state_dir: Path, system: bool) -> list[str]:
    """The folders the daemon serves, with the modes its start checks accept (the system
    inbox setgid and group-writable for submitters, as systemd/orchestrd.tmpfiles makes it),
    owned by the service user on a system install when it exists."""
    spool = Spool(state_dir)
    spool.ensure()
    owner = service_user() if system else None
    made = []
    for folder, mode in (
        (spool.root, 0o750),
        (spool.inbox, 0o2770 if system else 0o700),
        (spool.plans, 0o750),
        (spool.rejected, 0o750),
        (spool.archive_dir, 0o750),
        (spool.control, 0o770),
    ):
        if owner is not None:
            os.chown(folder, *owner)
        os.chmod(folder, mode)
        st = folder.stat()
        made.append(f"{folder} {stat.filemode(st.st_mode)} uid {st.st_uid}")
    return made


def _write_new(path: Path, text: str, system: bool = False) -> None:
    if path.exists():
        raise OrchestrdError(
            f"{path} exists already; move it away or edit it (`orchestrd "
            f"doctor --config {path}` checks it)"
        )
    # the config must validate before it is written: a template bug is ours, not the user's
    config_from_dict(parse_toml_bytes(path, text.encode(), ConfigError), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o640)
    if system and (owner := service_user()) is not None:
        os.chown(path, 0, owner[1])  # root:orchestrd 0640: the daemon reads, cannot change it


def _cmd_init(args: argparse.Namespace) -> int:
    if args.system:
        path = Path(args.config) if args.config else SYSTEM_CONFIG
        roots = args.repo_root or ["/srv/repos"]
        text = system_config_text(roots, Path(args.state_dir) if args.state_dir else SYSTEM_STATE)
        _write_new(path, text, system=True)
        state_dir = Path(args.state_dir) if args.state_dir else SYSTEM_STATE
        made = make_spool(state_dir, system=True)
        steps = [
            "sudo install -m 0644 systemd/orchestrd.sysusers /usr/lib/sysusers.d/orchestrd.conf"
            " && sudo systemd-sysusers",
            "sudo install -m 0644 systemd/orchestrd.tmpfiles /usr/lib/tmpfiles.d/orchestrd.conf"
            " && sudo systemd-tmpfiles --create /usr/lib/tmpfiles.d/orchestrd.conf",
            "sudo install -m 0644 systemd/orchestrd.service /etc/systemd/system/ && "
            "sudo systemctl daemon-reload && sudo systemctl enable --now orchestrd",
            f"orchestrd doctor --config {path}",
            f"orchestrd submit config/examples/demo.toml --config {path}",
        ]
    else:
        folder = Path(args.dir).resolve()
        path = Path(args.config) if args.config else folder / "orchestrd.toml"
        _write_new(path, local_config_text(folder))
        made = make_spool(folder / ".orchestrd", system=False)
        steps = [
            f"orchestrd doctor --config {path}",
            f"orchestrd daemon --config {path} &",
            f"orchestrd submit PLAN.toml --config {path}   (e.g. config/examples/demo.toml)",
            f"orchestrd tail -f --config {path}",
        ]
    print(f"wrote {path}")
    print("spool folders:\n  " + "\n  ".join(made))
    print("next:\n  " + "\n  ".join(steps))
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `init [--system | DIR]` (--config FILE: where the config goes)."""
    p = sub.add_parser(
        "init",
        parents=[common],
        help="write a commented config and the spool folders; print next steps",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--system", action="store_true", help=f"the system install: {SYSTEM_CONFIG}, {SYSTEM_STATE}"
    )
    where.add_argument(
        "dir",
        nargs="?",
        default=".",
        metavar="DIR",
        help="a local setup: DIR/orchestrd.toml, state in DIR/.orchestrd",
    )
    p.add_argument(
        "--repo-root",
        action="append",
        metavar="DIR",
        help="--system: a folder plans' repos must be under (repeatable)",
    )
    p.add_argument("--state-dir", metavar="DIR", help=f"--system: instead of {SYSTEM_STATE}")
    p.set_defaults(func=_cmd_init)
