"""Agent output formats: one parser per CLI's machine-readable stream, each turning the
worker's output bytes into normalized events (session, turn, usage, tool, file change, error,
result). `text` (the default) reads nothing."""

from __future__ import annotations

from collections.abc import Callable

from .claude import ClaudeStreamJson
from .codex import CodexJson
from .events import (
    Error,
    ErrorKind,
    FileChange,
    Result,
    Session,
    StreamEvent,
    Tool,
    Turn,
    Usage,
    error_kind,
)
from .gemini import GeminiStreamJson
from .lines import MAX_LINE, LineSplitter
from .reader import Format, StreamReader

FORMATS: dict[str, Callable[[], Format]] = {
    "codex-json": CodexJson,
    "claude-stream-json": ClaudeStreamJson,
    "gemini-stream-json": GeminiStreamJson,
}
OUTPUTS = ("text", *FORMATS)
"""The values of a profile's `output` key."""


def open_stream(output: str, max_line: int = MAX_LINE) -> StreamReader | None:
    """A reader for a worker whose profile says `output = …`; None for `text` (opaque)."""
    factory = FORMATS.get(output)
    return StreamReader(factory(), max_line) if factory is not None else None


__all__ = [
    "FORMATS",
    "MAX_LINE",
    "OUTPUTS",
    "Error",
    "ErrorKind",
    "FileChange",
    "Format",
    "LineSplitter",
    "Result",
    "Session",
    "StreamEvent",
    "StreamReader",
    "Tool",
    "Turn",
    "Usage",
    "error_kind",
    "open_stream",
]
