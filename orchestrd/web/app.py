"""The status page and JSON API as a Starlette app: read-only routes over the plan index, the
audit index and worker logs, Server-Sent Events for live updates, and the token gate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

import anyio
import anyio.from_thread
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..audit import AuditLog, Logger
from ..config import Config, is_loopback
from ..metrics import Metrics, exposition
from ..spool import Spool
from ..state import PlanState
from . import render
from .data import TAIL_BYTES, AuditIndex, PlanIndex, plan_file, read_from, read_tail

STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
PAGE_SIZE = 50
EVENTS_SHOWN = 200
AUDIT_POLL = 0.25
"""How often the audit log is looked at for new events (what live updates wait on)."""
LOG_POLL = 0.5
KEEPALIVE = 15.0
"""An idle SSE stream sends a comment this often, so proxies and browsers keep it open."""
COOKIE = "orchestrd_session"
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class DaemonView(Protocol):
    """What the page reads of the running daemon (orchestrd.daemon.Daemon)."""

    config: Config
    config_path: Path | None
    spool: Spool
    audit: AuditLog
    log: Logger
    metrics: Metrics

    def web_status(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class Web:
    daemon: DaemonView
    redact: Callable[[str], str]
    plans: PlanIndex
    audit: AuditIndex
    started: float = dataclasses.field(default_factory=time.monotonic)
    changed: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    """Set (and replaced) whenever the audit log had new events: what SSE streams wait on."""
    stopping: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    async def follow_audit(self) -> None:
        """Poll the audit log for new events until cancelled; wake the streams on news."""
        while True:
            if await anyio.to_thread.run_sync(self.audit.poll):
                self._wake()
            await anyio.sleep(AUDIT_POLL)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def fresh_audit(self) -> None:
        """In a worker thread: take in the audit log's newest events before answering, so an
        answer is never older than the log (and wake the streams if there were any)."""
        if self.audit.poll():
            anyio.from_thread.run_sync(self._wake)

    async def wait_change(self) -> bool:
        """Wait for new events (True), a keep-alive tick or shutdown (False)."""
        changed = self.changed
        with anyio.move_on_after(KEEPALIVE):
            async with anyio.create_task_group() as tg:

                async def stop_on(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_on, changed)
                tg.start_soon(stop_on, self.stopping)
        return changed.is_set()

    # -- data --

    def all_rows(self) -> list[dict[str, Any]]:
        self.fresh_audit()
        return self.plans.rows()

    def detail(self, plan_id: str) -> tuple[int, dict[str, Any]] | None:
        """A plan's detail, and the audit seq its events run up to (where a live update of
        the page starts)."""
        self.fresh_audit()
        found = self.plans.state(plan_id)
        if found is None:
            return None
        folder, state, row = found
        seq, events = self.audit.plan_events(plan_id)
        detail = dict(row)
        detail["phases"] = _phases(state, plan_file(folder), events, self.redact)
        detail["events"] = events[-EVENTS_SHOWN:]
        return seq, detail

    def log_path(self, plan_id: str, phase: str, attempt: int | None) -> tuple[str, int, Path]:
        """The log of an attempt (default: the last one) of a phase, always inside the plan's
        own workers/ folder, whatever the state file says."""
        found = self.plans.state(plan_id)
        if found is None or phase not in found[1].phases:
            raise LookupError(f"no phase {phase!r} in plan {plan_id!r}")
        folder, state, _ = found
        attempts = state.phases[phase].attempts
        chosen = (
            attempts[-1]
            if attempt is None and attempts
            else next((a for a in attempts if a.n == attempt), None)
        )
        if chosen is None:
            raise LookupError(f"phase {phase!r} has no attempt {attempt}")
        return phase, chosen.n, folder / "workers" / Path(chosen.log).name

    def daemon_info(self) -> dict[str, Any]:
        config = self.daemon.config
        last = self.audit.daemon_events()
        reloads = [e for e in (last.get("daemon.reloaded"), last.get("daemon.reload_failed")) if e]
        return {
            "version": __version__,
            "uptime": time.monotonic() - self.started,
            "config": str(self.daemon.config_path),
            "state_dir": str(config.state_dir),
            "max_workers": config.max_workers,
            **self.daemon.web_status(),
            "last_reload": max(reloads, key=lambda e: str(e.get("ts"))) if reloads else None,
        }


def _wall(started: str | None, ended: str | None) -> float | None:
    if not started:
        return None
    end = dt.datetime.fromisoformat(ended) if ended else dt.datetime.now().astimezone()
    return (end - dt.datetime.fromisoformat(started)).total_seconds()


def _phases(
    state: PlanState,
    plan: Mapping[str, Any],
    events: list[dict[str, Any]],
    redact: Callable[[str], str],
) -> dict[str, Any]:
    """The state's phases (as `status --json` has them) with each phase's kind, prompt and wall
    time, and each attempt's checks and changes from the audit log."""
    declared = {p.get("id"): p for p in plan.get("phases", []) if isinstance(p, dict)}
    checks: dict[tuple[str, int], list[dict[str, Any]]] = {}
    changes: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        n = e.get("attempt")
        key = (str(e.get("phase")), n if isinstance(n, int) else 0)
        name = e["event"]
        if name.startswith("check."):
            checks.setdefault(key, []).append({**e, "outcome": name.removeprefix("check.")})
        elif name == "worker.changes":
            changes[key] = e
    out: dict[str, Any] = {}
    for pid, ps in state.phases.items():
        data = ps.model_dump(mode="json", exclude_none=True)
        spec = declared.get(pid, {})
        data["kind"] = spec.get("kind", "other")
        data["prompt"] = redact(str(spec.get("prompt", "")))
        walls = [_wall(a.started_at, a.ended_at) for a in ps.attempts]
        data["wall_seconds"] = sum(w for w in walls if w is not None) if ps.attempts else None
        for att in data["attempts"]:
            att["checks"] = checks.get((pid, att["n"]), [])
            if (pid, att["n"]) in changes:
                att["changes"] = changes[(pid, att["n"])]
        out[pid] = data
    return out


