"""The state folder's layout, and the only module that spells it: `plans/<id>/` (active),
`archive/<id>[-n]/` (finished), `inbox/`, `rejected/`, `control/`, the daemon's lock, and the
files of one plan's folder. A plan is found by id, archived, brought back and set aside here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import PlanError
from .fsutil import FileRefused, copy_regular, fsync_dir
from .plan import Plan, confine
from .state import journal_of, now_iso

PLANS, ARCHIVE, INBOX, REJECTED, CONTROL = "plans", "archive", "inbox", "rejected", "control"
DAEMON_LOCK = "daemon.lock"
RUN_LOCK = "run.lock"
"""In a plan's folder while an `orchestrd run` of it runs (flock'd)."""
STATE_FILE = "state.toml"
PLAN_FILE = "plan.toml"
ARCHIVE_INDEX = "archive-index.jsonl"
"""The archive's summary index (catalog.py), in state_dir beside archive/ (which holds only
plan folders)."""
STAGING_SUFFIX = ".accepting"
CORRUPT = ".corrupt"
"""Appended to a file set aside for a person (`state.toml.corrupt`, `.corrupt2`, ...)."""


class PlanFolder:
    """The files of one plan under `state_dir/plans/<id>/` (or `archive/<id>/`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plan_file = root / PLAN_FILE
        self.state_file = root / STATE_FILE
        self.journal = journal_of(self.state_file)
        self.workers = root / "workers"
        self.ledger = root / "worker-pids.txt"
        self.passes = root / "phases-passed.txt"
        """`<ts> <phase>` per phase that passed: recovery's proof, beside state.toml's word."""
        self.report = root / "report.md"
        self.evidence = root / "evidence"
        """Copies of the plan's reports and completion files, made when it is archived."""
        self.run_lock = root / RUN_LOCK

    def create(self) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)

    def set_aside_before(self) -> bool:
        """Whether a state file of this folder was set aside (and reported) already."""
        return any(self.root.glob(f"{STATE_FILE}{CORRUPT}*"))

    def append_ledger(self, line: str, path: Path | None = None) -> None:
        """One line, one write(2) on an O_APPEND descriptor: whole even if the daemon dies, and
        no buffered file object per line on the event loop. `path`: another file than the
        PID ledger (`passes`)."""
        fd = os.open(
            path or self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            os.write(fd, f"{now_iso()} {line}\n".encode())
        finally:
            os.close(fd)

    def archive(self, archive_dir: Path) -> Path:
        """Move the whole folder to `archive_dir/<id>[-n]` (never overwriting an older one)."""
        archive_dir.mkdir(parents=True, exist_ok=True)
        dest = archive_dir / self.root.name
        n = 1
        while dest.exists():
            n += 1
            dest = archive_dir / f"{self.root.name}-{n}"
        os.replace(self.root, dest)
        return dest


class Store:
    """The folders under state_dir, and where each plan's folder is."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.inbox = state_dir / INBOX
        self.plans = state_dir / PLANS
        self.rejected = state_dir / REJECTED
        self.archive_dir = state_dir / ARCHIVE
        self.control = state_dir / CONTROL
        self.lock_path = state_dir / DAEMON_LOCK

    def ensure(self) -> None:
        """Create the folders that are missing. Never writable by others, whatever the umask
        (mkdir's mode is cut by the umask, never widened); existing folders are left as they
        are: their modes come from tmpfiles or the operator, and the daemon only checks them."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.inbox, self.plans, self.rejected, self.archive_dir, self.control):
            d.mkdir(mode=0o770, exist_ok=True)

    def folder(self, plan_id: str) -> PlanFolder:
        """The plan's folder under plans/ (whether it exists or not)."""
        return PlanFolder(self.plans / plan_id)

    def archived(self, plan_id: str) -> PlanFolder:
        return PlanFolder(self.archive_dir / plan_id)

    def find(self, plan_id: str) -> PlanFolder | None:
        """The plan's folder with a state file, in plans/ (active) or else archive/."""
        for folder in (self.folder(plan_id), self.archived(plan_id)):
            if folder.state_file.exists():
                return folder
        return None

    def located(self, plan_id: str) -> PlanFolder | None:
        """The plan's folder, whatever is in it: plans/ (active) or else archive/."""
        for base in (self.plans, self.archive_dir):
            if (root := base / plan_id).exists():
                return PlanFolder(root)
        return None

    def known(self, plan_id: str) -> Path | None:
        found = self.located(plan_id)
        return found.root if found is not None else None

    def is_active(self, folder: PlanFolder) -> bool:
        """Whether `folder` is under plans/ (not archived)."""
        return folder.root.parent == self.plans

    def all_folders(self) -> Iterator[tuple[str, Path]]:
        """Every plan folder, active then archived, each with where it lies (`plans` or
        `archive`); none still being accepted."""
        for base in (self.plans, self.archive_dir):
            if not base.is_dir():
                continue
            for folder in sorted(base.iterdir()):
                if not folder.name.startswith("."):
                    yield base.name, folder

    def plan_folders(self) -> list[PlanFolder]:
        """The accepted plans' folders under plans/ (not one still being accepted)."""
        return [
            PlanFolder(p)
            for p in sorted(self.plans.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]

    def staging(self, plan_id: str) -> PlanFolder:
        """Where a plan is built while it is accepted: a name recovery ignores."""
        return PlanFolder(self.plans / f".{plan_id}{STAGING_SUFFIX}")

    def put_in_place(self, staging: PlanFolder, plan_id: str) -> PlanFolder:
        """Rename a complete staging folder into plans/ (durably)."""
        folder = self.folder(plan_id)
        os.rename(staging.root, folder.root)
        fsync_dir(self.plans)
        return folder

    def remove_staging(self) -> None:
        """Remove what a crash left of plans being accepted (their inbox files are still there)."""
        for p in self.plans.glob(f".*{STAGING_SUFFIX}"):
            shutil.rmtree(p, ignore_errors=True)

    def archive(self, folder: PlanFolder) -> Path:
        """Move a plan's folder, as it is, to archive/."""
        return folder.archive(self.archive_dir)

    def unarchive(self, folder: PlanFolder) -> PlanFolder:
        """Move an archived plan's folder back under plans/ (to run again); where it is now."""
        dest = self.folder(folder.root.name)
        shutil.move(folder.root, dest.root)
        return dest

    def set_aside(self, path: Path) -> Path:
        """Rename a corrupt file so it is kept for a person but not read again."""
        dest = path.with_name(path.name + CORRUPT)
        n = 1
        while dest.exists():
            n += 1
            dest = path.with_name(f"{path.name}{CORRUPT}{n}")
        os.replace(path, dest)
        return dest

    def set_aside_state(self, folder: PlanFolder) -> Path:
        """Set aside a plan's unreadable state file, and its journal beside it for a person."""
        moved = self.set_aside(folder.state_file)
        if folder.journal.exists():
            self.set_aside(folder.journal)
        return moved


def archive_plan(
    plan: Plan, folder: PlanFolder, archive_dir: Path, max_bytes: int
) -> tuple[Path, list[str]]:
    """Copy the plan's reports and completion files into its folder, then move it to archive/.

    Returns where it went and the evidence not copied, with why. What the repo holds was written
    by workers: a link leading out of the repo or a link loop is not followed, anything but a
    regular file (a FIFO, a folder) and a file larger than `max_bytes` (max_log_bytes) is not
    copied, and nothing of it can stop the archiving.
    """
    evidence = folder.evidence
    skipped = []
    for phase in plan.phases:
        for rel in (phase.report_path, *phase.completion_paths):
            path = plan.in_plan_dir(rel)
            try:
                src = confine(plan.repo, path)
                # opened without blocking, and only a regular file is copied: a FIFO here
                # would hold this thread (and the archiving) forever
                copy_regular(src, evidence / path, max_bytes, "max_log_bytes", follow=False)
            except FileNotFoundError:
                continue  # never written: nothing to keep
            except PlanError:
                skipped.append(f"{path}: leads out of the repo")
            except FileRefused as exc:
                skipped.append(f"{path}: {exc}")
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (pathlib)
                skipped.append(f"{path}: {exc}")
    return folder.archive(archive_dir), skipped
