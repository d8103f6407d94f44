"""Verify commands from the shell blocks of a phase file: commands, their expected outcome
(comments, prose, `|| echo FAIL` idioms) and the pipes that hide a status."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

_EXPECT = re.compile(r"^#+\s*expected\s+to\s+(fail|pass)\b", re.IGNORECASE)
# `# Expected: No matches` on the line after a command, or after it on its line
_EXPECTED = re.compile(r"^#+\s*expected\s*:\s*(?P<text>.*)$", re.IGNORECASE)
_EXPECTED_AFTER = re.compile(r"^(?P<cmd>.*\S)\s+#+\s*expected\s*:\s*(?P<text>.*)$", re.IGNORECASE)
# prose after a block: "This should fail because …", "Expected to pass"
PROSE = re.compile(
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
FOR_A_PERSON = re.compile(r"manual|checklist|questions|semantic|holistic|criteria|assessment")
_CLOSERS = {"if": "fi", "case": "esac", "{": "}", "for": "done", "while": "done", "until": "done"}


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
class Cmd:
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
    cmds = block_commands(lines, warn)
    for cmd in cmds:
        check_pipe(cmd, warn)
    return [c.as_dict() for c in cmds]


def block_commands(lines: list[tuple[int, str]], warn: Callable[[int, str], None]) -> list[Cmd]:
    out: list[Cmd] = []
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
            _command(Cmd(start, cmd, state, "fail" if expect_fail else "pass", said=expect_fail))
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
        out.append(Cmd(start, "\n".join(pending).strip(), state, "fail" if expect_fail else "pass"))
    elif unused:
        warn(unused, f"{state[-1]!r} ends its block: no command uses it; not imported")
    return out


def _comment(text: str, no: int, prev: Cmd | None, warn: Callable[[int, str], None]) -> None:
    """A comment line of a block: `# Expected: …` is read into the command just before it."""
    if m := _EXPECTED.match(text):
        if prev is not None:
            _read_expected(prev, m.group("text"), no, warn)
        else:
            warn(no, f"{text!r} follows no command; not checked")
    elif re.match(r"#+\s*expect", text, re.IGNORECASE):
        warn(no, f"{text!r} is not checked: a verify command is judged by its exit code")


def _command(cmd: Cmd) -> Cmd:
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


def _status_echo(cmd: Cmd, m: re.Match[str]) -> None:
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


def _read_expected(cmd: Cmd, text: str, line: int, warn: Callable[[int, str], None]) -> None:
    """`# Expected: …` into expect (and must_match / must_not_match); warns on other forms."""
    said = _said(text)
    # the stage whose status counts once a trailing tail/head is dropped (check_pipe)
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
    cmd: Cmd,
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


def check_pipe(cmd: Cmd, warn: Callable[[int, str], None]) -> None:
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


def not_commands(heading: str) -> str:
    """Why blocks under a verification sub-heading are not commands ('' if they are):
    checks for a person, or the output the commands should print."""
    if FOR_A_PERSON.search(heading):
        return "is under a manual-check heading"
    if re.search(r"\b(?:output|results?)\b", heading):
        return "is under an expected-output heading"
    return ""


def script_command(lines: list[tuple[int, str]]) -> Cmd:
    """A block that starts with `#!`: one verify command, the block run by its interpreter."""
    body = "\n".join(text for _, text in lines).strip()
    words = shlex.split(body.splitlines()[0][2:])
    if words and PurePosixPath(words[0]).name == "env":
        words = [w for w in words[1:] if w != "-S"]
    if not words or PurePosixPath(words[0]).name == "sh":
        return Cmd(lines[0][0], body, [])  # `sh -c` reads the `#!` line as a comment
    return Cmd(lines[0][0], f"{shlex.join(words)} -c {shlex.quote(body)}", [])
