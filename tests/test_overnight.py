"""Unattended nights: a rate limit parks its profile (no remediation spent, plans of that profile
wait, others go on), a lost login blocks its profile once, a silent worker is stalled early but
a busy one is not, a worker that printed its result and hangs is stopped, a respawned session
is stopped and reported, remediation that repeats itself stops, and a phase that did nothing
but paperwork fails.

Fake agents (tests/agents/) print what the real CLIs print; time scales are fractions of a
second.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import (
    AGENTS,
    agent_profile,
    alive,
    make_config,
    make_plan,
    phase,
    run_cli,
    run_plan,
)
from daemon_support import Daemon

from orchestrd.audit import AuditLog
from orchestrd.config import Policy, WorkerProfile
from orchestrd.launchers import WorkerSpec, open_launcher
from orchestrd.parking import Holds, read_holds
from orchestrd.policy import Ended, Liveness, watch
from orchestrd.states import ATTEMPT_TRANSITIONS, AttemptStatus, PlanStatus

pytestmark = pytest.mark.anyio


def profile(name: str, **keys: Any) -> dict[str, Any]:
    env = keys.pop("env", {})
    return {**agent_profile(name, **env), **keys}


def starts(counter: Path) -> list[float]:
    return [float(t) for t in counter.read_text().split()] if counter.exists() else []


def git_repo(path: Path) -> Path:
    """A git repository with one commit; the fake agents' `.agent/` records are ignored."""
    path.mkdir(parents=True, exist_ok=True)
    run = {"cwd": path, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q", "-b", "main"], **run)  # type: ignore[call-overload]
    (path / ".gitignore").write_text(".agent/\n")
    (path / "README").write_text("repo\n")
    subprocess.run(["git", "add", "-A"], **run)  # type: ignore[call-overload]
    subprocess.run(  # type: ignore[call-overload]
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], **run
    )
    return path


# -- 1. limits are parked --


def test_a_limited_attempt_parks_its_profile_and_resumes_without_spending_a_remediation(
    daemon: Daemon,
) -> None:
    """codex's usage limit ("Try again at <this minute>") parks profile `lim` for the margin;
    a second plan on `lim` waits without starting a worker, a plan on another profile runs
    meanwhile, and at the end of the park both plans run a fresh primary worker and pass with
    max_remediations = 0."""
    counter = daemon.tmp / "lim-starts"
    lim = profile(
        "limit_codex",
        rate_limit_margin="1.5s",
        env={"AGENT_LIMIT": "at", "AGENT_LIMIT_TIMES": "1", "AGENT_COUNTER": str(counter)},
    )
    daemon.write_config(**{"workers": {**daemon.config_data()["workers"], "lim": lim}})
    daemon.start()
    daemon.submit("A", repo="ra", worker="lim")
    parked = daemon.wait_event("profile.parked")[0]
    assert parked["profile"] == "lim" and parked["by_plan"] == "A"
    assert "You’ve hit your usage limit. Try again at" in parked["message"]
    daemon.submit("B", repo="rb", worker="lim")
    daemon.submit("C", repo="rc")
    daemon.wait_plans_end(["C"])
    waiting = {e["plan"] for e in daemon.wait_event("plan.waiting_quota", 2)}
    assert waiting == {"A", "B"}
    assert daemon.events("profile.unparked") == []  # C ran while lim was parked
    daemon.wait_plans_end(["A", "B"])

    events = daemon.events()
    names = [e["event"] for e in events]
    unparked = names.index("profile.unparked")
    assert names.index("plan.succeeded") < unparked  # C's
    assert [e["plan"] for e in daemon.events("plan.succeeded")] == ["C", "A", "B"] or {
        e["plan"] for e in daemon.events("plan.succeeded")[1:]
    } == {"A", "B"}
    assert not [
        e for e in events[:unparked] if e["event"] == "worker.started" and e.get("plan") == "B"
    ]
    limited = daemon.events("worker.rate_limited")
    assert [(e["plan"], e["attempt"]) for e in limited] == [("A", 1)]
    assert daemon.events("remediation.started") == []
    assert [
        (e["plan"], e["attempt"], e["role"])
        for e in daemon.events("worker.started")
        if e["plan"] in ("A", "B")
    ][-2:] in (
        [("A", 2, "primary"), ("B", 1, "primary")],
        [("B", 1, "primary"), ("A", 2, "primary")],
    )
    times = starts(counter)
    assert len(times) == 3 and times[1] - times[0] >= 1.4  # the margin: nobody started earlier
    status = daemon.cli("status", "A")
    assert status.returncode == 0 and "rate_limited" in status.stdout


