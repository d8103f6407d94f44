"""The status page's HTML: a tiny renderer that escapes every value unless it is `Safe` markup
built here, and the three pages. Repo paths, prompts, log lines and check reasons are text from
workers and submitters: they can only ever reach the page escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import string
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from .. import __version__


class Safe(str):
    """Markup built by this module's templates: inserted as it is."""


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Safe):
            return value
        return html.escape(format(value, format_spec), quote=True)


_FORMATTER = _Escaping()


def h(template: str, **values: Any) -> Safe:
    """`template` (str.format syntax) with every value HTML-escaped except `Safe` ones."""
    return Safe(_FORMATTER.format(template, **values))


def join(parts: Iterable[Safe]) -> Safe:
    return Safe("".join(parts))


def badge(state: str | None) -> Safe:
    word = state or "-"
    # the class is from a fixed set: a state word from a corrupt file cannot pick one
    css = word if word in STATE_CLASSES else "other"
    return h('<span class="badge st-{css}">{word}</span>', css=css, word=word)


STATE_CLASSES = frozenset(
    {
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "interrupted",
        "paused",
        "corrupt",
        "pending",
        "checking",
        "passed",
        "starting",
        "exited",
        "stopped",
        "warning",
    }
)
PLAN_STATES = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
    "paused",
    "corrupt",
)


def elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def _time(iso: object) -> str:
    if not isinstance(iso, str):
        return "-"
    try:
        return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def page(
    title: str,
    body: Safe,
    *,
    kind: str,
    data: Mapping[str, str] | None = None,
    authed: bool = False,
) -> str:
    attrs = join(h(' data-{k}="{v}"', k=k, v=v) for k, v in (data or {}).items())
    return h(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · orchestrd</title>"
        '<link rel="stylesheet" href="/static/app.css">'
        '<script src="/static/app.js" defer></script></head>'
        '<body data-page="{kind}"{attrs}>'
        '<header><a class="brand" href="/">orchestrd</a><nav>'
        '<a href="/">Plans</a><a href="/daemon">Daemon</a></nav>'
        '<span class="live" id="live" title="live updates">●</span></header>'
        "<main>{body}</main>"
        "<footer>orchestrd {version} · read-only</footer></body></html>\n",
        title=title,
        kind=kind,
        attrs=attrs,
        body=body,
        version=__version__,
    )


def usage_cell(usage: object) -> str:
    if not isinstance(usage, Mapping):
        return "-"
    parts = []
    if isinstance(tokens := usage.get("tokens"), int | float):
        parts.append(f"{int(tokens):,} tok")
    if isinstance(cost := usage.get("cost"), int | float):
        parts.append(f"${cost:.2f}")
    return " · ".join(parts) or "-"


def plan_row(r: Mapping[str, Any], last: Mapping[str, Any] | None, usage: bool) -> Safe:
    phase = r.get("phase") or "-"
    if r.get("phases_total"):
        phase = f"{phase} ({r.get('phase_index', 0)}/{r['phases_total']})"
    attempt = "-"
    if r.get("attempt"):
        attempt = f"#{r['attempt']} {r.get('role') or ''}".strip()
    last_event = f"{last.get('event')} {_time(last.get('ts'))}" if last else "-"
    cells = h(
        '<td><a href="/plans/{q}">{plan}</a>{archived}</td><td>{badge}</td><td>{phase}</td>'
        "<td>{attempt}</td><td>{elapsed}</td><td>{last}</td><td>{repo}</td>",
        q=quote(str(r["plan"]), safe=""),
        plan=r["plan"],
        badge=badge(r.get("state")),
        archived=Safe(' <span class="tag">archived</span>') if r.get("where") == "archive" else "",
        phase=phase,
        attempt=attempt,
        elapsed=elapsed(r.get("elapsed")),
        last=last_event,
        repo=r.get("repo") or "-",
    )
    if usage:
        cells = h("{c}<td>{u}</td>", c=cells, u=usage_cell(r.get("usage")))
    return h('<tr data-plan="{plan}">{cells}</tr>', plan=r["plan"], cells=cells)


