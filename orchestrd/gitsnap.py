"""Git snapshots around a worker: HEAD, `git status` and the whole working tree (tracked and
untracked, ignored files left out) written as a tree object, and what changed between two.

The tree is built in a repository of our own (`snapshot.git` in the plan's folder: its own
index, no config, the user's objects borrowed as alternates), so nothing a worker does to the
user's index (skip-worktree, assume-unchanged), its `.git/info/exclude`, its config or hooks
can hide a change, and git never runs a program the repository names (fsmonitor, hooks,
filter drivers, textconv, external diff). The ignore rules outside the tree are pinned at the
phase's baseline; changes to `.git/config`, `.git/info/`, `.git/hooks/` and `.gitignore`
files that ignore themselves are reported, and ignored files matching watched globs (tests)
are compared too. Works whether or not the worker commits: trees are compared, not commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .errors import OrchestrdError
from .plan import glob_regex
from .privsep import Identity

STATUS_LINES = 200  # `git status` lines kept in an audit event
CHANGED_FILES = 500  # changed paths kept in an audit event
DIFFSTAT_LINES = 100  # per-file lines of a diffstat kept in an audit event (and its summary)
COMMITS = 50  # commits listed in an audit event
LINE_CHARS = 300  # one path, status or diffstat line in an audit event
GIT_FILE_BYTES = 4 * 1024 * 1024  # hashed of one file under .git (with its size and mode)
IGNORE_BYTES = 1024 * 1024  # read of an exclude file pinned for a phase
HOOK_FILES = 200  # entries of .git/hooks/ compared (bounds the time a snapshot takes)
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(?P<start>\d+)(?:,(?P<count>\d+))? @@")
# Every git call: nothing the repository's config or a worker names is run, and the stat data
# of our own index is never trusted blindly.
SAFE_CONFIG = (
    "core.quotePath=false",
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.untrackedCache=false",
    "core.splitIndex=false",
    "core.ignoreStat=false",
    "core.trustctime=true",
    "core.checkStat=default",
    "core.attributesFile=/dev/null",
    "core.sshCommand=false",
    "protocol.allow=never",
    "log.showSignature=false",
    "core.pager=cat",
    "gc.auto=0",
    "core.bare=false",
    f"core.excludesFile={os.devnull}",
)
# In our snapshot repository only: its work tree is the user's; its ignore rules from outside
# the tree are the ones pinned in its info/exclude (the user's default excludes file is live).
_SHADOW_ONLY = frozenset({"core.bare=false", f"core.excludesFile={os.devnull}"})


SNAPSHOT_REPO = "snapshot.git"  # in the plan's workers/ folder, for as long as the plan runs


def drop_snapshots(scratch: Path) -> None:
    """Remove a finished plan's snapshot repository (a thread: it may hold many objects)."""
    shutil.rmtree(scratch / SNAPSHOT_REPO, ignore_errors=True)


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
    status_count: int = 0
    """`git status` lines in all (`status` keeps the first STATUS_LINES)."""
    hidden: dict[str, str] = dataclasses.field(default_factory=dict)
    """Ignored files matching the watched globs (and `.gitignore` files git ignores), with
    their blob ids."""

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
    """What a phase's workers changed: files, the lines they added, each file's first change,
    and what they changed in how git sees the repository."""

    files: list[FileChange]
    added: list[AddedLine]
    first_line: dict[str, int]
    tampered: list[FileChange] = dataclasses.field(default_factory=list)
    """Files under .git (config, info/, hooks/) and self-ignoring `.gitignore` files changed."""


def _git_env() -> dict[str, str]:
    # the daemon's own GIT_* variables (GIT_DIR, GIT_INDEX_FILE…) must not redirect us, and
    # neither the system's nor the user's config (a worker can edit ~/.gitconfig) is read
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        LC_ALL="C",
        GIT_OPTIONAL_LOCKS="0",
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_NO_LAZY_FETCH="1",
        GIT_PAGER="cat",
    )
    return env


