"""`orchestrd import`: a folder of markdown phase files (`plan/01-*.md`, `01a-*.md`, …) as a plan.

The worker still reads each whole phase file as its prompt; this module extracts only what the
daemon checks itself (ids, kind, completion files, verify commands) and reports, with file and
line, whatever it could not turn into a check.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from . import __version__
from .audit import printable
from .config import load_config
from .errors import PlanError
from .plan import phase_marker_regex, plan_from_bytes

# `PLAN-20251018-X.P05`: the plan-wide id, then the phase id (P, digits, an optional letter)
_FULL_ID = re.compile(r"(?<![\w.-])([A-Za-z0-9._-]+)\.(P\d+[A-Za-z]?)(?![\w-])")
_CODE_MARKER = re.compile(r"@plan[:\s]\s*[A-Za-z0-9._-]+\.P\d+[A-Za-z]?(?![\w-])")
_PHASE_REF = re.compile(r"\b(?:(?i:phases?)\s+|P)(\d+[A-Za-z]?)(?![\w-])")
_FILE_NUMBER = re.compile(r"^\d+[A-Za-z]?(?=[-_. ]|$)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_PATHLIKE = re.compile(r"[^\s`]*[/.][^\s`]*")
_EXPECT = re.compile(r"^#+\s*expected\s+to\s+(fail|pass)\b", re.IGNORECASE)
_EXIT_1 = re.compile(r"^(?P<cmd>.*\S)\s*&&\s*exit\s+1\s*;?\s*$", re.DOTALL)
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"|\\.", re.DOTALL)
_HEREDOC_WORD = re.compile(r"[ \t]*(['\"]?)([\w.-]+)\1")
# a command that only sets state for the rest of its block: `A=1`, `A=$(…)`, `cd DIR`
_SETS_STATE = re.compile(
    r"(?:export\s+)?[A-Za-z_]\w*=(?:[^\s'\"]*|'[^']*'|\"[^\"]*\"|\$\(.*\))|cd\s+\S+", re.DOTALL
)
# `## Title` (any level and case, a trailing colon or "(Mandatory)" allowed) → what it holds
_SECTIONS = {
    "phase id": "id", "prerequisites": "prerequisites", "prerequisite": "prerequisites",
    "required code markers": "markers", "required code marker": "markers",
    "verification commands": "verify", "verification command": "verify",
    "verification": "verify", "automated checks": "verify",
    "phase completion marker": "completion", "completion marker": "completion",
}  # fmt: skip
# other sections of the convention: they end the section before them, whatever their level
_ENDERS = {"implementation tasks", "success criteria", "failure recovery", "requirements"}
_SHELL_LANGS = {"", "bash", "sh", "shell", "zsh"}
_KIND_WORDS = {
    "stub": "stub", "stubs": "stub", "test": "test", "tests": "test", "tdd": "test",
    "impl": "impl", "implementation": "impl", "verify": "verify", "verification": "verify",
}  # fmt: skip
_Key = tuple[int, str]  # a phase's place: `05a` → (5, "a")
MAX_PHASE_FILE_BYTES = 1024 * 1024
MAX_IMPORT_BYTES = 32 * 1024 * 1024
MAX_WARNINGS_PER_KIND = 20
# a warning's kind: its message without what it quotes and without numbers
_WARNING_KIND = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\d+")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_CLOSERS = {"if": "fi", "case": "esac", "{": "}", "for": "done", "while": "done", "until": "done"}


@dataclasses.dataclass(frozen=True)
class ParseWarning:
    """Something in a phase file the importer did not turn into a plan field or a check."""

    file: Path
    line: int  # 1-based; 1 when it concerns the whole file
    message: str

    def __str__(self) -> str:
        # file names and quoted lines are someone else's bytes: nothing raw to a terminal
        return printable(f"{self.file}:{self.line}: warning: {self.message}")


class Warnings:
    """The import's warnings, at most MAX_WARNINGS_PER_KIND of a kind (a message with its
    quoted parts and numbers left out); the others are counted and summarised, so a file with
    a million odd lines costs neither a million lines on stderr nor in the plan's header."""

    def __init__(self) -> None:
        self.shown: list[ParseWarning] = []
        self.total = 0
        self._count: Counter[str] = Counter()
        self._first: dict[str, ParseWarning] = {}

    def add(self, warning: ParseWarning) -> None:
        kind = _WARNING_KIND.sub("_", warning.message)
        self.total += 1
        self._count[kind] += 1
        self._first.setdefault(kind, warning)
        if self._count[kind] <= MAX_WARNINGS_PER_KIND:
            self.shown.append(warning)

    def summarised(self) -> list[ParseWarning]:
        """The warnings shown, then one line per kind with more: how many, and the first."""
        more = [
            ParseWarning(first.file, first.line, f"{self._count[kind] - MAX_WARNINGS_PER_KIND} "
                         f"more warning(s) like this one, not shown: {first.message}")
            for kind, first in self._first.items() if self._count[kind] > MAX_WARNINGS_PER_KIND
        ]  # fmt: skip
        return self.shown + more


