"""sd_notify: telling systemd we are READY, RELOADING, STOPPING, alive (WATCHDOG) and our STATUS.

The protocol is one datagram of newline-separated `KEY=VALUE` lines to the AF_UNIX socket named
by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`). Without that
variable every call is a no-op, so the daemon runs the same in a terminal and under systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio

from .errors import OrchestrdError


class NotifyError(OrchestrdError):
    """A notification could not be delivered; the message names the socket and the OS error.

    Never fatal: the caller logs it as `daemon.notify_failed` and carries on.
    """


@dataclass(frozen=True)
class Notifier:
    """Sends sd_notify messages to one socket, read once from the environment at start-up.

    `$NOTIFY_SOCKET` is left in `os.environ` (removing it behind the caller's back would
    surprise any other code that looks), and it does not reach workers: the runner gives them a
    minimal environment (`prompt.BASE_ENV` + the profile's `env` + `env_passthrough`), so never
    name NOTIFY_SOCKET or WATCHDOG_* in `env_passthrough`. The unit's `NotifyAccess=main` makes
    systemd ignore any other process that tries anyway.
    """

    address: str | None
    """`$NOTIFY_SOCKET` as given (`/run/…` or `@name`), or None: notifications are off."""
    watchdog_usec: int | None = None
    """`$WATCHDOG_USEC`: systemd's `WatchdogSec=` in microseconds, if it set one."""
    watchdog_pid: int | None = None
    """`$WATCHDOG_PID`: the process the watchdog is meant for, if systemd said."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (default: `os.environ`)."""
        env = os.environ if environ is None else environ
        return cls(
            address=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=VALUE`) as one datagram, without ever blocking.

        Returns True if sent, False if notifications are off. Raises NotifyError if the
        socket is missing, full (EAGAIN: we do not wait for room) or the address is unusable.
        """
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            target = _socket_address(self.address)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Called from the event loop: a full receive queue must fail now, not stall it.
                sock.setblocking(False)
                sock.sendto(message, target)
        except (OSError, ValueError) as exc:
            raise NotifyError(f"sd_notify to NOTIFY_SOCKET={self.address!r} failed: {exc}") from exc
        return True

    def ready(self) -> bool:
        """READY=1: start-up (recovery included) is done; also ends a reload."""
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as systemd (Type=notify-reload) expects.

        Send `ready()` once the new config is in force, or refused; systemd waits for it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun (workers are being stopped)."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=…: one line for `systemctl status` (newlines would end the field early)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """WATCHDOG=1: we are alive; systemd restarts us if these stop for `WatchdogSec=`."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of `WATCHDOG_USEC`), or None: no watchdog.

        None also when `WATCHDOG_PID` names another process (the variable was inherited,
        not meant for us), or when notifications are off.
        """
        if self.address is None or self.watchdog_usec is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1_000_000


async def watchdog_loop(notifier: Notifier, on_failure: Callable[[NotifyError], object]) -> None:
    """Ping WATCHDOG=1 every `notifier.watchdog_interval()` until cancelled; start it in the
    daemon's task group. Returns at once if there is no watchdog.

    The pings come from the event loop itself, never a thread, so a blocked loop stops them and
    systemd restarts the daemon: that is the point. A failed ping goes to `on_failure` (log it
    as `daemon.notify_failed`) and the loop goes on; a missed ping or two is not fatal.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        try:
            notifier.watchdog()
        except NotifyError as exc:
            on_failure(exc)
        await anyio.sleep(interval)


def _socket_address(address: str) -> str:
    if address.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte and has no file.
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    raise ValueError("not an absolute path or an @abstract name (other kinds are not supported)")


def _positive_int(value: str | None) -> int | None:
    """systemd's numbers from the environment; anything unparsable counts as unset."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None
