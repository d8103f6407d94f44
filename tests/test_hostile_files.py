"""What a worker leaves where orchestrd reads cannot stop or freeze the daemon: a named pipe
instead of its report, a completion file, its log, a marker_paths file or the next phase's
prompt_file (opening one for reading blocks until someone writes); a sparse gigabyte instead
of its report. Each one fails its plan with a reason naming the file and what it is, and the
daemon answers signals and serves the next plan meanwhile.

The same for names: a file name that is not UTF-8 (or holds control characters) in the inbox,
in plans/ or in the repo is handled like any other and shown escaped (`\\xff`, `\\x1b`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import make_config, make_plan, phase, run_cli, run_plan
from daemon_support import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrd.config import load_config
from orchestrd.spool import Accepted, Rejected, Spool, display_name

AGENTS = Path(__file__).parent / "agents"
FIFO = "is a named pipe (FIFO), not a regular file"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def hostile(what: str) -> dict[str, Any]:
    return {
        "command": ["{python}", str(AGENTS / "hostile_files.py"), "{prompt}"],
        "env": {"HOSTILE": what},
    }


CASES = (
    "fifo_report",
    "fifo_completion",
    "fifo_log",
    "fifo_marker",
    "fifo_prompt",
    "fifo_next_prompt",
    "fifo_next_log",
    "huge_report",
)


def hostile_plan(d: Daemon, what: str) -> dict[str, Any]:
    plan = d.plan_data(what, repo=what, worker=what)
    first = plan["phases"][0]
    if what == "fifo_marker":
        first["marker_paths"] = [{"glob": "src/*.py"}]
    if what.startswith("fifo_next_"):
        first["policy"] = {"max_remediations": 1}
    if what == "fifo_prompt":
        (d.repo(what) / "prompts").mkdir(exist_ok=True)
        (d.repo(what) / "prompts" / "P02.md").write_text("Do P02.\n")
        plan["phases"].append(
            {"id": "P02", "prompt_file": "prompts/P02.md", "markers": [f"@plan:{what}.P02"]}
        )
    return plan


def test_fifos_and_a_sparse_gigabyte_left_by_workers_fail_their_plans_not_the_daemon(
    daemon: Daemon,
) -> None:
    daemon.write_config(
        max_workers=len(CASES),
        workers={**daemon.config_data()["workers"], **{c: hostile(c) for c in CASES}},
    )
    daemon.start()
    for what in CASES:
        daemon.drop(f"{what}.toml", hostile_plan(daemon, what))
    reasons = {e["plan"]: e["reason"] for e in daemon.wait_event("plan.failed", len(CASES))}
    assert f"reports/P01-worker.md: {FIFO}" in reasons["fifo_report"]
    assert f".completed/P01.md: {FIFO}" in reasons["fifo_completion"]
    assert f"worker log worker-P01-1.log {FIFO}" in reasons["fifo_log"]
    assert "src/*.py: 0 file(s) contain @plan:fifo_marker.P01" in reasons["fifo_marker"]
    assert f"prompts/P02.md: {FIFO}" in reasons["fifo_prompt"]
    assert f"prompt-P01-2.md: it {FIFO}" in reasons["fifo_next_prompt"]
    assert f"worker-P01-2.log: it {FIFO}" in reasons["fifo_next_log"]
    assert (
        "reports/P01-worker.md: 1073741824 bytes, over [checks] max_evidence_bytes (1048576); "
        "not read" in reasons["huge_report"]
    )
    archived = {e["plan"]: e for e in daemon.wait_event("plan.archived", len(CASES))}
    assert archived["fifo_report"]["evidence_skipped"] == [f"reports/P01-worker.md: {FIFO}"]
    assert archived["huge_report"]["evidence_skipped"] == [
        "reports/P01-worker.md: 1073741824 bytes, over max_log_bytes (67108864); not copied"
    ]
    # the event loop never blocked: the next plan runs and SIGTERM is obeyed at once
    daemon.submit("next", repo="next")
    daemon.wait_event("plan.succeeded", plan="next")
    assert daemon.stop(timeout=5) == 0


@pytest.mark.anyio
async def test_a_sparse_gigabyte_report_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        checks={"max_evidence_bytes": 4096},
        workers={"huge": hostile("huge_report")},
        default_worker="huge",
    )
    started = time.monotonic()
    run = await run_plan(config, make_plan(tmp_path))
    took = time.monotonic() - started
    failed = [e for e in run.events("check.failed") if e["check"] == "report"][0]
    assert failed["reason"] == (
        "reports/P01-worker.md: 1073741824 bytes, over [checks] max_evidence_bytes (4096); not read"
    )
    assert took < 10, f"{took:.1f}s: the gigabyte was read"


# -- names --


def test_a_non_utf8_name_in_the_inbox_is_rejected_by_its_escaped_name(daemon: Daemon) -> None:
    # an ignored dot-tmp name first: it alone ended the daemon (the watcher could not decode it)
    (daemon.state_dir / "inbox").mkdir(parents=True, exist_ok=True)
    inbox = os.fsencode(daemon.inbox)
    daemon.start()
    with open(inbox + b"/.\xff.tmp", "w"):
        pass
    with open(inbox + b"/bad\xff\x1b[2J.toml", "w") as f:
        f.write("not = [a plan\n")
    [rejected] = daemon.wait_event("plan.rejected")
    assert rejected["file"] == "bad\\xff\\x1b[2J.toml"
    assert rejected["reason"].startswith("inbox/bad\\xff\\x1b[2J.toml: ")
    assert os.path.exists(os.fsencode(daemon.state_dir) + b"/rejected/bad\xff\x1b[2J.toml")
    # a good plan under such a name is accepted
    good = tomli_w.dumps(daemon.plan_data("good")).encode()
    with open(inbox + b"/.tmp-good", "wb") as f:
        f.write(good)
    os.rename(inbox + b"/.tmp-good", inbox + b"/g\xfe.toml")
    [accepted] = daemon.wait_event("plan.accepted")
    assert accepted["file"] == "g\\xfe.toml"
    daemon.wait_event("plan.succeeded", plan="good")
    # a restart with the odd name still there
    assert daemon.stop() == 0
    daemon.start()
    daemon.submit("after")
    daemon.wait_event("plan.succeeded", plan="after")
    assert b"\x1b" not in daemon.stderr().encode("utf-8", "surrogateescape")


def test_status_shows_a_non_utf8_plan_folder_escaped(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    plans = os.fsencode(tmp_path / "state" / "plans")
    os.makedirs(plans + b"/x\xff\x1b]0;t\x07")
    with open(plans + b"/x\xff\x1b]0;t\x07/state.toml.corrupt", "w"):
        pass
    result = run_cli("status", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "x\\xff\\x1b]0;t\\x07  corrupt" in result.stdout
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout


@pytest.mark.anyio
async def test_a_marker_in_a_file_whose_name_is_not_utf8_counts_and_is_shown_escaped(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / os.fsdecode(b"m\xff.py")).write_text("# @plan:T.P01\n")
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, [phase(marker_paths=[{"glob": "src/*.py"}])])
    run = await run_plan(config, plan)
    assert str(run.status) == "succeeded", run.events("check.failed")
    [found] = [e for e in run.events("check.passed") if e["check"] == "marker_paths"]
    assert found["reason"] == "src/*.py: 1 file(s) with @plan:T.P01: src/m\\xff.py"


@pytest.mark.anyio
async def test_a_failure_naming_a_file_that_is_not_utf8_is_saved_and_shown_escaped(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / os.fsdecode(b"m\xff.py")).write_text("# @plan:T.P01\n")
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, [phase(marker_paths=[{"glob": "src/*.py", "min": 2}])])
    run = await run_plan(config, plan)
    # the reason went into the state file (UTF-8 TOML) instead of failing its save
    assert run.events("plan.error") == []
    [failed] = run.events("plan.failed")
    assert "(found in: src/m\\xff.py)" in failed["reason"]
    assert "(found in: src/m\\\\xff.py)" in (run.folder / "state.toml").read_text()


# a name the kernel allows: 1-255 bytes, no '/' and no NUL, not '.' or '..'
NAMES = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@pytest.fixture(scope="module")
def inbox_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spool, Any]:
    tmp = tmp_path_factory.mktemp("names")
    config, _ = load_config(make_config(tmp))
    spool = Spool(config.state_dir)
    spool.ensure()
    return spool, config


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=NAMES, content=st.sampled_from([b"", b"id = 1\n", b"\xff\xfe"]))
def test_any_file_name_in_the_inbox_is_rejected_readably_never_fatal(
    inbox_world: tuple[Spool, Any], name: bytes, content: bytes
) -> None:
    spool, config = inbox_world
    path = os.fsencode(spool.inbox) + b"/" + name
    with open(path, "wb") as f:
        f.write(content)
    try:
        names = spool.candidates()
        for candidate in names:
            outcome = spool.take(candidate, config, 1)
            assert isinstance(outcome, Rejected), outcome
            assert not isinstance(outcome, Accepted)
            assert os.fsencode(candidate) == name
            shown = display_name(candidate)
            assert not RAW_CONTROL.search(shown), repr(shown)
            shown.encode("utf-8")  # text a terminal or the journal can take
            # a byte that is not UTF-8 is shown as \xNN, not as the same U+FFFD as any other
            if "\ufffd" not in name.decode("utf-8", "ignore"):
                assert "\ufffd" not in shown
            assert outcome.reason.startswith(f"inbox/{shown}: ")
            assert os.path.exists(os.fsencode(outcome.moved_to))
    finally:
        if os.path.lexists(path):
            os.unlink(path)


def test_completion_files_are_bounded_by_max_evidence_bytes(tmp_path: Path) -> None:
    from orchestrd.checks import CheckContext, check_completion
    from orchestrd.config import CheckSettings
    from orchestrd.plan import Plan
    from orchestrd.policy import WatchOutcome

    repo = tmp_path / "repo"
    (repo / ".completed").mkdir(parents=True)
    (repo / ".completed" / "P01.md").write_text("@plan:T.P01\n" + "x" * 500)
    plan = Plan.model_validate(
        {
            "id": "T",
            "repo": str(repo),
            "phases": [{"id": "P01", "prompt": "x", "markers": ["@plan:T.P01"]}],
        }
    )
    ctx = CheckContext(
        plan=plan, phase=plan.phases[0], settings=CheckSettings(max_evidence_bytes=100),
        outcome=WatchOutcome(0, 1), log_path=tmp_path / "log", output_dir=tmp_path,
        attempt=1, env={}, grace=0.1,
    )  # fmt: skip
    [result] = check_completion(ctx)
    assert not result.ok
    assert "over [checks] max_evidence_bytes (100)" in result.reason
