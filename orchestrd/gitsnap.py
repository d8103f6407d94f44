"""Git snapshots around a worker: HEAD, `git status` and the whole working tree (tracked and
untracked, .gitignore respected) written as a tree object through a temporary index, so the
user's index, refs and stash are never touched; and what changed between two snapshots.

Works whether or not the worker commits: trees are compared, not commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import anyio
import anyio.to_thread

from .errors import OrchestrdError
from .privsep import Identity

STATUS_LINES = 200  # `git status` lines kept in an audit event
CHANGED_FILES = 500  # changed paths kept in an audit event
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(?P<start>\d+)(?:,(?P<count>\d+))? @@")


class GitError(OrchestrdError):
    """A git command failed or timed out; the rules that need git are skipped with a warning."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    head: str | None
    """HEAD's commit, None in a repository without commits."""
    tree: str
    """The working tree as a git tree object (tracked and untracked, ignored files left out)."""
    status: list[str]
    diffstat: str
    """Uncommitted changes against HEAD (`git diff --shortstat`)."""

    def as_event(self) -> dict[str, object]:
        return {"head": self.head, "status": self.status, "diffstat": self.diffstat}


@dataclasses.dataclass(frozen=True)
class FileChange:
    status: str
    """A (added), M (modified), D (deleted), T (type changed)."""
    path: str
    """Relative to the plan's repo."""


@dataclasses.dataclass(frozen=True)
class AddedLine:
    path: str
    line: int
    text: str


@dataclasses.dataclass(frozen=True)
class Diff:
    """What a phase's workers changed: files, the lines they added, each file's first change."""

    files: list[FileChange]
    added: list[AddedLine]
    first_line: dict[str, int]


def _git_env() -> dict[str, str]:
    # the daemon's own GIT_* variables (GIT_DIR, GIT_INDEX_FILE…) must not redirect us
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(LC_ALL="C", GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    return env


class Git:
    """git commands in one repository (a checkout or a folder inside one), each with a timeout."""

    def __init__(
        self, repo: Path, scratch: Path, timeout: float, identity: Identity | None = None
    ) -> None:
        self.repo = repo
        self.scratch = scratch
        self.timeout = timeout
        self.identity = identity
        """Run git as the worker's user: the repo's config (core.fsmonitor, filters) is the
        worker's to write, and must not run anything with the daemon's rights."""

    async def _run(self, args: tuple[str, ...], index: Path | None) -> tuple[int, str, str]:
        env = _git_env()
        as_user = self.identity.process_kwargs() if self.identity else {}
        env.update(self.identity.env() if self.identity else {})
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        # a repo owned by the worker user is "dubious" to git: trust exactly this checkout
        top = next((d for d in (self.repo, *self.repo.parents) if (d / ".git").exists()), None)
        argv = ["git", "-c", "core.quotePath=false", "-c", f"safe.directory={top or self.repo}",
                "-c", "core.fsmonitor=false", *args]
        try:
            with anyio.fail_after(self.timeout):
                done = await anyio.run_process(
                    argv, cwd=self.repo, env=env, check=False, stdin=subprocess.DEVNULL,
                    **as_user,
                )
        except TimeoutError:
            raise GitError(f"git {args[0]} timed out after {self.timeout}s") from None
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror or exc}") from None
        out = done.stdout.decode("utf-8", errors="replace")
        return done.returncode, out, done.stderr.decode("utf-8", errors="replace").strip()

    async def run(self, *args: str, index: Path | None = None, ok: tuple[int, ...] = (0,)) -> str:
        """stdout of a git command in the repo; GitError unless its exit code is in `ok`."""
        rc, out, err = await self._run(args, index)
        if rc not in ok:
            last = err.splitlines()[-1] if err else ""
            raise GitError(f"git {args[0]} exited {rc}: {last}")
        return out

    async def problem(self) -> str | None:
        """Why the snapshot rules cannot run here (not a checkout, ignored by one), or None."""
        if not any((d / ".git").exists() for d in (self.repo, *self.repo.parents)):
            # no git process per phase for the common plain folder
            return f"{self.repo} is not a git checkout"
        rc, out, err = await self._run(("rev-parse", "--is-inside-work-tree"), None)
        if rc != 0 and "not a git repository" in err:
            return f"{self.repo} is not a git checkout"
        if rc != 0:
            return f"git rev-parse exited {rc}: {err.splitlines()[-1] if err else ''}"
        if out.strip() != "true":
            return f"{self.repo} is not inside a git work tree"
        rc, _, _ = await self._run(("check-ignore", "-q", "."), None)
        if rc == 0:
            return f"{self.repo} is ignored by the git checkout around it (.gitignore)"
        return None

    async def snapshot(self, tag: str) -> Snapshot:
        head = (await self.run("rev-parse", "--verify", "-q", "HEAD", ok=(0, 1))).strip() or None
        tree = await self.working_tree(tag)
        status = await self.run("status", "--porcelain", "--untracked-files=all", "--", ".")
        diffstat = ""
        if head is not None:
            diffstat = (await self.run("diff", "--shortstat", "--relative", head, tree)).strip()
        return Snapshot(head, tree, status.splitlines()[:STATUS_LINES], diffstat)

    async def working_tree(self, tag: str) -> str:
        """`git add -A && git write-tree` through a temporary index (a copy of the real one, so
        unchanged files are not hashed again)."""
        await anyio.Path(self.scratch).mkdir(parents=True, exist_ok=True)
        index = self.scratch / f".git-index-{tag}"
        real = Path((await self.run("rev-parse", "--git-path", "index")).strip())
        real = real if real.is_absolute() else self.repo / real
        try:
            await anyio.to_thread.run_sync(_copy_or_remove, real, index)
            # exit 1: some files could not be read; the others are in
            try:
                await self.run("add", "-A", "--ignore-errors", index=index, ok=(0, 1))
            except GitError:
                # a copied index git cannot use (split index, another version): start empty
                await anyio.to_thread.run_sync(_copy_or_remove, None, index)
                await self.run("add", "-A", "--ignore-errors", index=index, ok=(0, 1))
            return (await self.run("write-tree", index=index)).strip()
        finally:
            for leftover in (index, index.with_name(index.name + ".lock")):
                with contextlib.suppress(FileNotFoundError):
                    await anyio.Path(leftover).unlink()

    async def changed(self, a: str, b: str) -> list[FileChange]:
        out = await self.run("diff", "--name-status", "-z", "--no-renames", "--relative", a, b)
        fields = out.split("\0")
        return [
            FileChange(fields[i][:1], fields[i + 1])
            for i in range(0, len(fields) - 1, 2)
            if fields[i]
        ]

    async def added_lines(self, a: str, b: str) -> tuple[list[AddedLine], dict[str, int]]:
        """Lines added between two trees, and the first changed line of every file."""
        out = await self.run(
            "diff", "-U0", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
            "--relative", a, b,
        )
        return parse_unified(out)

    async def stat(self, a: str, b: str) -> str:
        return (await self.run("diff", "--stat=120", "--relative", a, b)).rstrip()

    async def commits(self, a: str | None, b: str | None) -> list[str]:
        """Commits made between two HEADs (none if HEAD did not move forward)."""
        if b is None or a == b:
            return []
        span = b if a is None else f"{a}..{b}"
        out = await self.run("log", "--oneline", "--no-decorate", "-n", "50", span)
        return out.splitlines()


