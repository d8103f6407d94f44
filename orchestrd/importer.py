"""`orchestrd import`: a folder of markdown phase files (`plan/01-*.md`, `P0.5-*.md`, …) as a plan.

The worker still reads each whole phase file as its prompt; this module extracts only what the
daemon checks itself (ids, kind, completion files, verify commands) and reports, with file and
line, whatever it could not turn into a check.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from . import __version__
from .audit import printable
from .config import load_config
from .errors import PlanError
from .plan import ID_PATTERN, phase_marker_regex, plan_from_bytes

# a phase number: digits, an optional decimal part (`0.5`), an optional letter (`01a`)
_NUMBER = r"\d+(?:\.\d+)?[A-Za-z]?"
# `PLAN-20251018-X.P05`, `PLAN-X.P0.5`: the plan-wide id, then the phase id (P and a number)
_FULL_ID = re.compile(rf"(?<![\w.-])([A-Za-z0-9._-]+)\.(P{_NUMBER})(?![\w-]|\.\d)")
_CODE_MARKER = re.compile(rf"@plan[:\s]\s*([A-Za-z0-9._-]+)\.(P{_NUMBER})(?![\w-]|\.\d)")
_PHASE_REF = re.compile(rf"\b(?:(?i:phases?)\s+|P)({_NUMBER})(?![\w-]|\.\d)")
_FILE_NUMBER = re.compile(rf"^[Pp]?({_NUMBER})(?=[-_. ]|$)")
_PHASE_TITLE = re.compile(r"\b(?:phase|task|step)\b", re.IGNORECASE)  # `# Phase 05: …`
_TOTAL_PHASES = re.compile(r"total\s+phases\W*?(\d+)", re.IGNORECASE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_PATHLIKE = re.compile(r"[^\s`]*[/.][^\s`]*")
_EXPECT = re.compile(r"^#+\s*expected\s+to\s+(fail|pass)\b", re.IGNORECASE)
# `# Expected: No matches` on the line after a command, or after it on its line
_EXPECTED = re.compile(r"^#+\s*expected\s*:\s*(?P<text>.*)$", re.IGNORECASE)
_EXPECTED_AFTER = re.compile(r"^(?P<cmd>.*\S)\s+#+\s*expected\s*:\s*(?P<text>.*)$", re.IGNORECASE)
# prose after a block: "This should fail because …", "Expected to pass"
_PROSE = re.compile(
    r"\b(?:should|must|will|expected\s+to)\s+(?:still\s+)?(fail|pass|succeed)"
    r"\w*(?P<cond>\s+(?:if|when|unless|once|until)\b)?",
    re.IGNORECASE,
)
# `CMD; [ $? -eq 0 ] && echo "FAIL: …"` (or on the next line): the echo hides CMD's status
_STATUS_ECHO = re.compile(
    r"^(?:(?P<cmd>.*\S)\s*(?:;|\n)\s*)?(?:\[\s*\$\?\s+-(?P<op>eq|ne)\s+0\s*\]|"
    r"test\s+\$\?\s+-(?P<op2>eq|ne)\s+0)\s*&&\s*echo\b(?P<msg>.*)$",
    re.DOTALL,
)
# `CMD || echo "FAIL: …"` / `CMD && echo "FAIL: …"`: the echo's status is the command's
_OR_ECHO = re.compile(r"^(?P<cmd>.*\S)\s*(?P<op>&&|\|\|)\s*echo\s+(?P<msg>.*)$", re.DOTALL)
_BAD_NEWS = re.compile(r"fail|error|found|violat|should not|must not|unexpected", re.IGNORECASE)
_GREP = re.compile(r"^(?:\w+=\S*\s+)*(?:grep|egrep|fgrep|rg|ag|git\s+grep)\b")
_WC = re.compile(r"^wc\b|^grep\s(?:.*\s)?-\w*c\w*\b")  # prints a count
_TRIM = {"tail", "head"}  # a last pipe stage that only shortens the output
_TRIM_WORDS = [[w] for w in _TRIM]
_MASK = {"tee", "cat", "sort", "uniq", "less", "more", "column", "cut", "tr"}  # exit 0 anyway
_EXIT_1 = re.compile(r"^(?P<cmd>.*\S)\s*&&\s*exit\s+1\s*;?\s*$", re.DOTALL)
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"|\\.", re.DOTALL)
_HEREDOC_WORD = re.compile(r"[ \t]*(['\"]?)([\w.-]+)\1")
# a command that only sets state for the rest of its block: `A=1`, `A=$(…)`, `cd DIR`,
# `set -e`, `set -o pipefail`
_SETS_STATE = re.compile(
    r"(?:export\s+)?[A-Za-z_]\w*=(?:[^\s'\"]*|'[^']*'|\"[^\"]*\"|\$\(.*\))|cd\s+\S+"
    r"|set(?:\s+[-+]\w+|\s+-o\s+\w+)+",
    re.DOTALL,
)
# `## Title` (any level and case, a trailing colon or "(Mandatory)" allowed) → what it holds
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
_FOR_A_PERSON = re.compile(r"manual|checklist|questions|semantic|holistic|criteria|assessment")
_SHELL_LANGS = {"", "bash", "sh", "shell", "zsh"}
_KIND_WORDS = {
    "stub": "stub", "stubs": "stub", "test": "test", "tests": "test", "tdd": "test",
    "impl": "impl", "implementation": "impl", "verify": "verify", "verification": "verify",
}  # fmt: skip
_Key = tuple[Decimal, str]  # a phase's place: `05a` → (5, "a"), `P0.5` → (0.5, "")
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

    def __iadd__(self, warnings: list[ParseWarning]) -> Warnings:
        for w in warnings:
            self.add(w)
        return self

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
    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # phase id → its file

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


def _section_key(name: str) -> str | None:
    """What a heading's section holds: a known title, or any other title naming verification
    or checks (`Structural Verification`, `Anti-Fraud Command Checks`), unless it is for a
    person to judge (`Semantic Verification Checklist`, `Holistic Assessment`)."""
    if name in _SECTIONS:
        return _SECTIONS[name]
    if re.search(r"\b(?:verification|checks)\b", name) and not _FOR_A_PERSON.search(name):
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


@dataclasses.dataclass
class _Cmd:
    """A verify command being read: the line it starts on, and the block's state before it."""

    line: int
    run: str
    state: list[str]
    expect: str = "pass"
    must_match: list[str] = dataclasses.field(default_factory=list)
    must_not_match: list[str] = dataclasses.field(default_factory=list)
    said: bool = False  # the block itself says what to expect (a marker, an idiom, Expected:)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": "\n".join([*self.state, self.run]), "expect": self.expect}
        out |= {"must_match": self.must_match} if self.must_match else {}
        return out | ({"must_not_match": self.must_not_match} if self.must_not_match else {})