# -- the token gate and security headers --


def session_value(token: str) -> str:
    """The cookie the page keeps after the token was given once: derived, not the token."""
    return hmac.new(token.encode(), b"orchestrd web session", hashlib.sha256).hexdigest()


def _authorized(scope: Scope, token: str) -> bool:
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return hmac.compare_digest(auth[7:].strip(), token.encode())
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return hmac.compare_digest(value, session_value(token).encode())
    return False


class Gate:
    """Every response gets the security headers; with a token set, everything but /healthz,
    /login and the static assets needs it (bearer header, or the session cookie). On a
    loopback listener the Host must be a loopback name, so a web page that rebinds its own DNS
    name to 127.0.0.1 cannot read the API through a visitor's browser."""

    OPEN = frozenset({"/healthz", "/login", "/static/app.css", "/static/app.js"})

    def __init__(self, app: ASGIApp, token: Callable[[], str | None], loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        path: str = scope["path"]
        if self.loopback and not _loopback_host(scope):
            response: Response = PlainTextResponse("Host must be a loopback address\n", 421)
        elif path in self.OPEN or (token := self.token()) is None or _authorized(scope, token):
            await self.app(scope, receive, send_secure)
            return
        elif path.startswith("/api/") or path == "/metrics":
            response = JSONResponse(
                {"error": "a bearer token is required"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
        else:
            response = RedirectResponse("/login?next=" + quote(path, safe="/"), 303)
        await response(scope, receive, send_secure)


def _loopback_host(scope: Scope) -> bool:
    host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.removeprefix("[").removesuffix("]")
    return is_loopback(name)


# -- routes --


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status, media_type="application/json")


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(value))) if value is not None else default
    except ValueError:
        return default


async def plans_json(request: Request) -> Response:
    return _json(await _plans(request))


