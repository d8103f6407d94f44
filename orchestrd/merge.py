"""One plan's turn in its repository's merge queue, as a resumable state machine: rebase the
plan's branch onto the target's tip, re-verify there, then move the target with a
compare-and-swap. Each step is saved before it acts, so a SIGKILL anywhere leaves the target
either moved or untouched, and the next run carries on from the saved state.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .gitsnap import GitError
from .worktrees import RepoGit, commit_leftovers, list_worktrees

ROUNDS = 5  # rebases in a row because the target moved meanwhile, before giving up for now
CONFLICT_FILES = 50  # conflicting paths kept in the state and the event


class MergeStep(enum.StrEnum):
    QUEUED = "queued"
    """Waiting for its turn, or to be rebased again (the target moved)."""
    REBASED = "rebased"
    """The branch sits on `onto` (the target's tip then), its tip is `head`."""
    VERIFIED = "verified"
    """`head` passed merge_verify."""
    UPDATING = "updating"
    """The target is being moved from `old` to `new`: done iff the target is at `new`."""
    BLOCKED = "blocked"
    """The target is checked out in a dirty checkout; retried when it is clean."""
    DONE = "done"
    """The target was moved from `old` to `new`."""
    FAILED = "failed"
    """A rebase conflict (`files`) or a red re-verify (`reason`); the branch is kept."""


FINAL = frozenset({MergeStep.DONE, MergeStep.FAILED})


@dataclasses.dataclass
class MergeState:
    """What `state.toml` keeps of a plan's merge (no None values: TOML has none)."""

    target: str
    step: MergeStep = MergeStep.QUEUED
    onto: str = ""
    head: str = ""
    old: str = ""
    new: str = ""
    reason: str = ""
    files: list[str] = dataclasses.field(default_factory=list)
    orig: str = ""
    """The branch's tip as its plan left it: where a red re-verify puts it back."""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", [])}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeState:
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in fields}
        kept["step"] = MergeStep(kept.get("step", "queued"))
        return cls(**kept)


@dataclasses.dataclass(frozen=True)
class MergeJob:
    plan_id: str
    main: RepoGit
    """git in the repository's main checkout."""
    tree: RepoGit
    """git in the plan's worktree, on its branch."""
    branch: str
    admin: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)
    """Held while the repository's worktrees are listed: git cannot read a worktree another
    plan is adding or removing meanwhile."""


Save = Callable[[MergeState], Awaitable[None]]
Verify = Callable[[Path], Awaitable[str | None]]
"""Runs merge_verify in the worktree; the failing command and its outcome, or None."""
Emit = Callable[..., None]


