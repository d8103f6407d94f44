"""Notifications from a real daemon: to a local HTTP server started here (json, slack and ntfy
formats, a token header from the environment), to a command (event on stdin, the report's
path in its environment); a server down for a while, then up; and a daemon SIGKILLed with
notifications pending. Every notification arrives at least once; none is lost."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon


class Hook:
    """An HTTP server on 127.0.0.1 that records every POST (path, headers, body)."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return  # the test output stays readable

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, path: str = "/hook") -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.received if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fast(**target: Any) -> dict[str, Any]:
    return {"on": ["plan.succeeded", "plan.failed"], "backoff": "0.1s", "timeout": "2s", **target}


def test_http_formats_and_a_command_each_get_the_plans_end(
    daemon: Daemon, hook: Hook, tmp_path: Path
) -> None:
    got = tmp_path / "command-got.jsonl"
    script = tmp_path / "record.py"
    script.write_text(
        "import json, os, sys\n"
        f"with open({str(got)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'stdin': sys.stdin.read(), 'env': dict(os.environ)}) + '\\n')\n"
    )
    daemon.write_config(
        notify=[
            fast(url=hook.url("/json")),
            fast(url=hook.url("/slack"), format="slack"),
            fast(
                url=hook.url("/ntfy"),
                format="ntfy",
                headers={"Authorization": "Bearer ${NTFY_TOKEN}"},
            ),
            fast(command=[sys.executable, str(script)]),
        ]
    )
    daemon.start(NTFY_TOKEN="tok-123456789")
    daemon.submit("N1")
    daemon.wait_plans_end(["N1"])
    daemon.wait_event("notify.sent", count=4)

    (end,) = daemon.events("plan.succeeded", plan="N1")
    assert hook.events("/json") == [end]  # the event itself, as in the audit log
    (slack,) = hook.events("/slack")
    assert slack["text"].startswith("orchestrd plan.succeeded: plan N1")
    (ntfy,) = [r for r in hook.received if r["path"] == "/ntfy"]
    assert ntfy["headers"]["Authorization"] == "Bearer tok-123456789"
    assert ntfy["headers"]["Title"] == "orchestrd plan.succeeded"
    assert ntfy["body"].decode().startswith("orchestrd plan.succeeded: plan N1")
    (ran,) = [json.loads(line) for line in got.read_text().splitlines()]
    assert json.loads(ran["stdin"]) == end
    report = Path(ran["env"]["ORCHESTRD_REPORT_FILE"])
    assert report == daemon.state_dir / "archive" / "N1" / "report.md"
    assert report.read_text().startswith("# Plan N1: succeeded")
    assert "NTFY_TOKEN" not in ran["env"]  # a minimal environment, no daemon secrets
    # the token never reaches the audit log, and notify.* events are never notified
    assert "tok-123456789" not in daemon.audit_path.read_text()
    assert all(e["event"] == "plan.succeeded" for e in hook.events("/json"))


def test_a_server_down_for_a_while_then_up_gets_every_notification(daemon: Daemon) -> None:
    port = free_port()
    daemon.write_config(notify=[fast(url=f"http://127.0.0.1:{port}/hook")])
    daemon.start()
    daemon.submit("D1")
    daemon.submit("D2", repo="d2")
    daemon.wait_plans_end(["D1", "D2"])
    failed = daemon.wait_event("notify.failed", count=4)
    assert {e["plan"] for e in failed} == {"D1", "D2"}
    assert all(e["target"] == "http://127.0.0.1" and "retry_in" in e for e in failed)
    # the plans were not held up by the dead endpoint
    assert daemon.events("plan.archived", plan="D1")
    hook = Hook(port)
    try:
        daemon.wait_event("notify.sent", count=2)
        assert sorted(e["plan"] for e in hook.events()) == ["D1", "D2"]
    finally:
        hook.close()


def test_notifications_pending_at_a_sigkill_are_sent_after_the_restart(daemon: Daemon) -> None:
    port = free_port()
    daemon.write_config(notify=[fast(url=f"http://127.0.0.1:{port}/hook", on=["plan.*"])])
    daemon.start()
    daemon.submit("K1")
    daemon.wait_event("notify.failed", plan="K1")  # one is in the outbox, failing
    daemon.submit("K2", repo="k2")
    daemon.wait_plans_end(["K2"])
    daemon.stop(signal.SIGKILL)  # K2's end may not have reached the outbox yet
    hook = Hook(port)
    try:
        daemon.start()
        # at least once each: every plan event of both plans, whether it was in the outbox
        # or not yet read from the audit log when the daemon died
        wanted = {
            (plan, name)
            for plan in ("K1", "K2")
            for name in ("plan.accepted", "plan.queued", "plan.started", "plan.succeeded")
        }
        daemon.wait_for(
            lambda: wanted <= {(e["plan"], e["event"]) for e in hook.events()},
            what="every plan event delivered after the restart",
        )
    finally:
        hook.close()


def test_a_failing_command_is_retried_and_reported_with_its_exit_code(
    daemon: Daemon, tmp_path: Path
) -> None:
    flag = tmp_path / "fail-no-more"
    script = tmp_path / "flaky.py"
    script.write_text(
        f"import pathlib, sys\nsys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)\n"
    )
    daemon.write_config(notify=[fast(command=[sys.executable, str(script)])])
    daemon.start()
    daemon.submit("C1")
    (first,) = daemon.wait_event("notify.failed", plan="C1")[:1]
    assert first["returncode"] == 3 and first["reason"].startswith("exited 3")
    flag.touch()
    (sent,) = daemon.wait_event("notify.sent", plan="C1")
    assert sent["attempts"] >= 2 and sent["for_event"] == "plan.succeeded"


def test_an_unreadable_outbox_entry_is_set_aside_with_an_event(daemon: Daemon) -> None:
    daemon.write_config(notify=[fast(command=["true"])])
    outbox = daemon.state_dir / "notify" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "junk.json").write_text('{"id": "junk"}')
    daemon.start()
    (event,) = daemon.wait_event("notify.failed")
    assert "junk.json: not an outbox entry" in event["reason"] and event["gave_up"] is True
    assert (daemon.state_dir / "notify" / "failed" / "junk.json").exists()
    daemon.submit("J1")
    daemon.wait_event("notify.sent", plan="J1")  # the notifier goes on
