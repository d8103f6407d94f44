"""Talking to the daemon's status page in tests: its URL from the audit log, plain HTTP with
the standard library (over TCP or the unix socket), and Server-Sent Events read line by line."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon_support import Daemon

WEB_AGENT = Path(__file__).parent / "agents" / "web_agent.py"
SECRET = "sk-web-0123456789abcdef"
"""In the `web` profiles' environment as WEB_API_KEY (a secret by its name); the agent prints it."""
HOSTILE = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"


def web_config(
    d: Daemon, listen: str = "127.0.0.1:0", agent_env: dict[str, str] | None = None, **http: Any
) -> None:
    """The daemon's test config plus [http], and profiles `web` and `web_todo` running
    tests/agents/web_agent.py (held by `d.hold`, with `agent_env` added)."""
    web = {
        "command": ["{python}", str(WEB_AGENT), "{prompt}"],
        "env": {"AGENT_HOLD_DIR": str(d.hold_dir), "WEB_API_KEY": SECRET, **(agent_env or {})},
    }
    todo = {**web, "env": {**web["env"], "AGENT_TODO_REPORT": "1"}}
    workers = {**d.config_data()["workers"], "web": web, "web_todo": todo}
    d.write_config(http={"listen": listen, **http}, workers=workers)


def base_url(d: Daemon) -> str:
    return str(d.wait_event("http.listening")[-1]["url"])


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def connect(url: str, timeout: float = 10) -> http.client.HTTPConnection:
    if url.startswith("unix:"):
        return UnixConnection(url.removeprefix("unix:"), timeout)
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


def get(
    url: str,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> tuple[int, dict[str, str], str]:
    """(status, headers with lower-case names, body text)."""
    conn = connect(url)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def get_json(url: str, path: str, **kw: Any) -> Any:
    status, _, text = get(url, path, **kw)
    assert status == 200, (status, text)
    return json.loads(text)


class Sse:
    """One open Server-Sent Events response; `next_data()` returns each `data:` payload."""

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = connect(url, timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("content-type", "").startswith("text/event-stream")

    def next_data(self, deadline: float = 10) -> Any:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            line = self.resp.fp.readline()
            if not line:
                raise AssertionError("the event stream ended")
            if line.startswith(b"data: "):
                return json.loads(line[6:])
        raise AssertionError("no event in time")

    def next_plan_event(self, deadline: float = 10) -> Any:
        """The next event about a plan. A stream without `since` goes on from the position the
        web's audit follower has read, which may lag the file by a moment ("may repeat, not
        miss"): the daemon's own events of just before the connect (`http.listening`, …) can
        come first."""
        end = time.monotonic() + deadline
        while True:
            data = self.next_data(max(end - time.monotonic(), 0.01))
            if "plan" in data:
                return data
            assert data["event"].startswith(("daemon.", "http.")), data

    def close(self) -> None:
        self.conn.close()
