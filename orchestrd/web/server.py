"""Serving the status page from inside the daemon: the listening socket (a unix socket, mode
0660, or a TCP address), uvicorn's server driven step by step in the daemon's task group, and a
prompt stop when that group is cancelled. uvicorn never touches signals: the daemon owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import os
import socket
import stat
from pathlib import Path

import anyio
import anyio.abc
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import HttpSettings, is_loopback, parse_listen
from ..errors import ConfigError
from .app import DaemonView, Web, build_app
from .data import AuditIndex, PlanIndex

SHUTDOWN_GRACE = 1.0
"""Open connections get this long to finish when the daemon stops; then they are dropped."""


@dataclasses.dataclass
class Listener:
    """The status page's listening socket, bound at start-up before anything runs."""

    settings: HttpSettings
    sock: socket.socket
    url: str

    def close(self) -> None:
        """Close the socket and remove a unix socket's file; again is harmless (a daemon
        stopped during start-up closes a listener that never served)."""
        self.sock.close()
        host, path = parse_listen(self.settings.listen)
        if host == "unix":
            with contextlib.suppress(OSError):
                os.unlink(str(path))

    @classmethod
    def bind(cls, settings: HttpSettings, source: object) -> Listener:
        """ConfigError naming the key when `listen` cannot be had (a port in use)."""
        host, port = parse_listen(settings.listen)
        try:
            if host == "unix":
                sock = _bind_unix(Path(str(port)), settings.socket_group)
                return cls(settings, sock, f"unix:{port}")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(port)))
                sock.listen(128)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise ConfigError(
                f"{source}: http.listen = {settings.listen!r} cannot be used: "
                f"{exc.strerror or exc}; pick a free port or another socket path"
            ) from None
        shown = f"[{host}]" if ":" in host else host
        return cls(settings, sock, f"http://{shown}:{sock.getsockname()[1]}/")

    async def serve(
        self,
        daemon: DaemonView,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the status page until cancelled; `task_status` gets the URL once listening."""
        await serve_http(daemon, self, task_status)


def _bind_unix(path: Path, group: str | None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        # the daemon holds state_dir's lock, so a socket left here is a dead daemon's
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o117)  # never a moment when others could connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        if group is not None:
            with contextlib.suppress(KeyError):  # no such group here: the daemon's own group
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class _H11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head: a client that
    connects, or sends half a request, and then waits is dropped after timeout_keep_alive
    instead of holding one of max_connections for ever (uvicorn times out only idle
    keep-alive connections, and any byte received cancels that)."""

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_late)

    def _head_late(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request under way
            self.transport.close()


async def serve_http(
    daemon: DaemonView, listener: Listener, task_status: anyio.abc.TaskStatus[str]
) -> None:
    settings, sock, url = listener.settings, listener.sock, listener.url
    host, _ = parse_listen(settings.listen)
    # the daemon's redactor as it is now: a reload may replace it
    web = Web(
        daemon,
        lambda text: daemon.audit.redactor(text),
        PlanIndex(daemon.spool),
        AuditIndex(daemon.config.audit_path),
    )
    config = uvicorn.Config(
        build_app(web, loopback=host != "unix" and is_loopback(host)),
        http=_H11,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=max(1, round(settings.timeout_keep_alive)),
        timeout_graceful_shutdown=max(1, round(SHUTDOWN_GRACE)),
    )
    config.load()
    # startup() and shutdown() are called here, never serve(): that one would install signal
    # handlers of its own over the daemon's and poll should_exit ten times a second
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
        daemon.log.info("http.listening", url=url, token=settings.token is not None)
        task_status.started(url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(web.follow_audit)
            # the first look at 1,000 state files takes a while: not in the first request
            tg.start_soon(anyio.to_thread.run_sync, web.plans.rows)
            tg.start_soon(_tick, server)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE + 0.5):
            web.stopping.set()  # open event and log streams end their responses
            server.force_exit = True  # do not wait on keep-alive connections
            if server.started:
                await server.shutdown(sockets=[sock])
        listener.close()


async def _tick(server: uvicorn.Server) -> None:
    """uvicorn's once-a-second housekeeping (the Date header), which serve() would do."""
    while True:
        await server.on_tick(0)
        await anyio.sleep(1)