def shell_commands(
    lines: list[tuple[int, str]], warn: Callable[[int, str], None]
) -> list[dict[str, Any]]:
    """A fenced shell block as verify commands `{"run", "expect"}` (and `must_match`, …).

    `# EXPECTED TO FAIL` makes the following commands of the block expect failure (until
    `# EXPECTED TO PASS`); `CMD && exit 1` becomes `CMD` expecting failure; a `# Expected: …`
    comment after a command is read into its expectation; other comments and blank lines are
    dropped; a command spanning lines (`\\`, open if/for/…) is kept whole. The block is a
    script, so a bare `VAR=…` or `cd DIR` is put before each later command.
    """
    cmds = _block_commands(lines, warn)
    for cmd in cmds:
        _check_pipe(cmd, warn)
    return [c.as_dict() for c in cmds]


def _block_commands(lines: list[tuple[int, str]], warn: Callable[[int, str], None]) -> list[_Cmd]:
    out: list[_Cmd] = []
    expect_fail = False
    pending: list[str] = []
    state: list[str] = []  # the block's assignments and cd so far
    start = unused = 0  # unused: the line of a state command no command has used yet
    last = 0  # the index in `out` + 1 of the command just before, 0 if something came between
    for no, raw in lines:
        stripped = raw.strip()
        if pending:
            pending.append(raw.rstrip())
        elif m := _EXPECT.match(stripped):
            expect_fail, last = m.group(1).lower() == "fail", 0
            continue
        elif not stripped or stripped.startswith("#"):
            _comment(stripped, no, out[last - 1] if last else None, warn)
            continue
        else:
            pending, start = [raw.rstrip()], no
        if shell_unfinished(cmd := "\n".join(pending).strip()):
            continue
        pending = []
        if _SETS_STATE.fullmatch(cmd):
            state, unused, last = [*state, cmd], start, 0
            continue
        if last and (m := _STATUS_ECHO.match(cmd)) and not m.group("cmd"):
            _status_echo(out[last - 1], m)  # `[ $? -eq 0 ] && echo …` judges the line before
            continue
        expected = None
        if (m := _EXPECTED_AFTER.match(cmd)) and not shell_unfinished(m.group("cmd")):
            cmd, expected = m.group("cmd"), m.group("text")
        out.append(
            _command(_Cmd(start, cmd, state, "fail" if expect_fail else "pass", said=expect_fail))
        )
        if expected is not None:
            _read_expected(out[-1], expected, start, warn)
        unused, last = 0, len(out)
    if pending:
        warn(
            start,
            "command unfinished at the end of its block (open quote, if/for/while, "
            "trailing | && || \\ or here-document); imported as written",
        )
        out.append(
            _Cmd(start, "\n".join(pending).strip(), state, "fail" if expect_fail else "pass")
        )
    elif unused:
        warn(unused, f"{state[-1]!r} ends its block: no command uses it; not imported")
    return out