def test_a_park_survives_a_restart_and_status_shows_it(daemon: Daemon) -> None:
    lim = profile(
        "limit_codex",
        rate_limit_backoff="2s",
        env={"AGENT_LIMIT": "later", "AGENT_COUNTER": str(daemon.tmp / "n")},
    )
    daemon.write_config(**{"workers": {**daemon.config_data()["workers"], "lim": lim}})
    daemon.start()
    daemon.submit("A", worker="lim")
    parked = daemon.wait_event("profile.parked")[0]
    assert parked["backoff"] > 0 and "Try again later" in parked["message"]
    status = daemon.cli("status")
    assert status.returncode == 0
    assert "lim" in status.stdout and "parked until" in status.stdout
    assert json.loads(daemon.cli("status", "--json").stdout)  # still a list of plans
    daemon.stop()
    daemon.start()
    # the restarted daemon does not start A's worker before the saved park ends
    daemon.wait_event("profile.unparked")
    daemon.wait_plans_end(["A"])
    unparked_at = dt.datetime.fromisoformat(daemon.events("profile.unparked")[0]["ts"])
    assert unparked_at >= dt.datetime.fromisoformat(parked["until"]) - dt.timedelta(seconds=0.05)
    assert len(starts(daemon.tmp / "n")) == 2


def test_a_limit_in_a_single_run_waits_in_place(tmp_path: Path) -> None:
    """`orchestrd run` (the runner alone) waits out the park too: the stream's 429 names its
    reset (`Please try again in 0.3s`)."""
    counter = tmp_path / "n"
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0},
        workers={
            "lim": profile(
                "limit_codex",
                rate_limit_margin="0.1s",
                env={"AGENT_LIMIT": "in", "AGENT_COUNTER": str(counter)},
            )
        },
    )
    run = anyio.run(run_plan, config, make_plan(tmp_path, worker="lim"))
    assert run.status is PlanStatus.SUCCEEDED
    names = run.names()
    assert names.count("profile.parked") == 1 and names.count("profile.unparked") == 1
    assert names.count("worker.rate_limited") == 1 and "remediation.started" not in names
    t = starts(counter)
    assert t[1] - t[0] >= 0.4


@pytest.mark.skipif(
    "output" not in WorkerProfile.model_fields, reason="needs the stream adapters (#13)"
)
async def test_a_stream_rate_limit_event_parks_the_profile_without_any_pattern(
    tmp_path: Path,
) -> None:
    """claude's rejected rate_limit_event, read by its adapter, decides (the patterns are off):
    parked until its resetsAt + margin, then a fresh worker passes."""
    counter = tmp_path / "n"
    lim = profile(
        "limit_claude",
        output="claude-stream-json",
        rate_limit_patterns=[],
        rate_limit_margin="0.3s",
        env={"AGENT_RESET_IN": "0", "AGENT_COUNTER": str(counter)},
    )
    config = make_config(tmp_path, policy={"max_remediations": 0}, workers={"lim": lim})
    run = await run_plan(config, make_plan(tmp_path, worker="lim"))
    assert run.status is PlanStatus.SUCCEEDED
    [parked] = run.events("profile.parked")
    assert "session limit" in parked["message"] and "backoff" not in parked
    t = starts(counter)
    assert len(t) == 2 and t[1] - t[0] >= 0.3


# -- 2. auth errors block the profile once --


