"""Reading one markdown phase file: its sections (id, prerequisites, markers, verification,
completion, worker), its kind and its place in the plan."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import PlanError
from ..plan import phase_marker_regex
from .shell import (
    FOR_A_PERSON,
    PROSE,
    Cmd,
    block_commands,
    check_pipe,
    not_commands,
    script_command,
)
from .warnings import ParseWarning, Warnings

# a phase number: digits, an optional decimal part (`0.5`), an optional letter (`01a`)
_NUMBER = r"\d+(?:\.\d+)?[A-Za-z]?"
# `PLAN-20251018-X.P05`, `PLAN-X.P0.5`: the plan-wide id, then the phase id (P and a number)
_FULL_ID = re.compile(rf"(?<![\w.-])([A-Za-z0-9._-]+)\.(P{_NUMBER})(?![\w-]|\.\d)")
_CODE_MARKER = re.compile(rf"@plan[:\s]\s*([A-Za-z0-9._-]+)\.(P{_NUMBER})(?![\w-]|\.\d)")
_PHASE_REF = re.compile(rf"\b(?:(?i:phases?)\s+|P)({_NUMBER})(?![\w-]|\.\d)")
FILE_NUMBER = re.compile(rf"^[Pp]?({_NUMBER})(?=[-_. ]|$)")
_PHASE_TITLE = re.compile(r"\b(?:phase|task|step)\b", re.IGNORECASE)  # `# Phase 05: …`
TOTAL_PHASES = re.compile(r"total\s+phases\W*?(\d+)", re.IGNORECASE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_PATHLIKE = re.compile(r"[^\s`]*[/.][^\s`]*")
_SECTIONS = {
    "phase id": "id", "prerequisites": "prerequisites", "prerequisite": "prerequisites",
    "required code markers": "markers", "required code marker": "markers",
    "verification commands": "verify", "verification command": "verify",
    "verification": "verify", "automated checks": "verify",
    "verification tasks": "verify", "verification script": "verify",
    "verification scripts": "verify",
    "phase completion marker": "completion", "completion marker": "completion",
    "worker command": "worker",
}  # fmt: skip
# other sections of the convention: they end the section before them, whatever their level
_ENDERS = {"implementation tasks", "success criteria", "failure recovery", "requirements"}
_SHELL_LANGS = {"", "bash", "sh", "shell", "zsh"}
_KIND_WORDS = {
    "stub": "stub", "stubs": "stub", "test": "test", "tests": "test", "tdd": "test",
    "impl": "impl", "implementation": "impl", "verify": "verify", "verification": "verify",
}  # fmt: skip
PhaseKey = tuple[Decimal, str]  # a phase's place: `05a` → (5, "a"), `P0.5` → (0.5, "")
MAX_PHASE_FILE_BYTES = 1024 * 1024


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


def _section_key(name: str) -> str | None:
    """What a heading's section holds: a known title, or any other title naming verification
    or checks (`Structural Verification`, `Anti-Fraud Command Checks`), unless it is for a
    person to judge (`Semantic Verification Checklist`, `Holistic Assessment`)."""
    if name in _SECTIONS:
        return _SECTIONS[name]
    if re.search(r"\b(?:verification|checks)\b", name) and not FOR_A_PERSON.search(name):
        return "verify"
    return None


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
        if (key := _section_key(name)) is None:
            continue
        while k < len(heads) - 1:
            name2 = _title(lines[heads[k]].text)[0]
            goes_on = _section_key(name2) == key == "verify" or (
                _section_key(name2) is None and lines[heads[k]].level > lines[first].level
            )
            if name2 in _ENDERS or not goes_on:
                break
            k += 1
        out.append(_Section(key, lines[first].no, inline, lines[first + 1 : heads[k]]))
    return out


def kind_from_name(stem: str) -> str:
    """stub / test(s) / impl(ementation) / verif(y|ication) from the file name; the last such
    word wins (`01a-…-stub-verification` → verify); else "other"."""
    kinds = [_KIND_WORDS[w] for w in re.split(r"[^a-z0-9]+", stem.lower()) if w in _KIND_WORDS]
    return kinds[-1] if kinds else "other"


def phase_key(tag: str) -> PhaseKey:
    """The order key of `05a` (file name), `5a` (`Phase 5a`), `P05A` (phase id) or `P0.5`:
    the number as a number, then the letter: (5, "a"), (0.5, "")."""
    letter = tag[-1].lower() if tag[-1].isalpha() else ""
    return Decimal(tag.lstrip("Pp").removesuffix(tag[-1] if letter else "")), letter


def read_bounded(path: Path) -> bytes:
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


@dataclasses.dataclass
class PhaseFile:
    """One numbered markdown file being read; its warnings go to the import's shared list."""

    path: Path
    warnings: Warnings
    sections: list[_Section] = dataclasses.field(default_factory=list)
    lines: list[_Line] = dataclasses.field(default_factory=list)
    precheck: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        text = read_bounded(self.path).decode("utf-8", errors="replace")
        if "\ufffd" in text:
            self.warn(1, "not UTF-8 text; read with replacement characters, as the worker will")
        lines, unclosed = _scan(text.removeprefix("\ufeff"))
        if unclosed:
            self.warn(unclosed, "code block never closed; the rest of the file is read as code")
        self.sections, self.lines = _sections(lines), lines

    def warn(self, line: int, message: str) -> None:
        self.warnings.add(ParseWarning(self.path, line, message))

    def of(self, key: str) -> list[_Section]:
        return [s for s in self.sections if s.key == key]

    def is_phase(self) -> bool:
        """Phase content: a known section, or a title naming a phase, task or step
        (`# Phase 05: …`, `# Task 11: …`, `# 04 – Parser – TDD Phase`)."""
        heads = [ln for ln in self.lines if ln.kind == "heading"]
        titles = [ln for ln in heads if ln.level == 1] or heads[:1]
        return bool(self.sections) or any(_PHASE_TITLE.search(ln.text) for ln in titles)

    def phase_id(self, key: PhaseKey, tag: str) -> tuple[str | None, str]:
        """(plan id, phase id) from the Phase ID section, else from a marker naming this file's
        number anywhere in the file (code blocks included), else (None, P + the file's number)."""
        ids = [(no, m.group(1), m.group(2)) for sec in self.of("id")
               for no, text in [(sec.line, sec.inline), *((ln.no, ln.text) for ln in sec.body)]
               for m in _FULL_ID.finditer(text)]  # fmt: skip
        if not ids:
            own = (m.groups() for ln in self.lines for m in _CODE_MARKER.finditer(ln.text))
            plan_id, pid = next(((p, q) for p, q in own if phase_key(q) == key), (None, "P" + tag))
            if self.of("id"):
                self.warn(
                    self.of("id")[0].line,
                    "the '## Phase ID' section holds no "
                    f"`PLAN-….PNN` id; the phase is {pid}, from the file name",
                )
            return plan_id, pid
        line, plan_id, pid = ids[0]
        if len({(p, q) for _, p, q in ids}) > 1:
            self.warn(ids[1][0], f"more than one Phase ID; the phase is {plan_id}.{pid}")
        if phase_key(pid) != key:
            self.warn(
                line,
                f"Phase ID {pid} does not match the file name's number; the phase "
                "keeps its place in file order",
            )
        return plan_id, pid

    def to_phase(
        self, key: PhaseKey, tag: str, rel: str, plan_dir: str, earlier: dict[PhaseKey, str]
    ) -> tuple[str | None, dict[str, Any], list[str]] | None:
        """(plan id or None, phase dict, notes), or None if the file is not a phase (warned)."""
        if not self.of("id") and not self.is_phase():
            self.warn(
                1,
                "not a phase: no '## Phase ID' section, no phase sections "
                "(Verification, Prerequisites, Completion Marker, …) and no title "
                "naming a phase, task or step; file not imported",
            )
            return None
        plan_id, pid = self.phase_id(key, tag)
        marker = f"@plan:{plan_id}.{pid}" if plan_id else None
        if marker:
            self.check_code_markers(marker)
        phase: dict[str, Any] = {
            "id": pid,
            "kind": kind_from_name(self.path.stem),
            "prompt_file": rel,
            "report": f"reports/{pid}-worker.md",
            "completion": self.completion(pid, plan_dir, marker),
            "markers": [marker] if marker else [],
        }
        if verify := self.verify():
            phase["verify"] = verify
        notes = [f"from {rel}", *self.prerequisites(pid, earlier), *self.worker_command()]
        if self.precheck:
            phase["precheck"] = self.precheck
        number, letter = phase_key(pid)
        if letter and (parent := earlier.get((number, ""))):
            notes.append(
                f"{pid} may also append to {parent}'s completion file; only its own "
                "completion file is checked"
            )
        return plan_id, phase, notes

    def completion(self, phase_id: str, plan_dir: str, marker: str | None) -> list[str]:
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
                    self.warn(
                        no,
                        f"completion file {span!r} is not named after phase "
                        f"{phase_id}; kept as written",
                    )
        where = self.of("completion")[0].line if self.of("completion") else 1
        if not found and marker is None:
            self.warn(
                where,
                "no completion file and no `@plan:PLAN.PNN` marker: completion = "
                "[] and no marker check; the phase is judged by its report and verify "
                "commands",
            )
        elif not found:
            found = [f".completed/{phase_id}.md"]
            self.warn(
                where,
                "no `Create: `…/.completed/PXX.md`` path in a '## Phase Completion "
                f"Marker' section; using {found[0]}",
            )
        elif marker is None:
            self.warn(
                where,
                "no `@plan:PLAN.PNN` marker names this phase: its completion file "
                "is checked for existence only",
            )
        return found

    def _under(self, line: int, written: str, plan_dir: str) -> str | None:
        """A completion path as written (usually repo-relative) made relative to plan_dir."""
        p = PurePosixPath(written)
        if plan_dir and p.is_relative_to(plan_dir):
            p = p.relative_to(plan_dir)
        elif plan_dir and ".completed" in p.parts[1:]:
            p = PurePosixPath(*p.parts[p.parts.index(".completed") :])
            self.warn(
                line,
                f"completion path {written!r} is not under the plan folder "
                f"{plan_dir!r}; using {p.as_posix()!r} in it",
            )
        if p.is_absolute() or ".." in p.parts or not p.parts:
            self.warn(line, f"completion path {written!r} is not inside the plan folder; ignored")
            return None
        return p.as_posix()

    def verify(self) -> list[dict[str, Any]]:
        """Commands of the shell blocks in the verification sections (and their subsections)."""
        out: list[Cmd] = []
        for sec in self.of("verify"):
            manual = ""  # why the blocks under the current sub-heading are not commands
            block: list[tuple[int, str]] | None = None
            lang, opened = "", 0
            last: list[Cmd] = []  # the commands of the block just closed, for prose after it
            for ln in [*sec.body, _Line(0, "", "close")]:  # a sentinel closes a cut-off block
                if ln.kind == "heading":
                    manual, last = not_commands(_title(ln.text)[0]), []
                elif ln.kind == "open":
                    block, lang, opened = [], ln.lang, ln.no
                elif ln.kind == "code" and block is not None:
                    block.append((ln.no, ln.text))
                elif ln.kind == "close" and block is not None:
                    last = self.block(block, lang, opened, manual)
                    out += last
                    block = None
                elif ln.kind == "text" and last and (m := PROSE.search(ln.text)):
                    self.prose(last, m, ln)
                elif ln.kind == "text" and _INLINE_CODE.search(ln.text) and not manual:
                    self.warn(
                        ln.no,
                        "inline code outside a fenced ```bash block is not run: "
                        f"{ln.text.strip()!r}",
                    )
        if not out:
            where = self.of("verify")[0].line if self.of("verify") else 1
            self.warn(
                where,
                "no commands in a '## Verification Commands' section; the phase "
                "gets no verify commands",
            )
        for cmd in out:
            check_pipe(cmd, self.warn)
        return [c.as_dict() for c in out]

    def block(self, block: list[tuple[int, str]], lang: str, opened: int, manual: str) -> list[Cmd]:
        """A closed code block of a verification section as commands (a `#!` block: one)."""
        if manual or lang not in _SHELL_LANGS:
            why = manual or "is not shell"
            self.warn(opened, f"code block ```{lang} {why}; not run by orchestrd")
            return []
        if block and block[0][1].lstrip().startswith("#!"):
            return [script_command(block)]
        return block_commands(block, self.warn)

    def prose(self, cmds: list[Cmd], m: re.Match[str], ln: _Line) -> None:
        """ "This should fail because …" after a block: the block's commands expect that."""
        if m.group("cond"):  # "should fail if the stub is left": says nothing about this run
            self.warn(
                ln.no,
                f"{ln.text.strip()!r} is a condition, not what the block above should do; not read",
            )
            return
        expect = "fail" if m.group(1).lower() == "fail" else "pass"
        for cmd in cmds:
            if cmd.said and cmd.expect != expect:
                self.warn(
                    ln.no,
                    f"{ln.text.strip()!r} says {expect}, but the block says "
                    f"{cmd.run!r} should {cmd.expect}; kept {cmd.expect}",
                )
            cmd.expect = cmd.expect if cmd.said else expect
        if len(cmds) > 1:
            self.warn(
                ln.no,
                f"{ln.text.strip()!r} follows a block of {len(cmds)} commands; "
                f"all of them expect {expect}",
            )

    def worker_command(self) -> list[str]:
        """The author's `Worker Command` blocks: a hint for whoever runs the plan, never run."""
        notes = []
        for sec in self.of("worker"):
            code = " ".join(ln.text.strip() for ln in sec.body if ln.kind == "code")
            if code:
                short = code if len(code) <= 200 else code[:199] + "…"
                notes.append(
                    f"worker command of the plan's author (line {sec.line}; a hint, "
                    f"not run by orchestrd): {short}"
                )
        return notes

    def check_code_markers(self, marker: str) -> None:
        """Required Code Markers are the worker's job (in the code); flag copy-paste slips."""
        own = phase_marker_regex(marker)
        for ln in (ln for sec in self.of("markers") for ln in sec.body):
            for m in _CODE_MARKER.finditer(ln.text):
                if not own.search(m.group(0)):
                    self.warn(
                        ln.no,
                        f"code marker {m.group(0)!r} names another phase than this file's {marker}",
                    )

    def prerequisites(self, phase_id: str, earlier: dict[PhaseKey, str]) -> list[str]:
        """Notes for the references to earlier phases (met by file order); a `Verification:`
        line's command (or a shell block) becomes a precheck; other lines warn."""
        notes = []
        for sec in self.of("prerequisites"):
            self.precheck += self.prerequisite_blocks(sec)
        for no, text in (line for sec in self.of("prerequisites") for line in sec.text_lines()):
            tags = {phase_key(m.group(1)): m.group(1) for m in _PHASE_REF.finditer(text)}
            refs = [r for r in tags if r != phase_key(phase_id)]
            if re.match(r"[-*\s]*(?:\*\*)?verification\b", text, re.IGNORECASE) and (
                codes := [c.strip() for c in _INLINE_CODE.findall(text) if " " in c.strip()]
            ):  # a command has arguments: `grep -q … FILE`, not `P04.md`
                self.precheck += [{"run": code, "expect": "pass"} for code in codes]
            elif text.strip() and not refs:
                self.warn(no, f"prerequisite not checked by orchestrd: {text.strip()!r}")
            for r in (r for r in refs if r not in earlier):
                self.warn(
                    no,
                    f"prerequisite phase {tags[r]} is not an earlier phase of "
                    "this plan; nothing checks it",
                )
            if found := [earlier[r] for r in refs if r in earlier]:
                notes.append(
                    f"prerequisite {', '.join(found)} (line {no}): met by phase order, "
                    "each phase passes before the next one starts"
                )
        return notes

    def prerequisite_blocks(self, sec: _Section) -> list[dict[str, Any]]:
        """The shell blocks of a Prerequisites section: commands run before the phase starts."""
        out: list[Cmd] = []
        block: list[tuple[int, str]] | None = None
        lang, opened = "", 0
        for ln in sec.body:
            if ln.kind == "open":
                block, lang, opened = [], ln.lang, ln.no
            elif ln.kind == "code" and block is not None:
                block.append((ln.no, ln.text))
            elif ln.kind == "close" and block is not None:
                out += self.block(block, lang, opened, manual="")
                block = None
        for cmd in out:
            check_pipe(cmd, self.warn)
        return [c.as_dict() for c in out]
