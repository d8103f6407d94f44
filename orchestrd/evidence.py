"""Evidence rules on report and completion files: what a worker wrote down must be the real output
of real work, not a template, an unexpanded command or a verdict its own notes contradict.

Pure functions on text; each finding names the file, the line and the rule.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Collection, Iterator
from typing import ClassVar

STATUS = re.compile(r"^[\s>#*_-]*status[*_\s]*:(?P<value>.*)$", re.IGNORECASE)
# A Status line that names a failure anywhere (`❌ FAIL`, `FAILING`, a `PASS/FAIL` template) is
# a FAIL; one that starts with PASS (`PASS — all 12 tests green`) a PASS; others no verdict.
_FAIL_VALUE = re.compile(r"\bFAIL(?:ED|ING|S|URE)?\b|❌|✗|✘", re.IGNORECASE)
_PASS_VALUE = re.compile(r"^[\s*_`✅✔️]*PASS(?:ED)?\b(?!/)", re.IGNORECASE)

_FENCE = re.compile(r"^\s{0,3}(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
# A fenced block in one of these languages holds commands, not their output.
COMMAND_LANGS = frozenset({"bash", "sh", "shell", "zsh", "fish", "ps1", "powershell", "pwsh"})
# Terminal transcripts: lines after a prompt (`$ `) are commands, the rest output.
SESSION_LANGS = frozenset({"console", "shell-session", "terminal", "shellsession"})
# Blocks that hold output (unlabelled blocks too); other languages are code, left alone.
OUTPUT_LANGS = frozenset(
    {"", "text", "txt", "output", "log", "plaintext", "plain", "md", "markdown"}
)
_PROMPT = re.compile(r"^\s*[$%#>]\s")

_SUBST = re.compile(r"\$\(")
_LONE_BACKTICK = re.compile(r"^\s*`(?P<cmd>[^`\n]+)`\s*$")
_HEADING_OUTPUT = re.compile(r"(?i)^\s*#.*\b(output|result|results|log|logs|evidence)\b")
_LABEL_COLON_OUTPUT = re.compile(
    r"(?i)\b(output|outputs|result|results|log|logs|evidence|stdout|stderr)\b[^:]*:\s*\**\s*$"
)

# A verdict in the worker's own notes: `- Typecheck: FAIL`, `| lint | FAIL |`, `❌ build`.
_FAIL_WORD = r"(?:FAIL(?:ED|ING|S)?|❌|✗|✘)"
_KV_FAIL = re.compile(
    r"(?:^[\s>*+-]*(?:\d+[.)]\s*)?(?:\[[ xX]\]\s*)?|[,;]\s*)"
    r"(?P<label>[^:|=,;]{1,80}?)[*_`\s]*[:=–—][*_`\s]*" + _FAIL_WORD + r"(?![A-Za-z])",
    re.IGNORECASE,
)
_MARK_FAIL = re.compile(r"^[\s>*+-]*(?:❌|✗|✘)\s*(?P<label>\S.*)$")
_TABLE_FAIL_CELL = re.compile(
    r"^[*_`\s]*(?:❌|✗|✘)?\s*FAIL(?:ED)?\s*(?:❌|✗|✘)?[*_`\s]*$|^\s*(?:❌|✗|✘)\s*$", re.IGNORECASE
)
_VERDICT = re.compile(r"(?i)\b(PASS(?:ED)?|FAIL(?:ED|ING|S)?)\b|✅|❌|✗|✘|✔")
# Words that make a recorded FAIL expected, or history rather than the current state.
_EXPECTED = re.compile(
    r"(?i)\b(expected|expect|as intended|intended|intentional(ly)?|by design|red|should fail|"
    r"must fail|to fail|supposed to|tdd|previous(ly)?|earlier|before|initially|originally|"
    r"fixed|resolved)\b"
)
_TESTISH = re.compile(
    r"(?i)\b(tests?|specs?|suites?|vitest|jest|pytest|unittest|mocha|npm test|red)\b"
)

_PHASE_LINE = re.compile(r"^[\s>#*_-]*phase(?:[\s_-]*id)?[*_\s]*:(?P<value>.*)$", re.IGNORECASE)
_STAMP_LINE = re.compile(
    r"^[\s>#*_-]*(?:timestamp|date|completed(?:\s+at|\s+on)?|finished(?:\s+at)?|generated(?:\s+at)?"
    r"|time|when)[*_\s]*:(?P<value>.*)$",
    re.IGNORECASE,
)
_DATE = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One broken rule in one file."""

    path: str
    line: int
    """1-based; 0 when the rule is about a line the file lacks."""
    rule: str
    message: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    @property
    def reason(self) -> str:
        return f"{self.where}: {self.message} [rule: {self.rule}]"


