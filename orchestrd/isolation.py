"""Plans isolated in a git worktree of their own (`isolation = "worktree"`): the base fixed at
acceptance, the worktree made before the first phase with the plan rooted there, the repository's
merge queue a finished plan goes through, and the worktree removed when the plan is archived.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread

from .audit import Logger
from .config import Config
from .errors import PlanError
from .gitsnap import GitError
from .merge import MergeJob, Merger, MergeState, MergeStep
from .plan import Plan, VerifyCommand
from .privsep import Identity, handoff_root, identity_for, separation
from .state import PlanRecord, WorktreeState
from .states import Outcome, PlanStatus
from .worktrees import (
    RepoGit,
    branch_for,
    commit_leftovers,
    delete_branch,
    ensure_worktree,
    prune_worktrees,
    remove_worktree,
    resolve_base,
)

Verify = Callable[[Path], Awaitable[str | None]]


HANDOFF_WORKTREES = "@worktrees"
"""In the hand-off root, beside the plans' hand-off folders: '@' is in no plan id, so no plan's
hand-off folder can ever be this worker-writable one."""


def worktrees_root(config: Config) -> Path:
    """Where plans' worktrees live: `state_dir/worktrees/`, or, when workers run as another user,
    `<hand-off root>/@worktrees/`: state_dir is private to the daemon (0750, its group), so a
    worker could not even reach a worktree inside it, while the hand-off root is the one place
    the worker group may enter (the root itself stays the daemon's alone)."""
    if separation(config)[0]:
        return handoff_root(config) / HANDOFF_WORKTREES
    return config.state_dir / "worktrees"


def _identity(config: Config, plan: Plan) -> Identity | None:
    return identity_for(config, config.workers.get(plan.worker or config.default_worker))


def main_git(config: Config, plan: Plan, repo: Path | None = None) -> RepoGit:
    """git in the plan's repository, as its workers' user when they have one (the repository's
    config is theirs to write)."""
    return RepoGit(repo or plan.repo, config.checks.git_timeout, _identity(config, plan))


def merge_commands(plan: Plan) -> list[VerifyCommand]:
    """`merge_verify`, or the verify commands of the last phase that are expected to pass."""
    if plan.merge_verify is not None:
        return plan.merge_verify
    last = plan.phases[-1]
    return [v for v in last.verify if v.expect == "pass"]


def rooted(plan: Plan, record: PlanRecord) -> Plan:
    """The plan as its runner sees it: rooted in its worktree, if it has one."""
    wt = record.state.worktree
    return plan if wt is None else plan.model_copy(update={"repo": Path(wt.path)})


async def fix_base(config: Config, plan: Plan, record: PlanRecord) -> None:
    """At acceptance: the base (and the merge target) resolved to what they are now and saved,
    so the plan starts from that commit however long it waits. PlanError naming the key when
    the base names nothing."""
    if plan.isolation != "worktree" or record.state.worktree is not None:
        return
    try:
        base = await resolve_base(main_git(config, plan), plan.base)
    except GitError as exc:
        raise PlanError(f"plan {plan.id}: {exc}") from None
    target = plan.target or base.branch
    if plan.merge == "rebase" and target is None:
        raise PlanError(
            f'plan {plan.id}: merge = "rebase" needs a branch to merge into, and the base '
            f'{plan.base or "HEAD"!r} is a commit; set target = "main" (or base to a branch)'
        )
    record.state.worktree = WorktreeState(
        path=str(worktrees_root(config) / plan.id),
        branch=branch_for(plan.id),
        base=base.commit,
        base_branch=base.branch,
        target=target,
    )
    await record.save()


async def enter(
    config: Config, plan: Plan, record: PlanRecord, log: Logger, admin: anyio.Lock
) -> Plan:
    """The plan's worktree, made now (or kept from an interrupted run), and the plan rooted in
    it: its workers, verify commands, snapshots and paths all work there."""
    await fix_base(config, plan, record)
    wt = record.state.worktree
    assert wt is not None
    path = Path(wt.path)
    identity = _identity(config, plan)
    await anyio.to_thread.run_sync(_make_root, path.parent, identity)
    async with admin:
        created = await ensure_worktree(main_git(config, plan), path, wt.branch, wt.base)
    if created:
        log.info(
            "worktree.created",
            path=wt.path,
            branch=wt.branch,
            base=wt.base,
            base_branch=wt.base_branch,
        )
    return rooted(plan, record)


def _make_root(root: Path, identity: Identity | None) -> None:
    """The worktrees folder; for workers of another user, theirs to create worktrees in (the
    worker group may write; sticky, so none removes what it did not make), inside the hand-off
    root, which the worker group may enter (given its group as make_handoff does, only when it
    has another: tmpfiles makes it 2750 with it)."""
    root.mkdir(mode=0o750, parents=True, exist_ok=True)
    if identity is None:
        return
    if root.parent.stat().st_gid != identity.gid:
        _give_group(root.parent, identity.gid, 0o750)
    st = root.stat()
    if st.st_gid != identity.gid or stat.S_IMODE(st.st_mode) != 0o1770:
        _give_group(root, identity.gid, 0o1770)


def _give_group(path: Path, gid: int, mode: int) -> None:
    os.chmod(path, mode)
    os.chown(path, -1, gid)  # root, or a member of the worker group (sysusers makes it one)


class MergeQueue:
    """One merge at a time per repository, in the order its plans finished (anyio's lock
    serves its waiters first come, first served)."""

    def __init__(self) -> None:
        self._locks: dict[str, anyio.Lock] = {}
        self._admin: dict[str, anyio.Lock] = {}
        self._wake: dict[str, anyio.Event] = {}

    async def admin(self, repo: Path) -> anyio.Lock:
        """The repository's lock on its worktrees' administration (add, list, remove, prune):
        git reads a worktree another command is adding as broken, and prune could drop it."""
        key = await anyio.to_thread.run_sync(os.path.realpath, repo)
        return self._admin.setdefault(key, anyio.Lock())

    def wake(self, plan_id: str) -> bool:
        """`orchestrd merge PLAN`: try a blocked merge again now; whether one was waiting."""
        event = self._wake.pop(plan_id, None)
        if event is None:
            return False
        event.set()
        return True

    async def merge(
        self,
        config: Config,
        plan: Plan,
        repo: Path,
        record: PlanRecord,
        log: Logger,
        verify: Verify,
    ) -> Outcome:
        """Merge a succeeded plan (`plan` rooted in its worktree, `repo` its main checkout):
        SUCCEEDED once the target holds it, MERGE_FAILED after a conflict or a red re-verify.
        A blocked merge waits for `merge_recheck` or `orchestrd merge`, then tries again."""
        wt = record.state.worktree
        assert wt is not None and wt.target is not None
        saved = MergeState.from_dict(wt.merge) if wt.merge else None
        # a merge that failed goes again (a retry, after someone fixed the branch); one that
        # was done (the daemon killed before the plan's end was saved) is not done twice
        resume = saved is not None and saved.step is not MergeStep.FAILED
        st = saved if resume and saved is not None else MergeState(wt.target)

        async def save(state: MergeState) -> None:
            wt.merge = state.as_dict()
            await record.save()

        key = await anyio.to_thread.run_sync(os.path.realpath, repo)
        lock = self._locks.setdefault(key, anyio.Lock())
        job = MergeJob(
            plan.id,
            main_git(config, plan, repo),
            main_git(config, plan),
            wt.branch,
            await self.admin(repo),
        )
        while True:
            async with lock:
                st = await Merger(job, save, verify, log.info).run(st)
            if st.step is MergeStep.DONE:
                return Outcome(
                    PlanStatus.SUCCEEDED,
                    f"merged into {st.target}",
                    {"merged": st.new, "target": st.target},
                )
            if st.step is MergeStep.FAILED:
                return Outcome(
                    PlanStatus.MERGE_FAILED, st.reason, {"files": st.files, "branch": wt.branch}
                )
            event = self._wake[plan.id] = anyio.Event()
            with anyio.move_on_after(config.merge_recheck):
                await event.wait()
            self._wake.pop(plan.id, None)


async def cleanup(
    config: Config, plan: Plan, record: PlanRecord, log: Logger, admin: anyio.Lock
) -> None:
    """When the plan is archived: its worktree removed (`git worktree remove`, then `prune`),
    its branch deleted if `delete_branch` and merged; a worktree with changes nobody committed
    is kept, and said so."""
    wt = record.state.worktree
    if wt is None:
        return
    main = main_git(config, plan)
    deleted = committed = False
    try:
        if await anyio.to_thread.run_sync(os.path.isdir, wt.path):
            committed = await commit_leftovers(main_git(config, rooted(plan, record)), plan.id)
        async with admin:
            kept = await remove_worktree(main, Path(wt.path))
        merged = wt.merge is not None and wt.merge.get("step") == MergeStep.DONE
        deleted = bool(
            kept is None
            and plan.delete_branch
            and merged
            and wt.target
            and await delete_branch(main, wt.branch, wt.target)
        )
    except (GitError, OSError) as exc:  # the archive is done: the worktree waits for a person
        kept = str(exc)
    if kept is not None:
        log.info("worktree.kept", path=wt.path, branch=wt.branch, reason=kept)
        return
    log.info(
        "worktree.removed",
        path=wt.path,
        branch=wt.branch,
        committed_leftovers=committed,
        branch_deleted=deleted,
    )


async def prune_stale(config: Config, live: set[str], log: Logger) -> None:
    """At start-up: the worktrees of plans that no longer exist (archived, or gone) removed
    from their repositories; their branches are kept."""
    root = worktrees_root(config)
    try:
        repos = await anyio.to_thread.run_sync(_repos_of, root, live)
    except OSError as exc:
        log.info("worktree.kept", path=str(root), reason=f"cannot list: {exc}")
        return
    identity = identity_for(config, None)
    for repo, names in repos.items():
        git = RepoGit(repo, config.checks.git_timeout, identity)
        try:
            gone = await prune_worktrees(git, root, live)
        except GitError as exc:
            log.info("worktree.kept", repo=str(repo), paths=names, reason=str(exc))
            continue
        for path in gone:
            log.info("worktree.removed", path=str(path), reason="its plan no longer exists")
    await anyio.to_thread.run_sync(_drop_orphans, root, live)


def _repos_of(root: Path, live: set[str]) -> dict[Path, list[str]]:
    """The repository of each stale worktree under `root`, from its `.git` file
    (`gitdir: <repo>/.git/worktrees/<name>`)."""
    found: dict[Path, list[str]] = {}
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        if entry.name in live:
            continue
        try:
            text = (entry / ".git").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        gitdir = Path(text.removeprefix("gitdir:").strip())
        if gitdir.parent.name == "worktrees" and gitdir.parent.parent.name == ".git":
            found.setdefault(gitdir.parents[2], []).append(entry.name)
    return found


def _drop_orphans(root: Path, live: set[str]) -> None:
    """Folders under `root` git does not know (a `worktree add` killed half way, a repository
    removed) go too."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name not in live and entry.is_dir() and not (entry / ".git").exists():
            shutil.rmtree(entry, ignore_errors=True)
