"""Privilege separation (issue #22): workers and verify commands run as their own user, alone in
a user+PID namespace, and cannot touch the daemon, its files or other plans' workers; a forged
state.toml alone never makes recovery skip a phase.

Run as root with a worker user the session creates (`orchestrd-test-worker`); skipped, with the
reason, otherwise. Everything a worker must reach lives under a 0755 scratch folder in /tmp (the
venv and pytest's tmp_path are root's alone), and its agent runs with the system python.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import site
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from conftest import AGENTS, read_events
from daemon_support import TERMINAL_EVENTS, Daemon, alive, wait_for

from orchestrd.launchers.proctree import nsinit_processes, stop_processes
from orchestrd.privsep import resolve, wrap
from orchestrd.state import PhaseState, PlanState, dump_state, load_state
from orchestrd.states import PhaseStatus, PlanStatus

USER = "orchestrd-test-worker"
DAEMON_USER = "orchestrd-test-daemon"
CAPS = "+setuid,+setgid,+kill"
SYSTEM_PYTHON = "/usr/bin/python3"
AGENT = AGENTS / "privsep_agent.py"

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or not shutil.which("useradd"),
        reason="needs root (to create a worker user and switch to it), useradd, /usr/bin/python3",
    ),
    # the session's system users are one per machine (and useradd locks /etc/passwd)
    pytest.mark.xdist_group("users"),
]


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user(name: str, home: Path) -> tuple[pwd.struct_passwd, bool]:
    """The system user `name` (with its own group), created if missing; and whether it was."""
    try:
        return pwd.getpwnam(name), False
    except KeyError:
        # a group of that name left by an earlier, interrupted run is taken as it is
        group = ["--gid", name] if _group_exists(name) else ["--user-group"]
        subprocess.run(
            [
                "useradd",
                "--system",
                *group,
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
        )
        return pwd.getpwnam(name), True


@pytest.fixture(scope="session")
def worker_user() -> Iterator[pwd.struct_passwd]:
    base = Path(tempfile.mkdtemp(prefix="orchestrd-privsep-home-"))
    base.chmod(0o755)
    pw, created = _user(USER, base / "home")
    home = Path(pw.pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    resolve.cache_clear()
    yield pw
    if created:
        subprocess.run(["userdel", USER], check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon_user(worker_user: pwd.struct_passwd) -> Iterator[pwd.struct_passwd]:
    """The unit's `orchestrd`: a member of the worker's group (it reads the repos), never the
    other way round."""
    pw, created = _user(DAEMON_USER, Path("/nonexistent"))
    subprocess.run(["usermod", "-aG", USER, DAEMON_USER], check=True)
    yield pw
    if created:
        subprocess.run(["userdel", DAEMON_USER], check=False)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="orchestrd-privsep-"))
    path.chmod(0o755)  # the worker must reach its repo under it; state_dir stays 0750 root's
    yield path
    shutil.rmtree(path, ignore_errors=True)


class SepDaemon(Daemon):
    """The daemon run by the system python (workers, started as the worker user, execute the
    daemon's interpreter: the venv's lies under /root), with the venv's packages."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.python = SYSTEM_PYTHON

    def start(self, wait: bool = True, **env: str) -> subprocess.Popen[bytes]:
        path = os.pathsep.join([str(Path(__file__).parent.parent), *site.getsitepackages()])
        return super().start(wait, PYTHONPATH=path, **env)


@pytest.fixture
def sep_daemon(scratch: Path, worker_user: pwd.struct_passwd) -> Iterator[Daemon]:
    d = SepDaemon(scratch)
    yield d
    leftovers = d.cleanup()
    assert not leftovers, f"workers outlived the daemon: {leftovers}"


def agent(**env: object) -> dict[str, Any]:
    return {
        "command": [SYSTEM_PYTHON, str(AGENT), "{prompt_file}"],
        "env": {k: str(v) for k, v in env.items()},
    }


def configure(d: Daemon, **profile_env: object) -> None:
    d.write_config(
        allow_root_workers=False,
        worker_user=USER,
        default_worker="agent",
        workers={
            "agent": agent(
                AGENT_AUDIT=d.audit_path,
                AGENT_CONTROL=d.state_dir / "control",
                AGENT_DAEMON_PID_FILE=d.tmp / "daemon.pid",
                **profile_env,
            )
        },
    )