def _comment(text: str, no: int, prev: _Cmd | None, warn: Callable[[int, str], None]) -> None:
    """A comment line of a block: `# Expected: …` is read into the command just before it."""
    if m := _EXPECTED.match(text):
        if prev is not None:
            _read_expected(prev, m.group("text"), no, warn)
        else:
            warn(no, f"{text!r} follows no command; not checked")
    elif re.match(r"#+\s*expect", text, re.IGNORECASE):
        warn(no, f"{text!r} is not checked: a verify command is judged by its exit code")


def _command(cmd: _Cmd) -> _Cmd:
    """The idioms that turn a command's status around, read into `expect`."""
    m = _EXIT_1.match(cmd.run)  # only where what is left is a whole command (not inside quotes)
    if m and not shell_unfinished(m.group("cmd")):
        cmd.run, cmd.expect, cmd.said = m.group("cmd"), "fail", True
    elif (m := _STATUS_ECHO.match(cmd.run)) and _whole(m.group("cmd")):
        cmd.run = m.group("cmd")
        _status_echo(cmd, m)
    elif (m := _OR_ECHO.match(cmd.run)) and _echoes_failure(m):
        # `CMD || echo FAIL` always exits 0: the author wants CMD to pass (`&&`: to fail)
        cmd.run, cmd.expect = m.group("cmd"), "pass" if m.group("op") == "||" else "fail"
        cmd.said = True
    return cmd


def _whole(cmd: str | None) -> bool:
    """A command that stands alone (a split at `;` or `&&` was not inside a quote or a loop)."""
    return bool(cmd) and not shell_unfinished(cmd or "")


def _echoes_failure(m: re.Match[str]) -> bool:
    """`CMD || echo "FAIL: …"`: a one-line echo of bad news after a whole command."""
    msg = m.group("msg")
    return bool(_BAD_NEWS.search(msg)) and "\n" not in msg and _whole(m.group("cmd"))


def _status_echo(cmd: _Cmd, m: re.Match[str]) -> None:
    """`[ $? -eq 0 ] && echo "FAIL…"`: status 0 is the bad news, so CMD must fail."""
    zero_is_bad = (m.group("op") or m.group("op2")) == "eq"
    if not _BAD_NEWS.search(m.group("msg")):
        zero_is_bad = not zero_is_bad  # `&& echo "PASS"`: the echo names the good outcome
    cmd.expect, cmd.said = "fail" if zero_is_bad else "pass", True


def _stages(run: str) -> list[str]:
    """The stages of a one-line pipeline (`a | b`); [run] for anything else."""
    if "\n" in run:
        return [run]
    masked = _QUOTED.sub(lambda q: "_" * len(q.group()), run)
    cuts = [m.start() for m in re.finditer(r"(?<![|>])\|(?![|&])", masked)]
    bounds = zip([-1, *cuts], [*cuts, len(run)], strict=True)
    return [run[a + 1 : b].strip() for a, b in bounds]


_NO_OUTPUT = re.compile(r"(?:no|zero|0|nothing|empty|none)\b.*")
_NOTHING_BAD = re.compile(
    r"\b(?:0|no|zero|without)\s+(?:new\s+|\w+\s+)?(?:errors?|warnings?|failures?|"
    r"regressions?|issues?|problems?|violations?)\b"
)
_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
# `3`, `3 matches`, `1 match each`; `3+`, `≥ 3`, `>= 3`, `at least 3 occurrences`
_COUNT = re.compile(r"(?P<least>≥|>=|at least)?\s*(?P<n>\d+)(?P<plus>\+)?(?:\s+[\w-]+)*")
_FOUND = re.compile(r"\b(?:exists?|present|found|match(?:es|ing)?|shows?|showing|contains?)\b")
_FAIL_WORDS = re.compile(r"\bfail\w*|\berrors?\b|\bred\b")
_PASS_WORDS = re.compile(
    r"\bpass\w*|\bsucce\w*|\bok\b|\bgreen\b|\bclean\w*|\bcompiles?\b|\bbuilds?\b|\bworks?\b"
)
_EXIT = re.compile(
    r"(?:exit(?:s)?\s*(?:code|status)?|returns?)\s*:?\s*(\d+)|non-?zero(?:\s+exit.*)?"
)


