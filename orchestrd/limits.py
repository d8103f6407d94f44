"""What an agent's last words say about its account: a rate or usage limit (with the reset time
it printed) or a login that no longer works. Regexes over the end of a text log, with defaults
for the shapes codex, claude and gemini print; reset times parsed against an injected `now`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import os
import re
import zoneinfo
from collections.abc import Iterable, Sequence

# The end of a log is where an agent says why it stopped; the rest is the work (a worker
# writing a rate limiter prints "rate limit" all day, and that is no limit).
SCAN_LINES = 30

# Rate and usage limits, as the agents print them (tests/agents/limit_*.py print the same).
# A named group `reset` holds the reset time, when the agent printed one.
RATE_LIMIT_PATTERNS = [
    # codex (ChatGPT plans): "You’ve hit your usage limit. Try again at 3:38 PM." / "… or try
    # again at Dec 5th, 2026 3:38 PM." / "Try again later." — U+2019 or a plain apostrophe
    r"You[’']ve hit your usage limit\b.*?"
    r"(?:[Tt]ry again at (?P<reset>[^.\n]*?\d(?:\s?[AaPp]\.?[Mm]\.?)?)\.|$)",
    # codex, claude, gemini API errors: "Rate limit reached for … Please try again in 2s.",
    # "rate_limit_exceeded", "rate_limit_error" (`\b`: a test named test_rate_limit_… is none)
    r"(?i)\brate[ _]limit(?:[ _]exceeded|[ _]reached|_error)\b.*?"
    r"(?:(?:try again|retry) in (?P<reset>(?:[\d.]+\s*(?:ms|[hms]))+)|$)",
    # codex after its retries: "exceeded retry limit, last status: 429 Too Many Requests"
    r"last status: 429\b",
    # claude: "You've hit your session limit · resets 8pm (Europe/Berlin)", also weekly/usage,
    # alone or quoted in its stream-json `result`
    r"(?i)You[’']ve hit your (?:\w+ )?limit\b.*?"
    r"(?:resets (?:at )?(?P<reset>[^·\n\"]*\d[^·\n\"]*?)\s*(?=\"|$)|$)",
    # claude (older): "Claude AI usage limit reached|1749924000"
    r"(?i)usage limit reached(?:\|(?P<reset>\d{9,11}))?",
    # gemini: {"code": 429, … "status": "RESOURCE_EXHAUSTED"}
    r"\bRESOURCE_EXHAUSTED\b",
]

# Logins that no longer work, and accounts that need a person (billing): retrying cannot help.
# Only the agents' own wording: a web app's failing test may well print "401 Unauthorized".
AUTH_PATTERNS = [
    # claude: "Invalid API key · Please run /login", "OAuth token has expired …"
    r"Invalid API key\s*[·∙.-]\s*Please run /login",
    r"(?i)OAuth token has expired",
    r"\bauthentication_error\b",
    r"(?i)credit balance is too low",
    # codex: "Your access token could not be refreshed because your refresh token has expired",
    # "Provided authentication token is expired. Please try signing in again.", 401s, billing
    r"(?i)token could not be refreshed",
    r"(?i)refresh token has expired",
    r"(?i)please try signing in again",
    r"unexpected status 401\b",
    r"Quota exceeded\. Check your plan and billing details",
    # gemini: "Please set an Auth method in your …/settings.json", exit code 41
    r"Please set an Auth method",
]

# Exit codes that mean "log in again", per agent.
AUTH_EXIT_CODES = {"gemini": (41,)}

RESET_CAP = dt.timedelta(days=8)
"""A reset further away than a weekly limit is a misread: back off instead."""


class LimitKind(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    """A rate or usage limit: the profile is parked until its reset."""
    AUTH = "auth"
    """The login is gone (or the account needs a person): the profile is blocked."""


@dataclasses.dataclass(frozen=True)
class LimitHit:
    kind: LimitKind
    message: str
    """The agent's line that said so (stripped, at most 300 characters)."""
    reset_text: str | None = None
    """The reset time as the agent printed it (`3:38 PM`, `8pm (Europe/Berlin)`, `2s`)."""
    reset_at: dt.datetime | None = None
    """The reset as an instant, where the agent's stream gave one (claude's `resetsAt`)."""

    def resume_at(self, now: dt.datetime, local: dt.tzinfo, margin: float) -> dt.datetime | None:
        """When to try again: the reset plus `margin`; None when there is none (back off)."""
        if self.reset_at is not None:
            now = now.astimezone(dt.UTC)
            if self.reset_at - now > RESET_CAP:
                return None
            return max(self.reset_at, now) + dt.timedelta(seconds=margin)
        return resume_at(self.reset_text, now, local, margin)


