"""The daemon end to end: `orchestrd daemon` as a real subprocess on a temp state_dir, plan
files dropped into its inbox, real signals, and its audit log read back to check what happened.

The fake worker is tests/agents/daemon_agent.py (profiles in daemon_support.Daemon.config_data):
`quick` sleeps 0.1 s, `held` runs until the test releases its plan, `stuck` runs until stopped
on attempt 1 of P01, `fail_once` fails P02 the first time. Every agent writes its pid file; the
fixture kills what is left and fails the test if any worker outlived its daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import tomli_w
from daemon_support import (
    Daemon,
    DirectoryEvents,
    alive,
    concurrency,
    plans_overlapping_on_a_repo,
    wait_for,
)

from orchestrd.spool import is_candidate


def started_order(d: Daemon, plans: list[str]) -> list[str]:
    wanted = set(plans)
    return [e["plan"] for e in d.events("plan.started") if e["plan"] in wanted]


def status_json(d: Daemon) -> dict[str, dict[str, object]]:
    result = d.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return {row["plan"]: row for row in json.loads(result.stdout)}


# -- many plans at once --


def test_twenty_plans_on_five_repos_never_exceed_four_workers_or_share_a_repo(
    daemon: Daemon,
) -> None:
    daemon.start()
    ids = [f"p{i:02d}" for i in range(20)]
    # names sort in submission order; each repo's plans are submitted one after another, so
    # without the repo lock they would run side by side
    for i, plan_id in enumerate(ids):
        daemon.submit(plan_id, repo=f"r{i // 4}", phases=("P01", "P02"))
    daemon.wait_plans_end(ids, timeout=45)

    events = daemon.events()
    assert Counter(e["plan"] for e in daemon.events("plan.succeeded")) == dict.fromkeys(ids, 1)
    assert daemon.events("plan.failed") == []
    assert concurrency(events) == 4  # the limit, and used
    assert plans_overlapping_on_a_repo(events) == []
    assert daemon.events("plan.waiting_repo"), "plans queued behind a busy repo say so"
    # FIFO: accepted in submission order, and each repo's plans started in that order
    assert [e["plan"] for e in daemon.events("plan.accepted")] == ids
    for r in range(5):
        same_repo = ids[4 * r : 4 * r + 4]
        assert started_order(daemon, same_repo) == same_repo
    # phases within a plan stay sequential
    for plan_id in ids:
        names = [
            (e["event"], e.get("phase"))
            for e in events
            if e.get("plan") == plan_id and e["event"] in ("phase.started", "phase.passed")
        ]
        assert names == [
            ("phase.started", "P01"),
            ("phase.passed", "P01"),
            ("phase.started", "P02"),
            ("phase.passed", "P02"),
        ]
    for plan_id in ids:  # the end event comes before the move to archive/
        daemon.wait_event("plan.archived", plan=plan_id)
    assert sorted(p.name for p in (daemon.state_dir / "archive").iterdir()) == ids
    assert daemon.live_workers() == []


# -- the inbox --


def test_malformed_plan_is_rejected_with_a_reason_naming_the_key_and_serving_goes_on(
    daemon: Daemon,
) -> None:
    daemon.start()
    inbox = daemon.inbox
    # files still being written are left alone until renamed
    later = tomli_w.dumps(daemon.plan_data("later"))
    (inbox / ".later.toml").write_text(later)
    (inbox / "later.toml.tmp").write_text(later)

    typo = daemon.plan_data("typo")
    typo["phases"][0]["promt"] = typo["phases"][0].pop("prompt")
    typo_text = tomli_w.dumps(typo)
    daemon.drop("typo.toml", typo_text)
    no_repo = daemon.plan_data("norepo")
    del no_repo["repo"]
    daemon.drop("norepo.toml", no_repo)

    [rejected] = daemon.wait_event("plan.rejected", file="typo.toml")
    error = (daemon.state_dir / "rejected" / "typo.toml.error").read_text()
    assert error.startswith("inbox/typo.toml: phases[0].promt: unknown key")
    assert rejected["reason"] == error.strip()
    assert rejected["moved_to"] == str(daemon.state_dir / "rejected" / "typo.toml")
    assert (daemon.state_dir / "rejected" / "typo.toml").read_text() == typo_text  # as it came
    [missing] = daemon.wait_event("plan.rejected", file="norepo.toml")
    assert "inbox/norepo.toml: repo: required key is missing" in missing["reason"]
    assert "repo: required key" in (daemon.state_dir / "rejected/norepo.toml.error").read_text()

    daemon.submit("good")
    daemon.wait_event("plan.succeeded", plan="good")
    assert sorted(os.listdir(inbox)) == [".later.toml", "later.toml.tmp"]
    assert daemon.events(plan="later") == []

    os.rename(inbox / "later.toml.tmp", inbox / "later.toml")
    daemon.wait_event("plan.succeeded", plan="later")
    assert sorted(os.listdir(inbox)) == [".later.toml"]

    # a plan id already known is rejected with that reason, even with other contents
    daemon.drop("again.toml", daemon.plan_data("good", repo="elsewhere"))
    [dup] = daemon.wait_event("plan.rejected", file="again.toml")
    assert dup["reason"].startswith("inbox/again.toml: id: plan id 'good' is already known")
    assert "new id" in dup["reason"]
    assert (daemon.state_dir / "rejected" / "again.toml.error").read_text().strip() == dup["reason"]
    assert Counter(e["plan"] for e in daemon.events("plan.succeeded")) == {"good": 1, "later": 1}
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_resubmitting_a_plan_that_is_still_running_is_rejected_not_dropped(
    daemon: Daemon,
) -> None:
    daemon.start()
    daemon.submit("busy", worker="stuck")
    daemon.wait_event("worker.started", plan="busy")
    daemon.submit("busy", worker="stuck")  # the very same bytes again
    [dup] = daemon.wait_event("plan.rejected", file="busy.toml")
    assert "plan id 'busy' is already known" in dup["reason"]
    assert (daemon.state_dir / "rejected" / "busy.toml").exists()


# -- crashes, signals, recovery --


def test_sigkilled_daemon_restarted_finishes_every_plan_exactly_once(daemon: Daemon) -> None:
    daemon.write_config(max_workers=2)
    daemon.start()
    ids = ["k1", "k2", "k3"]
    for i, plan_id in enumerate(ids):
        worker = "quick" if plan_id == "k3" else "stuck"
        daemon.submit(plan_id, repo=f"r{i}", phases=("P01", "P02"), worker=worker)
    first = daemon.wait_event("worker.started", count=2)  # k1, k2 mid-P01; k3 queued
    old = sorted(e["pid"] for e in first)
    # once they have printed their line: a print into the dead daemon's pipe would end them
    for e in first:
        log = Path(e["log"])
        daemon.wait_for(lambda log=log: b"daemon agent:" in log.read_bytes(), what=str(log))
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert all(alive(pid) for pid in old), "workers run in their own session"

    daemon.start()
    daemon.wait_plans_end(ids)

    orphans = daemon.events("worker.orphan_stopped")
    assert sorted(e["pid"] for e in orphans) == old
    # each was stopped by the daemon, unless it already died of SIGPIPE on the daemon's closed
    # output pipe (its output goes through the daemon so the log can be capped)
    assert {e["signal"] for e in orphans} <= {"SIGTERM", None}
    assert not any(alive(pid) for pid in old)
    recovered = {e["plan"]: e["previous"] for e in daemon.events("daemon.recovered")}
    assert recovered == {"k1": "running", "k2": "running", "k3": "queued"}
    assert Counter(e["plan"] for e in daemon.events("plan.succeeded")) == dict.fromkeys(ids, 1)
    passed = Counter((e["plan"], e["phase"]) for e in daemon.events("phase.passed"))
    assert set(passed.values()) == {1} and len(passed) == 6
    # the interrupted phase was re-run by a fresh worker; nothing else ran twice
    attempts = Counter((e["plan"], e["phase"]) for e in daemon.events("worker.started"))
    assert attempts == {
        ("k1", "P01"): 2,
        ("k2", "P01"): 2,
        ("k3", "P01"): 1,
        ("k1", "P02"): 1,
        ("k2", "P02"): 1,
        ("k3", "P02"): 1,
    }
    assert daemon.stop() == 0
    assert daemon.live_workers() == []


def test_sigterm_exits_0_with_no_worker_left_and_plans_resume_on_restart(
    daemon: Daemon,
) -> None:
    daemon.start()
    ids = ["t1", "t2", "t3"]
    for i, plan_id in enumerate(ids):
        daemon.submit(plan_id, repo=f"r{i}", phases=("P01", "P02"), worker="stuck")
    pids = [e["pid"] for e in daemon.wait_event("worker.started", count=3)]
    assert all(alive(pid) for pid in pids)

    assert daemon.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in pids)
    assert daemon.live_workers() == []
    [stopping] = daemon.events("daemon.stopping")
    assert (stopping["signal"], stopping["running"]) == ("SIGTERM", 3)
    stopped = daemon.events("worker.stopped", why="cancelled")
    assert sorted(e["pid"] for e in stopped) == sorted(pids)
    assert daemon.events()[-1]["event"] == "daemon.stopped"
    rows = status_json(daemon)  # the daemon is down: read from the state files
    assert {p: rows[p]["state"] for p in ids} == dict.fromkeys(ids, "interrupted")

    daemon.start()
    daemon.wait_plans_end(ids)
    assert Counter(e["plan"] for e in daemon.events("plan.succeeded")) == dict.fromkeys(ids, 1)
    recovered = {e["plan"]: e["previous"] for e in daemon.events("daemon.recovered")}
    assert recovered == dict.fromkeys(ids, "interrupted")
    assert {p: r["state"] for p, r in status_json(daemon).items()} == dict.fromkeys(
        ids, "succeeded"
    )


def test_more_signals_during_shutdown_neither_kill_the_daemon_nor_leave_a_worker(
    daemon: Daemon,
) -> None:
    daemon.start()
    daemon.submit("s2", worker="stubborn", policy={"stop_grace": "1s"})
    pid = daemon.agent_pid("s2")  # SIGTERM is ignored from now on: the stop takes the grace

    daemon.send(signal.SIGTERM)
    daemon.wait_event("daemon.stopping")
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        daemon.send(sig)
    assert daemon.proc is not None and daemon.proc.wait(10) == 0
    assert not alive(pid)
    [stopped] = daemon.events("worker.stopped", plan="s2")
    assert (stopped["pid"], stopped["signal"]) == (pid, "SIGKILL")
    assert len(daemon.events("daemon.stopping")) == 1
    assert status_json(daemon)["s2"]["state"] == "interrupted"


def test_plans_waiting_or_dropped_during_the_stop_start_no_worker_and_run_after_the_restart(
    daemon: Daemon,
) -> None:
    """Shutdown stops the inbox first, then each plan by its own scope, then the daemon: a
    plan waiting for a worker slot ends interrupted beside the running one, and a plan dropped
    while the stop takes its grace stays in the inbox; a second stop leaves a plan recovered
    interrupted and still waiting as it was; both run once "busy" is out of the way."""
    daemon.write_config(max_workers=1)
    daemon.start()
    daemon.submit("busy", worker="stubborn", policy={"stop_grace": "2s"})
    pid = daemon.agent_pid("busy")  # ignores SIGTERM: the stop takes the grace
    daemon.submit("waiting", repo="r2")
    daemon.wait_event("plan.queued", plan="waiting")

    daemon.send(signal.SIGTERM)
    daemon.wait_event("daemon.stopping")
    daemon.submit("late", repo="r3")
    assert daemon.proc is not None and daemon.proc.wait(15) == 0
    assert not alive(pid)
    assert not daemon.events("worker.started", plan="waiting")
    assert not daemon.events("plan.accepted", plan="late")
    assert (daemon.inbox / "late.toml").exists()
    rows = status_json(daemon)
    assert (rows["busy"]["state"], rows["waiting"]["state"]) == ("interrupted", "interrupted")
    names = [e["event"] for e in daemon.events()]
    assert names.index("plan.interrupted") > names.index("daemon.stopping")
    assert names[-1] == "daemon.stopped"

    # again: "busy" takes the one slot, "waiting" (interrupted on disk) and "late" wait for
    # it; a plan interrupted before stays interrupted, none fails
    daemon.start()
    daemon.agent_pid("busy", attempt=2)
    daemon.wait_event("plan.queued", plan="late")
    assert daemon.stop() == 0
    rows = status_json(daemon)
    assert (rows["waiting"]["state"], rows["late"]["state"]) == ("interrupted", "interrupted")
    assert not daemon.events("plan.error") and not daemon.events("plan.failed")

    assert daemon.cli("cancel", "busy").returncode == 0  # offline: it would only hang again
    daemon.start()
    daemon.wait_plans_end(["waiting", "late"])
    assert {e["plan"] for e in daemon.events("plan.succeeded")} == {"waiting", "late"}


def test_a_corrupt_state_file_is_set_aside_and_the_daemon_serves_on(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("torn", worker="stuck")
    daemon.wait_event("worker.started", plan="torn")
    assert daemon.stop() == 0
    state = daemon.state_dir / "plans" / "torn" / "state.toml"
    torn = state.read_bytes()[:40]  # cut off mid-write, as a broken disk would leave it
    state.write_bytes(torn)

    daemon.start()
    [corrupt] = daemon.wait_event("plan.state_corrupt", plan="torn")
    assert str(state) in corrupt["reason"]
    assert corrupt["moved_to"] == str(state.with_name("state.toml.corrupt"))
    assert state.with_name("state.toml.corrupt").read_bytes() == torn  # kept for a person
    assert not state.exists()
    daemon.submit("next", repo="other")
    daemon.wait_event("plan.succeeded", plan="next")
    assert daemon.events("plan.started", plan="torn")[1:] == []  # not run blind


def test_sighup_applies_a_new_max_workers_and_keeps_the_old_config_when_the_new_is_bad(
    daemon: Daemon,
) -> None:
    daemon.write_config(max_workers=1)
    daemon.start()
    ids = ["h1", "h2", "h3", "h4"]
    daemon.hold(*ids)
    for i, plan_id in enumerate(ids):
        daemon.submit(plan_id, repo=f"r{i}", worker="held")
    daemon.wait_event("worker.started", plan="h1")

    # refused as a whole: its max_workers = 3 must not slip in beside the bad key
    bad = daemon.config_data(max_workers=3)
    bad["policy"]["poll_interval"] = "soon"
    daemon.config_path.write_text(tomli_w.dumps(bad))
    daemon.send(signal.SIGHUP)
    [failed] = daemon.wait_event("daemon.reload_failed")
    assert "policy.poll_interval" in failed["reason"]
    assert str(daemon.config_path) in failed["reason"]
    daemon.release("h1")
    daemon.wait_event("plan.succeeded", plan="h1")
    daemon.wait_event("plan.started", plan="h2")
    starts_and_ends = [
        (e["event"], e["plan"])
        for e in daemon.events()
        if e["event"] in ("plan.started", "plan.succeeded")
    ]
    assert starts_and_ends == [
        ("plan.started", "h1"),
        ("plan.succeeded", "h1"),
        ("plan.started", "h2"),
    ], "one plan at a time still: the refused config's max_workers = 3 was not applied"

    daemon.write_config(max_workers=3)
    daemon.send(signal.SIGHUP)
    [reloaded] = daemon.wait_event("daemon.reloaded")
    assert reloaded["max_workers"] == 3
    # beside h2, still held; h3 and h4 start in either order (their tasks race to the log)
    daemon.wait_event("worker.started", plan="h3")
    daemon.wait_event("worker.started", plan="h4")
    assert concurrency(daemon.events()) == 3
    daemon.release("h2", "h3", "h4")
    daemon.wait_plans_end(ids)

    events = daemon.events()
    assert concurrency(events[: events.index(reloaded)]) == 1
    assert concurrency(events) == 3
    assert Counter(e["plan"] for e in daemon.events("plan.succeeded")) == dict.fromkeys(ids, 1)
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_notify_socket_receives_ready_watchdog_and_stopping(daemon: Daemon, tmp_path: Path) -> None:
    address = tmp_path / "notify"
    assert len(str(address)) < 100, "AF_UNIX paths are short"
    messages: list[list[str]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.setblocking(False)

        def received(field: str, count: int = 1) -> bool:
            while True:
                try:
                    messages.append(sock.recv(4096).decode().split("\n"))
                except BlockingIOError:
                    break
            return sum(field in m for m in messages) >= count

        daemon.start(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="200000")
        wait_for(lambda: received("READY=1"), what="READY=1")
        wait_for(lambda: received("WATCHDOG=1", 3), what="three WATCHDOG=1")
        assert daemon.stop(signal.SIGTERM) == 0
        wait_for(lambda: received("STOPPING=1"), what="STOPPING=1")

    fields = [f for m in messages for f in m]
    ready = next(m for m in messages if "READY=1" in m)
    assert any(f.startswith("STATUS=") for f in ready)
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert daemon.events("daemon.notify_failed") == []


# -- the CLI against a running or stopped daemon --


def test_status_prints_a_table_and_json_while_running_and_while_down(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("s-done")
    daemon.wait_event("plan.succeeded", plan="s-done")
    daemon.submit("s-run", repo="other", worker="stuck")
    [started] = daemon.wait_event("worker.started", plan="s-run")

    result = daemon.cli("status")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "PLAN",
        "STATE",
        "PHASE",
        "ATTEMPT",
        "PID",
        "ELAPSED",
        "TOKENS",
        "COST",
    ]
    table = {row.split()[0]: row.split() for row in rows}
    assert table["s-done"][1:5] == ["succeeded", "P01", "1", "-"]
    assert table["s-run"][1:5] == ["running", "P01", "1", str(started["pid"])]
    for row in rows:  # columns line up under their headers
        assert row.index(row.split()[1], len(row.split()[0])) == header.index("STATE")

    rows_json = status_json(daemon)
    assert set(rows_json) == {"s-done", "s-run"}
    run = rows_json["s-run"]
    assert (run["state"], run["phase"], run["attempt"], run["pid"]) == (
        "running",
        "P01",
        1,
        started["pid"],
    )
    assert isinstance(run["elapsed"], float) and run["elapsed"] >= 0
    detail = json.loads(daemon.cli("status", "s-run", "--json").stdout)
    assert detail["phases"]["P01"]["attempts"][0]["pid"] == started["pid"]

    assert daemon.stop() == 0
    down = daemon.cli("status")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0].split()[0] == "PLAN"
    assert status_json(daemon)["s-run"]["state"] == "interrupted"
    assert status_json(daemon)["s-run"]["pid"] is None
    missing = daemon.cli("status", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_cancel_stops_a_running_plans_worker_and_retry_runs_it_again(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("c1", phases=("P01", "P02"), worker="stuck")
    [started] = daemon.wait_event("worker.started", plan="c1")
    assert alive(started["pid"])
    daemon.submit("c2")  # same repo: waits for c1
    daemon.wait_event("plan.waiting_repo", plan="c2")
    assert daemon.cli("cancel", "c2").returncode == 0
    daemon.wait_event("plan.cancelled", plan="c2")
    assert daemon.events("plan.started", plan="c2") == []  # a queued plan just never runs
    assert alive(started["pid"])  # and c1 is untouched

    result = daemon.cli("cancel", "c1")
    assert result.returncode == 0, result.stderr
    assert "requested" in result.stdout
    daemon.wait_event("plan.cancelled", plan="c1")
    assert not alive(started["pid"])
    [stopped] = daemon.events("worker.stopped", plan="c1")
    assert stopped["pid"] == started["pid"]
    daemon.wait_event("plan.archived", plan="c1")
    assert status_json(daemon)["c1"]["state"] == "cancelled"
    assert daemon.cli("cancel", "c1").returncode == 1  # nothing left to cancel

    result = daemon.cli("retry", "c1")
    assert result.returncode == 0, result.stderr
    daemon.wait_event("plan.succeeded", plan="c1")
    runs = [(e["phase"], e["attempt"]) for e in daemon.events("worker.started", plan="c1")]
    assert runs == [("P01", 1), ("P01", 2), ("P02", 1)]
    assert status_json(daemon)["c1"]["state"] == "succeeded"


def test_retry_runs_a_failed_plan_again_from_its_first_unfinished_phase(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("f1", phases=("P01", "P02", "P03"), worker="fail_once")
    [failed] = daemon.wait_event("plan.failed", plan="f1")
    assert "phase P02 failed" in failed["reason"]
    daemon.wait_event("plan.archived", plan="f1")
    assert status_json(daemon)["f1"]["state"] == "failed"
    assert daemon.cli("retry", "nope").returncode == 2

    result = daemon.cli("retry", "f1")
    assert result.returncode == 0, result.stderr
    daemon.wait_event("plan.succeeded", plan="f1")
    phases = [
        (e["event"], e["phase"])
        for e in daemon.events(plan="f1")
        if e["event"] in ("phase.started", "phase.skipped", "phase.passed", "phase.failed")
    ]
    assert phases == [
        ("phase.started", "P01"),
        ("phase.passed", "P01"),
        ("phase.started", "P02"),
        ("phase.failed", "P02"),
        ("phase.skipped", "P01"),
        ("phase.started", "P02"),
        ("phase.passed", "P02"),
        ("phase.started", "P03"),
        ("phase.passed", "P03"),
    ]
    assert status_json(daemon)["f1"]["state"] == "succeeded"
    assert daemon.cli("retry", "f1").returncode == 1  # a succeeded plan is not retried


def test_cancel_and_retry_apply_to_the_state_files_while_the_daemon_is_down(
    daemon: Daemon,
) -> None:
    daemon.start()
    daemon.submit("d-failed", phases=("P01", "P02"), worker="fail_once")
    daemon.wait_event("plan.archived", plan="d-failed")
    daemon.submit("d-stuck", repo="other", worker="stuck")
    [started] = daemon.wait_event("worker.started", plan="d-stuck")
    # once it has printed its line: a print into the dead daemon's pipe would end it (EPIPE)
    log = Path(started["log"])
    daemon.wait_for(lambda: b"daemon agent:" in log.read_bytes(), what="the agent's first line")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert alive(started["pid"])  # left behind by the crash

    result = daemon.cli("cancel", "d-stuck")
    assert result.returncode == 0, result.stderr
    assert "cancelled" in result.stdout
    assert not alive(started["pid"])  # the leftover worker was stopped too
    result = daemon.cli("retry", "d-failed")
    assert result.returncode == 0, result.stderr
    assert "queued" in result.stdout
    rows = status_json(daemon)
    assert (rows["d-stuck"]["state"], rows["d-stuck"]["where"]) == ("cancelled", "archive")
    assert (rows["d-failed"]["state"], rows["d-failed"]["where"]) == ("queued", "plans")

    daemon.start()
    daemon.wait_event("plan.succeeded", plan="d-failed")
    restarted = len(daemon.events("daemon.started"))
    assert restarted == 2
    assert [e["plan"] for e in daemon.events("daemon.recovered")] == ["d-failed"]
    assert len(daemon.events("worker.started", plan="d-stuck")) == 1  # never ran again
    assert status_json(daemon)["d-stuck"]["state"] == "cancelled"


# -- submit --


def test_submit_validates_and_drops_the_plan_atomically(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.stop() == 0  # the daemon made its folders; submit works while it is down
    bad = daemon.plan_data("sub-bad")
    bad["phases"][0]["markerz"] = bad["phases"][0].pop("markers")
    bad_path = daemon.tmp / "bad.toml"
    bad_path.write_text(tomli_w.dumps(bad))
    result = daemon.cli("submit", bad_path)
    assert result.returncode == 2
    assert f"{bad_path}: phases[0].markerz: unknown key" in result.stderr
    assert os.listdir(daemon.inbox) == []

    daemon.repo("sub")
    good = daemon.plan_data("sub-ok", repo="sub")
    good["repo"] = "repos/sub"  # relative to the plan file: the inbox gets it absolute
    good_path = daemon.tmp / "good.toml"
    good_path.write_text(tomli_w.dumps(good))
    with DirectoryEvents(daemon.inbox) as inbox_events:
        result = daemon.cli("submit", good_path)
        assert result.returncode == 0, result.stderr
        seen = inbox_events.read()
    # written under a name the daemon ignores, then renamed: never seen half-written
    final = [mask for name, mask in seen if name == "sub-ok.toml"]
    assert final == [DirectoryEvents.MOVED_TO]
    [tmp_name] = {name for name, mask in seen if mask == DirectoryEvents.CLOSE_WRITE}
    assert not is_candidate(tmp_name)
    assert os.listdir(daemon.inbox) == ["sub-ok.toml"]  # no temp file left behind
    dropped = (daemon.inbox / "sub-ok.toml").read_text()
    assert f'repo = "{daemon.repo("sub")}"' in dropped
    again = daemon.cli("submit", good_path)
    assert again.returncode == 2 and "already waiting in the inbox" in again.stderr

    daemon.start()
    daemon.wait_event("plan.succeeded", plan="sub-ok")
    assert daemon.events("plan.rejected") == []
    known = daemon.cli("submit", good_path)
    assert known.returncode == 2 and "plan id 'sub-ok' is already known" in known.stderr
