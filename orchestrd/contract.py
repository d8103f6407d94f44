"""A phase's contract files — its report, remediation reports and completion files — as they
were before its first worker started: one still the same after an attempt was left by an
earlier run or plan (the `stale` rule), and is no evidence of this phase's work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import anyio
import anyio.to_thread

from .errors import PlanError
from .plan import Phase, Plan, confine

FINGERPRINT_BYTES = 64 * 1024 * 1024  # hashed of a contract file (its size is compared too)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    content: str
    """size and SHA-256 of the first FINGERPRINT_BYTES"""
    mtime_ns: int


def fingerprint(path: Path) -> Fingerprint | None:
    """A regular file's content hash and mtime; None if it is missing or no regular file (a
    FIFO is never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha256()
        left = FINGERPRINT_BYTES
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    return Fingerprint(f"{st.st_size}:{digest.hexdigest()}", st.st_mtime_ns)


class ContractBaseline:
    """A phase's contract files (its report, remediation reports and completion files) as they
    were before its first worker started: one that is still the same after an attempt was left
    by an earlier run or plan, and is no evidence of this phase's work."""

    def __init__(self, plan: Plan, phase: Phase) -> None:
        self.plan = plan
        self.phase = phase
        self.before: dict[str, Fingerprint | None] = {}

    def paths(self, remediations: int) -> list[str]:
        """Repo-relative paths of the primary's and `remediations` remediation reports and of
        the completion files."""
        reports = [self.phase.report_for(k) for k in range(remediations + 1)]
        return [self.plan.in_plan_dir(p) for p in (*reports, *self.phase.completion_paths)]

    def _prints(self, paths: list[str]) -> list[Fingerprint | None]:
        prints = []
        for rel in paths:
            try:
                prints.append(fingerprint(confine(self.plan.repo, rel)))
            except PlanError:  # leads out of the repo: its own check says so
                prints.append(None)
        return prints

    async def take(self, paths: list[str]) -> None:
        """Record the paths not recorded yet (a report path first named by a reloaded config
        with more remediations is recorded before the worker that writes it)."""
        new = [p for p in dict.fromkeys(paths) if p not in self.before]
        prints = await anyio.to_thread.run_sync(self._prints, new)
        self.before.update(zip(new, prints, strict=True))

    async def stale(self, paths: list[str], mtime: bool) -> frozenset[str]:
        """The paths present before the phase and byte-identical now (and, with `mtime`, for
        repos without git, with the same modification time)."""
        paths = [p for p in paths if self.before.get(p) is not None]
        now = await anyio.to_thread.run_sync(self._prints, paths)
        return frozenset(
            p
            for p, after in zip(paths, now, strict=True)
            if after is not None
            and (was := self.before[p]) is not None
            and after.content == was.content
            and (not mtime or after.mtime_ns == was.mtime_ns)
        )
