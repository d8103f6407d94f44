"""A plan's own git worktree and branch: the base resolved to a commit at acceptance, the
worktree created (or reused after a restart), removed at archive, and leftovers pruned; plus
the one way the daemon runs git in a repository whose config and hooks a worker may write.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .gitsnap import _SHADOW_ONLY, SAFE_CONFIG, GitError, _git_env, run_git
from .privsep import Identity

BRANCH_PREFIX = "orchestrd/"
# Beyond SAFE_CONFIG, for commands that write commits and check files out (rebase, commit,
# worktree add): no signing program, no editor, no other branch moved along, and a committer
# that needs no config of the user's.
WRITE_CONFIG = (
    "user.name=orchestrd",
    "user.email=orchestrd@localhost",
    "commit.gpgSign=false",
    "gpg.program=false",
    "core.editor=false",
    "sequence.editor=false",
    "rebase.updateRefs=false",
    "rebase.autoStash=false",
    "rebase.autoSquash=false",
    "rebase.missingCommitsCheck=ignore",
    "merge.renormalize=false",
    "advice.detachedHead=false",
)


def branch_for(plan_id: str) -> str:
    return BRANCH_PREFIX + plan_id


class RepoGit:
    """git in one checkout (the main one or a plan's worktree) with a timeout. Every program
    the repository could name is defused: hooks, fsmonitor, filter and merge drivers, signing;
    with `identity` it runs as the worker's user besides (the repo is the worker's to write)."""

    def __init__(self, cwd: Path, timeout: float, identity: Identity | None = None) -> None:
        self.cwd = cwd
        self.timeout = timeout
        self.identity = identity
        self._drivers: tuple[str, ...] | None = None

    async def call(self, *args: str) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of a git command; GitError if it cannot run or times
        out."""
        if self._drivers is None:
            self._drivers = await self._driver_overrides()
        return await self._exec(args, self._drivers)

    async def _exec(self, args: tuple[str, ...], drivers: tuple[str, ...]) -> tuple[int, str, str]:
        env = _git_env()
        as_user: dict[str, Any] = {}
        if self.identity is not None:
            as_user = self.identity.process_kwargs()
            env.update(self.identity.env())
        safe = [x for c in SAFE_CONFIG if c not in _SHADOW_ONLY for x in ("-c", c)]
        write = [x for c in WRITE_CONFIG for x in ("-c", c)]
        options = [*safe, *write, "-c", f"safe.directory={self.cwd}", *drivers]
        return await run_git(options, args, self.cwd, env, self.timeout, as_user)

    async def unlink_files(self, paths: list[str], *more: str) -> None:
        """Remove these files (missing ones are fine) as git here runs: with `identity`, as the
        worker's user, for the paths came from a repository that user writes."""
        as_user = self.identity.process_kwargs() if self.identity is not None else {}
        argv = ["rm", "-f", "--", *paths, *more]
        try:
            with anyio.fail_after(self.timeout):
                done = await anyio.run_process(
                    argv, cwd=self.cwd, check=False, stdin=subprocess.DEVNULL, **as_user
                )
        except TimeoutError:
            raise GitError(f"rm of stale git locks timed out after {self.timeout}s") from None
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", errors="replace").strip()
            raise GitError(f"cannot remove stale git locks in {self.cwd}: {err}")

    async def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """stdout of a git command; GitError (with git's last line) unless its exit code is
        in `ok`."""
        rc, out, err = await self.call(*args)
        if rc not in ok:
            last = err.splitlines()[-1] if err else ""
            raise GitError(f"git {args[0]} exited {rc} in {self.cwd}: {last}")
        return out

    async def _driver_overrides(self) -> tuple[str, ...]:
        """`-c filter.<n>.clean=` … and `-c merge.<n>.driver=false` for every filter and merge
        driver the repository's config names: a checkout or rebase runs none of them (an
        emptied merge driver makes its files conflict, which a person then resolves)."""
        rc, out, _ = await self._exec(
            ("config", "-z", "--name-only", "--get-regexp", "^(filter|merge)[.].*[.]"),
            (),
        )
        names = [n for n in out.split("\0") if n.count(".") >= 2] if rc == 0 else []
        filters = sorted({n[7 : n.rindex(".")] for n in names if n.startswith("filter.")})
        merges = sorted({n[6 : n.rindex(".")] for n in names if n.startswith("merge.")})
        keys = ("clean", "smudge", "process", "required")
        found = [
            f"filter.{n}.{k}=" + ("false" if k == "required" else "") for n in filters for k in keys
        ]
        found += [f"merge.{n}.driver=false" for n in merges]
        return tuple(x for c in found for x in ("-c", c))

    async def commit_of(self, rev: str) -> str | None:
        rc, out, _ = await self.call("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        return out.strip() if rc == 0 else None


@dataclasses.dataclass(frozen=True)
class Base:
    """Where a plan starts, fixed when it is accepted."""

    branch: str | None
    """The base branch (the merge target by default); None for a detached HEAD."""
    commit: str


async def resolve_base(git: RepoGit, base: str | None) -> Base:
    """`base` (a branch, tag or commit) or the checkout's current branch, as a commit.
    GitError saying what to write when it names nothing."""
    if base is None:
        rc, out, _ = await git.call("symbolic-ref", "--quiet", "--short", "HEAD")
        branch = out.strip() if rc == 0 else None
        commit = await git.commit_of("HEAD")
        if commit is None:
            raise GitError(
                f"{git.cwd} has no commit yet: commit something first, or set base in the plan"
            )
        return Base(branch, commit)
    commit = await git.commit_of(base)
    if commit is None:
        raise GitError(
            f"base = {base!r}: no such branch or commit in {git.cwd}; name an existing branch "
            '(base = "main") or leave the key out for the current branch'
        )
    is_branch = await git.commit_of(f"refs/heads/{base}") is not None
    return Base(base if is_branch else None, commit)


@dataclasses.dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str | None
    head: str | None


async def list_worktrees(git: RepoGit) -> list[Worktree]:
    """Every worktree of the repository, the main checkout first."""
    out = await git.run("worktree", "list", "--porcelain")
    found: list[Worktree] = []
    for block in out.strip().split("\n\n"):
        fields = dict((line.split(" ", 1) + [""])[:2] for line in block.splitlines() if line)
        if "worktree" not in fields:
            continue
        branch = fields.get("branch")
        found.append(
            Worktree(
                Path(fields["worktree"]),
                branch.removeprefix("refs/heads/") if branch else None,
                fields.get("HEAD") or None,
            )
        )
    return found


async def ensure_worktree(git: RepoGit, path: Path, branch: str, base: str) -> bool:
    """The plan's worktree at `path` on `branch` (created from commit `base` if it does not
    exist). A worktree left by an interrupted run is reused as it is; a half-made one (the
    daemon killed during `worktree add`) is made again. True when it was created now."""
    trees = await list_worktrees(git)
    found = await anyio.to_thread.run_sync(_find, trees, path)
    if found is not None:
        if found.branch == branch and await anyio.to_thread.run_sync((path / ".git").is_file):
            return False
        await git.call("worktree", "remove", "--force", str(path))
    await anyio.to_thread.run_sync(_clear_leftover, path)
    await git.run("worktree", "prune")
    if await git.commit_of(f"refs/heads/{branch}") is not None:
        # the branch outlived its worktree (a restart after removal): its work is kept
        await git.run("worktree", "add", str(path), branch)
    else:
        await git.run("worktree", "add", "-b", branch, str(path), base)
    return True


def _find(trees: list[Worktree], path: Path) -> Worktree | None:
    """The worktree registered at `path` (symlinks resolved), if any."""
    return next((t for t in trees if _same(t.path, path)), None)


def _clear_leftover(path: Path) -> None:
    """A folder git no longer knows as a worktree (a `worktree add` killed half way) goes; an
    empty one is what `worktree add` wants."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


async def commit_leftovers(tree: RepoGit, plan_id: str) -> bool:
    """Commit what the plan's workers left uncommitted in its worktree (ignored files aside):
    its branch is the plan's result. Whether there was anything."""
    if not (await tree.run("status", "--porcelain", "--untracked-files=all")).strip():
        return False
    await tree.run("add", "--all")
    message = f"orchestrd: changes plan {plan_id} left uncommitted"
    await tree.run("commit", "--quiet", "--no-verify", "-m", message)
    return True


async def remove_worktree(git: RepoGit, path: Path) -> str | None:
    """`git worktree remove` then `git worktree prune`. The reason it was kept, or None: a
    worktree with uncommitted changes is left for a person."""
    if not await anyio.to_thread.run_sync(path.exists):
        await git.run("worktree", "prune")
        return None
    rc, _, err = await git.call("worktree", "remove", str(path))
    await git.run("worktree", "prune")
    if rc != 0:
        return err.splitlines()[-1] if err else f"git worktree remove exited {rc}"
    return None


async def delete_branch(git: RepoGit, branch: str, merged_into: str) -> bool:
    """Delete `branch` if its tip is contained in `merged_into`'s; whether it was."""
    tip = await git.commit_of(f"refs/heads/{branch}")
    if tip is None:
        return False
    rc, _, _ = await git.call("merge-base", "--is-ancestor", tip, f"refs/heads/{merged_into}")
    if rc != 0:
        return False
    await git.run("update-ref", "-d", f"refs/heads/{branch}", tip)
    return True


async def prune_worktrees(git: RepoGit, root: Path, live: set[str]) -> list[Path]:
    """Remove the worktrees under `root` whose plan (the folder's name) no longer exists; their
    branches are kept. The paths removed."""
    gone = []
    for tree in await list_worktrees(git):
        here = await anyio.to_thread.run_sync(_same, tree.path.parent, root)
        if here and tree.path.name not in live:
            await git.call("worktree", "remove", "--force", str(tree.path))
            gone.append(tree.path)
    await git.run("worktree", "prune")
    return gone