def _cap(text: str, limit: int = LINE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cap_lines(lines: list[str], keep: int, cut: dict[str, int], key: str) -> list[str]:
    """At most `keep` lines, each capped; what was left out is counted in `cut[key]`."""
    if len(lines) > keep:
        cut[key] = len(lines) - keep
    return [_cap(x) for x in lines[:keep]]


def _digest(path: Path) -> str | None:
    """Size, mode and hash of a regular file's first GIT_FILE_BYTES; None when missing; the
    mode of anything else (never opened, so a FIFO is never waited on)."""
    digest = hashlib.sha256()
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return f"mode {stat.filemode(st.st_mode)}"
        with open(path, "rb") as f:
            left = GIT_FILE_BYTES
            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                digest.update(chunk)
                left -= len(chunk)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mode & 0o777:o}:{digest.hexdigest()}"


def _regular(base: Path, paths: list[str]) -> list[str]:
    regular = []
    for p in paths:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(base / p).st_mode):
                regular.append(p)
    return regular


def _git_files(common: Path, gitdir: Path, excludes: Path | None) -> dict[str, str | None]:
    """What decides how git sees and runs in the repository: config, info/exclude,
    info/attributes, every hook, the core.excludesFile (a thread: it reads files)."""
    found: dict[str, str | None] = {}
    if excludes is not None:
        found[f"core.excludesFile {excludes}"] = _digest(excludes)
    for rel in ("config", "info/exclude", "info/attributes"):
        found[f".git/{rel}"] = _digest(common / rel)
    found[".git/config.worktree"] = _digest(gitdir / "config.worktree")
    hooks = common / "hooks"
    with contextlib.suppress(OSError):
        entries = list(itertools.islice(hooks.rglob("*"), HOOK_FILES + 1))
        if len(entries) > HOOK_FILES:  # walked no further: the same answer while it stays so
            found[".git/hooks/"] = f"more than {HOOK_FILES} entries"
            return found
        for entry in sorted(entries):
            found[f".git/hooks/{entry.relative_to(hooks).as_posix()}"] = _digest(entry)
    return found


async def run_git(
    options: list[str],
    args: tuple[str, ...],
    cwd: Path,
    env: dict[str, str],
    seconds: float,
    as_user: dict[str, Any],
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `git OPTIONS ARGS`, stdin closed, within `seconds`;
    GitError if it cannot run or times out. `as_user`: subprocess's user/group arguments."""
    try:
        with anyio.fail_after(seconds):
            done = await anyio.run_process(
                ["git", *options, *args],
                cwd=cwd,
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
                **as_user,
            )
    except TimeoutError:
        raise GitError(f"git {args[0]} timed out after {seconds}s") from None
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc.strerror or exc}") from None
    out = done.stdout.decode("utf-8", errors="replace")
    return done.returncode, out, done.stderr.decode("utf-8", errors="replace").strip()