async def _plans(request: Request) -> dict[str, Any]:
    """One page of the plans' rows, filtered; `repos` and `usage` describe all of them."""
    web: Web = request.app.state.web
    q = request.query_params
    status, repo = q.get("status", ""), q.get("repo", "")
    per = _int(q.get("per_page"), PAGE_SIZE, 1, 500)
    every = await anyio.to_thread.run_sync(web.all_rows)
    rows = [
        r
        for r in every
        if (not status or r.get("state") == status) and (not repo or r.get("repo") == repo)
    ]
    pages = max(1, math.ceil(len(rows) / per))
    page_no = _int(q.get("page"), 1, 1, pages)
    last = web.audit.last_events()
    shown = rows[(page_no - 1) * per : page_no * per]
    for r in shown:
        if (e := last.get(r["plan"])) is not None:
            r["last_event"] = {"event": e.get("event"), "ts": e.get("ts")}
    return {
        "plans": shown,
        "total": len(rows),
        "page": page_no,
        "pages": pages,
        "per_page": per,
        "status": status,
        "repo": repo,
        "repos": sorted({str(r["repo"]) for r in every if r.get("repo")}),
        "usage": any("usage" in r for r in every),
    }


async def plans_page(request: Request) -> Response:
    web: Web = request.app.state.web
    since = web.audit.seq  # before the rows: a live update may repeat, not miss
    data = await _plans(request)
    last = {r["plan"]: r["last_event"] for r in data["plans"] if r.get("last_event")}
    return HTMLResponse(
        render.plans_page(
            data["plans"],
            last,
            total=data["total"],
            page_no=data["page"],
            pages=data["pages"],
            status=data["status"],
            repo=data["repo"],
            repos=data["repos"],
            usage=data["usage"],
            since=since,
        )
    )


async def plan_json(request: Request) -> Response:
    web: Web = request.app.state.web
    found = await anyio.to_thread.run_sync(web.detail, request.path_params["plan"])
    if found is None:
        return _json({"error": "no such plan"}, 404)
    return _json(found[1])


async def plan_page(request: Request) -> Response:
    web: Web = request.app.state.web
    plan_id = request.path_params["plan"]
    found = await anyio.to_thread.run_sync(web.detail, plan_id)
    if found is None:
        return HTMLResponse(
            render.page("Not found", render.h("<h1>No plan {p}</h1>", p=plan_id), kind="missing"),
            404,
        )
    since, detail = found
    log = await anyio.to_thread.run_sync(_current_log, web, detail)
    return HTMLResponse(render.plan_page(detail, log, since))


async def daemon_page(request: Request) -> Response:
    web: Web = request.app.state.web
    await anyio.to_thread.run_sync(web.fresh_audit)  # the last reload may be just logged
    return HTMLResponse(render.daemon_page(web.daemon_info()))


async def daemon_json(request: Request) -> Response:
    web: Web = request.app.state.web
    await anyio.to_thread.run_sync(web.fresh_audit)
    return _json(web.daemon_info())


async def events(request: Request) -> Response:
    web: Web = request.app.state.web
    plan_id = request.path_params.get("plan")
    if plan_id is not None and await anyio.to_thread.run_sync(web.plans.state, plan_id) is None:
        return _json({"error": "no such plan"}, 404)
    since = _int(request.query_params.get("since"), web.audit.seq, 0, web.audit.seq)
    return _sse(_event_stream(web, since, plan_id))


async def log(request: Request) -> Response:
    web: Web = request.app.state.web
    p = request.path_params
    attempt = request.query_params.get("attempt")
    n = _int(attempt, 0, 0, 1 << 30) if attempt else None
    try:
        _, _, path = await anyio.to_thread.run_sync(web.log_path, p["plan"], p["phase"], n)
    except LookupError as exc:
        return _json({"error": str(exc)}, 404)
    if request.query_params.get("follow"):
        offset = request.query_params.get("offset")
        start = _int(offset, 0, 0, 1 << 62) if offset is not None else None
        return _sse(_log_stream(web, path, start))
    _, data = await anyio.to_thread.run_sync(read_tail, path, TAIL_BYTES)
    return PlainTextResponse(web.redact(data.decode("utf-8", "replace")))


async def healthz(request: Request) -> Response:
    web: Web = request.app.state.web
    return _json(
        {"ok": True, "version": __version__, "uptime": round(time.monotonic() - web.started, 3)}
    )


