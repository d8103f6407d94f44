"""Stream adapters: the fake agents' recorded-shape streams (tests/agents/_streams.py), read
in any chunking, give the totals the streams said; garbage, torn and over-long lines are
counted and never fatal; unknown event types are ignored."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrd.streams import (
    FORMATS,
    Error,
    FileChange,
    LineSplitter,
    Result,
    Session,
    StreamEvent,
    StreamReader,
    Tool,
    Turn,
    Usage,
    error_kind,
    open_stream,
)

AGENTS = Path(__file__).parent / "agents"
OUTPUT = {"codex": "codex-json", "claude": "claude-stream-json", "gemini": "gemini-stream-json"}


def replay(tmp_path: Path, agent: str, **knobs: str) -> tuple[bytes, int, dict[str, Any]]:
    """Run tests/agents/stream_<agent>.py as a worker would (stderr into the same pipe): its
    output, exit code, and what its stream said in total."""
    env = {
        **os.environ,
        "ORCHESTRD_PHASE_ID": "P01",
        "ORCHESTRD_ATTEMPT": "1",
        "ORCHESTRD_REPORT": "report.md",
        **knobs,
    }
    proc = subprocess.run(
        [sys.executable, str(AGENTS / f"stream_{agent}.py"), "Do phase P01."],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=20,
        check=False,
    )
    said = json.loads((tmp_path / ".agent" / "stream-P01-1.json").read_text())
    return proc.stdout, proc.returncode, said


def read_all(
    output: str, data: bytes, sizes: list[int] | None = None, returncode: int | None = 0
) -> tuple[list[StreamEvent], StreamReader]:
    reader = open_stream(output)
    assert reader is not None
    events: list[StreamEvent] = []
    pos = 0
    for size in sizes or [len(data)]:
        events += reader.feed(data[pos : pos + size])
        pos += size
    events += reader.feed(data[pos:])
    events += reader.finish(returncode)
    return events, reader


def last_usage(events: list[StreamEvent]) -> Usage | None:
    usages = [e for e in events if isinstance(e, Usage)]
    return usages[-1] if usages else None


def assert_said(events: list[StreamEvent], said: dict[str, Any]) -> None:
    usage = last_usage(events) or Usage()
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (
        said["input"],
        said["cached"],
        said["output"],
    )
    assert usage.cost_usd == said["cost"]


@pytest.mark.parametrize("agent", ["codex", "claude", "gemini"])
def test_totals_equal_what_the_stream_said_in_any_chunking(tmp_path: Path, agent: str) -> None:
    data, code, said = replay(tmp_path, agent, STREAM_STEPS="4", STREAM_GARBAGE="1")
    assert code == 0 and said["input"] > 0
    rng = random.Random(13)
    chunkings = [None, [1] * len(data), [rng.randint(1, 97) for _ in range(len(data) // 40)]]
    for sizes in chunkings:
        events, reader = read_all(OUTPUT[agent], data, sizes)
        assert_said(events, said)
        # the banner and prompt echo on stderr, and the mixed-in garbage, are counted
        assert reader.unparsed >= 4
        assert reader.events == len(events)
        session = next(e for e in events if isinstance(e, Session))
        assert session.id == "0199a213-81c0-7800-8aa1-bbab2a035a53"
        result = [e for e in events if isinstance(e, Result)]
        assert len(result) == 1 and result[0].ok
        assert any(isinstance(e, Tool) and "ls" in e.command for e in events)


def test_codex_usage_is_the_threads_running_total(tmp_path: Path) -> None:
    data, _, said = replay(
        tmp_path,
        "codex",
        STREAM_STEPS="3",
        STREAM_INPUT="1000",
        STREAM_CACHED="300",
        STREAM_OUTPUT="50",
    )
    events, _ = read_all("codex-json", data)
    usages = [e for e in events if isinstance(e, Usage)]
    # each turn.completed is the total so far, with the cached tokens taken out of the input
    assert [(u.input_tokens, u.cached_input_tokens, u.output_tokens) for u in usages] == [
        (700, 300, 50),
        (1400, 600, 100),
        (2100, 900, 150),
    ]
    assert usages[-1].tokens == 3150 and usages[-1].cost_usd is None
    assert usages[-1].model is None  # codex names no model
    assert [e for e in events if isinstance(e, Turn)] == [Turn()] * 3
    tools = [e for e in events if isinstance(e, Tool)]
    assert tools == [Tool("/bin/bash -lc ls", 0)] * 3  # item.started is not a second run
    changes = [e for e in events if isinstance(e, FileChange)]
    assert changes[0].paths == (f"{tmp_path}/src/step1.py",)
    # the `error` item (model metadata not found) is a notice, not an error
    assert not [e for e in events if isinstance(e, Error)]
    assert events[-1] == Result(True, "Turn 3 done.")


def test_codex_ignores_stream_lines_echoed_before_its_thread(tmp_path: Path) -> None:
    """A remediation prompt quotes the failed worker's log, and codex echoes its prompt into
    the same output before its thread starts: that is not this run's usage."""
    stale = b'{"type":"turn.completed","usage":{"input_tokens":999999,"output_tokens":9}}\n'
    data, _, said = replay(tmp_path, "codex")
    events, _ = read_all("codex-json", b"user\n" + stale + data)
    assert_said(events, said)
    assert all(u.input_tokens < 999999 for u in events if isinstance(u, Usage))