def plans_page(
    rows: list[dict[str, Any]],
    last: Mapping[str, Mapping[str, Any]],
    *,
    total: int,
    page_no: int,
    pages: int,
    status: str,
    repo: str,
    repos: list[str],
    usage: bool,
    since: int,
) -> str:
    """`since`: the audit position the rows are as new as (live updates go on from it)."""
    status_opts = join(
        h(
            '<option value="{v}"{sel}>{label}</option>',
            v=v,
            label=v or "any status",
            sel=Safe(" selected") if v == status else "",
        )
        for v in ("", *PLAN_STATES)
    )
    repo_opts = join(
        h(
            '<option value="{v}"{sel}>{label}</option>',
            v=v,
            label=v or "any repo",
            sel=Safe(" selected") if v == repo else "",
        )
        for v in ("", *repos)
    )
    head = (
        "<th>Plan</th><th>Status</th><th>Phase</th><th>Attempt</th><th>Elapsed</th>"
        "<th>Last event</th><th>Repo</th>" + ("<th>Usage</th>" if usage else "")
    )
    body = join(plan_row(r, last.get(r["plan"]), usage) for r in rows)
    if not rows:
        body = h('<tr class="empty"><td colspan="8">no plans match</td></tr>')
    nav = []
    for label, n in (("‹ newer", page_no - 1), ("older ›", page_no + 1)):
        if 1 <= n <= pages:
            qs = urlencode(
                {k: v for k, v in (("status", status), ("repo", repo), ("page", str(n))) if v}
            )
            nav.append(h('<a href="/?{qs}">{label}</a>', qs=qs, label=label))
    content = h(
        "<h1>Plans</h1>"
        '<form class="filters" method="get" action="/">'
        '<label>Status <select name="status">{so}</select></label> '
        '<label>Repo <select name="repo">{ro}</select></label> '
        '<button type="submit">Filter</button></form>'
        '<p class="count" id="plans-count">{total} plans · page {p} of {pages}</p>'
        '<table id="plans" data-usage="{u}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        '</table><p class="pager">{nav}</p>',
        so=status_opts,
        ro=repo_opts,
        total=total,
        p=page_no,
        pages=pages,
        head=Safe(head),
        body=body,
        nav=join(nav),
        u="1" if usage else "",
    )
    return page("Plans", content, kind="plans", data={"since": str(since)})


def _checks(checks: list[dict[str, Any]]) -> Safe:
    if not checks:
        return h('<p class="muted">no checks recorded</p>')
    items = []
    for c in checks:
        where = ""
        if c.get("file"):
            where = f"{c['file']}:{c['line']}" if c.get("line") else str(c["file"])
        items.append(
            h(
                '<li class="check {outcome}">{b} <code>{name}</code> {reason}{where}{rule}</li>',
                outcome=c["outcome"],
                b=badge(c["outcome"]),
                name=c.get("check", "?"),
                reason=c.get("reason", ""),
                where=h(' <span class="where">{w}</span>', w=where) if where else "",
                rule=h(' <span class="rule">rule: {r}</span>', r=c["rule"])
                if c.get("rule")
                else "",
            )
        )
    return h('<ul class="checks">{i}</ul>', i=join(items))


def _verify(checks: list[dict[str, Any]]) -> Safe:
    rows = [c for c in checks if str(c.get("check", "")).startswith("verify[")]
    if not rows:
        return Safe("")
    body = join(
        h(
            "<tr><td><code>{cmd}</code></td><td>{rc}</td><td>{expect}</td><td>{b}</td></tr>",
            cmd=c.get("command", "?"),
            rc=c.get("returncode", "-"),
            expect=c.get("expect", "-"),
            b=badge(c["outcome"]),
        )
        for c in rows
    )
    return h(
        '<table class="verify"><thead><tr><th>Verify command</th><th>Exit code</th>'
        "<th>Expected</th><th>Outcome</th></tr></thead><tbody>{b}</tbody></table>",
        b=body,
    )


def _changes(changes: Mapping[str, Any] | None) -> Safe:
    if not changes:
        return Safe("")
    files = changes.get("changed") or []
    more = int(changes.get("changed_count") or 0) - len(files)
    items = join(h("<li><code>{f}</code></li>", f=f) for f in files)
    tail = h("<li>… and {n} more</li>", n=more) if more > 0 else ""
    return h(
        '<div class="changes"><h4>Changed files ({n})</h4><ul>{i}{t}</ul></div>',
        n=changes.get("changed_count", len(files)),
        i=items,
        t=tail,
    )


def _attempt(a: Mapping[str, Any]) -> Safe:
    return h(
        '<div class="attempt"><h4>Attempt #{n} · {role} {b}{rc}</h4>{failure}{checks}{verify}'
        "{changes}</div>",
        n=a.get("n"),
        role=a.get("role"),
        b=badge(a.get("status")),
        rc=f" exit {a['returncode']}" if a.get("returncode") is not None else "",
        failure=h('<p class="reason">{f}</p>', f=a["failure"]) if a.get("failure") else "",
        checks=_checks(a.get("checks", [])),
        verify=_verify(a.get("checks", [])),
        changes=_changes(a.get("changes")),
    )