def _at_least(n: int) -> str:
    """A regex for the whole numbers ≥ n: longer ones, then the same length digit by digit."""
    digits = str(n)
    alts = [rf"[1-9]\d{{{len(digits)},}}", digits]
    for i, d in enumerate(digits):
        if d != "9":
            alts.append(
                f"{digits[:i]}[{int(d) + 1}-9]"
                + (rf"\d{{{len(digits) - i - 1}}}" if i < len(digits) - 1 else "")
            )
    return "(?:" + "|".join(alts) + ")"


def _said(text: str) -> str:
    """`# Expected: …` as the claim alone: lower case, no markdown, no aside (`(…)`, `— …`,
    `, …`)."""
    said = " ".join(text.strip().strip("*_`'\"").split()).lower()
    said = re.split(r"\s+[—–]\s*|\s+--?\s+|[,;(]", said)[0]
    said = " ".join(_NUMBER_WORDS.get(w, w) for w in said.split())
    return said.strip(" .!:")


def _read_expected(cmd: _Cmd, text: str, line: int, warn: Callable[[int, str], None]) -> None:
    """`# Expected: …` into expect (and must_match / must_not_match); warns on other forms."""
    said = _said(text)
    # the stage whose status counts once a trailing tail/head is dropped (_check_pipe)
    last = next(
        (s for s in reversed(_stages(cmd.run)) if s.split()[:1] not in _TRIM_WORDS), cmd.run
    )
    was, cmd.said = cmd.said, True
    if m := _EXIT.fullmatch(said):
        code = int(m.group(1)) if m.group(1) else 1
        cmd.expect = "pass" if code == 0 else "fail"
        if code not in (0, 1):
            warn(
                line,
                f"'# Expected: {text.strip()}': expect = \"fail\" accepts any non-zero "
                f"exit, not only {code}",
            )
    elif (m := _COUNT.fullmatch(said)) and int(m.group("n")) > 0 and _counts(last):
        _read_count(cmd, last, m, text, line, warn)
    elif _NO_OUTPUT.fullmatch(said):
        if _GREP.match(last):
            cmd.expect = "fail"  # grep exits 1 when it finds nothing (`grep -c` too)
        elif _WC.match(last):
            cmd.must_match = [r"^\s*0\s*$"]  # the count printed is 0
        elif _NOTHING_BAD.match(said):
            cmd.expect = "pass"  # a linter or checker that finds nothing exits 0
        else:
            cmd.must_not_match = [r"\S"]  # the output must be empty
    elif _FAIL_WORDS.search(_NOTHING_BAD.sub("", said)):
        cmd.expect = "fail"  # "Tests exist but fail naturally"
    elif _FOUND.search(said) and not re.search(r"\bnot?\b", said):
        cmd.expect = "pass"  # found: grep, test -f, ls exit 0
    elif _PASS_WORDS.search(said) or _NOTHING_BAD.search(said):
        cmd.expect = "pass"
    else:
        cmd.said = was
        warn(
            line,
            f"'# Expected: {text.strip()}' not read; the command is judged by its exit "
            f'code (expect = "{cmd.expect}"); add must_match to check its output',
        )


def _counts(stage: str) -> bool:
    """A stage whose output or status a count can be read from: a grep, `wc`, `grep -c`."""
    return bool(_GREP.match(stage) or _WC.match(stage))


def _read_count(
    cmd: _Cmd,
    last: str,
    m: re.Match[str],
    text: str,
    line: int,
    warn: Callable[[int, str], None],
) -> None:
    """`3`, `3+`, `≥ 3` (N > 0): the count a `wc -l` or `grep -c` prints; a grep finds some."""
    n, least = int(m.group("n")), bool(m.group("least") or m.group("plus"))
    number = _at_least(n) if least else str(n)
    if _WC.match(last):
        prefix = "(?:.*:)?" if _GREP.match(last) else ""  # `grep -c` on files: `FILE:N`
        cmd.must_match = [rf"^{prefix}\s*{number}\s*$"]
    else:
        cmd.expect = "pass"  # grep exits 0 when it finds any
        if n > 1 or not least and "-q" not in last.split():
            warn(
                line,
                f"'# Expected: {text.strip()}': only that grep finds a match is checked, "
                "not how many; count with `grep -c` (or `| wc -l`) to check the number",
            )