@dataclasses.dataclass(frozen=True)
class ImportedPlan:
    """A plan dict valid for `Plan`, the warnings, and the notes written as comments per phase."""

    plan: dict[str, Any]
    warnings: list[ParseWarning]  # summarised: at most MAX_WARNINGS_PER_KIND of a kind
    notes: dict[str, list[str]]  # phase id ("" for the header) → comment lines
    folder: Path  # the source folder, resolved
    warning_count: int = -1  # all of them, summarised ones included (-1: len(warnings))

    @property
    def total_warnings(self) -> int:
        return self.warning_count if self.warning_count >= 0 else len(self.warnings)


@dataclasses.dataclass(frozen=True)
class _Line:
    no: int
    text: str  # a heading's title, else the raw line
    kind: str  # "text" | "heading" | "open" | "close" (fences) | "code"
    level: int = 0  # heading level
    lang: str = ""  # an opening fence's info string


@dataclasses.dataclass(frozen=True)
class _Section:
    key: str
    line: int
    inline: str  # what follows `Title:` on the heading line
    body: list[_Line]

    def text_lines(self) -> list[tuple[int, str]]:
        """The heading's inline value and the body lines outside code blocks."""
        head = [(self.line, self.inline)] if self.inline else []
        return head + [(ln.no, ln.text) for ln in self.body if ln.kind == "text"]


def _scan(text: str) -> tuple[list[_Line], int]:
    """Lines classified (a fence is closed by the same character, at least as many), and the
    line of a fence never closed (0 if none)."""
    out: list[_Line] = []
    fence, fence_line = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        m = _FENCE.match(raw)
        mark = m.group(1) if m else ""
        if fence:
            closes = mark[:1] == fence[0] and len(mark) >= len(fence) and raw.strip() == mark
            out.append(_Line(no, raw, "close" if closes else "code"))
            fence = "" if closes else fence
        elif m:
            fence, fence_line = mark, no
            out.append(_Line(no, raw, "open", lang=m.group(2).lower().strip("{}.")))
        elif h := _HEADING.match(raw):
            out.append(_Line(no, h.group(2) or "", "heading", level=len(h.group(1))))
        else:
            out.append(_Line(no, raw, "text"))
    return out, fence_line if fence else 0


def _title(raw: str) -> tuple[str, str]:
    """`**Phase ID:** `X`` → ("phase id", "`X`"); `Verification Commands (Mandatory)` → name."""
    name, _, rest = raw.partition(":")
    name = re.sub(r"\([^)]*\)", " ", re.sub(r"[*_]", "", name))
    return " ".join(name.lower().split()), rest.strip().strip("*_ ")


def _sections(lines: list[_Line]) -> list[_Section]:
    """The known sections. One runs to the next heading at its level or above, or to the next
    known section at any level; `Automated Checks` headings continue a verification section."""
    heads = [i for i, ln in enumerate(lines) if ln.kind == "heading"] + [len(lines)]
    out: list[_Section] = []
    k = 0
    while k < len(heads) - 1:
        first = heads[k]
        name, inline = _title(lines[first].text)
        k += 1
        if (key := _SECTIONS.get(name)) is None:
            continue
        while k < len(heads) - 1:
            name2 = _title(lines[heads[k]].text)[0]
            goes_on = _SECTIONS.get(name2) == key == "verify" or (
                name2 not in _SECTIONS and lines[heads[k]].level > lines[first].level
            )
            if name2 in _ENDERS or not goes_on:
                break
            k += 1
        out.append(_Section(key, lines[first].no, inline, lines[first + 1 : heads[k]]))
    return out


