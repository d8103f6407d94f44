"""sd_notify against real datagram sockets the tests bind, as systemd's notify socket would be."""

from __future__ import annotations

import os
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from orchestrd.systemd import Notifier, NotifyError, watchdog_loop

RECV_TIMEOUT = 5.0  # generous: only a broken notifier waits this long


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound notify socket in tmp_path and the NOTIFY_SOCKET value that names it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECV_TIMEOUT)
        yield sock, str(path)


def receive(sock: socket.socket) -> list[str]:
    """One datagram, split into its KEY=VALUE lines."""
    return sock.recv(4096).decode().split("\n")


def nothing_waiting(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_ready_is_sent_to_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready() is True
    assert receive(sock) == ["READY=1"]


def test_ready_is_sent_to_an_abstract_socket() -> None:
    name = f"orchestrd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert receive(sock) == ["READY=1"]


def test_from_env_reads_os_environ_by_default(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    Notifier.from_env().stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_status_is_one_line(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.status("3 running, 2 queued")
    assert receive(sock) == ["STATUS=3 running, 2 queued"]
    notifier.status("first line\nREADY=1")  # a newline must not smuggle in another field
    assert receive(sock) == ["STATUS=first line READY=1"]


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = receive(sock)
    assert reloading == "RELOADING=1"
    key, _, usec = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_stopping_and_watchdog_messages(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.stopping()
    notifier.watchdog()
    assert receive(sock) == ["STOPPING=1"]
    assert receive(sock) == ["WATCHDOG=1"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "100000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.status("idle") is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval() == 15.0
    own_pid = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(own_pid).watchdog_interval() == 15.0


def test_watchdog_meant_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "100000"}
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_unusable_watchdog_usec_means_no_watchdog(usec: str) -> None:
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": usec}
    assert Notifier.from_env(env).watchdog_interval() is None


def test_a_missing_socket_raises_notify_error(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with pytest.raises(NotifyError, match="gone"):
        notifier.ready()


def test_an_unsupported_address_raises_notify_error() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    with pytest.raises(NotifyError, match="vsock:2:1234"):
        notifier.ready()


@pytest.mark.timeout(10)
def test_a_full_socket_fails_at_once_instead_of_blocking(
    listener: tuple[socket.socket, str],
) -> None:
    _, address = listener  # never read: its queue fills up
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    with pytest.raises(NotifyError):
        for _ in range(100_000):
            notifier.status("filling the queue")


@pytest.mark.anyio
async def test_watchdog_loop_pings_at_half_the_watchdog_time(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval() == 0.05
    failures: list[NotifyError] = []
    pings = 5
    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog_loop, notifier, failures.append)
        started = time.monotonic()
        for _ in range(pings):
            assert await anyio.to_thread.run_sync(receive, sock) == ["WATCHDOG=1"]
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert failures == []
    # The first ping goes out at once, then one per interval: paced, not a busy loop.
    assert elapsed >= (pings - 1) * 0.05 * 0.9


@pytest.mark.anyio
async def test_watchdog_loop_reports_failures_and_keeps_going(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "20000"}
    failures: list[NotifyError] = []
    got_three = anyio.Event()

    def on_failure(exc: NotifyError) -> None:
        failures.append(exc)
        if len(failures) == 3:
            got_three.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog_loop, Notifier.from_env(env), on_failure)
        with anyio.fail_after(RECV_TIMEOUT):
            await got_three.wait()
        tg.cancel_scope.cancel()
    assert all("gone" in str(exc) for exc in failures)


@pytest.mark.anyio
async def test_watchdog_loop_returns_at_once_without_a_watchdog(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    failures: list[NotifyError] = []
    other_pid = str(os.getpid() + 1)
    for env in (
        {},  # not under systemd
        {"NOTIFY_SOCKET": address},  # no WatchdogSec=
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": other_pid},
    ):
        with anyio.fail_after(RECV_TIMEOUT):
            await watchdog_loop(Notifier.from_env(env), failures.append)
    assert failures == []
    assert nothing_waiting(sock)
