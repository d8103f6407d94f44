"""Streams in the shapes agent CLIs print (/work/shared/AGENTS.md: codex-cli 0.169 `exec --json`,
`claude -p --output-format stream-json --verbose`, `gemini -p -o stream-json`), replayed by the
stream_* fake agents at speed.

Knobs (environment): STREAM_STEPS model requests (codex: turns of the thread, each closed by a
`turn.completed` with the thread's running total), each spending STREAM_INPUT input tokens of
which STREAM_CACHED from the cache, STREAM_OUTPUT output tokens (STREAM_REASONING of them
reasoning) and, for claude, STREAM_COST dollars; STREAM_DELAY seconds between lines;
STREAM_MODEL; STREAM_GARBAGE=1 mixes in lines that are no events; STREAM_END = `ok`, `cut`
(the stream stops mid-line, exit 1) or `limit` (a usage limit ends the run, exit 1);
STREAM_STEPS_LATER replaces STREAM_STEPS for attempts after the first.

Every replay writes what its stream said in total to `.agent/stream-<phase>-<attempt>.json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Line = dict[str, Any] | bytes


def knob(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


STEPS = int(knob("STREAM_STEPS", 3))
if int(os.environ.get("ORCHESTRD_ATTEMPT", "1")) > 1:  # a later attempt may do less
    STEPS = int(knob("STREAM_STEPS_LATER", STEPS))
INPUT = int(knob("STREAM_INPUT", 1200))
CACHED = int(knob("STREAM_CACHED", 400))
OUTPUT = int(knob("STREAM_OUTPUT", 150))
REASONING = int(knob("STREAM_REASONING", 40))
COST = knob("STREAM_COST", 0.0125)
DELAY = knob("STREAM_DELAY", 0)
END = os.environ.get("STREAM_END", "ok")
GARBAGE = os.environ.get("STREAM_GARBAGE") == "1"
SESSION = "0199a213-81c0-7800-8aa1-bbab2a035a53"
NOISE: list[bytes] = [
    b"not json at all\n",
    b"\x7fELF\x00\x01\xff\xfe binary\n",
    b'{"type": "turn.comp\n',
    b"[1, 2, 3]\n",
    b'{"type": "future.event", "x": {"y": 1}}\n',
]


def emit(lines: Iterator[Line]) -> None:
    out = sys.stdout.buffer
    for i, line in enumerate(lines):
        if isinstance(line, bytes):
            out.write(line)
        else:
            out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if GARBAGE and i % 3 == 1:
            out.write(NOISE[i % len(NOISE)])
        out.flush()
        if DELAY:
            time.sleep(DELAY)


def record(said: dict[str, Any]) -> None:
    phase, attempt = os.environ.get("ORCHESTRD_PHASE_ID"), os.environ.get("ORCHESTRD_ATTEMPT")
    path = Path(".agent") / f"stream-{phase}-{attempt}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(said), encoding="utf-8")


def codex() -> Iterator[Line]:
    """One thread; each turn's `turn.completed.usage` is the thread's running total, and its
    `input_tokens` includes `cached_input_tokens`."""
    yield {"type": "thread.started", "thread_id": SESSION}
    n = 0
    for turn in range(1, STEPS + 1):
        yield {"type": "turn.started"}
        if turn == 1:
            yield {
                "type": "item.completed",
                "item": {
                    "id": "item_0",
                    "type": "error",
                    "message": "Model metadata for `scripted-model` not found. Defaulting to "
                    "fallback metadata; this can degrade performance and cause issues.",
                },
            }
        yield {
            "type": "item.completed",
            "item": {
                "id": f"item_{(n := n + 1)}",
                "type": "reasoning",
                "text": "**Listing the files**",
            },
        }
        cmd = {
            "id": f"item_{(n := n + 1)}",
            "type": "command_execution",
            "command": "/bin/bash -lc ls",
            "aggregated_output": "",
            "exit_code": None,
            "status": "in_progress",
        }
        yield {"type": "item.started", "item": cmd}
        yield {
            "type": "item.completed",
            "item": {
                **cmd,
                "aggregated_output": "README.md\nsrc\n",
                "exit_code": 0,
                "status": "completed",
            },
        }
        yield {
            "type": "item.completed",
            "item": {
                "id": f"item_{(n := n + 1)}",
                "type": "file_change",
                "changes": [{"path": f"{os.getcwd()}/src/step{turn}.py", "kind": "add"}],
                "status": "completed",
            },
        }
        if END == "limit" and turn == STEPS:
            message = "You\u2019ve hit your usage limit. Try again at 3:38 PM."
            yield {"type": "error", "message": message}
            yield {"type": "turn.failed", "error": {"message": message}}
            return
        yield {
            "type": "item.completed",
            "item": {
                "id": f"item_{(n := n + 1)}",
                "type": "agent_message",
                "text": f"Turn {turn} done.",
            },
        }
        if END == "cut" and turn == STEPS:
            yield b'{"type":"turn.completed","usage":{"input_tokens":'
            return
        yield {
            "type": "turn.completed",
            "usage": {
                "input_tokens": INPUT * turn,
                "cached_input_tokens": CACHED * turn,
                "cache_write_input_tokens": 0,
                "output_tokens": OUTPUT * turn,
                "reasoning_output_tokens": REASONING * turn,
            },
        }


def codex_said() -> dict[str, Any]:
    turns = STEPS - (END != "ok")  # a failed or cut last turn reports nothing
    return {
        "input": (INPUT - CACHED) * turns,
        "cached": CACHED * turns,
        "output": OUTPUT * turns,
        "cost": None,
    }


def claude(model: str) -> Iterator[Line]:
    """Each assistant message comes as one line per content block, repeating its usage; the
    result carries the totals and Claude Code's own `total_cost_usd`."""
    yield {
        "type": "system",
        "subtype": "init",
        "cwd": os.getcwd(),
        "session_id": SESSION,
        "tools": ["Bash", "Edit", "Read", "Write"],
        "mcp_servers": [],
        "model": model,
        "permissionMode": "default",
        "apiKeySource": "none",
        "output_style": "default",
    }
    usage = {
        "input_tokens": INPUT - CACHED - 100,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": CACHED,
        "output_tokens": OUTPUT,
        "service_tier": "standard",
    }
    for step in range(1, STEPS + 1):
        message = {
            "id": f"msg_01{step:04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "stop_reason": None,
            "usage": usage,
        }
        yield {
            "type": "assistant",
            "message": {**message, "content": [{"type": "text", "text": f"Step {step}."}]},
            "parent_tool_use_id": None,
            "session_id": SESSION,
        }
        yield {
            "type": "assistant",
            "message": {
                **message,
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"toolu_{step}",
                        "name": "Bash",
                        "input": {"command": "ls", "description": "List files"},
                    }
                ],
            },
            "parent_tool_use_id": None,
            "session_id": SESSION,
        }
        yield {
            "type": "user",
            "message": {
                "role": "user",
                "content": [
                    {
                        "tool_use_id": f"toolu_{step}",
                        "type": "tool_result",
                        "content": "README.md",
                        "is_error": False,
                    }
                ],
            },
            "parent_tool_use_id": None,
            "session_id": SESSION,
        }
        if step == 1:
            yield {
                "type": "system",
                "subtype": "api_retry",
                "attempt": 1,
                "max_retries": 10,
                "retry_delay_ms": 500,
                "error_status": 529,
                "session_id": SESSION,
            }
            yield {
                "type": "rate_limit_event",
                "rate_limit_info": {
                    "status": "allowed_warning",
                    "resetsAt": 1764874800,
                    "rateLimitType": "five_hour",
                    "utilization": 0.8,
                },
                "session_id": SESSION,
            }
    if END == "cut":
        yield b'{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.'
        return
    total = {k: v * STEPS if isinstance(v, int) else v for k, v in usage.items()}
    limited = END == "limit"
    text = "You've hit your session limit \u00b7 resets 8pm (Europe/Berlin)" if limited else "Done."
    yield {
        "type": "result",
        "subtype": "success",
        "is_error": limited,
        "duration_ms": 1234,
        "duration_api_ms": 1100,
        "num_turns": STEPS,
        "result": text,
        "session_id": SESSION,
        "total_cost_usd": round(COST * STEPS, 6),
        "usage": total,
        "modelUsage": {
            model: {
                "inputTokens": total["input_tokens"],
                "outputTokens": total["output_tokens"],
                "cacheReadInputTokens": total["cache_read_input_tokens"],
                "cacheCreationInputTokens": total["cache_creation_input_tokens"],
                "costUSD": round(COST * STEPS, 6),
            }
        },
        "permission_denials": [],
    }