def shell_unfinished(text: str) -> bool:
    """True while `text` needs more lines to be one shell command: an open quote, a trailing
    `\\`, `|`, `&&` or `||`, an unclosed if/for/while/until/case/{/( or a here-document."""
    tokens, open_input = _shell_tokens(text)
    stack: list[str] = []
    at_start = True  # the next word is in command position (where keywords count)
    for tok in tokens:
        if tok in ("\n", ";", "&", "&&", "||", "|", ";;", "!", "("):
            stack += [")"] if tok == "(" else []
            at_start = True
        elif tok == ")":
            if stack and stack[-1] == ")":
                stack.pop()
            at_start = bool(stack) and stack[-1] == "esac"  # after a case pattern's `)`
        elif at_start and tok in _CLOSERS:
            stack.append(_CLOSERS[tok])
            at_start = tok in ("if", "while", "until", "{")
        elif at_start and stack and tok == stack[-1]:
            stack.pop()
            at_start = False
        else:
            at_start = at_start and tok in ("then", "do", "else", "elif", "time")
    last = next((t for t in reversed(tokens) if t != "\n"), "")
    return open_input or bool(stack) or last in ("|", "&&", "||")


def _heredoc_end(text: str, i: int, terms: list[str]) -> int:
    """The index after the here-document bodies starting at `i`, or -1 if one is unterminated."""
    for term in terms:
        m = re.compile(rf"^\t*{re.escape(term)}[ \t]*$", re.MULTILINE).search(text, i)
        if m is None:
            return -1
        i = m.end() + 1
    return i


def _shell_tokens(text: str) -> tuple[list[str], bool]:
    """Words and operators (newlines kept as "\\n"; comments and here-document bodies skipped),
    and whether the input ends inside a quote, an escape or a here-document."""
    tokens: list[str] = []
    word, i = "", 0
    heredocs: list[str] = []
    while i < len(text):
        c = text[i]
        if c in "\\'\"":
            if not (m := _QUOTED.match(text, i)):
                return tokens, True  # an open quote, or a backslash at the very end
            word, i = word + ("" if m.group() == "\\\n" else m.group()), m.end()
        elif c == "#" and not word:
            i = text.find("\n", i) % (len(text) + 1)  # to the newline, or the end
        elif c in " \t\n;&|()<>":
            tokens += [word] if word else []
            word = ""
            op = next(o for o in ("<<<", "<<-", "&&", "||", ";;", "<<", c) if text.startswith(o, i))
            i += len(op)
            if op in ("<<", "<<-") and (m := _HEREDOC_WORD.match(text, i)):
                heredocs.append(m.group(2))
                i = m.end()
            elif op == "\n" and heredocs:
                if (i := _heredoc_end(text, i, heredocs)) < 0:
                    return tokens, True
                heredocs = []
            tokens += [op] if op not in " \t" else []
        else:
            word, i = word + c, i + 1
    return tokens + ([word] if word else []), bool(heredocs)


def shell_commands(
    lines: list[tuple[int, str]], warn: Callable[[int, str], None]
) -> list[dict[str, str]]:
    """A fenced shell block as verify commands `{"run", "expect"}`.

    `# EXPECTED TO FAIL` makes the following commands of the block expect failure (until
    `# EXPECTED TO PASS`); `CMD && exit 1` becomes `CMD` expecting failure; other comments and
    blank lines are dropped; a command spanning lines (`\\`, open if/for/…) is kept whole.
    The block is a script, so a bare `VAR=…` or `cd DIR` is put before each later command.
    """
    out: list[dict[str, str]] = []
    expect_fail = False
    pending: list[str] = []
    state: list[str] = []  # the block's assignments and cd so far
    start = unused = 0  # unused: the line of a state command no command has used yet
    for no, raw in lines:
        stripped = raw.strip()
        if pending:
            pending.append(raw.rstrip())
        elif m := _EXPECT.match(stripped):
            expect_fail = m.group(1).lower() == "fail"
            continue
        elif re.match(r"#+\s*expect", stripped, re.IGNORECASE):
            warn(no, f"{stripped!r} is not checked: a verify command is judged by its exit code")
            continue
        elif not stripped or stripped.startswith("#"):
            continue
        else:
            pending, start = [raw.rstrip()], no
        if shell_unfinished(cmd := "\n".join(pending).strip()):
            continue
        if _SETS_STATE.fullmatch(cmd):
            state, unused = [*state, cmd], start
        else:
            out.append(_command(cmd, expect_fail, state))
            unused = 0
        pending = []
    if pending:
        warn(start, "command unfinished at the end of its block (open quote, if/for/while, "
             "trailing | && || \\ or here-document); imported as written")
        out.append(_command("\n".join(pending).strip(), expect_fail, state))
    elif unused:
        warn(unused, f"{state[-1]!r} ends its block: no command uses it; not imported")
    return out


