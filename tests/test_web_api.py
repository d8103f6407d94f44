"""The status page's server and JSON API (#18), against the real daemon as a process: what it
serves and where, what it shows (escaped, redacted, bounded), who may see it, and that neither
a slow client nor an open stream holds up the supervisor or its shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
import urllib.parse

from daemon_support import Daemon
from web_support import HOSTILE, SECRET, Sse, base_url, get, get_json, web_config

TOKEN = "s3cret-token-for-the-status-page"


def test_no_http_section_serves_nothing(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.events("http.listening") == []
    assert "status page" not in daemon.stderr()


def test_listening_off_loopback_without_a_token_is_refused(daemon: Daemon) -> None:
    web_config(daemon, listen="0.0.0.0:0")
    proc = daemon.start(wait=False)
    assert proc.wait(15) == 2
    err = daemon.stderr()
    assert "http" in err and "set token" in err and "0.0.0.0:0" in err, err


def test_a_port_in_use_stops_start_up_naming_the_key(daemon: Daemon) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        web_config(daemon, listen=f"127.0.0.1:{taken.getsockname()[1]}")
        proc = daemon.start(wait=False)
        assert proc.wait(15) == 2
    finally:
        taken.close()
    assert "http.listen" in daemon.stderr() and "pick a free port" in daemon.stderr()


def _hostile_plan(d: Daemon) -> None:
    data = d.plan_data("WEB-hostile", repo="repo<b>x</b>", worker="web_todo")
    data["phases"][0]["prompt"] = f"Build it. {HOSTILE}"
    data["phases"][0]["verify"] = [{"run": f"echo '{HOSTILE}'; exit 3", "expect": "pass"}]
    d.drop("WEB-hostile.toml", data)


def test_pages_and_api_show_hostile_text_escaped_and_match_status_json(daemon: Daemon) -> None:
    web_config(daemon)
    daemon.start()
    url = base_url(daemon)
    assert f"orchestrd: status page at {url}" in daemon.stderr()
    _hostile_plan(daemon)
    daemon.submit("WEB-ok")
    daemon.wait_plans_end(["WEB-hostile", "WEB-ok"])

    # the JSON API has the data of `status --json`, plus checks at file:line with their rule
    detail = get_json(url, "/api/plans/WEB-hostile")
    status = json.loads(daemon.cli("status", "WEB-hostile", "--json").stdout)
    for key in ("plan", "state", "phase", "attempt", "where", "reason", "submitted_at"):
        assert detail.get(key) == status.get(key), key
    assert detail["state"] == "failed" and HOSTILE in detail["phases"]["P01"]["prompt"]
    checks = detail["phases"]["P01"]["attempts"][0]["checks"]
    placeholder = next(c for c in checks if c.get("rule") == "placeholder")
    assert placeholder["outcome"] == "failed" and placeholder["line"] > 0
    assert placeholder["file"].endswith("P01-worker.md")
    verify = next(c for c in checks if c["check"] == "verify[0]")
    assert verify["returncode"] == 3 and HOSTILE in verify["reason"]

    listing = get_json(url, "/api/plans?status=failed")
    assert [p["plan"] for p in listing["plans"]] == ["WEB-hostile"]
    repo = urllib.parse.quote(str(daemon.repo("repo<b>x</b>")))
    assert [p["plan"] for p in get_json(url, f"/api/plans?repo={repo}")["plans"]] == ["WEB-hostile"]
    assert get_json(url, "/api/plans?per_page=1&page=2")["plans"][0]["plan"] == "WEB-hostile"

    # every page renders the hostile prompt, repo, check reason and log line as text
    for path in ("/", "/plans/WEB-hostile", "/?status=failed"):
        code, headers, html = get(url, path)
        assert code == 200
        assert html.count("<script") == 1, path  # only the page's own /static/app.js
        assert "<img" not in html and "<b>x</b>" not in html, path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    _, _, html = get(url, "/plans/WEB-hostile")
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html  # prompt and check reason
    assert "window.pwnedLog = 1&lt;/script&gt;" in html  # the log tail
    assert "[rule: placeholder]" in html and "P01-worker.md:" in html

    code, headers, text = get(url, "/api/plans/WEB-hostile/phases/P01/log?attempt=1")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    assert "<script>window.pwnedLog" in text  # plain text, never rendered as markup
    assert "using key ***" in text and SECRET not in text  # redacted as in the audit log
    assert SECRET not in html

    _, _, metrics = get(url, "/metrics")
    assert 'orchestrd_plans{status="failed"} 1.0' in metrics
    assert 'orchestrd_plans{status="succeeded"} 1.0' in metrics
    assert get_json(url, "/healthz")["ok"] is True
    assert get_json(url, "/api/daemon")["max_workers"] == 4
    daemon.send(signal.SIGHUP)
    daemon.wait_event("daemon.reloaded")
    assert get_json(url, "/api/daemon")["last_reload"]["event"] == "daemon.reloaded"

    # read-only: nothing accepts a change, and no other site can read it through DNS rebinding
    assert get(url, "/api/plans/WEB-ok", method="POST")[0] == 405
    assert get(url, "/api/plans/WEB-ok", method="DELETE")[0] == 405
    assert get(url, "/api/plans", headers={"Host": "evil.example:80"})[0] == 421
    assert get(url, "/api/plans/NOPE")[0] == 404
    assert get(url, "/api/plans/WEB-ok/phases/P09/log")[0] == 404


def test_live_events_and_a_growing_log_tail_bounded_to_64_kib(daemon: Daemon) -> None:
    web_config(daemon, agent_env={"AGENT_PRINT_KIB": "100"})
    daemon.start()
    url = base_url(daemon)
    daemon.hold("WEB-live")
    events = Sse(url, "/api/events")
    daemon.submit("WEB-live", worker="web")
    seen = [events.next_plan_event()["event"] for _ in range(3)]
    assert seen[0] == "plan.accepted", seen
    daemon.wait_event("worker.started", plan="WEB-live")
    path = "/api/plans/WEB-live/phases/P01/log"
    daemon.wait_for(lambda: "tick 3" in get(url, path)[2], what="ticks in the log")
    tail = get(url, path)[2]
    assert len(tail.encode()) <= 64 * 1024 and "filler 00000000" not in tail

    follow = Sse(url, path + "?follow=1")
    first = follow.next_data()["text"]
    assert len(first.encode()) <= 64 * 1024
    ticks = [int(line.split()[1]) for line in first.splitlines() if line.startswith("tick ")]
    more = follow.next_data()["text"]  # the log goes on growing, and the stream with it
    later = [int(line.split()[1]) for line in more.splitlines() if line.startswith("tick ")]
    assert later and min(later) > max(ticks)

    plan_events = Sse(url, "/api/plans/WEB-live/events")
    daemon.release("WEB-live")
    names = []
    while "plan.succeeded" not in names:
        event = plan_events.next_data()
        assert event["plan"] == "WEB-live"
        names.append(event["event"])
    for stream in (events, follow, plan_events):
        stream.close()


def test_the_token_guards_everything_but_healthz_off_loopback(daemon: Daemon) -> None:
    web_config(daemon, listen="0.0.0.0:0", token=TOKEN)
    daemon.start()
    port = urllib.parse.urlsplit(base_url(daemon)).port
    url = f"http://127.0.0.1:{port}/"
    daemon.submit("WEB-tok")
    daemon.wait_plans_end(["WEB-tok"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    for path in ("/api/plans", "/api/plans/WEB-tok", "/metrics", "/api/events"):
        code, headers, _ = get(url, path)
        assert code == 401 and headers["www-authenticate"] == "Bearer", path
    assert get(url, "/api/plans", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get_json(url, "/api/plans", headers=bearer)["total"] == 1
    assert get(url, "/healthz")[0] == 200

    code, headers, _ = get(url, "/plans/WEB-tok")
    assert code == 303 and headers["location"] == "/login?next=/plans/WEB-tok"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert get(url, "/login", method="POST", body="token=nope", headers=form)[0] == 401
    code, headers, _ = get(
        url,
        "/login?next=/plans/WEB-tok",
        method="POST",
        body=urllib.parse.urlencode({"token": TOKEN}),
        headers=form,
    )
    assert code == 303 and headers["location"] == "/plans/WEB-tok"
    cookie = headers["set-cookie"].split(";")[0]
    assert TOKEN not in cookie and "httponly" in headers["set-cookie"].lower()
    code, _, html = get(url, "/plans/WEB-tok", headers={"Cookie": cookie})
    assert code == 200 and "WEB-tok" in html
    stream = Sse(url, "/api/plans/WEB-tok/events?since=0", headers={"Cookie": cookie})
    assert stream.next_data()["event"] == "plan.accepted"
    stream.close()
    assert TOKEN not in daemon.audit_path.read_text()


def test_unix_socket_is_0660_and_removed_at_stop(daemon: Daemon) -> None:
    sock = daemon.tmp / "run" / "http.sock"
    sock.parent.mkdir()
    web_config(daemon, listen=f"unix:{sock}")
    daemon.start()
    assert base_url(daemon) == f"unix:{sock}"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    assert get_json(f"unix:{sock}", "/healthz")["ok"] is True
    assert daemon.stop() == 0
    assert not sock.exists()


def test_slow_clients_never_hold_up_plans_or_shutdown(daemon: Daemon) -> None:
    web_config(daemon, max_connections=4, timeout_keep_alive="1s")
    daemon.start()
    url = base_url(daemon)
    port = urllib.parse.urlsplit(url).port
    stream = Sse(url, "/api/events")
    idle = []
    for _ in range(8):  # half a request each, never finished
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/plans HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        idle.append(s)
    assert get(url, "/healthz")[0] == 503  # beyond max_connections: turned away, not queued
    daemon.submit("WEB-slow")
    daemon.wait_plans_end(["WEB-slow"])
    for s in idle:  # half a request is dropped after timeout_keep_alive
        s.settimeout(5)
        assert s.recv(100) == b""
    assert get(url, "/healthz")[0] == 200
    assert stream.next_plan_event()["event"] == "plan.accepted"  # an open stream is no idle client
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    for s in idle:
        s.close()
    stream.close()


def test_events_go_on_after_the_audit_log_is_rotated(daemon: Daemon) -> None:
    web_config(daemon)
    daemon.start()
    url = base_url(daemon)
    daemon.submit("WEB-before")
    daemon.wait_plans_end(["WEB-before"])
    assert get_json(url, "/api/plans/WEB-before")["events"]
    os.rename(daemon.audit_path, daemon.audit_path.with_name("audit.jsonl.1"))  # logrotate
    daemon.submit("WEB-after")
    daemon.wait_plans_end(["WEB-after"])
    names = [e["event"] for e in get_json(url, "/api/plans/WEB-after")["events"]]
    assert names[0] == "plan.accepted" and "plan.succeeded" in names