def _check_pipe(cmd: _Cmd, warn: Callable[[int, str], None]) -> None:
    """A pipe's exit status is its last stage's: `npm test | tail -20` can never fail. Drop a
    trailing tail/head (the verify log keeps the whole output); warn on other such stages."""
    stages = _stages(cmd.run)
    if len(stages) < 2 or "pipefail" in "\n".join([*cmd.state, cmd.run]):
        return
    words = [s.split()[0] if s.split() else "" for s in stages]
    if words[-1] in _TRIM:
        kept = len(stages) - next(i for i, w in enumerate(reversed(words)) if w not in _TRIM)
        if kept == len(stages):
            return
        before, cmd.run = cmd.run, " | ".join(stages[:kept])
        warn(
            cmd.line,
            f"{before!r} is expected to {cmd.expect}, but a pipe's exit status is "
            f"its last command's ({words[-1]}: always 0), so as written it can never fail; "
            f"imported as {cmd.run!r} (the verify log keeps the whole output); write "
            "`set -o pipefail` (bash) or drop the pipe",
        )
    elif words[-1] in _MASK and not cmd.must_match:
        warn(
            cmd.line,
            f"{cmd.run!r}: a pipe's exit status is its last command's "
            f"({words[-1]}), not {words[0]}'s; imported as written, expecting {cmd.expect}; "
            "write `set -o pipefail` (bash) or drop the pipe",
        )


def _not_commands(heading: str) -> str:
    """Why blocks under a verification sub-heading are not commands ('' if they are):
    checks for a person, or the output the commands should print."""
    if _FOR_A_PERSON.search(heading):
        return "is under a manual-check heading"
    if re.search(r"\b(?:output|results?)\b", heading):
        return "is under an expected-output heading"
    return ""


def _script(lines: list[tuple[int, str]]) -> _Cmd:
    """A block that starts with `#!`: one verify command, the block run by its interpreter."""
    body = "\n".join(text for _, text in lines).strip()
    words = shlex.split(body.splitlines()[0][2:])
    if words and PurePosixPath(words[0]).name == "env":
        words = [w for w in words[1:] if w != "-S"]
    if not words or PurePosixPath(words[0]).name == "sh":
        return _Cmd(lines[0][0], body, [])  # `sh -c` reads the `#!` line as a comment
    return _Cmd(lines[0][0], f"{shlex.join(words)} -c {shlex.quote(body)}", [])


def kind_from_name(stem: str) -> str:
    """stub / test(s) / impl(ementation) / verif(y|ication) from the file name; the last such
    word wins (`01a-…-stub-verification` → verify); else "other"."""
    kinds = [_KIND_WORDS[w] for w in re.split(r"[^a-z0-9]+", stem.lower()) if w in _KIND_WORDS]
    return kinds[-1] if kinds else "other"


def _key(tag: str) -> _Key:
    """The order key of `05a` (file name), `5a` (`Phase 5a`), `P05A` (phase id) or `P0.5`:
    the number as a number, then the letter: (5, "a"), (0.5, "")."""
    letter = tag[-1].lower() if tag[-1].isalpha() else ""
    return Decimal(tag.lstrip("Pp").removesuffix(tag[-1] if letter else "")), letter