def claude_said() -> dict[str, Any]:
    # cut: the result never came, so only the messages' counts are known, and no cost
    return {
        "input": (INPUT - CACHED) * STEPS,
        "cached": CACHED * STEPS,
        "output": OUTPUT * STEPS,
        "cost": None if END == "cut" else round(COST * STEPS, 6),
    }


def gemini(model: str) -> Iterator[Line]:
    """Counts only in the result's stats: `input_tokens` includes `cached`, `total_tokens`
    adds the thoughts."""
    yield {
        "type": "init",
        "timestamp": "2026-12-04T16:00:00.000Z",
        "session_id": SESSION,
        "model": model,
    }
    yield {
        "type": "message",
        "timestamp": "2026-12-04T16:00:00.100Z",
        "role": "user",
        "content": "Do the phase.",
    }
    for step in range(1, STEPS + 1):
        for word in ("I will ", f"do step {step}."):
            yield {
                "type": "message",
                "timestamp": "2026-12-04T16:00:01.000Z",
                "role": "assistant",
                "content": word,
                "delta": True,
            }
        yield {
            "type": "tool_use",
            "timestamp": "2026-12-04T16:00:02.000Z",
            "tool_name": "run_shell_command",
            "tool_id": f"run_shell_command-{step}",
            "parameters": {"command": "ls", "description": "list"},
        }
        yield {
            "type": "tool_result",
            "timestamp": "2026-12-04T16:00:02.500Z",
            "tool_id": f"run_shell_command-{step}",
            "status": "success",
            "output": "README.md",
        }
    if END == "cut":
        yield b'{"type":"result","status":"success","stats":{"total_tokens":'
        return
    if END == "limit":
        yield {
            "type": "error",
            "timestamp": "2026-12-04T16:00:03.000Z",
            "severity": "error",
            "message": "Quota exceeded for quota metric 'Gemini 2.5 Pro Requests'",
        }
    prompt, output = INPUT * STEPS, OUTPUT * STEPS
    yield {
        "type": "result",
        "timestamp": "2026-12-04T16:00:04.000Z",
        "status": "error" if END == "limit" else "success",
        "stats": {
            "total_tokens": prompt + output + REASONING * STEPS,
            "input_tokens": prompt,
            "output_tokens": output,
            "cached": CACHED * STEPS,
            "input": prompt - CACHED * STEPS,
            "duration_ms": 4000,
            "tool_calls": STEPS,
        },
    }


def gemini_said() -> dict[str, Any]:
    if END == "cut":
        return {"input": 0, "cached": 0, "output": 0, "cost": None}
    return {
        "input": (INPUT - CACHED) * STEPS,
        "cached": CACHED * STEPS,
        "output": (OUTPUT + REASONING) * STEPS,
        "cost": None,
    }
