"""The worker contract: what a worker process gets (env, prompt, cwd, stdin, session, fds) and
what the daemon records about it (its own log file, the PID ledger)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import agent_profile, make_config, make_plan, phase, read_events, run_plan

pytestmark = pytest.mark.anyio


async def test_worker_gets_the_contract_environment_variables(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        plan_dir="pp",
        phases=[phase("P01", completion=[".completed/a.md", ".completed/b.md"])],
    )
    run = await run_plan(make_config(tmp_path), plan)
    env = run.agent("P01", 1)["env"]
    assert env["ORCHESTRD_PLAN_ID"] == "T"
    assert env["ORCHESTRD_PHASE_ID"] == "P01"
    assert env["ORCHESTRD_ATTEMPT"] == "1"
    assert env["ORCHESTRD_ROLE"] == "primary"
    assert env["ORCHESTRD_REPORT"] == "pp/reports/P01-worker.md"
    assert env["ORCHESTRD_COMPLETION"] == os.pathsep.join(
        ["pp/.completed/a.md", "pp/.completed/b.md"]
    )
    assert env["ORCHESTRD_LOG"] == str(run.folder / "workers" / "worker-P01-1.log")
    assert "ORCHESTRD_FAILED_LOG" not in env
    assert "ORCHESTRD_FAILURE" not in env
    # the paths are relative to the repo, which is the worker's cwd: the agent wrote them there
    assert (run.repo / "pp/reports/P01-worker.md").is_file()
    assert (run.repo / "pp/.completed/b.md").is_file()


async def test_worker_environment_is_minimal_plus_profile_env_and_passthrough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRD_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("ORCHESTRD_TEST_PASSED", "wanted")
    config = make_config(
        tmp_path,
        env_passthrough=["ORCHESTRD_TEST_PASSED"],
        workers={"pass": agent_profile("pass", AGENT_PROFILE_VAR="from-profile")},
    )
    run = await run_plan(config, make_plan(tmp_path))
    env = run.agent()["env"]
    assert "ORCHESTRD_TEST_SECRET" not in env
    assert env["ORCHESTRD_TEST_PASSED"] == "wanted"
    assert env["AGENT_PROFILE_VAR"] == "from-profile"
    assert env["PATH"] == os.environ["PATH"]


async def test_worker_runs_in_the_repo_in_its_own_session_and_process_group(
    tmp_path: Path,
) -> None:
    run = await run_plan(make_config(tmp_path), make_plan(tmp_path))
    facts = run.agent()
    assert facts["cwd"] == str(run.repo)
    assert facts["sid"] == facts["pid"], "the worker leads its own session"
    assert facts["pgid"] == facts["pid"], "the worker leads its own process group"
    assert facts["sid"] != os.getsid(0)


async def test_worker_has_only_stdin_stdout_stderr_open(tmp_path: Path) -> None:
    # this process holds the audit log, the event loop's fds, pytest's captures...: none leak
    run = await run_plan(make_config(tmp_path), make_plan(tmp_path))
    fds = run.agent()["fds"]
    assert sorted(fds) == ["0", "1", "2"], fds
    assert fds["0"] == os.devnull
    # stdout and stderr are one pipe, copied by the daemon into the worker's log (capped)
    assert fds["1"] == fds["2"] and fds["1"].startswith("pipe:"), fds
    log = (run.folder / "workers" / "worker-P01-1.log").read_text()
    assert "pass agent 0.1" in log, "stderr reaches the log"


async def test_worker_log_is_cut_at_max_log_bytes_and_the_rest_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_log_bytes=200)
    run = await run_plan(config, make_plan(tmp_path))
    log = (run.folder / "workers" / "worker-P01-1.log").read_bytes()
    (truncated,) = run.events("worker.log_truncated")
    assert truncated["dropped_bytes"] > 0 and truncated["max_log_bytes"] == 200
    assert log.startswith(b"pass agent 0.1")
    assert f"{truncated['dropped_bytes']} more bytes dropped".encode() in log
    assert len(log) < 200 + 120


def test_worker_stdin_is_dev_null_even_when_the_daemon_has_an_open_stdin(
    tmp_path: Path,
) -> None:
    # The agents read stdin to EOF when it is not a tty, as agent CLIs do. Here `orchestrd run`
    # itself has an open pipe as stdin that nobody writes to or closes: a worker inheriting it
    # would wait forever (and stall); a worker given /dev/null reads EOF at once.
    # a worker stuck on stdin stalls after 3 s and fails the plan
    config = make_config(
        tmp_path, policy={"poll_interval": "0.5s", "max_polls": 6, "max_remediations": 0}
    )
    plan = make_plan(tmp_path)
    with (tmp_path / "cli.out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrd", "run", str(plan), "--config", str(config), "-q"],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
    assert code == 0, (tmp_path / "cli.out").read_text()
    facts = json.loads((tmp_path / "repo/.agent/P01-1.json").read_text())
    assert facts["stdin_is_devnull"] is True
    assert facts["stdin_bytes"] == 0
    events = read_events(tmp_path / "state/audit.jsonl")
    assert not [e for e in events if e["event"] in ("worker.poll", "worker.stalled")]


async def test_prompt_ends_with_a_trailer_stating_the_contract(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        plan_dir="pp",
        phases=[
            phase(
                "P05",
                prompt="Write the failing tests.",
                markers=["@plan:T.P05", "@req:R1"],
                completion=[".completed/P05.md", ".completed/extra.md"],
                verify=[{"run": "true", "expect": "pass"}, {"run": "false", "expect": "fail"}],
            )
        ],
    )
    run = await run_plan(make_config(tmp_path), plan)
    prompt = run.agent("P05")["prompt"]
    assert prompt.startswith("Write the failing tests.")
    trailer = prompt[len("Write the failing tests.") :]
    assert "`pp/reports/P05-worker.md`" in trailer
    assert "Status: PASS" in trailer and "Status: FAIL" in trailer
    assert "`pp/.completed/P05.md`" in trailer and "`pp/.completed/extra.md`" in trailer
    assert "`@plan:T.P05`" in trailer and "`@req:R1`" in trailer
    assert "`true` must pass" in trailer and "`false` must fail" in trailer
    assert "attempt 1 (primary)" in trailer
    assert prompt.rstrip().endswith("Exit when finished.")
    # the same prompt is kept as a file next to the worker's log
    prompt_file = run.folder / "workers" / "prompt-P05-1.md"
    assert prompt_file.read_text() == prompt


async def test_prompt_file_is_read_relative_to_plan_dir(tmp_path: Path) -> None:
    (tmp_path / "repo/pp/prompts").mkdir(parents=True)
    (tmp_path / "repo/pp/prompts/p01.md").write_text("Prompt from a file.\n")
    plan = make_plan(
        tmp_path, plan_dir="pp", phases=[{"id": "P01", "prompt_file": "prompts/p01.md"}]
    )
    run = await run_plan(make_config(tmp_path), plan)
    assert run.agent()["prompt"].startswith("Prompt from a file.\n")


async def test_command_placeholders_are_filled_and_braces_in_the_prompt_are_left_alone(
    tmp_path: Path,
) -> None:
    profile = {
        "command": [
            "{python}",
            str(Path(__file__).parent / "agents/pass.py"),
            "{prompt}",
            "plan={plan}",
            "phase={phase}",
            "attempt={attempt}",
            "log={log}",
            "prompt_file={prompt_file}",
        ]
    }
    text = 'Keep f"{phase}", "{log}", "{python}", "{attempt}" and "{plan}" as they are.'
    config = make_config(tmp_path, workers={"pass": profile})
    run = await run_plan(config, make_plan(tmp_path, phases=[phase("P01", prompt=text)]))
    argv = run.agent()["argv"]
    workers = run.folder / "workers"
    assert argv[2:] == [
        "plan=T",
        "phase=P01",
        "attempt=1",
        f"log={workers / 'worker-P01-1.log'}",
        f"prompt_file={workers / 'prompt-P01-1.md'}",
    ]
    assert argv[1].startswith(text), "placeholders inside the prompt text must not be expanded"
    assert argv[1] == (workers / "prompt-P01-1.md").read_text()


async def test_each_attempt_writes_its_own_log_file(tmp_path: Path) -> None:
    config = make_config(tmp_path, workers={"flaky": agent_profile("flaky")})
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    first = (run.folder / "workers/worker-P01-1.log").read_text()
    second = (run.folder / "workers/worker-P01-2.log").read_text()
    assert first.startswith("flaky agent 0.1 — phase P01")
    assert first.splitlines()[-1] == "primary attempt 1: failing by fail"
    assert second.startswith("flaky agent 0.1 — phase P01")
    assert second.splitlines()[-1] == "done: Status: PASS"
    started = run.events("worker.started")
    assert [e["log"] for e in started] == [
        str(run.folder / "workers/worker-P01-1.log"),
        str(run.folder / "workers/worker-P01-2.log"),
    ]


LEDGER_LINE = re.compile(r"^(\S+) (P\d+) attempt=(\d+) role=(\w+) pid=(\d+)(?: (.*))?$")


async def test_pid_ledger_has_a_line_per_start_and_per_end(tmp_path: Path) -> None:
    config = make_config(tmp_path, workers={"flaky": agent_profile("flaky")})
    run = await run_plan(config, make_plan(tmp_path, worker="flaky"))
    lines = (run.folder / "worker-pids.txt").read_text().splitlines()
    parsed = [LEDGER_LINE.match(line) for line in lines]
    assert all(parsed), lines
    rows = [m.groups() for m in parsed if m]
    pid1, pid2 = run.agent("P01", 1)["pid"], run.agent("P01", 2)["pid"]
    assert [r[1:] for r in rows] == [
        ("P01", "1", "primary", str(pid1), None),
        ("P01", "1", "primary", str(pid1), "exited=0"),
        ("P01", "2", "remediation", str(pid2), None),
        ("P01", "2", "remediation", str(pid2), "exited=0"),
    ]
    for ts, *_ in rows:
        assert dt.datetime.fromisoformat(ts).tzinfo is not None
    assert [e["pid"] for e in run.events("worker.started")] == [pid1, pid2]


async def test_ledger_records_how_a_stalled_worker_ended(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, policy={"poll_interval": "0.05s", "max_polls": 2, "max_remediations": 0}
    )
    run = await run_plan(config, make_plan(tmp_path, worker="hang"))
    lines = (run.folder / "worker-pids.txt").read_text().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("stalled stopped=SIGTERM")
    assert LEDGER_LINE.match(lines[1])


async def test_worker_that_cannot_be_executed_fails_the_phase_with_a_reason(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 1},
        workers={"missing": {"command": [str(tmp_path / "no-such-agent"), "{prompt}"]}},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="missing"))
    assert run.status == "failed"
    failed = run.events("worker.failed_to_start")
    assert len(failed) == 2  # the primary and its one remediation
    assert "no-such-agent" in failed[0]["reason"]
    [plan_failed] = run.events("plan.failed")
    assert "worker failed to start" in plan_failed["reason"]
    ledger = (run.folder / "worker-pids.txt").read_text()
    assert "P01 attempt=1 role=primary failed_to_start" in ledger


async def test_profile_env_with_a_nul_byte_is_a_start_failure_not_a_crash(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        workers={"pass": agent_profile("pass", AGENT_X="a\0b")},
    )
    run = await run_plan(config, make_plan(tmp_path))
    assert run.status == "failed"
    [failed] = run.events("worker.failed_to_start")
    assert "null byte" in failed["reason"]
    assert run.names()[-1] == "plan.failed"
