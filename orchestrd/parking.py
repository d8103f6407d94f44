"""Worker profiles on hold: parked until a limit resets (or a backoff ends), or blocked until a
person logs in again. Plain data with an injected `now`, saved as TOML so a hold survives a
restart; the daemon owns the one registry and the events.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
import tomllib
from typing import Any

import pydantic
import tomli_w
from pydantic import BaseModel, Field

BACKOFF_CAP = 3600.0
"""Backing off from a limit that named no reset never waits longer than this (unless the
profile's `rate_limit_backoff` itself is longer)."""
JITTER = 0.2
"""Profiles parked together do not all come back in the same second."""


class HoldKind(enum.StrEnum):
    PARKED = "parked"
    """A rate or usage limit: no worker starts on the profile until `until`."""
    BLOCKED = "blocked"
    """The login failed: no worker starts until `orchestrd unblock` or a config reload."""


class Hold(BaseModel):
    profile: str
    kind: HoldKind
    since: dt.datetime
    until: dt.datetime | None = None
    """When a parked profile is tried again (UTC); None for a block."""
    message: str = ""
    """What the agent said (its limit or login message)."""
    plan: str | None = None
    phase: str | None = None
    attempt: int | None = None
    """The attempt that hit the limit."""

    def as_event(self) -> dict[str, object]:
        fields: dict[str, object] = {"profile": self.profile, "message": self.message}
        if self.until is not None:
            fields["until"] = self.until.astimezone().isoformat(timespec="seconds")
        fields.update(
            {k: v for k, v in (("by_plan", self.plan), ("by_phase", self.phase)) if v}
        )
        return fields


def backoff(strikes: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `strikes`-th limit in a row that named no reset: `base`
    doubled each time, at most BACKOFF_CAP, less up to JITTER of it."""
    cap = max(BACKOFF_CAP, base)
    delay = min(cap, base * 2.0 ** min(max(strikes, 1) - 1, 32))
    return delay * (1.0 - JITTER * (rng or random).random())


class Holds(BaseModel):
    """Every profile on hold, and how many limits in a row each profile hit (the backoff)."""

    holds: dict[str, Hold] = Field(default_factory=dict)
    strikes: dict[str, int] = Field(default_factory=dict)

    def get(self, profile: str) -> Hold | None:
        return self.holds.get(profile)

    def park(
        self, profile: str, now: dt.datetime, until: dt.datetime | None, base: float,
        message: str = "", rng: random.Random | None = None, **where: Any,
    ) -> Hold:
        """Park `profile` until `until` (the agent's reset plus margin) or, without one, for a
        backoff that grows with each limit in a row. A later park of a parked profile (two
        plans hit the limit) keeps the later end."""
        self.strikes[profile] = strikes = self.strikes.get(profile, 0) + 1
        if until is None:
            until = now + dt.timedelta(seconds=backoff(strikes, base, rng))
        old = self.holds.get(profile)
        if old is not None and old.kind is HoldKind.BLOCKED:
            return old
        if old is not None and old.until is not None and old.until > until:
            return old
        hold = Hold(
            profile=profile, kind=HoldKind.PARKED, since=now, until=until.astimezone(dt.UTC),
            message=message, **where,
        )
        self.holds[profile] = hold
        return hold

    def block(self, profile: str, now: dt.datetime, message: str = "", **where: Any) -> Hold:
        """Block `profile` (a second block of a blocked profile changes nothing)."""
        old = self.holds.get(profile)
        if old is not None and old.kind is HoldKind.BLOCKED:
            return old
        hold = Hold(profile=profile, kind=HoldKind.BLOCKED, since=now, message=message, **where)
        self.holds[profile] = hold
        return hold

    def release(self, profile: str) -> Hold | None:
        """Lift the hold on `profile` (unblock, or a park ended); None if there was none."""
        return self.holds.pop(profile, None)

    def due(self, now: dt.datetime) -> list[Hold]:
        """Parks whose time has come (still held until released)."""
        return [
            h for h in self.holds.values()
            if h.kind is HoldKind.PARKED and h.until is not None and h.until <= now
        ]

    def next_due(self) -> dt.datetime | None:
        ends = [h.until for h in self.holds.values() if h.until is not None]
        return min(ends) if ends else None

    def blocked(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.kind is HoldKind.BLOCKED]

    def succeeded(self, profile: str) -> None:
        """An attempt on `profile` ended without a limit: the next limit backs off from the
        start again."""
        self.strikes.pop(profile, None)

    def dumps(self) -> bytes:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True)).encode()

    @classmethod
    def loads(cls, data: bytes) -> Holds:
        """ValueError (naming what is wrong) for a file that is not a holds file."""
        try:
            return cls.model_validate(tomllib.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, pydantic.ValidationError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