@dataclasses.dataclass(frozen=True)
class Line:
    no: int
    text: str
    block: str | None
    """None in prose; the fence's language ('' when unlabelled) inside a fenced block."""


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    start: int
    lines: list[str]


def parse(text: str) -> tuple[list[Line], list[Block]]:
    """Every line with the fenced block it is in, and the fenced blocks (fence lines excluded)."""
    lines: list[Line] = []
    blocks: list[Block] = []
    fence: str | None = None
    current: Block | None = None
    for no, raw in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(raw)
        if fence is None and m:
            fence, current = m.group("fence"), Block(m.group("lang").lower(), no, [])
            continue
        if fence is not None and current is not None:
            stripped = raw.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                blocks.append(current)
                fence, current = None, None
                continue
            current.lines.append(raw)
            lines.append(Line(no, raw, current.lang))
            continue
        lines.append(Line(no, raw, None))
    return lines, blocks


def _is_output(line: Line) -> bool:
    """Would a reader take this line for output (or prose that should carry output)?"""
    if line.block is None or line.block in OUTPUT_LANGS:
        return True
    return line.block in SESSION_LANGS and not _PROMPT.match(line.text)


def _short(text: str, limit: int = 120) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unexpanded_shell(path: str, lines: list[Line]) -> Iterator[Finding]:
    """`$(…)` where output should be, and a lone backticked command standing in for output."""
    previous = ""
    for line in lines:
        if _is_output(line) and _SUBST.search(line.text):
            yield Finding(
                path,
                line.no,
                "unexpanded_shell",
                f"unexpanded shell {_short(line.text, 80)!r} where output should be",
            )
        elif (
            (m := _LONE_BACKTICK.match(line.text))
            and _is_output(line)
            and (
                # inside an output block backticks are literal; in prose only under an output label
                line.block is not None
                or _HEADING_OUTPUT.match(previous)
                or _LABEL_COLON_OUTPUT.search(previous)
            )
        ):
            yield Finding(
                path,
                line.no,
                "unexpanded_shell",
                f"backticked command `{_short(m.group('cmd'), 80)}` stands where its "
                "output should be",
            )
        if line.text.strip():
            previous = line.text


def placeholders(path: str, lines: list[Line], texts: Collection[str]) -> Iterator[Finding]:
    lowered = [(t, t.lower()) for t in texts]
    for line in lines:
        low = line.text.lower()
        found = [t for t, t_low in lowered if t_low in low]
        if found:
            yield Finding(
                path,
                line.no,
                "placeholder",
                f"template placeholder {', '.join(map(repr, found))} left in: "
                f"{_short(line.text)!r}",
            )


def empty_blocks(path: str, blocks: list[Block]) -> Iterator[Finding]:
    for b in blocks:
        if all(not t.strip() or t.strip() in ("...", "…") for t in b.lines):
            what = f"```{b.lang} block" if b.lang else "fenced block"
            yield Finding(
                path, b.start, "empty_output_block", f"empty {what} where output should be"
            )


def _failed_label(text: str) -> str | None:
    """The check a line records as failed, or None."""
    if text.lstrip().startswith("|"):
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if len(cells) >= 2 and any(_TABLE_FAIL_CELL.match(c) for c in cells[1:]):
            return cells[0].strip("*_` ") or "?"
        return None
    if m := _KV_FAIL.search(text):
        return m.group("label").strip("*_` ")
    if m := _MARK_FAIL.match(text):
        return m.group("label").strip("*_` ")
    return None