@dataclasses.dataclass
class _PhaseFile:
    """One numbered markdown file being read; its warnings go to the import's shared list."""

    path: Path
    warnings: Warnings
    sections: list[_Section] = dataclasses.field(default_factory=list)
    lines: list[_Line] = dataclasses.field(default_factory=list)
    precheck: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        text = _read_bounded(self.path).decode("utf-8", errors="replace")
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

    def phase_id(self, key: _Key, tag: str) -> tuple[str | None, str]:
        """(plan id, phase id) from the Phase ID section, else from a marker naming this file's
        number anywhere in the file (code blocks included), else (None, P + the file's number)."""
        ids = [(no, m.group(1), m.group(2)) for sec in self.of("id")
               for no, text in [(sec.line, sec.inline), *((ln.no, ln.text) for ln in sec.body)]
               for m in _FULL_ID.finditer(text)]  # fmt: skip
        if not ids:
            own = (m.groups() for ln in self.lines for m in _CODE_MARKER.finditer(ln.text))
            plan_id, pid = next(((p, q) for p, q in own if _key(q) == key), (None, "P" + tag))
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
        if _key(pid) != key:
            self.warn(
                line,
                f"Phase ID {pid} does not match the file name's number; the phase "
                "keeps its place in file order",
            )
        return plan_id, pid

    def to_phase(
        self, key: _Key, tag: str, rel: str, plan_dir: str, earlier: dict[_Key, str]
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
        number, letter = _key(pid)
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
        out: list[_Cmd] = []
        for sec in self.of("verify"):
            manual = ""  # why the blocks under the current sub-heading are not commands
            block: list[tuple[int, str]] | None = None
            lang, opened = "", 0
            last: list[_Cmd] = []  # the commands of the block just closed, for prose after it
            for ln in [*sec.body, _Line(0, "", "close")]:  # a sentinel closes a cut-off block
                if ln.kind == "heading":
                    manual, last = _not_commands(_title(ln.text)[0]), []
                elif ln.kind == "open":
                    block, lang, opened = [], ln.lang, ln.no
                elif ln.kind == "code" and block is not None:
                    block.append((ln.no, ln.text))
                elif ln.kind == "close" and block is not None:
                    last = self.block(block, lang, opened, manual)
                    out += last
                    block = None
                elif ln.kind == "text" and last and (m := _PROSE.search(ln.text)):
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
            _check_pipe(cmd, self.warn)
        return [c.as_dict() for c in out]

    def block(
        self, block: list[tuple[int, str]], lang: str, opened: int, manual: str
    ) -> list[_Cmd]:
        """A closed code block of a verification section as commands (a `#!` block: one)."""
        if manual or lang not in _SHELL_LANGS:
            why = manual or "is not shell"
            self.warn(opened, f"code block ```{lang} {why}; not run by orchestrd")
            return []
        if block and block[0][1].lstrip().startswith("#!"):
            return [_script(block)]
        return _block_commands(block, self.warn)

    def prose(self, cmds: list[_Cmd], m: re.Match[str], ln: _Line) -> None:
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

    def prerequisites(self, phase_id: str, earlier: dict[_Key, str]) -> list[str]:
        """Notes for the references to earlier phases (met by file order); a `Verification:`
        line's command (or a shell block) becomes a precheck; other lines warn."""
        notes = []
        for sec in self.of("prerequisites"):
            self.precheck += self.prerequisite_blocks(sec)
        for no, text in (line for sec in self.of("prerequisites") for line in sec.text_lines()):
            tags = {_key(m.group(1)): m.group(1) for m in _PHASE_REF.finditer(text)}
            refs = [r for r in tags if r != _key(phase_id)]
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
        out: list[_Cmd] = []
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
            _check_pipe(cmd, self.warn)
        return [c.as_dict() for c in out]


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


def _phase_files(
    phase_dir: Path, warnings: Warnings
) -> tuple[list[tuple[_Key, str, Path]], list[Path]]:
    """Numbered markdown files (`01a-`, `P0.5-`, `P10-`) in order of their number as a number,
    then the letter, each with its number as written; and the unnumbered overviews. Other .md
    files warn."""
    out, overviews = [], []
    for p in sorted(q for q in phase_dir.iterdir() if q.is_file() and q.suffix.lower() == ".md"):
        if m := _FILE_NUMBER.match(p.name):
            out.append((_key(m.group(1)), m.group(1), p))
        elif "overview" in p.stem.lower():
            overviews.append(p)
        else:
            warnings.add(
                ParseWarning(
                    p,
                    1,
                    "not a phase: its name has no number prefix "
                    "(NN-name.md, P05-name.md); not imported",
                )
            )
    if (total := sum(p.stat().st_size for _, _, p in out)) > MAX_IMPORT_BYTES:
        raise PlanError(
            f"{phase_dir}: its phase files hold {total} bytes, over the import's limit of "
            f"{MAX_IMPORT_BYTES} (each is a worker's prompt, read whole); split the plan folder"
        )
    return sorted(out, key=lambda kp: (kp[0], kp[2].name)), overviews


def _folder_plan_id(folder: str) -> str:
    """`PLAN-<FOLDER>`: the folder's name upper-cased, other characters than [A-Z0-9._-] as -."""
    name = re.sub(r"[^A-Z0-9._-]+", "-", folder.upper()).strip("-.")
    return f"PLAN-{name}"[:128].rstrip("-.")


def _choose_plan_id(
    given: str | None,
    plan_ids: dict[str, str | None],
    files: dict[str, Path],
    folder: str,
    warnings: Warnings,
) -> str:
    """`--id`, else the plan id most Phase IDs name, else `PLAN-<FOLDER>` (warned); phases whose
    Phase ID names another plan, or that have none while others do, warn."""
    named = Counter(v for v in plan_ids.values() if v is not None)
    plan_id = given or (named.most_common(1)[0][0] if named else _folder_plan_id(folder))
    if not given and not named:  # said once, at the first phase file
        warnings.add(
            ParseWarning(
                next(iter(files.values())),
                1,
                "no Phase ID in any file: "
                f"the plan id is {plan_id}, from the folder name "
                f"{folder!r} (give --id to choose)",
            )
        )
    warnings += [ParseWarning(files[pid], 1, f"Phase ID {other}.{pid} names plan {other}, not "
                              f"{plan_id}; its marker keeps {other}")
                 for pid, other in plan_ids.items() if other not in (None, plan_id)]  # fmt: skip
    if named:
        warnings += [
            ParseWarning(files[pid], 1, f"no Phase ID: the phase is {pid}, from the file name")
            for pid, other in plan_ids.items()
            if other is None
        ]
    return plan_id


def _overview_counts(overviews: list[Path], phases: list[dict[str, Any]]) -> list[ParseWarning]:
    """An overview's `Total Phases: N` against the phases imported (with or without the
    lettered ones, which some authors do not count)."""
    out = []
    whole = sum(1 for p in phases if not p["id"][-1].isalpha())
    for path in overviews:
        text = _read_bounded(path).decode("utf-8", errors="replace")
        if (m := _TOTAL_PHASES.search(text)) and int(m.group(1)) not in (len(phases), whole):
            line = text.count("\n", 0, m.start()) + 1
            out.append(
                ParseWarning(
                    path,
                    line,
                    f"the overview says {m.group(0)!r}, but "
                    f"{len(phases)} phase files were imported "
                    f"({', '.join(p['id'] for p in phases)})",
                )
            )
    return out


def import_plan_folder(
    folder: Path, repo: Path | None = None, worker: str | None = None, plan_id: str | None = None
) -> ImportedPlan:
    """Import a plan folder (holding `plan/NN-*.md`, or the phase files themselves) that lies
    inside `repo` (default: the current directory); PlanError when there is no usable phase.
    `plan_id` (`--id`) names the plan; default: the Phase IDs', else `PLAN-<FOLDER>`."""
    if plan_id is not None and not re.fullmatch(ID_PATTERN, plan_id):
        raise PlanError(f"--id: {plan_id!r} is not a plan id; use 1-128 of [A-Za-z0-9._-]")
    repo = (repo or Path.cwd()).resolve()
    if not repo.is_dir():
        raise PlanError(f"{repo}: --repo is not a directory; pass the checkout the plan runs in")
    if not folder.is_dir():
        raise PlanError(f"{folder}: no such folder; pass the plan folder (the one with plan/)")
    if not folder.resolve().is_relative_to(repo):
        raise PlanError(
            f"{folder}: not inside the repo {repo}; pass --repo the checkout that contains it"
        )
    plan_dir = folder.resolve().relative_to(repo).as_posix()
    plan_dir = "" if plan_dir == "." else plan_dir
    phase_dir = folder / "plan" if (folder / "plan").is_dir() else folder
    warnings = Warnings()
    notes: dict[str, list[str]] = {"": []}  # "" → the header
    phases: list[dict[str, Any]] = []
    plan_ids: dict[str, str | None] = {}  # phase id → its plan id (None: no Phase ID)
    files: dict[str, Path] = {}
    earlier: dict[_Key, str] = {}  # order key → phase id
    numbered, overviews = _phase_files(phase_dir, warnings)
    if phase_dir != folder:  # an overview next to plan/
        overviews += [p for p in sorted(folder.glob("*.md")) if "overview" in p.stem.lower()]
    for key, tag, path in numbered:
        rel = path.relative_to(folder).as_posix()
        f = _PhaseFile(path, warnings)
        if "overview" in path.stem.lower() and not f.of("id"):
            overviews.append(path)
            continue
        if (parsed := f.to_phase(key, tag, rel, plan_dir, earlier)) is None:
            continue
        pid_plan, phase, phase_notes = parsed
        if (pid := phase["id"]) in files:  # two files numbered alike: the first one is kept
            warnings.add(
                ParseWarning(
                    path,
                    1,
                    f"phase id {pid} is also the id of "
                    f"{files[pid].name}; file not imported (give each "
                    "phase file its own number or PLAN.PNN id)",
                )
            )
            continue
        notes[pid] = phase_notes
        phases.append(phase)
        plan_ids[pid], files[pid], earlier[_key(pid)] = pid_plan, path, pid
    notes[""] += [
        f"{p.relative_to(folder).as_posix()} is the plan's overview, not a phase" for p in overviews
    ]
    if not phases:
        raise PlanError("\n".join([
            f"{folder}: no phase files in {phase_dir} (NN-name.md or P05-name.md with a "
            "'## Phase ID' section or phase sections); point import at the plan folder",
            *map(str, warnings.summarised()),
        ]))  # fmt: skip
    warnings += _overview_counts(overviews, phases)
    plan_id = _choose_plan_id(plan_id, plan_ids, files, folder.resolve().name, warnings)
    plan: dict[str, Any] = {"id": plan_id, "repo": str(repo)}
    plan |= {"plan_dir": plan_dir} if plan_dir else {}
    plan |= {"worker": worker} if worker else {}
    return ImportedPlan(
        plan | {"phases": phases},
        warnings.summarised(),
        notes,
        folder.resolve(),
        warning_count=warnings.total,
        files=files,
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
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def render_report(imported: ImportedPlan) -> str:
    """A table per phase, to check an import at a glance: what each phase will be judged on."""
    by_file = Counter(w.file.resolve() for w in imported.warnings)
    rows = [("id", "kind", "verify", "fail", "precheck", "markers", "completion", "warnings")]
    for p in imported.plan["phases"]:
        file = imported.files.get(p["id"])
        rows.append((
            p["id"], p["kind"], str(len(p.get("verify", []))),
            str(sum(v["expect"] == "fail" for v in p.get("verify", []))),
            str(len(p.get("precheck", []))), str(len(p["markers"])),
            ", ".join(p["completion"]) or "-", str(by_file[file.resolve()] if file else 0),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    other = len(imported.warnings) - sum(by_file[f.resolve()] for f in imported.files.values())
    tail = f"{other} other warning(s) (overview, folder, files that are not phases)"
    return "\n".join([*lines, tail]) + "\n"


def _cmd_import(args: argparse.Namespace) -> int:
    """Errors are PlanError/ConfigError, which cli.main reports and turns into exit code 2."""
    if not args.output and not args.dry_run:
        raise PlanError("import: nowhere to write; give -o OUT.toml, or --dry-run to print")
    config, _ = load_config(args.config)
    imported = import_plan_folder(Path(args.folder), Path(args.repo), args.worker, args.id)
    for w in imported.warnings:
        print(w, file=sys.stderr)
    if args.report:
        sys.stderr.write(render_report(imported))
    if args.strict and imported.warnings:
        raise PlanError(
            f"{args.folder}: {imported.total_warnings} warning(s) and --strict; "
            "nothing written (fix the files, or import without --strict)"
        )
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
    print(
        f"{args.output}: plan {plan.id}, {len(plan.phases)} phases, "
        f"{imported.total_warnings} warning(s)",
        file=sys.stderr,
    )
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `import FOLDER -o OUT [--repo DIR] [--worker NAME] [--id ID] [--strict]
    [--report] [--dry-run] [--config FILE]`."""
    p = sub.add_parser(
        "import", parents=[common], help="turn a folder of markdown phase files into a plan file"
    )
    p.add_argument("folder", metavar="FOLDER", help="the plan folder (holding plan/01-*.md, …)")
    p.add_argument("-o", "--output", metavar="OUT", help="the plan file to write")
    p.add_argument(
        "--repo",
        default=".",
        metavar="DIR",
        help="the checkout the plan runs in; FOLDER must be inside it (default: .)",
    )
    p.add_argument("--worker", metavar="NAME", help="worker profile (default: the config's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan instead of writing it")
    p.add_argument(
        "--id",
        metavar="PLAN_ID",
        help="the plan id (default: the files' Phase IDs, else PLAN-<FOLDER>)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="any warning is an error (exit 2, nothing written): for CI",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="print a table per phase (verify, expect=fail, markers, completion, "
        "warnings) on stderr",
    )
    p.set_defaults(func=_cmd_import)
