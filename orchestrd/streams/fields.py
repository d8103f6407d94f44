"""Reading fields of a decoded stream event defensively: these formats drift between versions,
so a missing field or one of another type reads as absent, never as an exception."""

from __future__ import annotations

from typing import Any


def obj(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def items(data: Any, key: str) -> list[Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def text(data: Any, key: str) -> str | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


MAX_COUNT = 2**53
"""Larger token counts are nonsense (and would not survive a float or a TOML round trip)."""


def count(data: Any, key: str) -> int:
    """A token count: a non-negative int up to MAX_COUNT, 0 when absent or not a number."""
    value = number(data, key)
    return 0 if value is None else int(min(max(0.0, value), MAX_COUNT))


def number(data: Any, key: str) -> float | None:
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > MAX_COUNT:
        value = MAX_COUNT if value > 0 else -MAX_COUNT  # float() of a huge int overflows
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def integer(data: Any, key: str) -> int | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
