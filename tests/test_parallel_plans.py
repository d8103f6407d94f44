"""Many plans on one repository at once (#19), with the real daemon on real git repositories:
worktree plans run side by side and go through the repository's merge queue; a plan with
`isolation = "none"` keeps the repository to itself as before."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, phase
from daemon_support import Daemon, profile
from test_privsep import SYSTEM_PYTHON, SepDaemon, _user, worker_repo

from orchestrd.config import load_config
from orchestrd.errors import PlanError
from orchestrd.plan import plan_from_dict
from orchestrd.privsep import resolve
from orchestrd.state import load_state

AGENT = Path(__file__).parent / "agents" / "worktree_agent.py"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}
ENDS = ("plan.succeeded", "plan.failed", "plan.merge_failed", "plan.cancelled")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30, env=ENV
    )
    return done.stdout


def setup(daemon: Daemon, files: dict[str, str] | None = None, **config: Any) -> Path:
    """A repository on branch main (the daemon's tests' agent records ignored) and a config
    whose `wt` workers run tests/agents/worktree_agent.py."""
    repo = daemon.repo("repo")
    git(repo, "init", "-q", "-b", "main")
    for rel, text in {".gitignore": ".agent/\n", "README.md": "# r\n", **(files or {})}.items():
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    data = daemon.config_data(**config)
    data["workers"]["wt"] = {
        **profile(AGENT_PID_DIR=daemon.pid_dir, AGENT_HOLD_DIR=daemon.hold_dir),
        "command": ["{python}", str(AGENT), "{prompt}"],
    }
    daemon.write_config(**{k: v for k, v in data.items() if k != "state_dir"})
    return repo


def submit(daemon: Daemon, plan_id: str, **fields: Any) -> None:
    data = daemon.plan_data(plan_id, worker="wt", plan_dir=f".orchestrd/{plan_id}", **fields)
    daemon.drop(f"{plan_id}.toml", data)


def wait_end(daemon: Daemon, plan_id: str) -> dict[str, Any]:
    return daemon.wait_for(
        lambda: next(
            (e for e in daemon.events() if e["event"] in ENDS and e.get("plan") == plan_id), None
        ),
        what=f"the end of {plan_id}",
    )


def test_worktree_plans_run_side_by_side_and_merge_in_finishing_order(
    daemon: Daemon,
    tmp_path: Path,
) -> None:
    repo = setup(daemon)
    plans = ("p1", "p2", "p3")
    daemon.hold(*plans)
    daemon.start()
    for plan in plans:
        submit(
            daemon,
            plan,
            isolation="worktree",
            merge="rebase",
            merge_verify=[{"run": f"ls *.txt > {tmp_path}/seen-{plan}"}],
        )
    for plan in plans:
        daemon.agent_pid(plan)  # all three workers are running now
    for plan in ("p2", "p3", "p1"):  # the order they finish
        daemon.release(plan)
        daemon.wait_event("merge.queued", plan=plan)
    for plan in plans:
        assert wait_end(daemon, plan)["event"] == "plan.succeeded"
    done = daemon.events("merge.done")
    assert [e["plan"] for e in done] == ["p2", "p3", "p1"]
    assert done[-1]["new"] == git(repo, "rev-parse", "main").strip()
    assert [done[i]["old"] for i in (1, 2)] == [done[0]["new"], done[1]["new"]]
    assert (tmp_path / "seen-p2").read_text().split() == ["p2.txt"]
    assert (tmp_path / "seen-p3").read_text().split() == ["p2.txt", "p3.txt"]
    assert (tmp_path / "seen-p1").read_text().split() == ["p1.txt", "p2.txt", "p3.txt"]
    # the three workers overlapped in time: each started before any of them ended
    started = {e["plan"]: e["ts"] for e in daemon.events("worker.started")}
    ended = {e["plan"]: e["ts"] for e in daemon.events("worker.exited")}
    assert max(started.values()) < min(ended.values())
    assert git(repo, "status", "--porcelain") == ""  # the clean checkout fast-forwarded
    changes = daemon.events("worker.changes", plan="p1")  # git snapshots ran in the worktree
    assert changes and "p1.txt" in str(changes[-1])
    assert (repo / "p1.txt").read_text() == "p1\n"
    daemon.wait_event("worktree.removed", count=3)
    assert not (daemon.state_dir / "worktrees" / "p1").exists()
    assert git(repo, "rev-parse", "orchestrd/p1")  # branches are kept
    state = load_state(daemon.state_dir / "archive" / "p1" / "state.toml")
    assert state.worktree is not None and state.worktree.merge is not None
    assert state.worktree.merge["new"] == done[-1]["new"]


def test_same_lines_second_plan_ends_merge_failed_naming_the_file(daemon: Daemon) -> None:
    repo = setup(daemon, {"shared.txt": "one\ntwo\nthree\n"})
    daemon.hold("same1", "same2")
    daemon.start()
    for plan in ("same1", "same2"):
        submit(daemon, plan, isolation="worktree", merge="rebase")
        daemon.agent_pid(plan)
    daemon.release("same1")
    assert wait_end(daemon, "same1")["event"] == "plan.succeeded"
    daemon.release("same2")
    end = wait_end(daemon, "same2")
    assert end["event"] == "plan.merge_failed" and end["files"] == ["shared.txt"]
    assert git(repo, "show", "main:shared.txt") == "one\nsame1\nthree\n"
    assert git(repo, "show", "orchestrd/same2:shared.txt") == "one\nsame2\nthree\n"


def test_green_alone_red_after_rebase_is_not_merged(daemon: Daemon) -> None:
    repo = setup(daemon)
    daemon.start()
    check = {"run": 'test "$(cat *.py | grep -c "def helper")" -le 1'}
    for plan in ("dup1", "dup2"):
        submit(daemon, plan, isolation="worktree", merge="rebase", merge_verify=[check])
        wait_end(daemon, plan)
    ends = {e["plan"]: e for e in daemon.events() if e["event"] in ENDS}
    assert ends["dup1"]["event"] == "plan.succeeded"
    assert ends["dup2"]["event"] == "plan.merge_failed"
    assert "def helper" in ends["dup2"]["reason"]
    assert git(repo, "ls-tree", "--name-only", "main").split() == [
        ".gitignore",
        ".orchestrd",
        "README.md",
        "dup1.py",
    ]


def test_dirty_main_checkout_is_never_modified_until_asked(daemon: Daemon) -> None:
    repo = setup(daemon, merge_recheck="60s")
    daemon.start()
    (repo / "README.md").write_text("# local edit\n")
    submit(daemon, "p1", isolation="worktree", merge="rebase")
    blocked = daemon.wait_event("merge.blocked", plan="p1")[0]
    assert "uncommitted changes" in blocked["reason"]
    before = git(repo, "rev-parse", "main")
    assert (repo / "README.md").read_text() == "# local edit\n" and not (repo / "p1.txt").exists()
    assert git(repo, "rev-parse", "main") == before
    git(repo, "checkout", "README.md")
    assert daemon.cli("merge", "p1").returncode == 0
    assert wait_end(daemon, "p1")["event"] == "plan.succeeded"
    assert (repo / "p1.txt").read_text() == "p1\n" and git(repo, "status", "--porcelain") == ""


def test_isolation_none_keeps_the_repo_lock_and_the_main_checkout(daemon: Daemon) -> None:
    repo = setup(daemon)
    daemon.hold("n1")
    daemon.start()
    submit(daemon, "n1")
    submit(daemon, "n2")
    daemon.agent_pid("n1")
    daemon.wait_event("plan.waiting_repo", plan="n2")
    daemon.release("n1")
    for plan in ("n1", "n2"):
        assert wait_end(daemon, plan)["event"] == "plan.succeeded"
    assert (repo / "n1.txt").exists() and (repo / "n2.txt").exists()
    assert daemon.events("worktree.created") == [] and daemon.events("merge.queued") == []


def test_status_and_report_show_branch_base_and_merged_commit(daemon: Daemon) -> None:
    repo = setup(daemon)
    base = git(repo, "rev-parse", "HEAD").strip()
    daemon.start()
    submit(daemon, "p1", isolation="worktree", merge="rebase", delete_branch=True)
    assert wait_end(daemon, "p1")["event"] == "plan.succeeded"
    merged = daemon.wait_event("merge.done", plan="p1")[0]["new"]
    removed = daemon.wait_event("worktree.removed", plan="p1")[0]
    assert removed["branch_deleted"] is True
    assert git(repo, "branch", "--list", "orchestrd/*") == ""
    shown = daemon.cli("status", "p1").stdout
    assert f"branch orchestrd/p1 (base main @ {base[:12]})" in shown
    assert f"merge into main: done → {merged[:12]}" in shown
    report = daemon.cli("report", "p1", "--json")
    assert report.returncode == 0, report.stderr
    assert '"merged": "' + merged in report.stdout


def test_merge_branch_leaves_the_result_on_its_branch_from_the_accepted_base(
    daemon: Daemon,
) -> None:
    repo = setup(daemon, max_workers=1)
    accepted = git(repo, "rev-parse", "HEAD").strip()
    daemon.hold("n1")
    daemon.start()
    submit(daemon, "n1")  # takes the only worker slot
    daemon.agent_pid("n1")
    submit(daemon, "w1", isolation="worktree")
    daemon.wait_event("plan.queued", plan="w1")
    (repo / "later.txt").write_text("later\n")  # main moves after w1 was accepted
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    daemon.release("n1")
    assert wait_end(daemon, "w1")["event"] == "plan.succeeded"
    assert daemon.wait_event("worktree.removed", plan="w1")[0]["committed_leftovers"] is True
    assert daemon.wait_event("worktree.created", plan="w1")[0]["base"] == accepted
    assert git(repo, "rev-parse", "orchestrd/w1~1").strip() == accepted
    assert git(repo, "show", "orchestrd/w1:w1.txt") == "w1\n"
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "later"  # not merged
    assert daemon.events("merge.queued") == []


def test_sigkill_during_a_merge_then_restart_finishes_it_once(
    daemon: Daemon,
    tmp_path: Path,
) -> None:
    repo = setup(daemon)
    daemon.start()
    slow = {"run": f"touch {tmp_path}/verifying; sleep 0.6"}
    submit(daemon, "p1", isolation="worktree", merge="rebase", merge_verify=[slow])
    daemon.wait_for(lambda: (tmp_path / "verifying").exists(), what="merge_verify running")
    before = git(repo, "rev-parse", "main").strip()
    daemon.stop(signal.SIGKILL)
    assert git(repo, "rev-parse", "main").strip() == before
    daemon.start()
    assert wait_end(daemon, "p1")["event"] == "plan.succeeded"
    assert git(repo, "rev-parse", "main~1").strip() == before  # merged once, on top
    assert git(repo, "show", "main:p1.txt") == "p1\n"
    assert len(daemon.events("merge.done", plan="p1")) == 1


def test_restart_prunes_worktrees_of_plans_that_no_longer_exist(daemon: Daemon) -> None:
    repo = setup(daemon)
    ghost = daemon.state_dir / "worktrees" / "ghost"
    ghost.parent.mkdir(parents=True)
    git(repo, "worktree", "add", "-q", "-b", "orchestrd/ghost", str(ghost))
    daemon.start()
    removed = daemon.wait_event("worktree.removed")[0]
    assert removed["path"] == str(ghost) and "no longer exists" in removed["reason"]
    assert not ghost.exists()
    assert "ghost" not in git(repo, "worktree", "list")
    assert git(repo, "rev-parse", "orchestrd/ghost")  # its branch is kept


def test_merge_keys_without_a_worktree_name_the_key_and_the_fix(tmp_path: Path) -> None:
    config, _ = load_config(make_config(tmp_path))
    (tmp_path / "repo").mkdir()
    data = {"id": "x", "repo": str(tmp_path / "repo"), "phases": [phase()]}
    with pytest.raises(PlanError) as err:
        plan_from_dict({**data, "merge": "rebase", "target": "main"}, "x.toml", config)
    assert str(err.value).splitlines() == [
        f'x.toml: {key}: only a plan with isolation = "worktree" has a branch to merge; set '
        'isolation = "worktree" or leave the key out'
        for key in ("merge", "target")
    ]
    worktree, _ = load_config(make_config(tmp_path, isolation="worktree"))
    plan = plan_from_dict({**data, "merge": "rebase"}, "x.toml", worktree)
    assert plan.isolation == "worktree"  # the config's default, fixed in the plan


def test_a_base_that_names_nothing_fails_the_plan_at_acceptance(daemon: Daemon) -> None:
    setup(daemon)
    daemon.start()
    submit(daemon, "p1", isolation="worktree", base="no-such-branch")
    end = wait_end(daemon, "p1")
    assert end["event"] == "plan.failed"
    assert "base = 'no-such-branch': no such branch or commit" in end["reason"]
    assert daemon.events("worker.started") == []


WT_USER = "orchestrd-test-wt"  # its own: test_privsep's user comes and goes with its sessions


@pytest.fixture
def wt_user() -> Iterator[pwd.struct_passwd]:
    base = Path(tempfile.mkdtemp(prefix="orchestrd-wt-home-"))
    base.chmod(0o755)
    pw, created = _user(WT_USER, base / "home")
    resolve.cache_clear()
    yield pw
    if created:
        subprocess.run(["userdel", WT_USER], check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sep_daemon() -> Iterator[Daemon]:
    """The daemon as root under a 0755 scratch folder the worker user can reach."""
    path = Path(tempfile.mkdtemp(prefix="orchestrd-wt-"))
    path.chmod(0o755)
    d = SepDaemon(path)
    yield d
    leftovers = d.cleanup()
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"workers outlived the daemon: {leftovers}"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or not shutil.which("useradd"),
    reason="needs root (to create a worker user and switch to it), useradd and /usr/bin/python3",
)
@pytest.mark.xdist_group("users")  # useradd/userdel beside test_privsep's users
def test_a_worker_users_worktrees_live_beside_its_hand_off_folders(
    sep_daemon: Daemon, wt_user: pwd.struct_passwd
) -> None:
    d, pw = sep_daemon, wt_user
    repo = worker_repo(d, "repo", pw, git=True)
    branch = git(repo, "-c", "safe.directory=*", "symbolic-ref", "--short", "HEAD").strip()
    d.write_config(
        allow_root_workers=False,
        worker_user=WT_USER,
        default_worker="wt",
        workers={"wt": {"command": [SYSTEM_PYTHON, str(AGENT), "{prompt_file}"]}},
    )
    d.start()
    d.drop("w1.toml", d.plan_data("w1", repo="repo", isolation="worktree", merge="rebase"))
    ended = wait_end(d, "w1")
    assert ended["event"] == "plan.succeeded", ended["reason"]
    root = d.state_dir.with_name(f"{d.state_dir.name}-handoff") / "@worktrees"
    assert d.events("worktree.created")[0]["path"] == str(root / "w1")
    st = root.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o1770, pw.pw_gid)
    assert stat.S_IMODE(d.state_dir.stat().st_mode) & 0o007 == 0  # state_dir stays private
    assert git(repo, "-c", "safe.directory=*", "show", f"{branch}:w1.txt") == "w1\n"
    d.wait_event("worktree.removed", plan="w1")
    assert not (root / "w1").exists()