@dataclasses.dataclass(frozen=True)
class StreamError:
    """An error event of an agent's stream, as far as limits care (see orchestrd.streams)."""

    kind: str
    """`rate_limit`, `auth`, `overloaded` or `other`."""
    message: str
    retrying: bool = False
    resets_at: float | None = None
    """Epoch seconds."""


def agent_of(command: Sequence[str]) -> str | None:
    """Which known agent CLI a profile runs (`codex`, `claude`, `gemini`), from its argv."""
    for arg in command[:4]:
        name = os.path.basename(arg).removesuffix(".js").removesuffix(".exe")
        if name in ("codex", "claude", "gemini"):
            return name
    return None


def auth_exit_codes(command: Sequence[str]) -> tuple[int, ...]:
    return AUTH_EXIT_CODES.get(agent_of(command) or "", ())


def last_lines(text: str, lines: int = SCAN_LINES) -> list[str]:
    return [line for line in text.splitlines()[-lines:] if line.strip()]


def detect(
    text: str,
    rate_limit_patterns: Iterable[str] = RATE_LIMIT_PATTERNS,
    auth_patterns: Iterable[str] = AUTH_PATTERNS,
    lines: int = SCAN_LINES,
) -> LimitHit | None:
    """The last limit or auth line among the last `lines` lines of `text`; on one line an auth
    failure wins (a 401 inside a retry notice is still a 401)."""
    rate = [re.compile(p) for p in rate_limit_patterns]
    auth = [re.compile(p) for p in auth_patterns]
    for line in reversed(last_lines(text, lines)):
        for pattern in auth:
            if pattern.search(line):
                return LimitHit(LimitKind.AUTH, _clip(line))
        for pattern in rate:
            if m := pattern.search(line):
                reset = m.groupdict().get("reset")
                return LimitHit(LimitKind.RATE_LIMIT, _clip(line), reset.strip() if reset else None)
    return None


def judge(
    text: str,
    returncode: int | None,
    rate_limit_patterns: Iterable[str] = RATE_LIMIT_PATTERNS,
    auth_patterns: Iterable[str] = AUTH_PATTERNS,
    auth_exit_codes: Iterable[int] = (),
    errors: Sequence[StreamError] = (),
) -> LimitHit | None:
    """Did an attempt end on its account rather than its work? `returncode` None: it was
    stopped (stalled or silent). An attempt that exited 0 is judged on its work, whatever it
    printed on the way; otherwise the stream's last limit or auth error (one the agent still
    retried counts only for a stopped worker: it retried until stopped), then the exit code,
    then the patterns over the end of the log (`text`, without the prompt)."""
    if returncode == 0:
        return None
    # the reset may come in an earlier event than the last word (claude: its rate_limit_event,
    # then an error result)
    resets = [e.resets_at for e in errors if e.kind == "rate_limit" and e.resets_at]
    for e in reversed(errors):
        if e.kind in ("rate_limit", "auth") and (returncode is None or not e.retrying):
            if e.kind == "auth":
                return LimitHit(LimitKind.AUTH, _clip(e.message))
            reset = dt.datetime.fromtimestamp(resets[-1], dt.UTC) if resets else None
            return LimitHit(LimitKind.RATE_LIMIT, _clip(e.message), reset_at=reset)
    hit = detect(text, rate_limit_patterns, auth_patterns)
    if returncode is not None and returncode in tuple(auth_exit_codes):
        said = f": {hit.message}" if hit is not None else ""
        return LimitHit(LimitKind.AUTH, f"exit code {returncode} (authentication){said}")
    return hit