def test_an_auth_failure_blocks_the_profile_once_until_unblock(daemon: Daemon) -> None:
    counter = daemon.tmp / "auth-starts"
    auth = {
        "command": ["{python}", str(AGENTS / "auth_gemini.py"), "{prompt}"],
        "env": {"AGENT_COUNTER": str(counter), "AGENT_QUIET": "1"},
        "auth_exit_codes": [41],
    }
    daemon.write_config(**{"workers": {**daemon.config_data()["workers"], "gem": auth}})
    daemon.start()
    daemon.submit("A", repo="ra", worker="gem")
    blocked = daemon.wait_event("profile.blocked")
    daemon.submit("B", repo="rb", worker="gem")
    daemon.wait_event("plan.waiting_quota", 2)
    time.sleep(0.5)
    assert len(daemon.events("profile.blocked")) == 1 and blocked[0]["profile"] == "gem"
    assert "exit code 41" in blocked[0]["message"]
    assert len(starts(counter)) == 1  # one worker, however many plans wait
    assert daemon.events("plan.failed") == [] and daemon.events("remediation.started") == []
    status = daemon.cli("status")
    assert "gem" in status.stdout and "blocked" in status.stdout

    # the login is fixed: the agent now passes
    fixed = {**auth, "command": ["{python}", str(AGENTS / "pass.py"), "{prompt}"]}
    daemon.write_config(**{"workers": {**daemon.config_data()["workers"], "gem": auth}})
    result = daemon.cli("unblock", "gem")
    assert result.returncode == 0, result.stderr
    daemon.wait_event("profile.unblocked")
    # still failing: blocked again, once (the two waiting plans may both have started)
    daemon.wait_event("profile.blocked", 2)
    time.sleep(0.3)
    assert len(daemon.events("profile.blocked")) == 2 and len(starts(counter)) in (2, 3)
    tried = len(starts(counter))
    daemon.write_config(**{"workers": {**daemon.config_data()["workers"], "gem": fixed}})
    daemon.send(signal.SIGHUP)  # a reload lifts blocks too
    daemon.wait_plans_end(["A", "B"])
    assert {e["plan"] for e in daemon.events("plan.succeeded")} == {"A", "B"}
    assert len(starts(counter)) == tried  # the fixed profile ran pass.py
    assert [e["why"] for e in daemon.events("profile.unblocked")] == [
        "unblock request",
        "config reload",
    ]


def test_unblock_of_a_profile_that_is_not_blocked_says_so(daemon: Daemon) -> None:
    daemon.start()
    result = daemon.cli("unblock", "quick")
    assert result.returncode == 0
    ignored = daemon.wait_event("daemon.request_ignored")
    assert "not blocked" in ignored[0]["reason"]
    assert daemon.cli("unblock", "nosuch").returncode != 0


def test_unblock_without_a_daemon_edits_the_saved_holds(tmp_path: Path) -> None:
    config = make_config(tmp_path, workers={"gem": agent_profile("auth_gemini")})
    (tmp_path / "state").mkdir()
    holds = Holds()
    holds.block("gem", dt.datetime.now(dt.UTC), "exit code 41 (authentication)")
    (tmp_path / "state" / "holds.toml").write_bytes(holds.dumps())
    status = run_cli("status", "--config", config, cwd=tmp_path)
    assert "profile gem blocked until `orchestrd unblock gem`" in status.stdout
    result = run_cli("unblock", "gem", "--config", config, cwd=tmp_path)
    assert result.returncode == 0 and "unblocked" in result.stdout, result.stderr
    assert read_holds(tmp_path / "state" / "holds.toml") == Holds(strikes={})
    again = run_cli("unblock", "gem", "--config", config, cwd=tmp_path)
    assert again.returncode == 0 and "is not blocked" in again.stdout
    unknown = run_cli("unblock", "nosuch", "--config", config, cwd=tmp_path)
    assert unknown.returncode != 0 and "no worker profile 'nosuch'" in unknown.stderr


# -- 3. silence --


async def test_a_silent_sleeper_is_stalled_after_silence_timeout(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0, "silence_timeout": "0.4s"},
        workers={"silent": agent_profile("silent")},
    )
    t0 = time.monotonic()
    run = await run_plan(config, make_plan(tmp_path, worker="silent"))
    assert run.status is PlanStatus.FAILED
    assert time.monotonic() - t0 < 5  # not 40 polls of 0.5 s
    stalled = run.events("worker.stalled")
    assert stalled[0]["reason"] == "silent" and stalled[0]["silent_for"] >= 0.4
    assert "turn.started" in stalled[0]["log_tail"]
    assert not alive(run.pids()[0])


async def test_a_cpu_busy_silent_worker_is_not_silent(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0, "silence_timeout": "0.3s"},
        workers={"busy": agent_profile("busy_silent", AGENT_BUSY="1.2")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="busy"))
    assert run.status is PlanStatus.SUCCEEDED, run.events("check.failed")
    assert run.events("worker.stalled") == []