def test_codex_limit_and_retries(tmp_path: Path) -> None:
    data, code, said = replay(tmp_path, "codex", STREAM_END="limit", STREAM_STEPS="2")
    events, _ = read_all("codex-json", data, returncode=code)
    assert code == 1
    assert_said(events, said)  # the failed turn carries no usage: the first turn's stays
    errors = [e for e in events if isinstance(e, Error)]
    assert errors and all(e.kind == "rate_limit" and not e.retrying for e in errors)
    assert "usage limit" in errors[-1].message
    assert events[-1] == Result(False, errors[-1].message)
    retry = (
        b'{"type":"error","message":"Reconnecting... 1/5 (exceeded retry limit, last '
        b'status: 429 Too Many Requests, request id: abc)"}\n'
    )
    reader = open_stream("codex-json")
    assert reader is not None
    reader.feed(b'{"type":"thread.started","thread_id":"t"}\n')
    (err,) = reader.feed(retry)
    assert isinstance(err, Error) and err.kind == "rate_limit" and err.retrying


def test_claude_reported_cost_and_repeated_message_usage(tmp_path: Path) -> None:
    data, _, said = replay(
        tmp_path,
        "claude",
        STREAM_STEPS="3",
        STREAM_INPUT="1000",
        STREAM_CACHED="300",
        STREAM_OUTPUT="50",
        STREAM_COST="0.02",
    )
    events, _ = read_all("claude-stream-json", data)
    usages = [e for e in events if isinstance(e, Usage)]
    # one message = two lines repeating its usage: counted once; the result's totals close it
    assert [u.tokens for u in usages] == [1050, 1050, 2100, 2100, 3150, 3150, 3150]
    assert [u.cost_usd for u in usages[:-1]] == [None] * 6
    assert usages[-1].cost_usd == pytest.approx(0.06) == said["cost"]
    assert usages[-1].model == "claude-sonnet-4-5-20250929"
    assert (usages[-1].input_tokens, usages[-1].cached_input_tokens) == (2100, 900)
    retry = [e for e in events if isinstance(e, Error)]
    assert retry == [Error("API error 529; retry 1 of 10", "overloaded", retrying=True)]
    assert events[-1] == Result(True, "Done.", "success")


def test_claude_session_limit_and_rejected_rate_limit(tmp_path: Path) -> None:
    data, code, said = replay(tmp_path, "claude", STREAM_END="limit")
    events, _ = read_all("claude-stream-json", data, returncode=code)
    assert_said(events, said)
    errors = [e for e in events if isinstance(e, Error) and not e.retrying]
    assert [e.kind for e in errors] == ["rate_limit"]
    assert isinstance(events[-1], Result) and not events[-1].ok
    reader = open_stream("claude-stream-json")
    assert reader is not None
    (err,) = reader.feed(
        b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected",'
        b'"resetsAt":1764874800,"rateLimitType":"five_hour"}}\n'
    )
    assert err == Error("five_hour limit reached", "rate_limit", resets_at=1764874800.0)


def test_claude_old_cost_field() -> None:
    reader = open_stream("claude-stream-json")
    assert reader is not None
    events = reader.feed(
        b'{"type":"result","subtype":"success","is_error":false,"cost_usd":0.5,"result":"ok"}\n'
    )
    assert isinstance(events[0], Usage) and events[0].cost_usd == 0.5


def test_gemini_counts_thoughts_as_output_and_maps_exit_codes(tmp_path: Path) -> None:
    data, _, said = replay(
        tmp_path,
        "gemini",
        STREAM_STEPS="2",
        STREAM_INPUT="1000",
        STREAM_CACHED="300",
        STREAM_OUTPUT="50",
        STREAM_REASONING="20",
    )
    events, _ = read_all("gemini-stream-json", data)
    usage = last_usage(events)
    assert usage is not None and usage.tokens == 2140  # total_tokens of the stats
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (1400, 600, 140)
    assert usage.model == "gemini-2.5-pro" and usage.cost_usd is None
    assert events[-1] == Result(True, "I will do step 2.", "success")
    reader = open_stream("gemini-stream-json")
    assert reader is not None
    events = reader.finish(41)
    assert events == [
        Error("gemini exit 41: authentication failed", "auth"),
        Result(False, "", "authentication failed"),
    ]