class Merger:
    """Drives one plan's merge to DONE, FAILED or BLOCKED; `save` persists the state (it must
    be durable when it returns) and `emit(event, **fields)` records each step."""

    def __init__(self, job: MergeJob, save: Save, verify: Verify, emit: Emit) -> None:
        self.job = job
        self.save = save
        self.verify = verify
        self.emit = emit

    async def run(self, st: MergeState) -> MergeState:
        for _ in range(ROUNDS):
            if st.step in FINAL:
                return st
            tip = await self.job.main.commit_of(f"refs/heads/{st.target}")
            if tip is None:
                return await self._fail(st, f"target branch {st.target!r} does not exist")
            if st.step in (MergeStep.UPDATING, MergeStep.BLOCKED):
                if tip == st.new:
                    return await self._done(st)
                if tip != st.old:
                    await self._set(st, MergeStep.QUEUED)  # moved meanwhile: rebase again
                    continue
            else:
                if not await self._prepare(st, tip):
                    return st
            with anyio.CancelScope(shield=True):
                # a cancel must not come between the checkout's files and the ref
                moved = await self._update(st)
            if moved is None:
                return st
            if moved:
                return await self._done(st)
            await self._set(st, MergeStep.QUEUED)
        st.reason = f"the target moved {ROUNDS} times during the merge; retried later"
        await self.save(st)
        return st

    async def _set(self, st: MergeState, step: MergeStep) -> None:
        st.step = step
        await self.save(st)

    async def _prepare(self, st: MergeState, tip: str) -> bool:
        """Rebase onto `tip` and re-verify unless that is already done for this tip; then
        UPDATING from `tip` to the verified commit. False when the merge failed."""
        head = await self.job.tree.commit_of("HEAD")
        if st.step is MergeStep.QUEUED or st.onto != tip or head != st.head:
            await self._clean_tree()
            if not st.orig:
                st.orig = await self.job.tree.commit_of("HEAD") or ""
                await self.save(st)
            result = await self._rebase(st, tip)
            if result is None:
                return False
            st.onto, st.head, st.reason, st.files = tip, result, "", []
            await self._set(st, MergeStep.REBASED)
            self.emit("merge.rebased", onto=tip, head=result)
        if st.step is not MergeStep.VERIFIED:
            failed = await self.verify(self.job.tree.cwd)
            if failed is not None:
                if st.orig:  # the branch as the plan left it, for a person (not the red rebase)
                    await self.job.tree.run("reset", "--hard", "--quiet", st.orig)
                await self._fail(st, failed)
                return False
            await self._set(st, MergeStep.VERIFIED)
            self.emit("merge.verified", head=st.head)
        st.old, st.new = tip, st.head
        await self._set(st, MergeStep.UPDATING)
        return True

    async def _clean_tree(self) -> None:
        """The worktree as a rebase needs it: a rebase a kill interrupted is undone (the branch
        goes back to its tip before), lock files of a killed git removed (the worktree is the
        plan's alone now), leftover changes committed (the branch is what gets merged)."""
        tree = self.job.tree
        gitdir = Path((await tree.run("rev-parse", "--absolute-git-dir")).strip())
        common = Path(
            (await tree.run("rev-parse", "--path-format=absolute", "--git-common-dir")).strip()
        )
        # as whoever runs git there: the paths come from a repository workers write
        await tree.unlink_files(
            [str(p) for p in await anyio.to_thread.run_sync(_locks, gitdir)],
            str(common / "refs" / "heads" / f"{self.job.branch}.lock"),
        )
        for name in ("rebase-merge", "rebase-apply"):
            if (gitdir / name).exists():
                rc, _, err = await tree.call("rebase", "--abort")
                if rc != 0:
                    raise GitError(f"cannot undo an interrupted rebase in {tree.cwd}: {err}")
        await commit_leftovers(tree, self.job.plan_id)

    async def _rebase(self, st: MergeState, tip: str) -> str | None:
        """The branch's new tip on `tip`; None after a conflict (undone, FAILED with files)."""
        tree = self.job.tree
        rc, _, err = await tree.call("rebase", "--quiet", "--no-autostash", tip)
        if rc == 0:
            head = await tree.commit_of("HEAD")
            assert head is not None
            return head
        out = await tree.run("diff", "--name-only", "--diff-filter=U", "-z", ok=(0, 1))
        files = [f for f in out.split("\0") if f][:CONFLICT_FILES]
        await tree.call("rebase", "--abort")
        st.files = files
        reason = "rebase conflict" if files else (err.splitlines() or ["rebase failed"])[-1]
        await self._fail(st, reason)
        return None

    async def _update(self, st: MergeState) -> bool | None:
        """Move the target from `old` to `new` (a compare-and-swap); a clean checkout that has
        it checked out is fast-forwarded with it. False when the target moved meanwhile, None
        when a dirty checkout blocks (BLOCKED)."""
        checkout = await self._checkout_of(st.target)
        if checkout is not None:
            dirty = await self._dirty(checkout, st)
            if dirty is not None:
                st.reason = dirty
                was = st.step
                await self._set(st, MergeStep.BLOCKED)
                if was is not MergeStep.BLOCKED:
                    self.emit(
                        "merge.blocked", target=st.target, checkout=str(checkout.cwd), reason=dirty
                    )
                return None
            if await self._tree_of(checkout) != await self._tree_of_commit(st.new):
                # index and files first, then the ref: a kill between leaves the checkout on
                # `new` with the ref on `old`, which _dirty() recognises as this merge's
                await checkout.run("read-tree", "-u", "-m", st.old, st.new)
        rc, _, err = await self.job.main.call(
            "update-ref",
            "-m",
            f"orchestrd: merge plan {self.job.plan_id}",
            f"refs/heads/{st.target}",
            st.new,
            st.old,
        )
        if rc == 0:
            return True
        if checkout is not None:
            await checkout.call("read-tree", "-u", "-m", st.new, st.old)
        if await self.job.main.commit_of(f"refs/heads/{st.target}") == st.old:
            raise GitError(f"cannot move {st.target}: {err}")  # not a race: a lock, a disk
        return False

    async def _checkout_of(self, target: str) -> RepoGit | None:
        """git in the checkout (other than the plan's) that has `target` checked out."""
        async with self.job.admin:
            trees = await list_worktrees(self.job.main)
        ours = await anyio.to_thread.run_sync(os.path.realpath, self.job.tree.cwd)
        for tree in trees:
            if (
                tree.branch == target
                and await anyio.to_thread.run_sync(os.path.realpath, tree.path) != ours
            ):
                main = self.job.main
                return RepoGit(tree.path, main.timeout, main.identity)
        return None

    async def _dirty(self, checkout: RepoGit, st: MergeState) -> str | None:
        """Why the checkout must not be touched, or None. Clean means: index and files as its
        HEAD (or as `new` exactly, when a kill came between the files and the ref)."""
        status = await checkout.run("status", "--porcelain", "--untracked-files=normal")
        if not status.strip():
            return None
        index = await self._tree_of(checkout)
        unstaged = await checkout.call("diff", "--quiet")
        untracked = await checkout.run("ls-files", "--others", "--exclude-standard")
        ours = (
            st.step is MergeStep.UPDATING
            and index == await self._tree_of_commit(st.new)
            and unstaged[0] == 0
            and not untracked.strip()
        )
        if ours:
            return None
        lines = status.splitlines()
        return (
            f"{checkout.cwd} has {st.target} checked out with uncommitted changes "
            f"({len(lines)} paths, e.g. {lines[0][3:]!r}); commit or stash them, then "
            f"run `orchestrd merge {self.job.plan_id}`"
        )

    async def _tree_of(self, checkout: RepoGit) -> str:
        return (await checkout.run("write-tree")).strip()

    async def _tree_of_commit(self, commit: str) -> str:
        return (await self.job.main.run("rev-parse", f"{commit}^{{tree}}")).strip()

    async def _done(self, st: MergeState) -> MergeState:
        st.reason = ""
        await self._set(st, MergeStep.DONE)
        self.emit("merge.done", target=st.target, old=st.old, new=st.new)
        return st

    async def _fail(self, st: MergeState, reason: str) -> MergeState:
        st.reason = reason
        await self._set(st, MergeStep.FAILED)
        self.emit(
            "merge.failed", target=st.target, reason=reason, files=st.files, branch=self.job.branch
        )
        return st


def _locks(gitdir: Path) -> list[Path]:
    """Lock files a killed git left in the plan's own worktree folder."""
    return sorted(gitdir.glob("*.lock"))
