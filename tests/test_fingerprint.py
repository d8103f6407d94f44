"""Failure fingerprints: the same failure printed twice (other times, temp paths, ids, numbers)
gives one fingerprint; another failure, another rule place or another change gives another."""

from __future__ import annotations

from orchestrd.fingerprint import Failure, Stagnation, changes_hash, fingerprint, normalise


def test_normalise_masks_what_differs_between_two_runs_of_one_failure() -> None:
    a = (
        "2026-12-04T22:01:07.123+01:00 FAIL test_parse (0.53s)\n"
        "  at /tmp/pytest-of-u/pytest-17/test_parse0/x.py:12\n"
        "  object at 0x7f3a2c1d9e80, run 5f1c2a9e-33b1-4c3e-9d1e-7a2b8c9d0e1f\n"
        "commit 3f9a1c2e7b  took 12:01:07\n\n"
    )
    b = (
        "2026-12-05 03:44:59 FAIL test_parse (1.91s)\n"
        "  at /tmp/pytest-of-u/pytest-18/test_parse1/x.py:12\n"
        "  object at 0x7f00aa11bb22,   run 0a1b2c3d-0000-4c3e-9d1e-111111111111\n"
        "commit 88c0ffee12  took 03:44:59\n"
    )
    assert normalise(a) == normalise(b)
    assert "test_parse" in normalise(a) and "/tmp" not in normalise(a)
    assert normalise("expected 3, got 4") == normalise("expected 5, got 6")
    assert normalise("AssertionError: facade") == "AssertionError: facade"  # a word of a-f


def test_the_same_failure_with_the_same_change_has_one_fingerprint() -> None:
    one = [
        Failure.of("verify[0]", {}, "FAILED x.py:12 at 0x7f00 in 0.3s"),
        Failure.of("forbidden_patterns", {"rule": "forbidden_patterns", "file": "a.py", "line": 3}),
    ]
    two = [
        Failure.of("forbidden_patterns", {"rule": "forbidden_patterns", "file": "a.py", "line": 3}),
        Failure.of("verify[0]", {}, "FAILED x.py:99 at 0x7f11 in 1.2s"),
    ]
    assert fingerprint(one, "M a.py 1234\n").same_failure(fingerprint(two, "M a.py 1234\n"))


def test_another_place_output_or_change_is_another_fingerprint() -> None:
    base = fingerprint(
        [Failure.of("forbidden_patterns", {"rule": "r", "file": "a.py", "line": 3})], "M a.py 1\n"
    )
    moved = fingerprint(
        [Failure.of("forbidden_patterns", {"rule": "r", "file": "b.py", "line": 3})], "M a.py 1\n"
    )
    changed = fingerprint(
        [Failure.of("forbidden_patterns", {"rule": "r", "file": "a.py", "line": 3})], "M a.py 2\n"
    )
    other = fingerprint([Failure.of("verify[0]", {}, "ImportError: foo")], "M a.py 1\n")
    assert len({base.digest, moved.digest, changed.digest, other.digest}) == 4


def test_nothing_changed_is_known_and_unknown_is_not_nothing() -> None:
    assert fingerprint([Failure("exit_code")], "").changed_nothing
    assert not fingerprint([Failure("exit_code")], None).changed_nothing
    assert not fingerprint([Failure("exit_code")], "A new.py x\n").changed_nothing
    assert changes_hash(None) == ""


def test_stagnation_needs_two_failures_alike_or_a_remediation_that_did_nothing() -> None:
    same = [Failure.of("report_status", {})]
    s = Stagnation()
    assert s.failed(1, fingerprint(same, None)) is None
    assert s.failed(2, fingerprint(same, None)) is None  # without git: cannot tell
    assert s.failed(3, fingerprint([Failure.of("exit_code", {})], "M a 1\n")) is None
    reason, attempts = s.failed(4, fingerprint([Failure.of("exit_code", {})], "M a 1\n")) or (
        "",
        [],
    )
    assert reason == "stagnant: attempt 4 failed exactly like attempt 3" and attempts == [3, 4]
    s = Stagnation()
    assert s.failed(1, fingerprint(same, "")) is None  # a first attempt may do nothing
    assert s.failed(2, fingerprint(same, "M a.py 1\n")) is None
    assert s.failed(4, fingerprint([Failure.of("x", {})], "")) == (
        "stagnant: attempt 4 changed nothing after attempt 2 failed",
        [2, 4],
    )
