"""What the daemon checks before it serves a state_dir: who it runs as, and that nobody else
can write the folders whose files it acts on (sshd's StrictModes).
"""

from __future__ import annotations

import os
import stat

from .config import Config
from .errors import ConfigError
from .privsep import check_identities, handoff_root
from .store import Store


def check_startup(config: Config) -> None:
    """Refuse to serve an inbox others could write into, or to run as root unasked (sshd's
    StrictModes). Modes are checked, never changed: they come from tmpfiles or the operator.
    Called before anything is created or opened in state_dir; folders not made yet are
    created by the daemon itself, never writable by others."""
    if os.geteuid() == 0 and not config.allow_root:
        raise ConfigError(
            "refusing to run the daemon as root: workers would run as root too. Run it as the "
            "orchestrd user (see README, 'Install as a systemd service'), or set "
            "allow_root = true in the config"
        )
    if os.geteuid() == 0 and not config.worker_user and not config.allow_root_workers:
        raise ConfigError(
            "refusing to run the daemon as root without worker_user: a root daemon never runs "
            'a worker as root. Set worker_user = "orchestrd-worker" (systemd/orchestrd.'
            "sysusers creates it) in the config"
        )
    check_identities(config)
    store = Store(config.state_dir)
    # and the folders whose files it acts on: a request in control/ cancels or retries any
    # plan, a folder in plans/ runs
    for folder in (store.root, store.inbox, store.control, store.plans, store.archive_dir):
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"{folder} is writable by anyone (mode {stat.S_IMODE(st.st_mode):04o}): anyone "
                f"could make the daemon run programs. Fix it with: chmod o-w {folder}"
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"{folder} is owned by uid {st.st_uid}, not by the daemon's user "
                f"(uid {os.geteuid()}) or root; chown it to the daemon's user"
            )
    check_handoff_root(config)


def check_handoff_root(config: Config) -> None:
    """The hand-off folders hold each attempt's prompt: a worker (its group) that could write
    their root could swap another attempt's prompt or failed log."""
    root = handoff_root(config)
    try:
        st = root.stat()
    except FileNotFoundError:
        return  # the daemon makes it (0750) at the first worker that runs as another user
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP) or st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"handoff_dir: {root} (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) must "
            "belong to the daemon's user and be writable by nobody else: workers read their "
            f"prompts there. Fix it with: chown {os.geteuid()} {root} && chmod 2750 {root}"
        )