def worker_repo(d: Daemon, name: str, pw: pwd.struct_passwd, git: bool = False) -> Path:
    repo = d.repo(name)
    if git:
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / "README").write_text("x\n")
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "init",
            ],
            check=True,
        )
    for path in (repo, *repo.rglob("*")):
        os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    return repo


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def facts(repo: Path, phase: str = "P01", attempt: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((repo / ".agent" / f"{phase}-{attempt}.json").read_text())
    return data


def end(d: Daemon, plan_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: next(
            (e for e in d.events() if e["event"] in TERMINAL_EVENTS and e.get("plan") == plan_id),
            None,
        ),
        what=f"{plan_id} to end",
    )


def test_a_hostile_worker_cannot_forge_state_kill_the_daemon_or_other_plans_workers(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    d, pw = sep_daemon, worker_user
    configure(d)
    worker_repo(d, "hostile", pw)
    other = worker_repo(d, "other", pw)
    hold = other / "hold"
    hold.touch()
    os.chown(hold, pw.pw_uid, pw.pw_gid)
    d.start()
    (d.tmp / "daemon.pid").write_text(str(d.pid))
    started = d.events("daemon.started")[-1]
    assert started["privilege_separation"] is True

    # another plan's worker, of the same worker user, waits while the hostile one runs
    held = d.plan_data("B", repo="other")
    held["worker"] = "held"
    d.write_config(
        allow_root_workers=False,
        worker_user=USER,
        default_worker="agent",
        workers={
            "agent": agent(
                AGENT_AUDIT=d.audit_path,
                AGENT_CONTROL=d.state_dir / "control",
                AGENT_DAEMON_PID_FILE=d.tmp / "daemon.pid",
                AGENT_ATTACK=1,
            ),
            "held": agent(AGENT_HOLD_FILE=hold),
        },
    )
    d.send(signal.SIGHUP)
    wait_for(lambda: d.events("daemon.reloaded"), what="reload")
    d.drop("B.toml", held)
    other_pid = int(
        wait_for(
            lambda: (other / "hold.pid").exists() and (other / "hold.pid").read_text(),
            what="B's worker",
        )
    )
    d.submit("A", repo="hostile", phases=("P01", "P02", "P03"))
    assert end(d, "A")["event"] == "plan.succeeded", [e["reason"] for e in d.events("check.failed")]

    got = facts(d.repo("hostile"))
    assert got["forge_state"] == "EACCES"
    assert got["append_audit"] == "EACCES"
    assert got["write_plans"] == "EACCES"
    assert got["write_control"] == "EACCES"
    assert got["kill_daemon"] in ("EPERM", "ESRCH")
    assert alive(d.pid), "the daemon was killed by its worker"
    assert alive(other_pid), "kill -9 -1 in one worker killed another plan's worker"
    # every phase really ran (no forged pass), each by its own worker
    passed = [e["phase"] for e in d.events("phase.passed") if e["plan"] == "A"]
    assert passed == ["P01", "P02", "P03"]
    assert not d.events("phase.skipped")
    hold.unlink()
    assert end(d, "B")["event"] == "plan.succeeded"


def test_workers_and_verify_commands_run_as_the_worker_user_on_a_repo_it_owns(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    d, pw = sep_daemon, worker_user
    configure(d)
    repo = worker_repo(d, "r", pw, git=True)
    # the repo's config is its owner's to write (an earlier plan's worker): a clean filter in
    # it would make git run a program wherever the daemon runs git
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=trap\n")
    with open(repo / ".git" / "config", "a") as f:
        f.write('[filter "trap"]\n\tclean = "sh -c \'id -u >> .git/trap-ran-as; cat\'"\n')
    d.start()
    plan = d.plan_data("V", repo="r")
    plan["phases"][0]["verify"] = [
        {"run": "id -u > verify-uid.txt; echo $HOME >> verify-uid.txt", "expect": "pass"}
    ]
    d.drop("V.toml", plan)
    assert end(d, "V")["event"] == "plan.succeeded"
    got = facts(repo)
    assert (got["uid"], got["euid"], got["gid"]) == (pw.pw_uid, pw.pw_uid, pw.pw_gid)
    assert (got["home"], got["user"], got["logname"]) == (pw.pw_dir, USER, USER)
    assert got["groups"] == [pw.pw_gid]
    assert got["read_prompt"] == "ok"
    assert (repo / "verify-uid.txt").read_text().split() == [str(pw.pw_uid), pw.pw_dir]
    # git snapshots still work on a repo owned by another user
    changes = [e for e in d.events("worker.changes") if e["plan"] == "V"]
    assert changes and "dubious" not in json.dumps(d.events())
    # …and the repo's config cannot run code as the daemon: the daemon's git runs no filter,
    # and what reads the repo's config runs as the worker user besides
    ran = repo / ".git" / "trap-ran-as"
    assert not ran.exists() or set(ran.read_text().split()) == {str(pw.pw_uid)}
    # the daemon's own files stay private: nothing in state_dir is open to others
    for path in (d.state_dir, d.state_dir / "plans", d.audit_path):
        assert os.stat(path).st_mode & 0o007 == 0, path


def test_root_without_worker_user_refuses_to_start(sep_daemon: Daemon) -> None:
    sep_daemon.write_config(allow_root_workers=False)
    proc = sep_daemon.start(wait=False)
    assert proc.wait(timeout=20) == 2
    assert "without worker_user" in sep_daemon.stderr()


def test_a_hand_off_root_the_workers_could_write_refuses_the_start(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    configure(sep_daemon)
    root = sep_daemon.tmp / "state-handoff"
    root.mkdir()
    root.chmod(0o2770)  # the worker group could swap another attempt's prompt
    proc = sep_daemon.start(wait=False)
    assert proc.wait(timeout=20) == 2
    assert "handoff_dir:" in sep_daemon.stderr() and "chmod 2750" in sep_daemon.stderr()


def test_recovery_does_not_skip_phases_on_a_forged_state_file_alone(
    sep_daemon: Daemon,
) -> None:
    """Same-user mode (defence in depth): state.toml says P01–P03 passed, the audit log has no
    phase.passed for them: reported, and every phase runs."""
    d = sep_daemon
    d.write_config()  # the helper's default: workers as the daemon's user
    d.start()
    d.hold("F")
    d.submit("F", worker="held", phases=("P01", "P02", "P03"))
    wait_for(lambda: d.events("worker.started"), what="a worker")
    d.send(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait()
    state_file = d.state_dir / "plans" / "F" / "state.toml"
    forged = load_state(state_file)
    for ps in forged.phases.values():
        ps.status = PhaseStatus.PASSED
    state_file.write_bytes(dump_state(forged))
    d.release("F")
    d.start()
    assert end(d, "F")["event"] == "plan.succeeded"
    mismatch = [e for e in d.events("plan.state_mismatch") if e["plan"] == "F"]
    assert mismatch and set(mismatch[0]["phases"]) >= {"P02", "P03"}
    passed = [e["phase"] for e in read_events(d.audit_path, "phase.passed") if e["plan"] == "F"]
    assert passed == ["P01", "P02", "P03"]


def test_a_daemon_with_only_setuid_setgid_kill_runs_workers_with_no_capabilities(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd, daemon_user: pwd.struct_passwd
) -> None:
    """As the unit runs it (User=orchestrd, AmbientCapabilities=CAP_SETUID CAP_SETGID
    CAP_KILL): workers get none of the three; a worker left by a killed daemon is found and
    stopped after the restart (CAP_KILL, its recorded process group)."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to start the daemon with capabilities")
    d, pw = sep_daemon, worker_user
    d.prefix = [
        "setpriv",
        f"--reuid={DAEMON_USER}",
        f"--regid={DAEMON_USER}",
        "--init-groups",
        f"--inh-caps={CAPS}",
        f"--ambient-caps={CAPS}",
    ]
    for path in (d.state_dir, d.tmp / "state-handoff"):
        path.mkdir()
        os.chown(path, daemon_user.pw_uid, pw.pw_gid if "handoff" in path.name else -1)
    (d.tmp / "state-handoff").chmod(0o2750)  # as tmpfiles makes it: the daemon cannot chown
    d.state_dir.chmod(0o750)
    repo = worker_repo(d, "r", pw, git=True)
    for path in (repo, *repo.rglob("*")):
        path.chmod(path.stat().st_mode | 0o070)
    hold = repo / "hold"
    hold.touch()
    os.chown(hold, pw.pw_uid, pw.pw_gid)
    configure(d, AGENT_HOLD_FILE=hold)
    d.start()
    plan = d.plan_data("K", repo="r")
    plan["phases"][0]["verify"] = [
        {"run": "grep ^Cap /proc/self/status > caps.txt", "expect": "pass"}
    ]
    d.drop("K.toml", plan)
    wait_for(lambda: (repo / "hold.pid").exists(), what="the worker")
    pid = d.events("worker.started")[-1]["pid"]  # nsinit; the agent is its grandchild
    agent_pid = children(children(pid)[0])[0]
    status = Path(f"/proc/{agent_pid}/status").read_text()
    caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    assert all(int(caps[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")), caps
    assert f"Uid:\t{pw.pw_uid}\t{pw.pw_uid}" in status

    d.send(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait()
    assert alive(pid), "the worker died with the daemon: nothing left to recover"
    d.start()
    wait_for(lambda: not alive(pid), what="the leftover worker to be stopped")
    assert d.events("worker.orphan_stopped")
    hold.unlink()
    assert end(d, "K")["event"] == "plan.succeeded"
    caps_txt = (repo / "caps.txt").read_text()
    assert all(
        line.endswith("0000000000000000")
        for line in caps_txt.splitlines()
        if not line.startswith("CapBnd")
    ), caps_txt


def test_a_prompt_file_made_a_link_out_of_the_repo_is_not_read_for_the_next_worker(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    d, pw = sep_daemon, worker_user
    configure(d, AGENT_PROMPT_LINK="p02.md")
    repo = worker_repo(d, "r", pw)
    (repo / "p02.md").write_text("Do P02.\n")
    os.chown(repo / "p02.md", pw.pw_uid, pw.pw_gid)
    d.start()
    plan = d.plan_data("L", repo="r", phases=("P01", "P02"))
    plan["phases"][1]["prompt_file"] = "p02.md"
    del plan["phases"][1]["prompt"]
    d.drop("L.toml", plan)
    assert end(d, "L")["event"] == "plan.failed"
    start = [e for e in d.events("worker.failed_to_start") if e["plan"] == "L"]
    assert start and "outside" in start[0]["reason"]
    assert not (repo / ".agent" / "P02-1.json").exists()


def test_a_worker_user_in_the_daemons_group_is_refused(sep_daemon: Daemon) -> None:
    sep_daemon.write_config(allow_root_workers=False, worker_user=USER, worker_group="root")
    proc = sep_daemon.start(wait=False)
    assert proc.wait(timeout=20) == 2
    assert "is in the daemon's group 'root'" in sep_daemon.stderr()


def test_without_a_worker_user_the_daemon_and_a_run_say_privilege_separation_is_off(
    sep_daemon: Daemon, scratch: Path
) -> None:
    d = sep_daemon
    d.write_config()  # the helper's default: allow_root_workers, no worker_user
    d.start()
    started = d.events("daemon.started")[-1]
    assert started["privilege_separation"] is False
    assert "without worker_user" in started["privilege_separation_reason"]
    plan = d.tmp / "plan.toml"
    plan.write_text(tomli_w.dumps(d.plan_data("R", phases=("P01",))))
    done = subprocess.run(
        [SYSTEM_PYTHON, "-m", "orchestrd", "run", str(plan), "--config", str(d.config_path)],
        cwd=d.tmp,
        env=d.env(
            PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), *site.getsitepackages()])
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    first = done.stderr.splitlines()[0]
    assert first.startswith("orchestrd: privilege_separation = false (running as root")


def test_a_leftover_worker_is_found_by_nsinits_command_line_and_stopped(
    scratch: Path, worker_user: pwd.struct_passwd
) -> None:
    """What recovery relies on when the daemon may not read the worker user's environment."""
    pw = worker_user
    plans = scratch / "plans"
    log = plans / "X" / "workers" / "worker-P01-1.log"
    who = resolve(USER, None)
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, *wrap(["sleep", "30"], True, log)[1:]],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        **who.process_kwargs(),
    )
    try:
        found = wait_for(lambda: nsinit_processes(plans), what="nsinit by its command line")
        assert found[proc.pid] == str(log)
        assert Path(f"/proc/{proc.pid}/status").read_text().count(f"\t{pw.pw_uid}") >= 4
        assert anyio.run(stop_processes, sorted(found), 0.5) is not None
        proc.wait(timeout=5)
        # the namespace's own nsinit dies with it, a moment after the outer one was reaped
        wait_for(lambda: not nsinit_processes(plans), what="every nsinit of the plan gone")
    finally:
        proc.kill()
        proc.wait()


def test_a_remediation_worker_reads_the_failed_log_through_its_hand_off_folder(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    d, pw = sep_daemon, worker_user
    configure(d, AGENT_FAIL_FIRST=1)
    data = d.config_data(**{k: v for k, v in tomllib.loads(d.config_path.read_text()).items()})
    data["policy"]["max_remediations"] = 1
    d.write_config(**data)
    repo = worker_repo(d, "r", pw)
    d.start()
    d.submit("M", repo="r")
    assert end(d, "M")["event"] == "plan.succeeded"
    got = facts(repo, "P01", 2)
    assert got["read_failed_log"] == "ok" and got["read_prompt"] == "ok"
    assert got["prompt_names_failed_log"] is True
    failed_log = Path(got["failed_log"])
    assert d.state_dir not in failed_log.parents  # a copy, not the daemon's own file
    assert not failed_log.exists()  # removed when its attempt ended


def test_recovery_skips_a_phase_the_daemon_recorded_as_passed_though_the_audit_log_rotated(
    sep_daemon: Daemon,
) -> None:
    """state.toml says P01–P03 passed; phases-passed.txt (the daemon's own record) has P01's
    pass only, and the audit log is gone (rotated): P01 is skipped, P02 and P03 run."""
    d = sep_daemon
    d.write_config()
    folder = d.state_dir / "plans" / "G"
    (folder / "workers").mkdir(parents=True)
    (folder / "plan.toml").write_text(tomli_w.dumps(d.plan_data("G", phases=("P01", "P02", "P03"))))
    state = PlanState(
        plan="G",
        status=PlanStatus.RUNNING,
        seq=1,
        phases={p: PhaseState(status=PhaseStatus.PASSED) for p in ("P01", "P02", "P03")},
    )
    (folder / "state.toml").write_bytes(dump_state(state))
    (folder / "phases-passed.txt").write_text("2026-01-01T00:00:01+00:00 P01\n")
    d.start()
    assert end(d, "G")["event"] == "plan.succeeded"
    assert [e["phases"] for e in d.events("plan.state_mismatch")] == [["P02", "P03"]]
    assert [e["phase"] for e in d.events("phase.skipped")] == ["P01"]
    assert [e["phase"] for e in d.events("phase.passed")] == ["P02", "P03"]


def test_without_a_pid_namespace_the_worker_user_still_gets_eperm_on_the_daemon(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    """worker_pid_namespace = false: the worker sees the daemon (its parent) and gets EPERM."""
    d, pw = sep_daemon, worker_user
    configure(d, AGENT_ATTACK=1)
    data = tomllib.loads(d.config_path.read_text())
    d.write_config(**{**data, "worker_pid_namespace": False})
    worker_repo(d, "r", pw)
    d.start()
    (d.tmp / "daemon.pid").write_text(str(d.pid))
    d.submit("N", repo="r", phases=("P01", "P02"))
    assert end(d, "N")["event"] == "plan.succeeded"
    got = facts(d.repo("r"))
    assert got["ppid_is_daemon"] is True
    assert (got["kill_parent"], got["kill_daemon"]) == ("EPERM", "EPERM")
    assert (got["forge_state"], got["append_audit"]) == ("EACCES", "EACCES")
    assert alive(d.pid)
    assert [e["phase"] for e in d.events("phase.passed")] == ["P01", "P02"]


def test_two_plans_whose_ids_join_alike_get_their_own_hand_off_folders(
    sep_daemon: Daemon, worker_user: pwd.struct_passwd
) -> None:
    # plan a-b phase c and plan a phase b-c: `<plan>-<phase>` is a-b-c for both
    d, pw = sep_daemon, worker_user
    holds = d.tmp / "holds"  # the agent writes its pid next to the hold file
    holds.mkdir()
    os.chown(holds, pw.pw_uid, pw.pw_gid)
    hold = holds / "hold"
    hold.touch()
    configure(d, AGENT_HOLD_FILE=hold)
    repos = {"a-b": worker_repo(d, "r1", pw), "a": worker_repo(d, "r2", pw)}
    d.start()
    d.drop("ab.toml", d.plan_data("a-b", repo="r1", phases=("c",)))
    d.drop("a.toml", d.plan_data("a", repo="r2", phases=("b-c",)))
    d.wait_event("worker.started", count=2)  # both attempts hold their folders at once
    hold.unlink()
    assert end(d, "a-b")["event"] == "plan.succeeded"
    assert end(d, "a")["event"] == "plan.succeeded"
    assert "plan a-b, phase c," in facts(repos["a-b"], "c")["prompt_for"]
    assert "plan a, phase b-c," in facts(repos["a"], "b-c")["prompt_for"]