# -- 4. result, then no exit --


@pytest.mark.skipif(
    "output" not in WorkerProfile.model_fields,
    reason="needs the stream adapters (#13): only a stream says its final result came",
)
async def test_a_worker_that_prints_its_result_and_hangs_is_stopped_and_passes(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        policy={"max_remediations": 0, "exit_grace": "0.3s"},
        workers={"rth": profile("result_then_hang", output="claude-stream-json")},
    )
    t0 = time.monotonic()
    run = await run_plan(config, make_plan(tmp_path, worker="rth"))
    assert run.status is PlanStatus.SUCCEEDED, run.events("check.failed")
    assert time.monotonic() - t0 < 5
    hang = run.events("worker.no_exit")
    assert len(hang) == 1 and hang[0]["exit_grace"] == 0.3
    assert run.events("worker.stalled") == []


async def test_exit_grace_stops_a_worker_whose_stream_gave_its_final_result(
    tmp_path: Path,
) -> None:
    """The policy's rule alone, on a real worker: whoever reads the stream (here a stand-in
    for the adapter) marks the result; exit_grace later the watch ends, not as a stall."""
    liveness = Liveness(stream=True)

    def observe(chunk: bytes) -> None:
        liveness.event(final=b'"type": "result"' in chunk)

    env = {
        "PATH": os.environ["PATH"],
        "ORCHESTRD_PHASE_ID": "P01",
        "ORCHESTRD_ATTEMPT": "1",
        "ORCHESTRD_REPORT": "report.md",
        "ORCHESTRD_COMPLETION": "",
        "ORCHESTRD_MARKERS": "",
    }
    argv = [sys.executable, str(AGENTS / "result_then_hang.py"), "do it"]
    spec = WorkerSpec(argv, env, tmp_path, tmp_path / "worker.log")
    policy = Policy(poll_interval=5, max_polls=4, exit_grace=0.3, stop_grace=0.2)
    audit = AuditLog(tmp_path / "audit.jsonl")
    t0 = time.monotonic()
    with anyio.fail_after(10):
        launcher = open_launcher("local", None)
        async with launcher.launch(spec, 1 << 20, 0.2, on_output=observe) as worker:
            outcome = await watch(worker, policy, audit.bind(), None, liveness)
    audit.close()
    assert outcome.ended is Ended.NO_EXIT and outcome.returncode is None
    assert not outcome.stalled and time.monotonic() - t0 < 4
    assert "Status: PASS" in (tmp_path / "report.md").read_text()


# -- 5. respawn --


async def test_a_respawned_session_is_stopped_and_reported(tmp_path: Path) -> None:
    # in process-group containment: a worker in a cgroup takes its helpers with it at the stop
    config = make_config(
        tmp_path,
        containment={"cgroup_parent": "/proc/orchestrd"},
        policy={
            "max_remediations": 0,
            "poll_interval": "0.1s",
            "max_polls": 3,
            "stop_grace": "0.6s",
        },
        workers={"respawner": agent_profile("respawner")},
    )
    run = await run_plan(config, make_plan(tmp_path, worker="respawner"))
    assert run.status is PlanStatus.FAILED
    respawned = run.events("worker.respawned")
    assert len(respawned) == 1
    assert any("respawned-session" in c for c in respawned[0]["commands"])
    agent, helper, session = run.pids()
    assert respawned[0]["pids"] == [session]
    assert not alive(agent) and not alive(session)
    await anyio.sleep(0.3)  # the helper exits once it has respawned the session
    assert not alive(helper)


# -- 6. stagnation --


