"""Output judged whole: a verify command's must_match / must_not_match (the defaults included)
and the worker log's error patterns see every byte, however much of it the file keeps; the file
keeps the head and the tail of a long output, the cut marked, and the cut is an event."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from conftest import agent_profile, make_config, make_plan, phase, run_plan

from orchestrd.judge import READ_BYTES, Match, StreamJudge, scan_file
from orchestrd.worker import WorkerSpec, launch

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
# 2 MB of passing-looking output, then the summary a test runner prints last
TWO_MB_THEN_NOTHING_RAN = (
    "python3 -c \"import sys; sys.stdout.write('ok\\n' * (1024 * 1024)); "
    "print('Ran 0 tests in 0.000s'); print('OK')\""
)


async def test_a_verdict_printed_after_the_cut_is_still_judged(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_log_bytes=MIB, policy={"max_remediations": 0})
    verify = [{"run": TWO_MB_THEN_NOTHING_RAN, "expect": "pass"}]
    run = await run_plan(config, make_plan(tmp_path, phases=[phase("P01", verify=verify)]))
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert (failed["check"], failed["rule"], failed["line"]) == (
        "verify[0]",
        "must_not_match",
        1024 * 1024 + 1,
    )
    assert "'Ran 0 tests in 0.000s' — green for the wrong reason" in failed["reason"]
    [cut] = run.events("check.output_truncated")
    assert (cut["check"], cut["max_log_bytes"]) == ("verify[0]", MIB)
    assert cut["dropped_bytes"] == cut["output_bytes"] - MIB > 0
    # the file keeps the head, the cut marked, and the tail with the summary
    kept = await anyio.Path(cut["output"]).read_bytes()
    assert kept.startswith(b"ok\nok\n")
    assert f"{cut['dropped_bytes']} more bytes dropped here".encode() in kept
    assert kept.endswith(b"Ran 0 tests in 0.000s\nOK\n")
    assert "Ran 0 tests in 0.000s" in failed["output_tail"]


async def test_must_match_sees_a_line_past_the_cut(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_log_bytes=64 * 1024, policy={"max_remediations": 0})
    printer = "python3 -c \"print('x' * 300000); print('12 passed')\""
    verify = [{"run": printer, "must_match": r"^\d+ passed$"}]
    run = await run_plan(config, make_plan(tmp_path, phases=[phase("P01", verify=verify)]))
    assert run.status == "succeeded", run.events("check.failed")


async def test_an_error_early_in_a_long_worker_log_is_found(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        checks={"fail_on_log_errors": True},
        workers={"noisy": agent_profile("error_then_noise")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="noisy"))
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert failed["check"] == "log_errors"
    assert failed["reason"].endswith(": Traceback (most recent call last):")


async def test_an_error_in_the_middle_the_log_does_not_keep_is_found(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        max_log_bytes=1024 * 1024,
        policy={"max_remediations": 0},
        checks={"fail_on_log_errors": True},
        workers={"noisy": agent_profile("noise_error_noise")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="noisy"))
    assert run.status == "failed"
    [failed] = run.events("check.failed")
    assert failed["check"] == "log_errors"
    assert failed["reason"].endswith(": Traceback (most recent call last):")


async def test_the_pump_feeds_every_byte_and_keeps_head_and_tail(tmp_path: Path) -> None:
    seen = bytearray()
    out = "import sys; sys.stdout.write('a' * 5000 + 'b' * 5000 + 'END')"
    spec = WorkerSpec([sys.executable, "-c", out], {}, tmp_path, tmp_path / "w.log")
    async with launch(spec, 4000, 1.0, on_output=seen.extend) as worker:
        await worker.wait()
    assert bytes(seen) == b"a" * 5000 + b"b" * 5000 + b"END"
    assert worker.output_bytes == 10003 and worker.dropped_bytes == 6003
    kept = (tmp_path / "w.log").read_bytes()
    assert kept.startswith(b"a" * 3000) and kept.endswith(b"b" * 997 + b"END")
    assert b"6003 more bytes dropped here; the last 1000 follow" in kept


def test_patterns_match_across_chunk_boundaries_with_their_line() -> None:
    judge = StreamJudge([r"^Ran 0 tests$", r"FAILED \(errors=\d+\)", "never"])
    # the last two chunks split an é in two
    for chunk in (b"line one\nRan 0 te", b"sts\nFAIL", b"ED (err", b"ors=2)\xc3", b"\xa9"):
        judge.feed(chunk)
    assert judge.close() == {
        r"^Ran 0 tests$": Match(r"^Ran 0 tests$", 2, "Ran 0 tests"),
        r"FAILED \(errors=\d+\)": Match(r"FAILED \(errors=\d+\)", 3, "FAILED (errors=2)é"),
    }


def test_a_log_scan_skips_the_echoed_prompt_even_across_pieces(tmp_path: Path) -> None:
    prompt = "Fix this:\nTraceback (most recent call last):\nValueError: old\n"
    filler = "x" * (READ_BYTES - 20) + "\n"  # the prompt straddles the first piece's end
    log = tmp_path / "w.log"
    log.write_text(filler + prompt + "working\nError: real one\n")
    found = scan_file(log, [r"Traceback", r"\bError:"], prompt)
    assert found == {r"\bError:": Match(r"\bError:", 6, "Error: real one")}
