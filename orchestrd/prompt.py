"""What a worker is told and given: its command line, its prompt (the phase's text, the
remediation section after a failed attempt, the contract trailer that spells out the checks) and
its base environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checks import CHECKS, FIXES, CheckResult, phase_rules
from .config import CheckSettings, Config, WorkerProfile
from .errors import PlanError
from .fsutil import FileRefused, read_head, read_regular
from .plan import Phase, Plan, confine
from .worker import LOG_SCAN_BYTES, log_without_prompt

# What a worker inherits from the daemon's environment, besides env_passthrough and its profile.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
LOG_TAIL_LINES = 40
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def base_env(config: Config) -> dict[str, str]:
    names = (*BASE_ENV, *config.env_passthrough)
    return {k: os.environ[k] for k in names if k in os.environ}


def render_command(profile: WorkerProfile, values: dict[str, str]) -> list[str]:
    # one pass over the template: braces inside a substituted value (a prompt quoting
    # `f"{phase}"`) are the value's own text, never placeholders
    return [
        _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg)
        for arg in profile.command
    ]


def contract_trailer(
    plan: Plan, phase: Phase, attempt: int, role: str, report_rel: str, settings: CheckSettings
) -> str:
    """What the worker must leave behind, in words: each check's own lines (CHECKS), the same
    rules the checkpoints apply."""
    lines = [
        "",
        "---",
        f"orchestrd worker contract — plan {plan.id}, phase {phase.id}, attempt {attempt} "
        f"({role}). You run headless in {plan.repo}; nobody will answer questions.",
    ]
    rules = phase_rules(plan, phase, settings)
    for check in CHECKS:
        lines += check.trailer(plan, phase, rules, report_rel)
    lines.append("Exit when finished.")
    return "\n".join(lines) + "\n"


def remediation_section(
    failed: list[CheckResult], failed_log: Path, tail: str, baseline: str | None = None
) -> str:
    """The failed checks with their places and rules, how to fix each rule, and the log's end."""
    lines = [
        "",
        "## Remediation",
        "A previous worker on this phase did not finish it. These checks failed:",
    ]
    lines += [f"- {r.name}: {r.reason}" for r in failed]
    rules = list(dict.fromkeys(str(r.details["rule"]) for r in failed if "rule" in r.details))
    if rules:
        lines += ["", "How to fix each rule named above:"]
        lines += [f"- {rule}: {FIXES[rule]}" for rule in rules if rule in FIXES]
    if baseline:
        lines.append(
            f"The phase started at commit {baseline}; `git diff {baseline}` shows what changed "
            "since (files the phase must not change are judged against it)."
        )
    lines += [
        "",
        f"The last lines of its log ({failed_log}):",
        "```",
        tail,
        "```",
        "Repair what is missing or wrong, then meet the contract below.",
    ]
    # a NUL byte (a binary file dumped into the log) cannot travel in argv or the environment
    return ("\n".join(lines) + "\n").replace("\0", "")


def log_tail_without(log: Path, prompt_file: Path, lines: int) -> str:
    """The end of a worker's log without the prompt the agent echoed into it: the prompt is
    not the worker's output, and the next worker gets its own."""
    try:
        prompt = read_head(prompt_file, LOG_SCAN_BYTES).decode("utf-8", errors="replace")
    except (OSError, FileRefused):
        prompt = ""
    try:
        text = log_without_prompt(log, prompt, "[the prompt, echoed by the agent]")
    except FileRefused as exc:
        return f"[orchestrd: the log is not read: it {exc}]"
    return "\n".join(text.splitlines()[-lines:])


MAX_PROMPT_FILE = 4 * 1024 * 1024


def read_prompt_file(plan: Plan, rel: str) -> str:
    """A phase's prompt file, which an earlier phase's worker may have replaced: read by the
    daemon (perhaps as root), so a link leading out of the repo is refused (PlanError; it would
    hand the daemon's files to the next worker), and so is anything but a regular file (a FIFO
    would block) or a file over MAX_PROMPT_FILE."""
    path = confine(plan.repo, plan.in_plan_dir(rel))
    try:
        raw = read_regular(path, MAX_PROMPT_FILE, "the prompt file limit", follow=False)
    except FileRefused as exc:
        raise PlanError(f"prompt_file {plan.in_plan_dir(rel)}: {exc}") from None
    return raw.decode("utf-8", errors="replace")


def tried_section(attempt: int, diffstat: str) -> str:
    """What the failed attempt changed, so the next worker does not try the same again."""
    if not diffstat:
        return f"\nAttempt {attempt} changed no file besides its report and completion files.\n"
    return (
        f"\nAttempt {attempt} changed (git diff --stat); it did not pass, so do not simply "
        f"repeat it:\n```\n{diffstat}\n```\n"
    )