async def test_two_identical_failures_end_the_phase_as_stagnant(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    config = make_config(tmp_path, policy={"max_remediations": 5})
    run = await run_plan(config, make_plan(tmp_path, repo=repo, worker="fail_report"))
    assert run.status is PlanStatus.FAILED
    failed = run.events("phase.failed")[0]
    assert failed["reason"].startswith("stagnant")
    assert failed["stagnant_attempts"] == [1, 2] and failed["attempts"] == 2
    assert len(run.events("worker.started")) == 2


async def test_a_remediation_that_changes_nothing_is_stagnant(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    config = make_config(
        tmp_path, policy={"max_remediations": 5}, workers={"edit_fail": agent_profile("edit_fail")}
    )
    plan = make_plan(
        tmp_path, [phase(remediation_worker="fail_report")], repo=repo, worker="edit_fail"
    )
    run = await run_plan(config, plan)
    failed = run.events("phase.failed")[0]
    assert failed["reason"].startswith("stagnant") and "changed nothing" in failed["reason"]
    assert failed["stagnant_attempts"] == [1, 2]


async def test_the_remediation_prompt_shows_what_the_last_attempt_changed(
    tmp_path: Path,
) -> None:
    """attempt 2 (after `remediation_backoff`) is told attempt 1's diffstat; attempts that
    each change something go on to max_remediations."""
    repo = git_repo(tmp_path / "repo")
    config = make_config(
        tmp_path,
        policy={"max_remediations": 2},
        workers={"edit_fail": agent_profile("edit_fail")},
    )
    plan = make_plan(
        tmp_path,
        [phase(remediation_backoff="0.4s")],
        repo=repo,
        worker="edit_fail",
    )
    run = await run_plan(config, plan)
    assert run.status is PlanStatus.FAILED
    assert len(run.events("worker.started")) == 3  # each attempt changed something new
    prompt = run.agent("P01", 2)["prompt"]
    assert "Attempt 1 changed" in prompt and "src/feature.py" in prompt
    ended = dt.datetime.fromisoformat(run.events("worker.exited")[0]["ts"])
    second = dt.datetime.fromisoformat(run.events("worker.started")[1]["ts"])
    assert (second - ended).total_seconds() >= 0.4


async def test_remediation_worker_runs_the_remediation_on_another_profile(
    tmp_path: Path,
) -> None:
    repo = git_repo(tmp_path / "repo")
    config = make_config(
        tmp_path, policy={"max_remediations": 1}, workers={"edit_fail": agent_profile("edit_fail")}
    )
    plan = make_plan(tmp_path, [phase(remediation_worker="pass")], repo=repo, worker="edit_fail")
    run = await run_plan(config, plan)
    assert run.status is PlanStatus.SUCCEEDED
    assert "pass.py" in " ".join(run.agent("P01", 2)["argv"])
    assert "edit_fail.py" in " ".join(run.agent("P01", 1)["argv"])


# -- 7. no-op phases --


@pytest.mark.parametrize(
    ("kind", "allow", "ok"),
    [
        ("impl", None, False),
        ("stub", None, False),
        ("verify", None, True),
        ("impl", True, True),
    ],
)
async def test_a_phase_that_changed_nothing_but_paperwork_fails_no_changes(
    tmp_path: Path,
    kind: str,
    allow: bool | None,
    ok: bool,
) -> None:
    repo = git_repo(tmp_path / "repo")
    config = make_config(
        tmp_path, policy={"max_remediations": 0}, workers={"noop": agent_profile("noop")}
    )
    extra = {} if allow is None else {"allow_no_changes": allow}
    plan = make_plan(tmp_path, [phase(kind=kind, **extra)], repo=repo, worker="noop")
    run = await run_plan(config, plan)
    assert (run.status is PlanStatus.SUCCEEDED) is ok
    failed = [e for e in run.events("check.failed") if e["check"] == "no_changes"]
    assert bool(failed) is not ok
    if failed:
        assert "nothing changed but the paperwork" in failed[0]["reason"]


async def test_no_changes_without_git_is_a_warning(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, policy={"max_remediations": 0}, workers={"noop": agent_profile("noop")}
    )
    run = await run_plan(config, make_plan(tmp_path, [phase(kind="impl")], worker="noop"))
    assert run.status is PlanStatus.SUCCEEDED
    assert [e for e in run.events("check.warning") if e["check"] == "no_changes"]


def test_every_attempt_state_is_in_the_transition_table_and_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| attempt state | meaning |") :]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table[: table.index("\n\n")], re.MULTILINE)
    assert listed == [str(s) for s in AttemptStatus]
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptStatus)
    for ended in (AttemptStatus.EXITED, AttemptStatus.STOPPED):
        assert {AttemptStatus.RATE_LIMITED, AttemptStatus.AUTH_FAILED} <= (
            ATTEMPT_TRANSITIONS[ended]
        )