def _copy_or_remove(src: Path | None, dest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    if src is not None and src.is_file():
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o644)  # git may run as the worker user: a copy of its own index


def _unquote(path: str) -> str:
    if path.startswith('"') and path.endswith('"'):
        return path[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return path


def parse_unified(text: str) -> tuple[list[AddedLine], dict[str, int]]:
    """The `+` lines of a `git diff -U0` with their new line numbers, and each file's first
    changed line (for a deletion, the line it happened after; 0 for a deleted file)."""
    added: list[AddedLine] = []
    first: dict[str, int] = {}
    path: str | None = None
    old: str | None = None
    line = 0
    for raw in text.splitlines():
        if raw.startswith("--- "):
            old = raw[4:]
            old = _unquote(old)[2:] if old != "/dev/null" else None
            path = None
        elif raw.startswith("+++ "):
            new = raw[4:]
            path = _unquote(new)[2:] if new != "/dev/null" else None
            if path is None and old is not None:
                first.setdefault(old, 0)
        elif raw.startswith("@@") and (m := _HUNK.match(raw)):
            line = int(m.group("start"))
            if path is not None:
                first.setdefault(path, max(line, 1))
        elif raw.startswith("+") and path is not None:
            added.append(AddedLine(path, line, raw[1:]))
            line += 1
    return added, first


class PhaseGit:
    """A phase's git view across its attempts: the tree before its first worker (the baseline)
    and the paths any of its workers touched, so a remediation that reverts a bad change is
    judged on the phase as a whole, and files written by the daemon's verify commands between
    attempts are never blamed on a worker."""

    def __init__(self, git: Git) -> None:
        self.git = git
        self.problem: str | None = None
        self.baseline: Snapshot | None = None
        self.before: Snapshot | None = None
        self.touched: set[str] = set()
        self._checked = False

    async def start_attempt(self, tag: str) -> None:
        if not self._checked:
            self._checked = True
            self.problem = await self.git.problem()
        if self.problem is not None:
            return
        try:
            self.before = await self.git.snapshot(f"{tag}-before")
        except GitError as exc:
            self.problem, self.before = str(exc), None
            return
        if self.baseline is None:
            self.baseline = self.before

    async def end_attempt(self, tag: str) -> tuple[dict[str, object] | None, Diff | None]:
        """(fields of the worker.changes event, the phase's diff for the rules) — (None, None)
        when git cannot tell."""
        before, self.before = self.before, None
        if self.problem is not None or before is None or self.baseline is None:
            return None, None
        try:
            after = await self.git.snapshot(f"{tag}-after")
            mine = await self.git.changed(before.tree, after.tree)
            self.touched.update(c.path for c in mine)
            event: dict[str, object] = {
                "before": before.as_event(),
                "after": after.as_event(),
                "changed": [f"{c.status} {c.path}" for c in mine[:CHANGED_FILES]],
                "changed_count": len(mine),
                "diffstat": await self.git.stat(before.tree, after.tree) if mine else "",
                "commits": await self.git.commits(before.head, after.head),
            }
            phase_files = await self.git.changed(self.baseline.tree, after.tree)
            files = [c for c in phase_files if c.path in self.touched]
            added, first = await self.git.added_lines(self.baseline.tree, after.tree)
        except GitError as exc:
            self.problem = str(exc)
            return None, None
        keep = {c.path for c in files}
        diff = Diff(
            files,
            [a for a in added if a.path in keep],
            {p: n for p, n in first.items() if p in keep},
        )
        return event, diff