def _clip(line: str) -> str:
    return line.strip()[:300]


# -- reset times --

_CLOCK = re.compile(
    r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp])?\.?(?:[Mm]\.?)?"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DATE = re.compile(
    r"(?P<mon>[A-Za-z]{3})[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?(?:\s+(?P<year>\d{4}),?)?"
    r"\s+(?:at\s+)?(?P<clock>.*)$"
)
_ZONE = re.compile(r"\((?P<zone>[A-Za-z_]+(?:/[A-Za-z_+\-0-9]+)*)\)")
_RELATIVE = re.compile(r"([\d.]+)\s*(ms|h|m|s)")
_RELATIVE_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(text: str, now: dt.datetime, local: dt.tzinfo) -> dt.datetime | None:
    """The reset an agent printed, as an aware UTC datetime; None when it cannot be read.

    Forms: `2s`, `1m30s`, `37.6s` (from now); `1749924000` (epoch seconds); `3:38 PM`, `8pm`
    (the next such time, in `local` or the zone in parentheses); `Dec 5th, 2026 3:38 PM`.
    A clock time of the current minute (agents print minutes) is now, not tomorrow.
    """
    text = text.strip()
    now = now.astimezone(dt.UTC)
    if re.fullmatch(r"\d{9,11}", text):
        return dt.datetime.fromtimestamp(int(text), dt.UTC)
    if re.fullmatch(r"(?:[\d.]+\s*(?:ms|h|m|s)\s*)+", text):
        try:
            seconds = sum(float(n) * _RELATIVE_UNIT[u] for n, u in _RELATIVE.findall(text))
        except ValueError:
            return None
        return now + dt.timedelta(seconds=seconds)
    zone = local
    if m := _ZONE.search(text):
        try:
            zone = zoneinfo.ZoneInfo(m.group("zone"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            zone = local
        text = (text[: m.start()] + text[m.end() :]).strip()
    there = now.astimezone(zone)
    if m := _DATE.fullmatch(text):
        month = _MONTHS.get(m.group("mon").lower())
        clock = _clock(m.group("clock"))
        if month is None or clock is None:
            return None
        year = int(m.group("year") or there.year)
        try:
            when = dt.datetime(year, month, int(m.group("day")), *clock, tzinfo=zone)
        except ValueError:
            return None
        if m.group("year") is None and when < there - dt.timedelta(days=1):
            when = when.replace(year=year + 1)  # "Jan 2" printed on Dec 31
        return when.astimezone(dt.UTC)
    clock = _clock(text)
    if clock is None:
        return None
    when = dt.datetime.combine(there.date(), dt.time(*clock), tzinfo=zone)
    if when + dt.timedelta(minutes=2) < there:
        when = dt.datetime.combine(there.date() + dt.timedelta(days=1), dt.time(*clock), zone)
    return when.astimezone(dt.UTC)


def _clock(text: str) -> tuple[int, int, int] | None:
    m = _CLOCK.fullmatch(text.strip())
    if m is None or (m.group("m") is None and m.group("ampm") is None):
        return None  # a bare number is no time of day
    hour, minute, second = int(m.group("h")), int(m.group("m") or 0), int(m.group("s") or 0)
    if ampm := m.group("ampm"):
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm in "Pp" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return hour, minute, second


def resume_at(
    reset_text: str | None, now: dt.datetime, local: dt.tzinfo, margin: float
) -> dt.datetime | None:
    """When to try again after a limit: the printed reset plus `margin` (reset times are coarse
    and clocks differ), never before now + margin; None when there is no usable reset time
    (the caller backs off)."""
    if not reset_text:
        return None
    reset = parse_reset(reset_text, now, local)
    now = now.astimezone(dt.UTC)
    if reset is None or reset - now > RESET_CAP:
        return None
    return max(reset, now) + dt.timedelta(seconds=margin)


def local_zone() -> dt.tzinfo:
    """The machine's zone, in which codex prints its reset times."""
    zone = dt.datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone
