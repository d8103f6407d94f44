"""Text shown to people, made safe: `printable` (no terminal control reaches a screen),
`Redactor` (no secret reaches a file or a screen), and `console`, the short line of one event.

A module of its own, without structlog or pydantic, so that the CLI commands that print (`status`,
`tail`, every error message) start without the audit log's machinery (issue #21: any command's
start-up ≤ 150 ms). `orchestrd.audit` uses these same functions for the events it writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config

# What must not reach a terminal raw: C0 controls (ESC starts colour, clear-screen and OSC
# title sequences; BEL, NUL, CR), DEL and C1 (0x9b is an 8-bit CSI), bidi overrides and line
# separators that reorder or split what a person reads, and lone surrogates (the bytes of a
# file name that is not UTF-8). Tab is harmless; newline is kept where asked.
_UNSAFE_CHARS = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
)
_UNSAFE = re.compile(f"[\n{_UNSAFE_CHARS}]")
_UNSAFE_KEEP_NEWLINES = re.compile(f"[{_UNSAFE_CHARS}]")


def printable(text: str, newlines: bool = True) -> str:
    """`text` safe to show a person on a terminal or in the journal: every character above
    shown escaped (`\\x1b`, `\\u202e`; a non-UTF-8 byte of a file name as `\\xff`), newlines
    kept if `newlines` (a multi-line rendering), escaped otherwise."""
    if text.isprintable():  # none of them (each is a Cc, Cf, Cs, Zl or Zp character): the
        return text  # common case, in C, several times faster than the search below
    regex = _UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE
    return regex.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the byte it stands for
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


MIN_FRAGMENT = 8
"""A secret cut by a length limit (a log tail's first line, a quoted log line cut at 200
characters) keeps its first or last characters: runs of at least this many are redacted too."""


class Redactor:
    """Replaces secrets in text with `***`: values of secret-looking environment variables
    (the daemon's and the worker profiles'), the config's `redact` regexes, and what is left of
    a secret value cut short (its first or last MIN_FRAGMENT or more characters)."""

    def __init__(self, values: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        ordered = sorted(set(values), key=len, reverse=True)
        alternatives = [re.escape(v) for v in ordered]
        alternatives += [_fragments(v) for v in ordered if len(v) > MIN_FRAGMENT]
        # the operator's patterns each on their own: one may carry global flags such as
        # `(?i)`, which are only allowed at the start of a whole expression
        self._regexes = [re.compile("|".join(alternatives))] if alternatives else []
        self._regexes += [re.compile(p) for p in patterns]

    @classmethod
    def from_config(cls, config: Config) -> Redactor:
        from .config import SECRET_NAME  # loaded already: the caller holds a Config

        env = dict(os.environ)
        for profile in config.workers.values():
            env.update(profile.env)
        values = [v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 4]
        return cls(values, config.redact)

    def __call__(self, text: str) -> str:
        for regex in self._regexes:
            text = regex.sub(_stars, text)
        return text

    def deep(self, value: Any) -> Any:
        if not self._regexes:
            return value
        kind = type(value)
        if kind is str:
            return self(value)
        if kind is int or kind is float or kind is bool or value is None:
            return value  # most event fields: nothing to look at
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


def _stars(match: re.Match[str]) -> str:
    # a pattern that can match nothing at all (`x*`) must not put *** between every character
    return "***" if match.group() else ""


def _fragments(value: str, limit: int = 256) -> str:
    """A regex for a prefix or a suffix of `value` at least MIN_FRAGMENT long:
    `abcdefgh(?:i(?:j)?)?` and `(?:(?:a)?b)?cdefghij` (nested, so the pattern grows with the
    value, not its square).
    Only the first and last `limit` characters are spelled out; a longer value's middle is
    never a fragment that survives on its own."""
    head, tail = value[:limit], value[-limit:]
    prefix = re.escape(head[:MIN_FRAGMENT])
    rest = ""
    for ch in reversed(head[MIN_FRAGMENT:]):
        rest = f"(?:{re.escape(ch)}{rest})?"
    suffix = re.escape(tail[-MIN_FRAGMENT:])
    lead = ""
    for ch in tail[:-MIN_FRAGMENT]:
        lead = f"(?:{lead}{re.escape(ch)})?"
    return f"{prefix}{rest}|{lead}{suffix}"


def console(data: Mapping[str, Any]) -> str:
    """A short human line for a terminal or the journal: time, event, then key=value."""
    ts = str(data.get("ts", ""))[11:23]
    rest = " ".join(
        f"{k}={short(v)}"
        for k, v in data.items()
        if k not in ("ts", "event") and not isinstance(v, list | dict)
    )
    # what workers printed or named reaches a terminal here (the echo, `orchestrd tail`)
    return printable(f"{ts} {data.get('event', ''):<22} {rest}", newlines=False)


def short(value: object, limit: int = 160) -> str:
    text = str(value).replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