def _phases(detail: Mapping[str, Any]) -> Safe:
    rows, sections = [], []
    for pid, ps in detail.get("phases", {}).items():
        rows.append(
            h(
                "<tr><td>{pid}</td><td>{kind}</td><td>{b}</td><td>{n}</td><td>{wall}</td></tr>",
                pid=pid,
                kind=ps.get("kind", "-"),
                b=badge(ps.get("status")),
                n=len(ps.get("attempts", [])),
                wall=elapsed(ps.get("wall_seconds")),
            )
        )
        sections.append(
            h(
                '<section class="phase" id="phase-{pid}"><h3>{pid} {b}</h3>{reason}'
                "<details><summary>prompt</summary><pre>{prompt}</pre></details>{attempts}</section>",
                pid=pid,
                b=badge(ps.get("status")),
                reason=h('<p class="reason">{r}</p>', r=ps["reason"]) if ps.get("reason") else "",
                prompt=ps.get("prompt", ""),
                attempts=join(_attempt(a) for a in ps.get("attempts", [])),
            )
        )
    table = h(
        '<table class="phases"><thead><tr><th>Phase</th><th>Kind</th><th>Status</th>'
        "<th>Attempts</th><th>Wall time</th></tr></thead><tbody>{r}</tbody></table>",
        r=join(rows),
    )
    return h("{t}{s}", t=table, s=join(sections))


def event_row(e: Mapping[str, Any]) -> Safe:
    rest = {k: v for k, v in e.items() if k not in ("ts", "event", "plan")}
    return h(
        "<tr><td>{ts}</td><td>{ev}</td><td><code>{rest}</code></td></tr>",
        ts=_time(e.get("ts")),
        ev=e.get("event"),
        rest=_fields(rest),
    )


def _fields(fields: Mapping[str, Any]) -> str:
    out = " ".join(f"{k}={v}" for k, v in fields.items())
    return out if len(out) <= 400 else out[:400] + "…"


def plan_page(detail: Mapping[str, Any], log: Mapping[str, Any] | None, since: int) -> str:
    """`since`: the audit position the page shows events up to (live updates go on from it)."""
    summary = h(
        '<div id="summary"><h1>{plan} {b}</h1><dl>'
        "<dt>Repo</dt><dd><code>{repo}</code></dd><dt>Phase</dt><dd>{phase}</dd>"
        "<dt>Elapsed</dt><dd>{el}</dd><dt>Submitted</dt><dd>{sub}</dd>{where}{reason}</dl></div>",
        plan=detail["plan"],
        b=badge(detail.get("state")),
        repo=detail.get("repo") or "-",
        phase=detail.get("phase") or "-",
        el=elapsed(detail.get("elapsed")),
        sub=_time(detail.get("submitted_at")),
        where=Safe("<dt>Where</dt><dd>archived</dd>") if detail.get("where") == "archive" else "",
        reason=h('<dt>Reason</dt><dd class="reason">{r}</dd>', r=detail["reason"])
        if detail.get("reason")
        else "",
    )
    log_section = Safe("")
    if log is not None:
        log_section = h(
            '<section id="log-section"><h2>Log · {phase} attempt #{n}</h2>'
            '<pre id="log" data-follow="{follow}">{text}</pre></section>',
            phase=log["phase"],
            n=log["attempt"],
            follow=log["follow"],
            text=log["text"],
        )
    events = join(event_row(e) for e in detail.get("events", []))
    content = h(
        '{summary}<section id="phases"><h2>Phases</h2>{phases}</section>{log}'
        '<section><h2>Events</h2><table id="events"><thead><tr><th>Time</th><th>Event</th>'
        "<th>Fields</th></tr></thead><tbody>{events}</tbody></table></section>",
        summary=summary,
        phases=_phases(detail),
        log=log_section,
        events=events,
    )
    return page(
        str(detail["plan"]),
        content,
        kind="plan",
        data={"plan": str(detail["plan"]), "since": str(since)},
    )


def daemon_page(info: Mapping[str, Any]) -> str:
    rows = [
        ("Version", info["version"]),
        ("Uptime", elapsed(info["uptime"])),
        ("Config", info["config"]),
        ("State dir", info["state_dir"]),
        ("Workers", f"{info['running']} running of max_workers = {info['max_workers']}"),
        ("Queued plans", ", ".join(info["queued"]) or "none"),
    ]
    if info.get("parked") is not None:
        rows.append(("Parked or blocked profiles", ", ".join(info["parked"]) or "none"))
    reload = info.get("last_reload")
    rows.append(
        (
            "Last reload",
            f"{reload['event']} at {_time(reload.get('ts'))}"
            + (f": {reload['reason']}" if reload.get("reason") else "")
            if reload
            else "never",
        )
    )
    body = join(h("<tr><th>{k}</th><td>{v}</td></tr>", k=k, v=v) for k, v in rows)
    content = h('<h1>Daemon</h1><table class="daemon" id="daemon">{b}</table>', b=body)
    return page("Daemon", content, kind="daemon")


def login_page(failed: bool, next_path: str = "/") -> str:
    content = h(
        "<h1>Token required</h1><p>This status page asks for the token set in the daemon's "
        "<code>[http] token</code>.</p>{err}"
        '<form method="post" action="/login?next={nxt}"><input type="password" name="token" '
        'autocomplete="current-password" required autofocus> <button type="submit">Open'
        "</button></form>",
        err=Safe('<p class="reason">wrong token</p>') if failed else "",
        nxt=quote(next_path, safe="/"),
    )
    return page("Token", content, kind="login")
