"""Worker profiles on hold: parked until a limit resets (or a backoff ends), or blocked until a
person logs in again. Plain data with an injected `now`, saved as TOML so a hold survives a
restart; the daemon owns the one registry and the events.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import os
import random
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydantic
import tomli_w
from pydantic import BaseModel, Field

from .audit import Logger

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
        fields.update({k: v for k, v in (("by_plan", self.plan), ("by_phase", self.phase)) if v})
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
        self,
        profile: str,
        now: dt.datetime,
        until: dt.datetime | None,
        base: float,
        message: str = "",
        rng: random.Random | None = None,
        **where: Any,
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
            profile=profile,
            kind=HoldKind.PARKED,
            since=now,
            until=until.astimezone(dt.UTC),
            message=message,
            **where,
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
            h
            for h in self.holds.values()
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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Quota:
    """The one registry of held profiles a daemon (or one `orchestrd run`) has: parks, blocks,
    the plans waiting on them, their events, and the file that keeps them across a restart.
    Every change is saved before it is announced."""

    def __init__(
        self,
        log: Logger,
        path: Path | None = None,
        holds: Holds | None = None,
        save: Callable[[Path, bytes], None] | None = None,
    ) -> None:
        self.log = log
        self.path = path
        self.holds = holds or Holds()
        self._write = save
        self._changed = anyio.Event()

    @classmethod
    def load(cls, log: Logger, path: Path, save: Callable[[Path, bytes], None]) -> Quota:
        """The holds saved at `path` (none if there is no file); an unreadable file is set
        aside (`.corrupt`) with an event, and its holds are lost — the worst that does is one
        more worker start that meets the limit again."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(log, path, save=save)
        except OSError as exc:
            log.info("profile.holds_unreadable", path=str(path), reason=exc.strerror)
            return cls(log, path, save=save)
        try:
            holds = Holds.loads(data)
        except ValueError as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.info(
                "profile.holds_unreadable", path=str(path), reason=str(exc), set_aside=str(aside)
            )
            return cls(log, path, save=save)
        return cls(log, path, holds, save)

    async def _save(self) -> None:
        if self.path is not None and self._write is not None:
            await anyio.to_thread.run_sync(self._write, self.path, self.holds.dumps())
        self._changed.set()
        self._changed = anyio.Event()

    async def park(
        self, profile: str, until: dt.datetime | None, base: float, message: str, **where: Any
    ) -> Hold:
        now = utcnow()
        before = self.holds.get(profile)
        hold = self.holds.park(profile, now, until, base, message, **where)
        if hold is before:
            return hold  # parked longer already (or blocked): nothing new to say
        await self._save()
        extra = {}
        if until is None and hold.until is not None:  # no reset printed: backing off
            extra["backoff"] = round((hold.until - now).total_seconds(), 3)
        self.log.info("profile.parked", **hold.as_event(), **extra)
        return hold

    async def block(self, profile: str, message: str, **where: Any) -> Hold:
        before = self.holds.get(profile)
        hold = self.holds.block(profile, utcnow(), message, **where)
        if hold is not before:
            await self._save()
            self.log.info("profile.blocked", **hold.as_event())
        return hold

    async def unblock(self, profile: str, why: str, **fields: Any) -> bool:
        """Lift a block; False if `profile` is not blocked."""
        hold = self.holds.get(profile)
        if hold is None or hold.kind is not HoldKind.BLOCKED:
            return False
        self.holds.release(profile)
        await self._save()
        self.log.info("profile.unblocked", profile=profile, why=why, **fields)
        return True

    async def unblock_all(self, why: str) -> None:
        for hold in self.holds.blocked():
            await self.unblock(hold.profile, why)

    async def succeeded(self, profile: str) -> None:
        if profile in self.holds.strikes:
            self.holds.succeeded(profile)
            await self._save()

    async def unpark_due(self) -> None:
        """End every park whose time has come (an event each)."""
        now = utcnow()
        for hold in self.holds.due(now):
            if self.holds.get(hold.profile) is not hold:
                continue  # ended by another waiter, or parked anew, while this one saved
            self.holds.release(hold.profile)
            await self._save()
            self.log.info(
                "profile.unparked",
                profile=hold.profile,
                parked_for=round((now - hold.since).total_seconds(), 3),
            )

    async def run(self) -> None:
        """End parks on time, whether or not a plan waits for them (the daemon runs this)."""
        while True:
            changed = self._changed
            due = self.holds.next_due()
            with anyio.move_on_after(_seconds_until(due)):
                await changed.wait()
            await self.unpark_due()

    async def wait(self, profile: str, log: Logger) -> bool:
        """Return once `profile` is not on hold; True if it had to wait. `plan.waiting_quota`
        once for each hold it waits on."""
        announced: Hold | None = None
        while (hold := self.holds.get(profile)) is not None:
            if hold is not announced:
                announced = hold
                log.info(
                    "plan.waiting_quota",
                    profile=profile,
                    hold=str(hold.kind),
                    **({"until": hold.as_event()["until"]} if hold.until is not None else {}),
                )
            changed = self._changed
            with anyio.move_on_after(_seconds_until(hold.until)):
                await changed.wait()
            await self.unpark_due()
        return announced is not None

    def rows(self) -> list[dict[str, object]]:
        """The holds for `status`."""
        return [
            {
                "profile": h.profile,
                "hold": str(h.kind),
                "since": h.since.isoformat(),
                **({"until": h.until.isoformat()} if h.until is not None else {}),
                "message": h.message,
                **({"plan": h.plan} if h.plan else {}),
            }
            for h in sorted(self.holds.holds.values(), key=lambda h: h.profile)
        ]


def _seconds_until(when: dt.datetime | None) -> float:
    if when is None:
        return math.inf
    return max(0.0, (when - utcnow()).total_seconds())


HOLDS_FILE = "holds.toml"
"""In state_dir: the parked and blocked profiles."""


def read_holds(path: Path) -> Holds | None:
    """The holds saved at `path` for `status` (which may run while the daemon is down); None
    when there are none or the file cannot be read."""
    try:
        return Holds.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def describe_holds(holds: Holds) -> list[str]:
    """One line per held profile: `profile codex parked until 22:14:05 (+01:00) — <message>`."""
    lines = []
    for h in sorted(holds.holds.values(), key=lambda h: h.profile):
        if h.until is not None:
            when = f" until {h.until.astimezone().isoformat(timespec='seconds')}"
        else:
            when = " until `orchestrd unblock " + h.profile + "` or a config reload"
        said = f" — {h.message}" if h.message else ""
        lines.append(f"profile {h.profile} {h.kind}{when}{said}")
    return lines