def contradictions(path: str, lines: list[Line], kind: str) -> Iterator[Finding]:
    """With Status PASS, a check the report itself records as FAIL (outside fenced output).

    A FAIL the line calls expected, history (`previously`, `fixed`) or followed by a PASS is no
    contradiction; in a test phase, failing tests are the point, so test runs are not counted.
    """
    for line in lines:
        if line.block is not None or STATUS.match(line.text):
            continue
        label = _failed_label(line.text)
        if label is None or _EXPECTED.search(line.text):
            continue
        verdicts = _VERDICT.findall(line.text)
        last = verdicts[-1] if verdicts else ""
        if last.upper().startswith("PASS") or last in ("✅", "✔"):
            continue
        if kind == "test" and _TESTISH.search(line.text):
            continue
        yield Finding(
            path,
            line.no,
            "contradiction",
            f"records {label!r} as FAIL ({_short(line.text, 80)!r}) while its Status is PASS",
        )


def phase_line(path: str, lines: list[Line], phase_id: str) -> Iterator[Finding]:
    named = re.compile(r"(?<![A-Za-z0-9])" + re.escape(phase_id) + r"(?![\w-])")
    found = [ln for ln in lines if ln.block is None and _PHASE_LINE.match(ln.text)]
    if any(named.search(ln.text) for ln in found):
        return
    if found:
        yield Finding(
            path,
            found[0].no,
            "phase_line",
            f"{_short(found[0].text, 60)!r} does not name phase {phase_id}",
        )
    else:
        yield Finding(path, 0, "phase_line", f"no 'Phase: {phase_id}' line (the plan asks for one)")


def timestamp_line(path: str, lines: list[Line]) -> Iterator[Finding]:
    found = [ln for ln in lines if ln.block is None and _STAMP_LINE.match(ln.text)]
    if any(_DATE.search(ln.text) for ln in found):
        return
    if found:
        yield Finding(
            path,
            found[0].no,
            "timestamp_line",
            f"{_short(found[0].text, 60)!r} holds no date (YYYY-MM-DD…)",
        )
    else:
        yield Finding(
            path,
            0,
            "timestamp_line",
            "no timestamp line such as 'Completed: 2025-01-31T14:05:00+0100' "
            "(the plan asks for one)",
        )


@dataclasses.dataclass(frozen=True)
class Document:
    """One report or completion file, parsed, with what the rules judge it by."""

    path: str
    lines: list[Line]
    blocks: list[Block]
    placeholder_texts: Collection[str] = ()
    kind: str = "other"
    report: bool = False


class TextRule(abc.ABC):
    """One evidence rule, all it takes in one place: its name (the key in `evidence_rules`),
    whether it is on by default, how to fix what it finds (for the remediation prompt) and how
    it judges a file. RULES lists them; a new rule is a subclass added there."""

    name: ClassVar[str]
    fix: ClassVar[str]
    default: ClassVar[bool] = True
    """On when neither [checks].evidence_rules nor the phase names the rules."""

    @abc.abstractmethod
    def find(self, doc: Document) -> Iterator[Finding]:
        """Every place in `doc` that breaks the rule."""


class UnexpandedShell(TextRule):
    name = "unexpanded_shell"
    fix = (
        "run the command yourself and paste its real output; a markdown file does not expand "
        "`$(…)` or backticks (commands may stand in ```bash blocks)"
    )

    def find(self, doc: Document) -> Iterator[Finding]:
        return unexpanded_shell(doc.path, doc.lines)


class Placeholder(TextRule):
    name = "placeholder"
    fix = "replace the template text with the real value (the real date, the real command output)"

    def find(self, doc: Document) -> Iterator[Finding]:
        return placeholders(doc.path, doc.lines, doc.placeholder_texts)