def test_gemini_error_result(tmp_path: Path) -> None:
    data, code, said = replay(tmp_path, "gemini", STREAM_END="limit")
    events, _ = read_all("gemini-stream-json", data, returncode=code)
    assert_said(events, said)
    assert [e.kind for e in events if isinstance(e, Error)][:1] == ["rate_limit"]
    assert isinstance(events[-1], Result) and not events[-1].ok


@pytest.mark.parametrize("agent", ["codex", "claude", "gemini"])
def test_a_stream_cut_off_mid_line(tmp_path: Path, agent: str) -> None:
    data, code, said = replay(tmp_path, agent, STREAM_END="cut")
    assert not data.endswith(b"\n")
    events, reader = read_all(OUTPUT[agent], data, returncode=code)
    assert_said(events, said)
    assert reader.unparsed >= 1  # the torn last line


def test_a_last_line_without_its_line_break_is_read() -> None:
    events, reader = read_all(
        "claude-stream-json",
        b'{"type":"result","subtype":"success","is_error":false,"total_cost_usd":1,"result":"x"}',
    )
    assert isinstance(events[0], Usage) and reader.unparsed == 0


def test_garbage_unknown_types_and_odd_fields_are_never_fatal() -> None:
    lines = [
        b"\xff\xfe\x00garbage",
        b"{",
        b"{}",
        b"[]",
        b'"text"',
        b'{"type": 5}',
        b'{"type":"turn.completed","usage":"many"}',
        b'{"type":"turn.completed","usage":{"input_tokens":"12","output_tokens":true}}',
        b'{"type":"item.completed","item":[1]}',
        b'{"type":"error","message":null}',
        b'{"type":"brand.new","payload":{"deep":[1,2,{"x":null}]}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000,
        b'{"type":"assistant","message":{"usage":{"input_tokens":-5,"output_tokens":1e400}}}',
        b'{"type":"result","stats":{"input_tokens":1.5e3,"cached":null},"status":7}',
        b'{"type":"turn.completed","usage":{"input_tokens":1' + b"0" * 400 + b"}}",
        b'{"type":"result","subtype":"success","total_cost_usd":-1' + b"0" * 400 + b"}",
    ]
    for output in FORMATS:
        reader = open_stream(output)
        assert reader is not None
        reader.feed(b'{"type":"thread.started","thread_id":"t"}\n')
        for line in lines:
            for event in reader.feed(line + b"\n"):
                if isinstance(event, Usage):
                    assert (
                        min(event.input_tokens, event.cached_input_tokens, event.output_tokens) >= 0
                    )
        assert reader.unparsed >= 6


def test_text_output_reads_nothing() -> None:
    assert open_stream("text") is None


def test_over_long_lines_are_skipped_not_buffered() -> None:
    reader = StreamReader(FORMATS["claude-stream-json"](), max_line=200)
    huge = b'{"type":"system","subtype":"init","session_id":"' + b"x" * 10_000 + b'"}\n'
    good = b'{"type":"system","subtype":"init","session_id":"s","model":"m"}\n'
    events = []
    for i in range(0, len(huge), 64):  # arriving in pieces, as from a pipe
        events += reader.feed(huge[i : i + 64])
        assert len(reader.lines._buf) <= 200
    events += reader.feed(good)
    assert events == [Session("s", "m")]
    assert reader.skipped == 1
    # an over-long line at the very end (no line break) is skipped too
    reader.feed(b"{" + b"y" * 500)
    assert reader.finish(0) == [] and reader.skipped == 2


def test_line_splitter_edges() -> None:
    s = LineSplitter(max_line=5)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde") == [b"abc"]
    assert s.feed(b"\n\n") == [b"de", b""]
    assert s.feed(b"123456\nok\n") == [b"ok"] and s.skipped == 1
    assert s.feed(b"12345") == [] and s.feed(b"\n") == [b"12345"]  # exactly the cap is kept
    assert s.feed(b"1234") == [] and s.feed(b"56") == [] and s.skipped == 2
    assert s.feed(b"789\nx") == [] and s.finish() == b"x" and s.finish() is None


@pytest.mark.parametrize(
    ("message", "status", "kind"),
    [
        ("exceeded retry limit, last status: 429 Too Many Requests", None, "rate_limit"),
        (
            "You\u2019ve hit your usage limit. Try again at Dec 5th, 2026 3:38 PM.",
            None,
            "rate_limit",
        ),
        ("You've hit your session limit \u00b7 resets 8pm (Europe/Berlin)", None, "rate_limit"),
        ("Quota exceeded. Check your plan and billing details.", None, "rate_limit"),
        ("401 Unauthorized: invalid API key", None, "auth"),
        ("Overloaded", None, "overloaded"),
        ("API error", 529, "overloaded"),
        ("API error", 401, "auth"),
        ("stream disconnected before completion", None, "other"),
    ],
)
def test_error_kinds(message: str, status: int | None, kind: str) -> None:
    assert error_kind(message, status) == kind