def _command(run: str, expect_fail: bool, state: list[str]) -> dict[str, str]:
    m = _EXIT_1.match(run)  # only where what is left is a whole command (not inside quotes)
    if m and not shell_unfinished(m.group("cmd")):
        run, expect_fail = m.group("cmd"), True
    return {"run": "\n".join([*state, run]), "expect": "fail" if expect_fail else "pass"}


def kind_from_name(stem: str) -> str:
    """stub / test(s) / impl(ementation) / verif(y|ication) from the file name; the last such
    word wins (`01a-…-stub-verification` → verify); else "other"."""
    kinds = [_KIND_WORDS[w] for w in re.split(r"[^a-z0-9]+", stem.lower()) if w in _KIND_WORDS]
    return kinds[-1] if kinds else "other"


def _key(tag: str) -> _Key:
    """The order key of `05a` (file name), `5a` (`Phase 5a`) or `P05A` (phase id): (5, "a")."""
    letter = tag[-1].lower() if tag[-1].isalpha() else ""
    return int(tag.removeprefix("P").removesuffix(tag[-1] if letter else "")), letter


@dataclasses.dataclass
class _PhaseFile:
    """One numbered markdown file being read; its warnings go to the import's shared list."""

    path: Path
    warnings: Warnings
    sections: list[_Section] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        text = _read_bounded(self.path).decode("utf-8", errors="replace")
        if "\ufffd" in text:
            self.warn(1, "not UTF-8 text; read with replacement characters, as the worker will")
        lines, unclosed = _scan(text.removeprefix("\ufeff"))
        if unclosed:
            self.warn(unclosed, "code block never closed; the rest of the file is read as code")
        self.sections = _sections(lines)

    def warn(self, line: int, message: str) -> None:
        self.warnings.add(ParseWarning(self.path, line, message))

    def of(self, key: str) -> list[_Section]:
        return [s for s in self.sections if s.key == key]

    def to_phase(
        self, key: _Key, rel: str, plan_dir: str, earlier: dict[_Key, str]
    ) -> tuple[str, dict[str, Any], list[str]] | None:
        """(plan id, phase dict, notes), or None if the file has no Phase ID (warned)."""
        ids = [(no, m.group(1), m.group(2)) for sec in self.of("id")
               for no, text in [(sec.line, sec.inline), *((ln.no, ln.text) for ln in sec.body)]
               for m in _FULL_ID.finditer(text)]  # fmt: skip
        if not ids:
            self.warn(self.of("id")[0].line if self.of("id") else 1, "not a phase: no '## Phase "
                      "ID' section with a `PLAN-20251018-NAME.P05` id; file not imported")
            return None
        line, plan_id, pid = ids[0]
        if len({(p, q) for _, p, q in ids}) > 1:
            self.warn(ids[1][0], f"more than one Phase ID; the phase is {plan_id}.{pid}")
        if _key(pid) != key:
            self.warn(line, f"Phase ID {pid} does not match the file name's number; the phase "
                      "keeps its place in file order")
        marker = f"@plan:{plan_id}.{pid}"
        self.check_code_markers(marker)
        phase: dict[str, Any] = {
            "id": pid,
            "kind": kind_from_name(self.path.stem),
            "prompt_file": rel,
            "report": f"reports/{pid}-worker.md",
            "completion": self.completion(pid, plan_dir),
            "markers": [marker],
        }
        if verify := self.verify():
            phase["verify"] = verify
        notes = [f"from {rel}", *self.prerequisites(pid, earlier)]
        number, letter = _key(pid)
        if letter and (parent := earlier.get((number, ""))):
            notes.append(f"{pid} may also append to {parent}'s completion file; only its own "
                         "completion file is checked")
        return plan_id, phase, notes

    def completion(self, phase_id: str, plan_dir: str) -> list[str]:
        """The `Create: `…`` paths of the completion section, relative to plan_dir."""
        found: list[str] = []
        for no, text in (line for sec in self.of("completion") for line in sec.text_lines()):
            create = re.search(r"\bcreate\b", text, re.IGNORECASE)
            for span in _INLINE_CODE.findall(text):
                if not (create or ".completed" in span) or not _PATHLIKE.fullmatch(span):
                    continue  # `Status: PASS` and the like: not a file name
                if (rel := self._under(no, span, plan_dir)) is None or rel in found:
                    continue
                found.append(rel)
                if PurePosixPath(rel).stem.lower() != phase_id.lower():
                    self.warn(no, f"completion file {span!r} is not named after phase "
                              f"{phase_id}; kept as written")
        if not found:
            found = [f".completed/{phase_id}.md"]
            where = self.of("completion")[0].line if self.of("completion") else 1
            self.warn(where, "no `Create: `…/.completed/PXX.md`` path in a '## Phase Completion "
                      f"Marker' section; using {found[0]}")
        return found

    def _under(self, line: int, written: str, plan_dir: str) -> str | None:
        """A completion path as written (usually repo-relative) made relative to plan_dir."""
        p = PurePosixPath(written)
        if plan_dir and p.is_relative_to(plan_dir):
            p = p.relative_to(plan_dir)
        elif plan_dir and ".completed" in p.parts[1:]:
            p = PurePosixPath(*p.parts[p.parts.index(".completed") :])
            self.warn(line, f"completion path {written!r} is not under the plan folder "
                      f"{plan_dir!r}; using {p.as_posix()!r} in it")
        if p.is_absolute() or ".." in p.parts or not p.parts:
            self.warn(line, f"completion path {written!r} is not inside the plan folder; ignored")
            return None
        return p.as_posix()

    def verify(self) -> list[dict[str, str]]:
        """Commands of the shell blocks in the verification sections (and their subsections)."""
        out: list[dict[str, str]] = []
        for sec in self.of("verify"):
            manual = False
            block: list[tuple[int, str]] | None = None
            lang, opened = "", 0
            for ln in [*sec.body, _Line(0, "", "close")]:  # a sentinel closes a cut-off block
                if ln.kind == "heading":
                    manual = "manual" in _title(ln.text)[0]
                elif ln.kind == "open":
                    block, lang, opened = [], ln.lang, ln.no
                elif ln.kind == "code" and block is not None:
                    block.append((ln.no, ln.text))
                elif ln.kind == "close" and block is not None:
                    if manual or lang not in _SHELL_LANGS:
                        why = "is under a manual-check heading" if manual else "is not shell"
                        self.warn(opened, f"code block ```{lang} {why}; not run by orchestrd")
                    else:
                        out += shell_commands(block, self.warn)
                    block = None
                elif ln.kind == "text" and _INLINE_CODE.search(ln.text) and not manual:
                    self.warn(ln.no, "inline code outside a fenced ```bash block is not run: "
                              f"{ln.text.strip()!r}")
        if not out:
            where = self.of("verify")[0].line if self.of("verify") else 1
            self.warn(where, "no commands in a '## Verification Commands' section; the phase "
                      "gets no verify commands")
        return out

    def check_code_markers(self, marker: str) -> None:
        """Required Code Markers are the worker's job (in the code); flag copy-paste slips."""
        own = phase_marker_regex(marker)
        for ln in (ln for sec in self.of("markers") for ln in sec.body):
            for m in _CODE_MARKER.finditer(ln.text):
                if not own.search(m.group(0)):
                    self.warn(ln.no, f"code marker {m.group(0)!r} names another phase than "
                              f"this file's {marker}")

    def prerequisites(self, phase_id: str, earlier: dict[_Key, str]) -> list[str]:
        """Notes for the references to earlier phases (met by file order); other lines warn."""
        notes = []
        for no, text in (line for sec in self.of("prerequisites") for line in sec.text_lines()):
            refs = [_key(m.group(1)) for m in _PHASE_REF.finditer(text)]
            refs = [r for r in dict.fromkeys(refs) if r != _key(phase_id)]
            if text.strip() and not refs:
                self.warn(no, f"prerequisite not checked by orchestrd: {text.strip()!r}")
            for r in (r for r in refs if r not in earlier):
                self.warn(no, f"prerequisite phase {r[0]:02d}{r[1]} is not an earlier phase of "
                          "this plan; nothing checks it")
            if found := [earlier[r] for r in refs if r in earlier]:
                notes.append(f"prerequisite {', '.join(found)} (line {no}): met by phase order, "
                             "each phase passes before the next one starts")
        return notes