class EmptyOutputBlock(TextRule):
    name = "empty_output_block"
    fix = "paste the command's real output into the block, or remove the block"

    def find(self, doc: Document) -> Iterator[Finding]:
        return empty_blocks(doc.path, doc.blocks)


class Contradiction(TextRule):
    name = "contradiction"
    fix = (
        "a check your own report records as FAIL must be fixed before Status: PASS; fix it, or "
        "report Status: FAIL; give one Status line (quoted output goes in fenced blocks, where "
        "Status lines do not count)"
    )

    def find(self, doc: Document) -> Iterator[Finding]:
        # only a report that claims PASS can contradict itself
        if doc.report and verdict(doc.lines) == "PASS":
            yield from contradictions(doc.path, doc.lines, doc.kind)


RULES: tuple[TextRule, ...] = (
    UnexpandedShell(),
    Placeholder(),
    EmptyOutputBlock(),
    Contradiction(),
)
DEFAULT_RULES: tuple[str, ...] = tuple(r.name for r in RULES if r.default)


def known_rule(name: str) -> str:
    """An evidence rule's name as a config or plan gives it: one of RULES."""
    known = [r.name for r in RULES]
    if name not in known:
        raise ValueError(f"unknown evidence rule {name!r}; known: {', '.join(known)}")
    return name


# How to repair each rule, for the remediation prompt: the rules' own, and the lines a plan
# requires (`report_requires`, `completion_requires`).
FIXES: dict[str, str] = {
    **{r.name: r.fix for r in RULES},
    "phase_line": "add a line `Phase: <this phase id>`",
    "timestamp_line": "add a line `Completed: <date and time>` with the real date "
    "(date +%Y-%m-%dT%H:%M:%S%z)",
}


def check_text(
    text: str,
    path: str,
    *,
    rules: Collection[str],
    placeholder_texts: Collection[str] = (),
    requires: Collection[str] = (),
    phase_id: str = "",
    kind: str = "other",
    report: bool = False,
) -> list[Finding]:
    """Every finding of the enabled `rules` (and the `requires`d lines) in one file's text.

    The contradiction rule applies to a report whose Status lines say PASS.
    """
    lines, blocks = parse(text)
    doc = Document(path, lines, blocks, placeholder_texts, kind, report)
    found = [f for rule in RULES if rule.name in rules for f in rule.find(doc)]
    if "phase" in requires:
        found += phase_line(path, lines, phase_id)
    if "timestamp" in requires:
        found += timestamp_line(path, lines)
    return sorted(found, key=lambda f: (f.line, f.rule))


def status_lines(lines: list[Line]) -> list[tuple[int, str]]:
    """(line, 'PASS' or 'FAIL') of every Status line outside fenced blocks: a fenced block is
    quoted output (a test runner's, an earlier report's), not the worker's verdict."""
    found = []
    for line in lines:
        if line.block is not None or not (m := STATUS.match(line.text)):
            continue
        if _FAIL_VALUE.search(m["value"]):
            found.append((line.no, "FAIL"))
        elif _PASS_VALUE.match(m["value"]):
            found.append((line.no, "PASS"))
    return found


def verdict(lines: list[Line]) -> str | None:
    """'PASS' only when every Status line outside fences says PASS; 'FAIL' if one says FAIL;
    None without any."""
    said = {v for _, v in status_lines(lines)}
    return None if not said else ("PASS" if said == {"PASS"} else "FAIL")


def report_status(text: str) -> tuple[str | None, str]:
    """A report's verdict ('PASS', 'FAIL' or None without a Status line outside fences) and,
    when its Status lines disagree, why (else '')."""
    lines, _ = parse(text)
    found = status_lines(lines)
    said = verdict(lines)
    if said != "FAIL" or all(v == "FAIL" for _, v in found):
        return said, ""
    first_pass = next(n for n, v in found if v == "PASS")
    first_fail = next(n for n, v in found if v == "FAIL")
    return "FAIL", (
        f"Status: PASS (line {first_pass}) and Status: FAIL (line {first_fail}) disagree; "
        "a report has one verdict"
    )