class Git:
    """git commands in one repository (a checkout or a folder inside one), each with a timeout;
    snapshots are built in `scratch/snapshot.git`."""

    def __init__(
        self, repo: Path, scratch: Path, timeout: float, identity: Identity | None = None
    ) -> None:
        self.repo = repo
        self.scratch = scratch
        self.shadow = scratch / SNAPSHOT_REPO
        self.timeout = timeout
        self.identity = identity
        """Run git as the worker's user: the repo's config (core.fsmonitor, filters) is the
        worker's to write, and must not run anything with the daemon's rights."""
        self._top: str | None = None
        self._common: Path | None = None
        self._gitdir: Path | None = None
        self._excludes: Path | None = None

    async def _run(
        self,
        args: tuple[str, ...],
        shadow: bool = False,
        extra: tuple[str, ...] = (),
        mine: bool = False,
    ) -> tuple[int, str, str]:
        """`shadow`: in our snapshot repository; `mine`: a command on our own files only (it
        creates the snapshot repository), run as the daemon."""
        env = _git_env()
        as_user: dict[str, Any] = {}
        if mine:
            pass  # the daemon's own folder, no repository config read
        elif shadow:
            # our own repository: its config is ours, so it runs as the daemon (which workers
            # cannot write into)
            assert self._top is not None
            env.update(GIT_DIR=str(self.shadow), GIT_WORK_TREE=self._top)
        elif self.identity is not None:
            # the user's repository reads its own config (filters, fsmonitor), the worker's to
            # write: defused below, and run as the worker's user besides, never with the
            # daemon's rights
            as_user = self.identity.process_kwargs()
            env.update(self.identity.env())
        safe = [x for c in SAFE_CONFIG if shadow or c not in _SHADOW_ONLY for x in ("-c", c)]
        # a repo owned by the worker user is "dubious" to git: trust exactly this checkout
        top = self._top or next(
            (str(d) for d in (self.repo, *self.repo.parents) if (d / ".git").exists()),
            str(self.repo),
        )
        options = [*safe, "-c", f"safe.directory={top}", *extra]
        return await run_git(options, args, self.repo, env, self.timeout, as_user)

    async def run(
        self,
        *args: str,
        shadow: bool = False,
        ok: tuple[int, ...] = (0,),
        extra: tuple[str, ...] = (),
        mine: bool = False,
    ) -> str:
        """stdout of a git command in the repo (or in our snapshot repository, `shadow`);
        GitError unless its exit code is in `ok`."""
        rc, out, err = await self._run(args, shadow, extra, mine)
        if rc not in ok:
            last = err.splitlines()[-1] if err else ""
            raise GitError(f"git {args[0]} exited {rc}: {last}")
        return out

    async def problem(self) -> str | None:
        """Why the snapshot rules cannot run here (not a checkout, ignored by one), or None."""
        if not any((d / ".git").exists() for d in (self.repo, *self.repo.parents)):
            # no git process per phase for the common plain folder
            return f"{self.repo} is not a git checkout"
        rc, out, err = await self._run(("rev-parse", "--is-inside-work-tree"))
        if rc != 0 and "not a git repository" in err:
            return f"{self.repo} is not a git checkout"
        if rc != 0:
            return f"git rev-parse exited {rc}: {err.splitlines()[-1] if err else ''}"
        if out.strip() != "true":
            return f"{self.repo} is not inside a git work tree"
        rc, _, _ = await self._run(("check-ignore", "-q", "."))
        if rc == 0:
            return f"{self.repo} is ignored by the git checkout around it (.gitignore)"
        return None

    async def _locate(self) -> None:
        out = await self.run(
            "rev-parse",
            "--path-format=absolute",
            "--show-toplevel",
            "--git-common-dir",
            "--git-dir",
        )
        top, common, gitdir = out.splitlines()[:3]
        self._top, self._common, self._gitdir = top, Path(common), Path(gitdir)

    async def _filter_overrides(self) -> tuple[str, ...]:
        """`-c filter.<name>.clean=` … for every filter driver the repo's config names: git
        runs none of them (`git status` would clean files through them)."""
        rc, out, _ = await self._run(("config", "-z", "--name-only", "--get-regexp", "^filter[.]"))
        # filter.<name>.<key>, where the name may hold dots itself
        names = {n[7 : n.rindex(".")] for n in out.split("\0") if n.count(".") >= 2}
        # required=false: an emptied driver that is required would fail `git status` (LFS)
        keys = ("clean", "smudge", "process", "required")
        names = names if rc == 0 else set()
        return tuple(
            x
            for n in sorted(names)
            for k in keys
            for x in ("-c", f"filter.{n}.{k}=" + ("false" if k == "required" else ""))
        )

    async def pin_ignores(self) -> None:
        """Create our snapshot repository (once) and pin the ignore rules from outside the tree
        — `.git/info/exclude` and `core.excludesFile` — as they are now, for the phase."""
        await self._locate()
        assert self._common is not None
        shadow = anyio.Path(self.shadow)
        if not await (shadow / "HEAD").exists():
            await self.run("init", "--bare", "-q", "--template=", str(self.shadow), mine=True)
        await (shadow / "objects/info").mkdir(parents=True, exist_ok=True)
        await (shadow / "info").mkdir(exist_ok=True)
        await (shadow / "objects/info/alternates").write_text(f"{self._common / 'objects'}\n")
        rules = await anyio.to_thread.run_sync(self._ignore_rules)
        await (shadow / "info/exclude").write_bytes(rules)

    def _ignore_rules(self) -> bytes:
        assert self._common is not None and self._top is not None
        self._excludes = self._excludes_file(Path(self._top))
        rules = b""
        for path in (self._common / "info/exclude", self._excludes):
            if path is not None and os.path.isfile(path):
                with open(path, "rb") as f:
                    rules += f.read(IGNORE_BYTES) + b"\n"
        return rules

    def _excludes_file(self, top: Path) -> Path | None:
        # read with the user's own config, at the baseline only (before any worker ran)
        env = {k: v for k, v in _git_env().items() if k != "GIT_CONFIG_GLOBAL"}
        try:
            done = subprocess.run(
                ["git", "config", "--path", "--get", "core.excludesFile"],
                cwd=self.repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"git config core.excludesFile failed: {exc}") from None
        if done.returncode == 0 and done.stdout.strip():
            return top / Path(done.stdout.strip()).expanduser()  # relative: to the top
        config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return Path(config_home) / "git" / "ignore"

    async def git_files(self) -> dict[str, str | None]:
        if self._common is None or self._gitdir is None:
            await self._locate()
        assert self._common is not None and self._gitdir is not None
        return await anyio.to_thread.run_sync(
            _git_files, self._common, self._gitdir, self._excludes
        )

    async def snapshot(
        self, tag: str, watch: tuple[str, ...] = (), opaque: tuple[str, ...] = ()
    ) -> Snapshot:
        """HEAD, the working tree, `git status`, the diffstat against HEAD, and the ignored
        files matching the `watch` globs outside the `opaque` folders. The ignore rules outside
        the tree are pinned at the first snapshot unless `pin_ignores` ran before."""
        if self._top is None:
            await self.pin_ignores()
        head = (await self.run("rev-parse", "--verify", "-q", "HEAD", ok=(0, 1))).strip() or None
        tree = await self.working_tree(tag)
        # submodules: their own config may name programs too
        status = await self.run(
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--ignore-submodules=all",
            "--",
            ".",
            extra=await self._filter_overrides(),
        )
        diffstat = ""
        if head is not None:
            diffstat = (
                await self.run(
                    "diff",
                    "--shortstat",
                    "--relative",
                    "--no-ext-diff",
                    "--no-textconv",
                    head,
                    tree,
                    shadow=True,
                )
            ).strip()
        hidden = await self.hidden(watch, opaque)
        lines = status.splitlines()
        return Snapshot(head, tree, lines[:STATUS_LINES], diffstat, len(lines), hidden)

    async def working_tree(self, tag: str) -> str:
        """`git add -A && git write-tree` in our snapshot repository: its own index (stat data
        of our last snapshot, so unchanged files are not hashed again), no flags of the user's.
        `tag` names the snapshot in errors."""
        index = self.shadow / "index"
        # a lock left by a git stopped at its timeout is ours: nobody else uses this index
        with contextlib.suppress(FileNotFoundError):
            await anyio.Path(index.with_name("index.lock")).unlink()
        try:
            # exit 1: some files could not be read; the others are in
            await self.run("add", "-A", "--ignore-errors", shadow=True, ok=(0, 1))
        except GitError:
            # an index git cannot use any more: start afresh (every file hashed once)
            with contextlib.suppress(FileNotFoundError):
                await anyio.Path(index).unlink()
            await self.run("add", "-A", "--ignore-errors", shadow=True, ok=(0, 1))
        tree = (await self.run("write-tree", shadow=True)).strip()
        if not tree:
            raise GitError(f"snapshot {tag}: git write-tree gave no tree")
        return tree

    async def ignored_folders(self) -> tuple[str, ...]:
        """The ignored folders there are now (node_modules/, .venv/, build/…): what they hold
        is not the workers' to hide in, and walking them at every snapshot would cost."""
        out = await self.run(
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--directory",
            shadow=True,
        )
        return tuple(p for p in out.split("\0") if p.endswith("/"))

    async def hidden(self, watch: tuple[str, ...], opaque: tuple[str, ...]) -> dict[str, str]:
        """Ignored (untracked) files matching `watch` or named `.gitignore`, outside the
        `opaque` folders, with blob ids."""
        globs = [*watch, "**/.gitignore"]
        specs = [f":(glob){g}" for g in globs]
        specs += [f":(exclude,literal){d}" for d in opaque]
        out = await self.run(
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--",
            *specs,
            shadow=True,
        )
        rx = [glob_regex(g) for g in globs]
        paths = [p for p in out.split("\0") if p and any(r.match(p) for r in rx)]
        # hash-object would wait forever on a FIFO: regular files only
        paths = await anyio.to_thread.run_sync(_regular, self.repo, paths)
        if not paths:
            return {}
        blobs = await self.run("hash-object", "--no-filters", "--", *paths, shadow=True)
        return dict(zip(paths, blobs.split(), strict=False))

    async def changed(self, a: str, b: str) -> list[FileChange]:
        out = await self.run(
            "diff",
            "--name-status",
            "-z",
            "--no-renames",
            "--relative",
            "--no-ext-diff",
            a,
            b,
            shadow=True,
        )
        fields = out.split("\0")
        return [
            FileChange(fields[i][:1], fields[i + 1])
            for i in range(0, len(fields) - 1, 2)
            if fields[i]
        ]

    async def added_lines(self, a: str, b: str) -> tuple[list[AddedLine], dict[str, int]]:
        """Lines added between two trees, and the first changed line of every file."""
        out = await self.run(
            "diff",
            "-U0",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            "--relative",
            a,
            b,
            shadow=True,
        )
        return parse_unified(out)

    async def stat(self, a: str, b: str) -> str:
        return (
            await self.run(
                "diff",
                "--stat=120",
                "--relative",
                "--no-ext-diff",
                "--no-textconv",
                a,
                b,
                shadow=True,
            )
        ).rstrip()

    async def commits(self, a: str | None, b: str | None) -> tuple[list[str], int]:
        """The first COMMITS commits made between two HEADs (none if HEAD did not move
        forward), and how many there are."""
        if b is None or a == b:
            return [], 0
        span = b if a is None else f"{a}..{b}"
        out = await self.run(
            "log",
            "--oneline",
            "--no-decorate",
            "--no-show-signature",
            "-n",
            str(COMMITS + 1),
            span,
        )
        lines = out.splitlines()
        if len(lines) <= COMMITS:
            return lines, len(lines)
        count = await self.run("rev-list", "--count", span)
        return lines[:COMMITS], int(count.strip() or 0)


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
    attempts are never blamed on a worker. Ignored files matching `watch` (the test globs) and
    what decides how git sees the repo (.git/config, info/, hooks/) are compared with the
    baseline too."""

    def __init__(self, git: Git, watch: tuple[str, ...] = ()) -> None:
        self.git = git
        self.watch = watch
        self.problem: str | None = None
        self.baseline: Snapshot | None = None
        self.before: Snapshot | None = None
        self.git_files: dict[str, str | None] = {}
        self.opaque: tuple[str, ...] = ()
        """Folders ignored at the baseline: ignored files in them are not compared."""
        self.touched: set[str] = set()
        self._checked = False

    async def start_attempt(self, tag: str) -> None:
        if not self._checked:
            self._checked = True
            self.problem = await self.git.problem()
        if self.problem is not None and self.baseline is None:
            return  # no checkout (or git failed before the phase began): no git rules
        try:
            if self.baseline is None:
                await self.git.pin_ignores()
                self.git_files = await self.git.git_files()
                self.opaque = await self.git.ignored_folders()
            self.before = await self.git.snapshot(f"{tag}-before", self.watch, self.opaque)
        except GitError as exc:
            self.problem, self.before = str(exc), None
            return
        self.problem = None  # git works again (a remediation repaired what a worker broke)
        if self.baseline is None:
            self.baseline = self.before

    @property
    def broken(self) -> bool:
        """git worked when the phase began and fails now: a worker broke the repository."""
        return self.baseline is not None and self.problem is not None

    async def end_attempt(self, tag: str) -> tuple[dict[str, object] | None, Diff | None]:
        """(fields of the worker.changes event, the phase's diff for the rules) — (None, None)
        when git cannot tell."""
        before, self.before = self.before, None
        if self.problem is not None or before is None or self.baseline is None:
            return None, None
        try:
            after = await self.git.snapshot(f"{tag}-after", self.watch, self.opaque)
            mine = await self.git.changed(before.tree, after.tree)
            self.touched.update(c.path for c in mine)
            event = await self._event(before, after, mine)
            phase_files = await self.git.changed(self.baseline.tree, after.tree)
            files = [c for c in phase_files if c.path in self.touched]
            added, first = await self.git.added_lines(self.baseline.tree, after.tree)
            tampered = _changed(self.git_files, await self.git.git_files())
        except GitError as exc:
            self.problem = str(exc)
            return None, None
        keep = {c.path for c in files}
        hidden = _changed(self.baseline.hidden, after.hidden)
        # an ignored test file is a test file all the same; a .gitignore git ignores hides
        # itself (and what it names)
        files += [c for c in hidden if not c.path.endswith(".gitignore") and c.path not in keep]
        tampered += [c for c in hidden if c.path.endswith(".gitignore") and c.status != "D"]
        diff = Diff(
            files,
            [a for a in added if a.path in keep],
            {p: n for p, n in first.items() if p in keep},
            tampered,
        )
        return event, diff

    async def _event(
        self, before: Snapshot, after: Snapshot, mine: list[FileChange]
    ) -> dict[str, object]:
        """The worker.changes fields, every one that grows with the worker's output capped;
        `cut` counts the lines left out of each."""
        cut: dict[str, int] = {
            f"{name}.status": snap.status_count - len(snap.status)
            for name, snap in (("before", before), ("after", after))
            if snap.status_count > len(snap.status)
        }
        stat_lines = (await self.git.stat(before.tree, after.tree)).splitlines() if mine else []
        diffstat = _cap_lines(stat_lines[:-1], DIFFSTAT_LINES, cut, "diffstat")
        if stat_lines:
            diffstat.append(_cap(stat_lines[-1]))  # the summary: N files changed, …
        commits, n_commits = await self.git.commits(before.head, after.head)
        if n_commits > len(commits):
            cut["commits"] = n_commits - len(commits)
        event: dict[str, object] = {
            "before": {
                **before.as_event(),
                "status": _cap_lines(before.status, STATUS_LINES, cut, "before.status"),
            },
            "after": {
                **after.as_event(),
                "status": _cap_lines(after.status, STATUS_LINES, cut, "after.status"),
            },
            "changed": _cap_lines(
                [f"{c.status} {c.path}" for c in mine], CHANGED_FILES, cut, "changed"
            ),
            "changed_count": len(mine),
            "diffstat": "\n".join(diffstat),
            "commits": [_cap(c) for c in commits],
        }
        if cut:
            event["cut"] = cut
        return event


def _changed(was: Mapping[str, str | None], now: Mapping[str, str | None]) -> list[FileChange]:
    """Paths added (A), modified (M) or deleted (D) between two {path: digest} maps."""
    out = []
    for path in sorted({*was, *now}):
        a, b = was.get(path), now.get(path)
        if a != b:
            out.append(FileChange("A" if a is None else "D" if b is None else "M", path))
    return out
