"""A failed attempt's fingerprint: which checks and rules failed where, what the verify commands
printed (with the parts that differ between two runs of the same failure masked), and what the
attempt changed. Two attempts with one fingerprint failed the same way: remediating again
would burn budget and learn nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .fsutil import FileRefused, read_regular

CONTENT_BYTES = 4 * 1024 * 1024
"""A changed file larger than this is told apart by its size and mtime, unread."""

# Order matters: whole timestamps before their digits, temp paths before hex ids in them.
_MASKS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
        ),
        "<time>",
    ),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (
        re.compile(
            r"(?:/private)?/(?:tmp|var/tmp|var/folders|dev/shm|run/user/\d+)(?:/[^\s'\":,;)\]]*)?"
        ),
        "<tmp>",
    ),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
        "<id>",
    ),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    # a hex id has digits and letters both (a word of a-f letters alone is a word)
    (re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{7,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "N"),
]


def normalise(text: str) -> str:
    """`text` with timestamps, temp paths, ids and numbers masked, and blank space squeezed:
    the same failure printed twice gives the same string."""
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failed check, as the fingerprint sees it."""

    check: str
    rule: str | None = None
    where: str | None = None
    """`file:line` of a rule's finding."""
    output: str | None = None
    """A verify command's failing output (its tail), normalised."""

    @classmethod
    def of(cls, check: str, details: Mapping[str, object], output: str | None = None) -> Failure:
        """From a check result's name and details (`rule`, `file`, `line`)."""
        rule = details.get("rule")
        file, line = details.get("file"), details.get("line")
        where = f"{file}:{line}" if file and line else (str(file) if file else None)
        return cls(
            check,
            str(rule) if rule is not None else None,
            where,
            normalise(output) if output is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    digest: str
    """sha256 over the failures and the change hash (hex, 16 characters shown is plenty)."""
    changes: str
    """sha256 of what the attempt changed ('' when git could not tell)."""
    changed_nothing: bool
    """The attempt left the repository exactly as it found it."""

    def same_failure(self, other: Fingerprint) -> bool:
        """The same failures after the same changes; never when git could not say what
        either attempt changed (a worker may have made progress no check shows yet)."""
        return bool(self.changes and other.changes) and self.digest == other.digest


EMPTY_CHANGES = hashlib.sha256(b"").hexdigest()


def changes_hash(diff: str | None) -> str:
    """The hash of what an attempt changed (its own diff text); '' when unknown."""
    if diff is None:
        return ""
    return hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest()


def work_changes(changed: Iterable[str], paperwork: Sequence[re.Pattern[str]]) -> list[str]:
    """The `S path` entries of a worker.changes list that are not the plan's paperwork (its
    report and completion files)."""
    return [e for e in changed if not any(p.match(e.partition(" ")[2]) for p in paperwork)]


def describe_changes(repo: Path, entries: Iterable[str]) -> str:
    """What an attempt changed, as text to hash: `S path digest` per file, sorted (a deleted
    file has no digest). Read from disk, off the event loop: a worker's files."""
    lines = []
    for entry in entries:
        status, _, path = entry.partition(" ")
        digest = "-"
        if status != "D":
            try:
                digest = hashlib.sha256(
                    read_regular(repo / path, CONTENT_BYTES, follow=False)
                ).hexdigest()
            except FileRefused:
                try:
                    st = os.lstat(repo / path)
                    digest = f"size={st.st_size} mtime={st.st_mtime_ns}"
                except OSError:
                    digest = "?"
            except OSError:
                digest = "?"
        lines.append(f"{status} {path} {digest}\n")
    return "".join(sorted(lines))


def fingerprint(failures: Iterable[Failure], diff: str | None) -> Fingerprint:
    """The fingerprint of a failed attempt from its failures and its own diff (None when git
    could not tell what it changed)."""
    items = sorted({(f.check, f.rule or "", f.where or "", f.output or "") for f in failures})
    changes = changes_hash(diff)
    blob = json.dumps({"failures": items, "changes": changes}, sort_keys=True)
    return Fingerprint(
        hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest(),
        changes,
        changed_nothing=changes == EMPTY_CHANGES,
    )


@dataclasses.dataclass
class Stagnation:
    """A phase's last failed attempt and its fingerprint: the next failure is compared with it.
    Attempts that ended on a limit are not failures and never reach it."""

    last: tuple[int, Fingerprint] | None = None

    def failed(self, attempt: int, fp: Fingerprint) -> tuple[str, list[int]] | None:
        """Why the phase stops remediating after `attempt` failed with `fp` (and the two
        attempts), or None while remediation may still learn something."""
        previous, self.last = self.last, (attempt, fp)
        if previous is None:
            return None
        n, before = previous
        if fp.changed_nothing:
            return f"stagnant: attempt {attempt} changed nothing after attempt {n} failed", [
                n,
                attempt,
            ]
        if fp.same_failure(before):
            return f"stagnant: attempt {attempt} failed exactly like attempt {n}", [n, attempt]
        return None