async def metrics(request: Request) -> Response:
    """The daemon's metrics (orchestrd.metrics), the plan gauges from the cached rows."""
    web: Web = request.app.state.web
    rows = await anyio.to_thread.run_sync(web.plans.rows)
    web.daemon.metrics.set_plans(rows)
    return Response(exposition(web.daemon.metrics), media_type=CONTENT_TYPE_LATEST)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return PlainTextResponse("not found\n", 404)
    data = await anyio.to_thread.run_sync((STATIC / name).read_bytes)
    return Response(data, media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})


async def login(request: Request) -> Response:
    """The page asks for the token once; the session cookie then stands for it."""
    web: Web = request.app.state.web
    token = web.daemon.config.http.token if web.daemon.config.http else None
    nxt = request.query_params.get("next", "/")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"  # only a page of this site
    if request.method == "GET":
        return HTMLResponse(render.login_page(failed=False, next_path=nxt))
    body = await _small_body(request, 4096)
    given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
    if token is None or not hmac.compare_digest(given.encode(), token.encode()):
        return HTMLResponse(render.login_page(failed=True, next_path=nxt), 401)
    response = RedirectResponse(nxt, 303)
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict")
    return response


ROUTES = [
    Route("/", plans_page),
    Route("/plans/{plan}", plan_page),
    Route("/daemon", daemon_page),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/static/{name}", static),
    Route("/api/plans", plans_json),
    Route("/api/plans/{plan}", plan_json),
    Route("/api/plans/{plan}/events", events),
    Route("/api/events", events),
    Route("/api/plans/{plan}/phases/{phase}/log", log),
    Route("/api/daemon", daemon_json),
    Route("/healthz", healthz),
    Route("/metrics", metrics),
]


def build_app(web: Web, loopback: bool) -> ASGIApp:
    app = Starlette(routes=ROUTES)
    app.state.web = web

    def token() -> str | None:
        http = web.daemon.config.http
        return http.token if http is not None else None

    return Gate(app, token, loopback)


async def _small_body(request: Request, limit: int) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            break
    return body[:limit]


def _current_log(web: Web, detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tail of the log of the current (or last) phase's last attempt."""
    phase = detail.get("phase")
    if not phase or not detail["phases"].get(phase, {}).get("attempts"):
        return None
    _, n, path = web.log_path(str(detail["plan"]), str(phase), None)
    offset, data = read_tail(path, TAIL_BYTES)
    follow = (
        f"/api/plans/{quote(str(detail['plan']), safe='')}/phases/"
        f"{quote(str(phase), safe='')}/log?attempt={n}&follow=1&offset={offset}"
    )
    return {
        "phase": phase,
        "attempt": n,
        "text": web.redact(data.decode("utf-8", "replace")),
        "follow": follow,
    }


def _sse(stream: AsyncIterator[str]) -> Response:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(web: Web, since: int, plan_id: str | None) -> AsyncIterator[str]:
    """Audit events (of one plan, or every plan's and the daemon's) as they are logged."""
    seq = since
    yield "retry: 2000\n\n"
    while not web.stopping.is_set():
        seq, new = web.audit.since(seq, plan_id)
        for e in new:
            yield f"data: {json.dumps(e, default=str)}\n\n"
        if not new and not await web.wait_change():
            yield ": keep-alive\n\n"


async def _log_stream(web: Web, path: Path, start: int | None) -> AsyncIterator[str]:
    """A worker log: its tail (unless the client has it up to `start`), then what is added."""
    if start is None:
        offset, data = await anyio.to_thread.run_sync(read_tail, path, TAIL_BYTES)
        if data:
            yield _text_event(web, data)
    else:
        offset = start
    idle = 0.0
    while not web.stopping.is_set():
        offset, data = await anyio.to_thread.run_sync(read_from, path, offset, TAIL_BYTES)
        if data:
            idle = 0.0
            yield _text_event(web, data)
            continue
        if idle >= KEEPALIVE:
            idle = 0.0
            yield ": keep-alive\n\n"
        with anyio.move_on_after(LOG_POLL):
            await web.stopping.wait()
        idle += LOG_POLL


def _text_event(web: Web, data: bytes) -> str:
    return f"data: {json.dumps({'text': web.redact(data.decode('utf-8', 'replace'))})}\n\n"
