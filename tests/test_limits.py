"""Limit and login failures found at the end of an agent's log, in the shapes the real CLIs
print (see tests/agents/limit_*.py), and the reset times they name."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import zoneinfo
from pathlib import Path

import pytest

from orchestrd.limits import (
    LimitHit,
    LimitKind,
    StreamError,
    agent_of,
    auth_exit_codes,
    detect,
    judge,
    local_zone,
    parse_reset,
    resume_at,
)

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NY = zoneinfo.ZoneInfo("America/New_York")
# Friday 4 Dec 2026, 14:20:30 in New York
NOW = dt.datetime(2026, 12, 4, 14, 20, 30, tzinfo=NY)


def rate(message: str, reset: str | None) -> LimitHit:
    return LimitHit(LimitKind.RATE_LIMIT, message, reset)


@pytest.mark.parametrize(
    ("line", "reset"),
    [
        # codex, ChatGPT usage limit (U+2019), as `error` and `turn.failed` lines
        ("You’ve hit your usage limit. Try again at 3:38 PM.", "3:38 PM"),
        (
            "You’ve hit your usage limit. Try again at Dec 5th, 2026 3:38 PM.",
            "Dec 5th, 2026 3:38 PM",
        ),
        (
            "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/pricing) or try "
            "again at Dec 5th, 2026 3:38 PM.",
            "Dec 5th, 2026 3:38 PM",
        ),
        ("You’ve hit your usage limit. Try again later.", None),
        (
            '{"type":"turn.failed","error":{"message":"You’ve hit your usage limit. Try again '
            'at 3:38 PM."}}',
            "3:38 PM",
        ),
        # codex: 429 after its retries; a limit inside the stream
        (
            '{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 '
            'Too Many Requests, request id: 9c1e-77"}}',
            None,
        ),
        (
            "rate limit exceeded: Rate limit reached for gpt-5 in organization org-1 on tokens "
            "per min (TPM): Limit 30000, Used 29000. Please try again in 2s.",
            "2s",
        ),
        ("Rate limit reached for o3. Please try again in 1m30s.", "1m30s"),
        # claude
        ("You've hit your session limit · resets 8pm (Europe/Berlin)", "8pm (Europe/Berlin)"),
        ("Claude AI usage limit reached|1765000000", "1765000000"),
        # gemini
        (
            '[API Error: {"error":{"code":429,"message":"Resource has been exhausted (e.g. check '
            'quota).","status":"RESOURCE_EXHAUSTED"}}]',
            None,
        ),
    ],
)
def test_rate_limit_lines_are_found_with_their_reset(line: str, reset: str | None) -> None:
    log = f"working on it\nran the tests\n{line}\n"
    assert detect(log) == rate(line.strip(), reset)


@pytest.mark.parametrize(
    "line",
    [
        "Invalid API key · Please run /login",
        'API Error: 401 {"type":"error","error":{"type":"authentication_error","message":'
        '"OAuth token has expired. Please obtain a new token or refresh your existing token."}}',
        "Your access token could not be refreshed because your refresh token has expired. "
        "Please log out and sign in again.",
        "Quota exceeded. Check your plan and billing details.",
        "Please set an Auth method in your /home/u/.gemini/settings.json",
    ],
)
def test_login_failures_are_auth(line: str) -> None:
    hit = detect(f"{line}\n")
    assert hit is not None and hit.kind is LimitKind.AUTH and hit.message == line


@pytest.mark.parametrize(
    "line",
    [
        "FAILED tests/test_rate_limit.py::test_rate_limit_exceeded - AssertionError",
        "def rate_limited(fn): ...  # our own rate limiter",
        "expected 401 Unauthorized, got 200",
        "Reconnecting... waiting for network",
    ],
)
def test_work_about_limits_is_no_limit(line: str) -> None:
    assert detect(f"{line}\n") is None


def test_only_the_last_lines_count() -> None:
    early = "You’ve hit your usage limit. Try again at 3:38 PM.\n"
    assert detect(early + "retried, fine\n" * 40) is None
    assert detect(early + "retried, fine\n" * 5) is not None


def test_profile_patterns_replace_the_defaults_with_a_reset_group() -> None:
    text = "quota hit, back at 9:05 PM\n"
    assert detect(text) is None
    hit = detect(text, [r"quota hit, back at (?P<reset>.+)$"], [])
    assert hit == rate("quota hit, back at 9:05 PM", "9:05 PM")


def test_agent_and_auth_exit_codes_from_the_command() -> None:
    assert agent_of(["/usr/local/bin/gemini", "-p", "{prompt}"]) == "gemini"
    assert agent_of(["npx", "@openai/codex", "exec"]) == "codex"
    assert agent_of(["python3", "agent.py"]) is None
    assert agent_of(["codex", "exec", "{prompt}"]) == "codex"
    assert auth_exit_codes(["gemini", "-p"]) == (41,)
    assert auth_exit_codes(["claude", "-p"]) == ()


def utc(*args: int, tz: dt.tzinfo = NY) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz).astimezone(dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3:38 PM", utc(2026, 12, 4, 15, 38)),
        ("3:38 pm", utc(2026, 12, 4, 15, 38)),
        ("11:05 AM", utc(2026, 12, 5, 11, 5)),  # passed today: tomorrow
        ("2:20 PM", utc(2026, 12, 4, 14, 20)),  # this minute (minute resolution): now
        ("Dec 5th, 2026 3:38 PM", utc(2026, 12, 5, 15, 38)),
        ("Jan 2nd, 2027 12:01 AM", utc(2027, 1, 2, 0, 1)),
        ("8pm (Europe/Berlin)", utc(2026, 12, 4, 20, 0, tz=BERLIN) + dt.timedelta(days=1)),
        ("11pm (Europe/Berlin)", utc(2026, 12, 4, 23, 0, tz=BERLIN)),
        ("8pm (Nowhere/Atlantis)", utc(2026, 12, 4, 20, 0)),
        ("2s", NOW.astimezone(dt.UTC) + dt.timedelta(seconds=2)),
        ("1m30s", NOW.astimezone(dt.UTC) + dt.timedelta(seconds=90)),
        ("37.6s", NOW.astimezone(dt.UTC) + dt.timedelta(seconds=37.6)),
        ("250ms", NOW.astimezone(dt.UTC) + dt.timedelta(seconds=0.25)),
        ("1765000000", dt.datetime.fromtimestamp(1765000000, dt.UTC)),
        ("soon", None),
        ("25:00", None),
        ("Foo 5th, 2026 3:38 PM", None),
    ],
)
def test_reset_times_in_the_agents_forms(text: str, expected: dt.datetime | None) -> None:
    got = parse_reset(text, NOW, NY)
    assert got == expected
    assert got is None or got.tzinfo is dt.UTC


def test_resume_adds_the_margin_and_never_lies_in_the_past() -> None:
    now = NOW.astimezone(dt.UTC)
    assert resume_at("3:38 PM", NOW, NY, 60) == utc(2026, 12, 4, 15, 39)
    assert resume_at("2:20 PM", NOW, NY, 60) == now + dt.timedelta(seconds=60)
    assert resume_at(None, NOW, NY, 60) is None
    assert resume_at("Try again later", NOW, NY, 60) is None
    assert resume_at("Dec 5th, 2029 3:38 PM", NOW, NY, 60) is None  # a misread: back off


AGENTS = Path(__file__).parent / "agents"


def agent_output(tmp_path: Path, name: str, **env: str) -> tuple[int, str]:
    """The agent's stdout, then its stderr (header and prompt: the daemon strips the prompt)."""
    run = subprocess.run(
        [sys.executable, str(AGENTS / f"{name}.py"), "do the phase"],
        cwd=tmp_path,
        env={**os.environ, "ORCHESTRD_PHASE_ID": "P01", "ORCHESTRD_ATTEMPT": "1", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("limit", "reset"),
    [
        ("at", r"\d{1,2}:\d{2} [AP]M"),
        ("date", r"[A-Z][a-z]{2} \d{1,2}(st|nd|rd|th), \d{4} "),
        ("later", None),
        ("in", r"0\.3s"),
        ("429", None),
    ],
)
def test_the_fake_codex_limits_are_found(tmp_path: Path, limit: str, reset: str | None) -> None:
    code, out = agent_output(tmp_path, "limit_codex", AGENT_LIMIT=limit)
    hit = detect(out)
    assert code == 1 and hit is not None and hit.kind is LimitKind.RATE_LIMIT
    if reset is None:
        assert hit.reset_text is None
    else:
        assert hit.reset_text is not None and re.match(reset, hit.reset_text)
        assert parse_reset(hit.reset_text, dt.datetime.now(dt.UTC), local_zone()) is not None


def test_the_fake_claude_limit_and_gemini_login_are_found(tmp_path: Path) -> None:
    code, out = agent_output(tmp_path, "limit_claude")
    result = next(line for line in out.splitlines() if '"type": "result"' in line)
    assert json.loads(result)["is_error"]
    assert code == 1 and detect(out) == rate(result, "8pm (Europe/Berlin)")
    code, out = agent_output(tmp_path, "auth_gemini")
    hit = detect(out)
    assert code == 41 and hit is not None and hit.kind is LimitKind.AUTH


def test_judge_leaves_a_successful_exit_to_the_checks_and_orders_the_evidence() -> None:
    text = "You’ve hit your usage limit. Try again later.\n"
    assert judge(text, 0) is None
    assert judge(text, 1) == rate("You’ve hit your usage limit. Try again later.", None)
    assert judge(text, None) is not None  # stalled while limited
    assert judge("all fine\n", 1) is None
    auth = judge("", 41, auth_exit_codes=(41,))
    assert auth == LimitHit(LimitKind.AUTH, "exit code 41 (authentication)")
    retry = StreamError("rate_limit", "Reconnecting... 1/5 (429)", retrying=True)
    assert judge("", 1, errors=[retry]) is None
    assert judge("", None, errors=[retry]) == rate("Reconnecting... 1/5 (429)", None)
    final = StreamError("rate_limit", "session limit", resets_at=1765000000)
    hit = judge(text, 1, errors=[retry, final, StreamError("other", "bye")])
    assert hit is not None and hit.reset_at == dt.datetime.fromtimestamp(1765000000, dt.UTC)
    assert judge("", 1, errors=[StreamError("auth", "401")]) == LimitHit(LimitKind.AUTH, "401")


def test_a_stream_reset_instant_is_used_with_the_margin() -> None:
    now = NOW.astimezone(dt.UTC)
    hit = LimitHit(LimitKind.RATE_LIMIT, "x", reset_at=now + dt.timedelta(seconds=30))
    assert hit.resume_at(NOW, NY, 5) == now + dt.timedelta(seconds=35)
    far = LimitHit(LimitKind.RATE_LIMIT, "x", reset_at=now + dt.timedelta(days=30))
    assert far.resume_at(NOW, NY, 5) is None
    assert rate("x", "2s").resume_at(NOW, NY, 1) == now + dt.timedelta(seconds=3)