def _read_bounded(path: Path) -> bytes:
    """A phase file, refused above MAX_PHASE_FILE_BYTES: the worker reads it as its prompt, and
    parsing tens of megabytes of markdown takes the importer minutes and gigabytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PHASE_FILE_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_PHASE_FILE_BYTES:
        raise PlanError(
            f"{path}: larger than {MAX_PHASE_FILE_BYTES} bytes, the import's limit for one phase "
            "file (it is the worker's prompt); split the phase or move the bulk to other files"
        )
    return raw


def _phase_files(phase_dir: Path, warnings: Warnings) -> list[tuple[_Key, Path]]:
    """Numbered markdown files in natural order (1, 01a, 02, …, 10); other .md files warn."""
    out = []
    for p in sorted(q for q in phase_dir.iterdir() if q.is_file() and q.suffix.lower() == ".md"):
        if m := _FILE_NUMBER.match(p.name):
            out.append((_key(m.group(0)), p))
        else:
            warnings.add(ParseWarning(p, 1, "not a phase: its name has no number prefix "
                                      "(NN-name.md); not imported"))
    if (total := sum(p.stat().st_size for _, p in out)) > MAX_IMPORT_BYTES:
        raise PlanError(
            f"{phase_dir}: its phase files hold {total} bytes, over the import's limit of "
            f"{MAX_IMPORT_BYTES} (each is a worker's prompt, read whole); split the plan folder"
        )
    return sorted(out, key=lambda kp: (kp[0], kp[1].name))


def import_plan_folder(
    folder: Path, repo: Path | None = None, worker: str | None = None
) -> ImportedPlan:
    """Import a plan folder (holding `plan/NN-*.md`, or the phase files themselves) that lies
    inside `repo` (default: the current directory); PlanError when there is no usable phase."""
    repo = (repo or Path.cwd()).resolve()
    if not repo.is_dir():
        raise PlanError(f"{repo}: --repo is not a directory; pass the checkout the plan runs in")
    if not folder.is_dir():
        raise PlanError(f"{folder}: no such folder; pass the plan folder (the one with plan/)")
    if not folder.resolve().is_relative_to(repo):
        raise PlanError(f"{folder}: not inside the repo {repo}; pass --repo the checkout that "
                        "contains it")
    plan_dir = folder.resolve().relative_to(repo).as_posix()
    plan_dir = "" if plan_dir == "." else plan_dir
    phase_dir = folder / "plan" if (folder / "plan").is_dir() else folder
    warnings = Warnings()
    notes: dict[str, list[str]] = {"": []}  # "" → the header
    phases: list[dict[str, Any]] = []
    plan_ids: dict[str, str] = {}  # phase id → its plan id
    files: dict[str, Path] = {}
    earlier: dict[_Key, str] = {}  # order key → phase id
    for key, path in _phase_files(phase_dir, warnings):
        rel = path.relative_to(folder).as_posix()
        f = _PhaseFile(path, warnings)
        if key == (0, "") and "overview" in path.stem.lower() and not f.of("id"):
            notes[""].append(f"{rel} is the plan's overview, not a phase")
            continue
        if (parsed := f.to_phase(key, rel, plan_dir, earlier)) is None:
            continue
        plan_id, phase, notes[phase["id"]] = parsed
        if (pid := phase["id"]) in files:
            raise PlanError(f"{path}: Phase ID: {pid} is also the id of {files[pid]}; give each "
                            "phase file its own PLAN.PNN id")
        phases.append(phase)
        plan_ids[pid], files[pid], earlier[_key(pid)] = plan_id, path, pid
    if not phases:
        raise PlanError("\n".join([
            f"{folder}: no phase files in {phase_dir} (NN-name.md with a '## Phase ID' section "
            "holding `PLAN-….PNN`); point import at the plan folder",
            *map(str, warnings.summarised()),
        ]))  # fmt: skip
    plan_id = Counter(plan_ids.values()).most_common(1)[0][0]
    for pid, other in plan_ids.items():
        if other != plan_id:
            warnings.add(ParseWarning(files[pid], 1, f"Phase ID {other}.{pid} names plan "
                                      f"{other}, not {plan_id}; its marker keeps {other}"))
    plan: dict[str, Any] = {"id": plan_id, "repo": str(repo)}
    plan |= {"plan_dir": plan_dir} if plan_dir else {}
    plan |= {"worker": worker} if worker else {}
    return ImportedPlan(
        plan | {"phases": phases}, warnings.summarised(), notes, folder.resolve(), warnings.total
    )


def render_plan_toml(imported: ImportedPlan, now: datetime.datetime | None = None) -> str:
    """The plan file: a comment header (source, date, version, warnings), then the plan with the
    notes of each phase as comments above its table."""
    when = (now or datetime.datetime.now().astimezone()).isoformat(timespec="seconds")

    def comment(text: str) -> str:
        # one line, whatever the text, and no control character (TOML forbids them there)
        return "# " + _escape_controls(" ".join(text.splitlines())) + "\n"

    head = [
        f"Imported by orchestrd {__version__} (`orchestrd import`) on {when}",
        f"from the markdown plan folder {imported.folder}.",
        "Each phase's prompt is its markdown file: edit the files and import again.",
        *imported.notes.get("", []),
        f"{imported.total_warnings} warning(s)" + (":" if imported.warnings else "."),
    ]
    for w in imported.warnings:
        file = w.file.resolve()
        shown = file.relative_to(imported.folder) if file.is_relative_to(imported.folder) else file
        head.append(f"  {shown.as_posix()}:{w.line}: {w.message}")
    top = {k: v for k, v in imported.plan.items() if k != "phases"}
    text = "".join(map(comment, head)) + "\n" + tomli_w.dumps(top)
    for phase in imported.plan["phases"]:
        text += "\n" + "".join(map(comment, imported.notes.get(phase["id"], [])))
        text += tomli_w.dumps({"phases": [phase]}, multiline_strings=True)
    return text


def _escape_controls(text: str) -> str:
    """Control characters (tab excepted) and lone surrogates (bytes of a path that are not
    UTF-8) as `\\xNN` / `\\uNNNN`: a TOML comment may hold neither."""
    return _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
        else f"\\u{ord(m.group()):04x}",
        text,
    )


def _cmd_import(args: argparse.Namespace) -> int:
    """Errors are PlanError/ConfigError, which cli.main reports and turns into exit code 2."""
    if not args.output and not args.dry_run:
        raise PlanError("import: nowhere to write; give -o OUT.toml, or --dry-run to print")
    config, _ = load_config(args.config)
    imported = import_plan_folder(Path(args.folder), Path(args.repo), args.worker)
    for w in imported.warnings:
        print(w, file=sys.stderr)
    source = args.output or f"{args.folder} (imported)"
    try:
        raw = render_plan_toml(imported).encode("utf-8")
    except UnicodeEncodeError:
        raise PlanError(
            f"{source}: a path of the plan ({imported.folder}) is not UTF-8, and a plan file is "
            "UTF-8 text; rename the folder"
        ) from None
    # what is written is checked exactly as `orchestrd validate` would check the file
    plan = plan_from_bytes(raw, source, config, base_dir=Path(source).resolve().parent)
    if args.dry_run:
        sys.stdout.buffer.write(raw)
        return 0
    try:
        Path(args.output).write_bytes(raw)
    except OSError as exc:
        raise PlanError(f"{args.output}: cannot write: {exc.strerror}; pick another path") from None
    print(f"{args.output}: plan {plan.id}, {len(plan.phases)} phases, "
          f"{imported.total_warnings} warning(s)", file=sys.stderr)
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `import FOLDER -o OUT [--repo DIR] [--worker NAME] [--dry-run] [--config FILE]`."""
    p = sub.add_parser(
        "import", parents=[common], help="turn a folder of markdown phase files into a plan file"
    )
    p.add_argument("folder", metavar="FOLDER", help="the plan folder (holding plan/01-*.md, …)")
    p.add_argument("-o", "--output", metavar="OUT", help="the plan file to write")
    p.add_argument("--repo", default=".", metavar="DIR",
                   help="the checkout the plan runs in; FOLDER must be inside it (default: .)")
    p.add_argument("--worker", metavar="NAME", help="worker profile (default: the config's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan instead of writing it")
    p.set_defaults(func=_cmd_import)
