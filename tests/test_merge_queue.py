"""A plan's git worktree and the merge queue's step, on real git repositories: worktrees
created, reused and pruned; branches rebased onto the target, re-verified and moved by a
compare-and-swap; conflicts, red re-verifies and dirty checkouts never merged; SIGKILLs during
merges never leave the target lost or half-merged."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from orchestrd.gitsnap import GitError
from orchestrd.merge import MergeJob, Merger, MergeState, MergeStep
from orchestrd.worktrees import (
    RepoGit,
    branch_for,
    delete_branch,
    ensure_worktree,
    list_worktrees,
    prune_worktrees,
    remove_worktree,
    resolve_base,
)

pytestmark = pytest.mark.anyio
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30, env=ENV
    )
    return done.stdout


def repo_with(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def commit(tree: Path, files: dict[str, str], message: str = "change") -> str:
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", message)
    return git(tree, "rev-parse", "HEAD").strip()


async def plan_tree(repo: Path, root: Path, plan: str, base: str = "main") -> RepoGit:
    main = RepoGit(repo, 30)
    commit_ = (await resolve_base(main, base)).commit
    await ensure_worktree(main, root / plan, branch_for(plan), commit_)
    return RepoGit(root / plan, 30)


class Recorder:
    """save/verify/emit for a Merger: states and events kept; verify runs `check` in the
    worktree and remembers which files each verified tree had."""

    def __init__(self, check: str = "true") -> None:
        self.check = check
        self.saved: list[dict[str, object]] = []
        self.events: list[tuple[str, dict[str, object]]] = []
        self.verified: list[set[str]] = []

    async def save(self, st: MergeState) -> None:
        self.saved.append(st.as_dict())

    async def verify(self, tree: Path) -> str | None:
        names = await anyio.to_thread.run_sync(os.listdir, tree)
        self.verified.append(set(names) - {".git"})
        done = await anyio.run_process(["sh", "-c", self.check], cwd=tree, check=False)
        return None if done.returncode == 0 else f"{self.check} exited {done.returncode}"

    def emit(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))


async def merge(
    repo: Path,
    root: Path,
    plan: str,
    rec: Recorder,
    target: str = "main",
    st: MergeState | None = None,
) -> MergeState:
    job = MergeJob(plan, RepoGit(repo, 30), RepoGit(root / plan, 30), branch_for(plan))
    return await Merger(job, rec.save, rec.verify, rec.emit).run(st or MergeState(target))


# -- worktrees ---------------------------------------------------------------------------------


async def test_base_resolves_to_a_commit_and_a_bad_base_names_the_fix(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", {"a.txt": "a\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    main = RepoGit(repo, 30)
    assert (await resolve_base(main, None)).commit == head
    assert (await resolve_base(main, None)).branch == "main"
    assert (await resolve_base(main, "main")).branch == "main"
    assert (await resolve_base(main, head)).branch is None
    with pytest.raises(GitError, match="base = 'nope': no such branch"):
        await resolve_base(main, "nope")


async def test_worktree_created_reused_remade_and_removed_without_running_hooks(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"a.txt": "a\n"})
    trap = tmp_path / "hook-ran"
    hook = repo / ".git/hooks/post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {trap}\n")
    hook.chmod(0o755)
    main, root = RepoGit(repo, 30), tmp_path / "state/worktrees"
    base = (await resolve_base(main, None)).commit
    assert await ensure_worktree(main, root / "p1", "orchestrd/p1", base)
    assert (root / "p1/a.txt").read_text() == "a\n"
    assert not trap.exists(), "git worktree add ran the repository's post-checkout hook"
    commit(root / "p1", {"b.txt": "b\n"})
    assert not await ensure_worktree(main, root / "p1", "orchestrd/p1", base)  # reused
    assert (root / "p1/b.txt").exists()
    (root / "p1/.git").unlink()  # as if `worktree add` was killed half way
    assert await ensure_worktree(main, root / "p1", "orchestrd/p1", base)
    assert (root / "p1/b.txt").exists(), "the branch's work was lost when remade"
    (root / "p1/dirty.txt").write_text("x\n")
    assert "untracked" in (await remove_worktree(main, root / "p1") or "")
    (root / "p1/dirty.txt").unlink()
    assert await remove_worktree(main, root / "p1") is None
    assert not (root / "p1").exists()
    assert git(repo, "rev-parse", "orchestrd/p1").strip()  # the branch is kept
    assert not await delete_branch(main, "orchestrd/p1", "main")  # not merged: kept
    assert [t.path.name for t in await list_worktrees(main)] == ["repo"]


async def test_restart_prunes_worktrees_of_plans_that_no_longer_exist(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", {"a.txt": "a\n"})
    root = tmp_path / "worktrees"
    for plan in ("live", "gone"):
        await plan_tree(repo, root, plan)
    main = RepoGit(repo, 30)
    assert await prune_worktrees(main, root, {"live"}) == [root / "gone"]
    assert {t.path.name for t in await list_worktrees(main)} == {"repo", "live"}
    assert git(repo, "rev-parse", "orchestrd/gone").strip()


# -- merges ------------------------------------------------------------------------------------


async def test_plans_merge_in_finishing_order_each_verified_on_the_rebased_tree(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")  # the target is not checked out
    root = tmp_path / "worktrees"
    for plan in ("p1", "p2", "p3"):
        commit((await plan_tree(repo, root, plan)).cwd, {f"{plan}.txt": plan})
    rec = Recorder()
    old = git(repo, "rev-parse", "main").strip()
    for plan in ("p2", "p3", "p1"):  # the order they finished
        st = await merge(repo, root, plan, rec)
        assert st.step is MergeStep.DONE and st.old == old
        assert git(repo, "rev-parse", "main").strip() == st.new
        old = st.new
    assert rec.verified == [
        {"base.txt", "p2.txt"},
        {"base.txt", "p2.txt", "p3.txt"},
        {"base.txt", "p1.txt", "p2.txt", "p3.txt"},
    ]
    log = git(repo, "log", "--format=%s", "main").split("\n")[:3]
    assert log == ["change"] * 3 and git(repo, "log", "--merges", "main") == ""
    assert [e for e, _ in rec.events].count("merge.done") == 3
    assert not (repo / "p1.txt").exists()  # the main checkout (on another branch) untouched


async def test_same_lines_first_merges_second_fails_naming_the_file_branch_intact(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"f.txt": "one\ntwo\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")
    root = tmp_path / "worktrees"
    a = commit((await plan_tree(repo, root, "a")).cwd, {"f.txt": "one\nA\n"})
    b = commit((await plan_tree(repo, root, "b")).cwd, {"f.txt": "one\nB\n"})
    rec = Recorder()
    assert (await merge(repo, root, "a", rec)).step is MergeStep.DONE
    st = await merge(repo, root, "b", rec)
    assert st.step is MergeStep.FAILED and st.files == ["f.txt"]
    assert st.reason == "rebase conflict"
    assert git(repo, "rev-parse", "orchestrd/b").strip() == b  # kept for a person
    assert git(repo, "rev-parse", "main").strip() == a
    assert (root / "b/f.txt").read_text() == "one\nB\n"  # the rebase was undone
    assert (
        "merge.failed",
        {
            "target": "main",
            "reason": "rebase conflict",
            "files": ["f.txt"],
            "branch": "orchestrd/b",
        },
    ) in rec.events


async def test_green_alone_red_after_rebase_is_not_merged(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})
    root = tmp_path / "worktrees"
    check = 'test "$(cat *.py 2>/dev/null | grep -c "def helper")" -le 1'
    commit((await plan_tree(repo, root, "a")).cwd, {"a.py": "def helper(): pass\n"})
    b = commit((await plan_tree(repo, root, "b")).cwd, {"b.py": "def helper(): pass\n"})
    rec = Recorder(check)
    assert (await merge(repo, root, "a", rec)).step is MergeStep.DONE
    merged = git(repo, "rev-parse", "main").strip()
    st = await merge(repo, root, "b", rec)
    assert st.step is MergeStep.FAILED and st.reason == f"{check} exited 1"
    assert git(repo, "rev-parse", "main").strip() == merged
    assert git(repo, "rev-parse", "orchestrd/b").strip() == b  # not left on the red rebase


async def test_dirty_checkout_of_the_target_is_never_touched_then_a_clean_one_fast_forwards(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})  # main checked out here
    root = tmp_path / "worktrees"
    commit((await plan_tree(repo, root, "p")).cwd, {"new.txt": "n\n"})
    (repo / "base.txt").write_text("local edit\n")
    old = git(repo, "rev-parse", "main").strip()
    rec = Recorder()
    st = await merge(repo, root, "p", rec)
    assert st.step is MergeStep.BLOCKED and "uncommitted changes" in st.reason
    assert "orchestrd merge p" in st.reason
    assert git(repo, "rev-parse", "main").strip() == old
    assert (repo / "base.txt").read_text() == "local edit\n" and not (repo / "new.txt").exists()
    assert git(repo, "status", "--porcelain") == " M base.txt\n"
    git(repo, "checkout", "base.txt")
    st = await merge(repo, root, "p", rec, st=st)
    assert st.step is MergeStep.DONE
    assert (repo / "new.txt").read_text() == "n\n" and git(repo, "status", "--porcelain") == ""
    assert [e for e, _ in rec.events] == [
        "merge.rebased",
        "merge.verified",
        "merge.blocked",
        "merge.done",
    ]


async def test_target_moved_during_verify_is_rebased_again_not_overwritten(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")
    root = tmp_path / "worktrees"
    commit((await plan_tree(repo, root, "p")).cwd, {"p.txt": "p\n"})
    other = await plan_tree(repo, root, "other")
    moved = commit(other.cwd, {"other.txt": "o\n"})
    rec = Recorder()
    verify = rec.verify

    async def racing(tree: Path) -> str | None:
        if len(rec.verified) == 0:  # someone else merges while we verify
            git(repo, "update-ref", "refs/heads/main", moved)
        return await verify(tree)

    rec.verify = racing  # type: ignore[method-assign]
    st = await merge(repo, root, "p", rec)
    assert st.step is MergeStep.DONE and st.old == moved
    assert git(repo, "rev-parse", "main~1").strip() == moved
    assert rec.verified[1] == {"base.txt", "other.txt", "p.txt"}


async def test_merge_runs_no_program_the_repository_names(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", {"f.txt": "one\n", ".gitattributes": "*.txt merge=x\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")
    root = tmp_path / "worktrees"
    commit((await plan_tree(repo, root, "a")).cwd, {"f.txt": "A\n"})
    commit((await plan_tree(repo, root, "b")).cwd, {"f.txt": "B\n"})
    trap = tmp_path / "ran"  # planted after this test's own commits (which run hooks)
    git(repo, "config", "merge.x.driver", f"touch {trap}; false")
    git(repo, "config", "core.hooksPath", str(tmp_path / "hooks"))
    (tmp_path / "hooks").mkdir()
    for name in ("post-rewrite", "post-checkout", "reference-transaction", "pre-rebase"):
        (tmp_path / "hooks" / name).write_text(f"#!/bin/sh\ntouch {trap}\n")
        (tmp_path / "hooks" / name).chmod(0o755)
    rec = Recorder()
    assert (await merge(repo, root, "a", rec)).step is MergeStep.DONE
    assert (await merge(repo, root, "b", rec)).files == ["f.txt"]
    assert not trap.exists()


async def test_leftover_changes_in_the_worktree_are_committed_and_merged(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})
    git(repo, "checkout", "-q", "-b", "elsewhere")
    root = tmp_path / "worktrees"
    (root / "p").mkdir(parents=True, exist_ok=True)
    tree = await plan_tree(repo, root, "p")
    (tree.cwd / "uncommitted.txt").write_text("u\n")
    st = await merge(repo, root, "p", Recorder())
    assert st.step is MergeStep.DONE
    assert git(repo, "show", "main:uncommitted.txt") == "u\n"


def test_sigkill_during_merges_leaves_the_target_on_a_valid_commit(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", {"base.txt": "b\n"})
    root, states = tmp_path / "worktrees", tmp_path / "states"
    states.mkdir()
    plans = [f"p{i}" for i in range(24)]
    for plan in plans:
        tree = anyio.run(plan_tree, repo, root, plan)
        for n in range(3):
            commit(tree.cwd, {f"{plan}/{n}.txt": f"{plan} {n}\n"})
    original = git(repo, "rev-parse", "main").strip()
    driver = Path(__file__).with_name("merge_kill_driver.py")
    argv = [sys.executable, str(driver), str(repo), str(root), str(states), "main", *plans]
    rng = random.Random(19)
    kills, inside = 0, 0
    while True:
        # this checkout's orchestrd, whichever one the interpreter has installed
        root = Path(__file__).parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        # its start-up (seconds on a loaded machine) is not merging: the time counts from here
        ready = proc.stdout.readline()
        try:
            assert ready == "ready\n", f"the driver did not start: {proc.wait(10)}"
            rc = proc.wait(timeout=rng.uniform(0.2, 0.5)) if kills < 10 else proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            kills += 1
            _assert_valid(repo, states, plans, original)
            steps = {json.loads(f.read_text())["step"] for f in states.glob("*.json")}
            inside += bool(steps - {"done"})  # a merge was under way
            continue
        proc.stdout.close()
        assert rc == 0
        break
    assert kills == 10
    assert inside >= 3, f"only {inside} of the kills landed inside a merge"
    _assert_valid(repo, states, plans, original)
    tip = git(repo, "rev-parse", "main").strip()
    files = set(git(repo, "ls-tree", "-r", "--name-only", tip).split())
    assert files == {"base.txt"} | {f"{p}/{n}.txt" for p in plans for n in range(3)}
    assert git(repo, "status", "--porcelain") == ""  # main checkout fast-forwarded with it


def _assert_valid(repo: Path, states: Path, plans: list[str], original: str) -> None:
    """The target is the original commit or one a saved state says it moves (or moved) to;
    every plan's files are in it all or not at all; the checkout is never half-updated."""
    tip = git(repo, "rev-parse", "main").strip()
    saved = [json.loads(f.read_text()) for f in states.glob("*.json")]
    assert tip == original or tip in {s.get("new") for s in saved}
    assert git(repo, "merge-base", "--is-ancestor", original, tip) == ""
    files = set(git(repo, "ls-tree", "-r", "--name-only", tip).split())
    for plan in plans:
        mine = {f"{plan}/{n}.txt" for n in range(3)}
        assert mine <= files or not mine & files, f"{plan} half-merged at {tip}"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == "" or _between(repo, saved)


def _between(repo: Path, saved: list[dict[str, object]]) -> bool:
    """A kill between the checkout's files and the ref: the index is exactly `new`'s tree."""
    index = git(repo, "write-tree").strip()
    return any(
        s.get("step") in ("updating", "blocked")
        and index == git(repo, "rev-parse", f"{s['new']}^{{tree}}").strip()
        for s in saved
    )
