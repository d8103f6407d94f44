"""The registry of profiles on hold: parks end at their time, backoff doubles up to an hour
with jitter, blocks stay until lifted, and all of it survives a save and a load."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import anyio
import pytest

from orchestrd.audit import AuditLog
from orchestrd.parking import HoldKind, Holds, Quota, backoff, describe_holds, read_holds
from orchestrd.state import atomic_write

T0 = dt.datetime(2026, 12, 4, 22, 0, tzinfo=dt.UTC)


def test_backoff_doubles_from_the_base_to_the_cap_with_jitter_below() -> None:
    rng = random.Random(7)
    for strikes, full in [(1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (40, 3600)]:
        got = backoff(strikes, 60, rng)
        assert 0.8 * full <= got <= full
    assert backoff(3, 7200) <= 7200  # a base above the cap is its own cap
    assert len({round(backoff(1, 60), 6) for _ in range(20)}) > 1


def test_a_park_without_reset_backs_off_longer_each_time_and_ends() -> None:
    holds = Holds()
    rng = random.Random(1)
    first = holds.park("codex", T0, None, 60, "Try again later.", rng, plan="A")
    assert first.kind is HoldKind.PARKED and first.plan == "A"
    assert first.until is not None and 48 <= (first.until - T0).total_seconds() <= 60
    assert holds.due(T0) == []
    assert holds.due(first.until) == [first]
    assert holds.release("codex") == first and holds.get("codex") is None
    second = holds.park("codex", T0, None, 60, rng=rng)
    assert second.until is not None and (second.until - T0).total_seconds() >= 96
    holds.release("codex")
    holds.succeeded("codex")
    third = holds.park("codex", T0, None, 60, rng=rng)
    assert third.until is not None and (third.until - T0).total_seconds() <= 60


def test_a_reset_time_wins_and_two_plans_keep_the_later_end() -> None:
    holds = Holds()
    late, early = T0 + dt.timedelta(hours=2), T0 + dt.timedelta(minutes=5)
    holds.park("claude", T0, late, 60, "resets 11pm")
    kept = holds.park("claude", T0, early, 60, "again")
    assert kept.until == late and holds.next_due() == late


def test_a_block_stays_until_released_and_is_not_parked_over() -> None:
    holds = Holds()
    b = holds.block("gemini", T0, "exit code 41", plan="A", phase="P01", attempt=1)
    assert holds.block("gemini", T0, "again") is b
    assert holds.park("gemini", T0, None, 60) is b
    assert holds.due(T0 + dt.timedelta(days=30)) == [] and holds.blocked() == [b]
    assert holds.release("gemini") is b and holds.blocked() == []


def test_holds_survive_a_save_and_a_load() -> None:
    holds = Holds()
    holds.park("codex", T0, T0 + dt.timedelta(minutes=7), 60, "You’ve hit your usage limit.")
    holds.block("gemini", T0, "Please set an Auth method")
    again = Holds.loads(holds.dumps())
    assert again == holds
    assert again.holds["codex"].until == T0 + dt.timedelta(minutes=7)
    assert again.strikes == {"codex": 1}


@pytest.mark.parametrize("data", [b"holds = 3\n", b"\xff", b"[holds.x]\nkind = 'nap'\n"])
def test_a_bad_holds_file_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="Error"):
        Holds.loads(data)


@pytest.mark.anyio
async def test_waiters_wait_out_a_park_and_a_block_and_the_holds_are_saved(
    tmp_path: Path,
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    log = audit.bind()
    path = tmp_path / "holds.toml"
    quota = Quota.load(log, path, atomic_write)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    await quota.park("codex", soon, 60, "Try again at 3:38 PM.", plan="A")
    await quota.block("gemini", "exit code 41", plan="B")
    assert Quota.load(log, path, atomic_write).holds == quota.holds
    order: list[str] = []

    async def waiter(profile: str) -> None:
        assert await quota.wait(profile, log.bind(plan=profile))
        order.append(profile)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "codex")
            tg.start_soon(waiter, "gemini")
            await anyio.sleep(0.6)
            assert order == ["codex"]
            assert await quota.unblock("gemini", "unblock request")
            assert not await quota.unblock("gemini", "again")
    assert order == ["codex", "gemini"]
    assert not await quota.wait("claude", log)
    audit.close()
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names == [
        "profile.parked",
        "profile.blocked",
        "plan.waiting_quota",
        "plan.waiting_quota",
        "profile.unparked",
        "profile.unblocked",
    ]
    assert Quota.load(log, path, atomic_write).holds.holds == {}


def test_an_unreadable_holds_file_is_set_aside(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    path = tmp_path / "holds.toml"
    path.write_bytes(b"holds = 3\n")
    quota = Quota.load(audit.bind(), path, atomic_write)
    audit.close()
    assert quota.holds == Holds() and (tmp_path / "holds.toml.corrupt").exists()
    assert "profile.holds_unreadable" in (tmp_path / "audit.jsonl").read_text()


def test_status_lines_name_each_hold_and_until_when(tmp_path: Path) -> None:
    holds = Holds()
    holds.park("codex", T0, T0 + dt.timedelta(minutes=7), 60, "Try again at 11:07 PM.")
    holds.block("gemini", T0, "exit code 41 (authentication)")
    (tmp_path / "holds.toml").write_bytes(holds.dumps())
    read = read_holds(tmp_path / "holds.toml")
    assert read is not None
    parked, blocked = describe_holds(read)
    assert parked.startswith("profile codex parked until ") and "11:07 PM" in parked
    until = (T0 + dt.timedelta(minutes=7)).astimezone().isoformat(timespec="seconds")
    assert until in parked
    assert blocked == (
        "profile gemini blocked until `orchestrd unblock gemini` or a config reload — "
        "exit code 41 (authentication)"
    )
    assert read_holds(tmp_path / "none.toml") is None
