"""Daemon settings: the pydantic schema, durations, and loading from TOML with errors that name
the key.

Lookup order for the file: `--config`, `$ORCHESTRD_CONFIG`, `/etc/orchestrd/orchestrd.toml`,
then the bundled local default (`orchestrd/local.toml`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from . import evidence
from .errors import ConfigError, describe_validation_error
from .fsutil import DEFAULT_MAX_BYTES
from .limits import AUTH_PATTERNS, RATE_LIMIT_PATTERNS

SYSTEM_CONFIG = Path("/etc/orchestrd/orchestrd.toml")
BUNDLED_CONFIG = Path(__file__).with_name("local.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`"250ms"`, `"0.2s"`, `"5m"`, `"1h"`, or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as "250ms", "30s", "5m" or a number of seconds')
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f'{value!r} seconds is far too long; write e.g. "1h"') from None
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    elif isinstance(value, str) and _DURATION.match(value.strip().removeprefix("-")):
        raise ValueError(
            f'{value!r}: a duration must be positive (greater than zero); write e.g. "30s"'
        )
    else:
        raise ValueError(
            f'{value!r} is not a duration; write e.g. "250ms", "30s", "5m", "1h" '
            "or a number of seconds"
        )
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{value!r}: a duration must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_duration_or_off(value: object) -> float | bool:
    """A duration, or `false` / `"off"` for a rule that is off."""
    if value is False or value == "off":
        return False
    return parse_duration(value)


OffOrDuration = Annotated[float | Literal[False], BeforeValidator(parse_duration_or_off)]


def _compile_all(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ValueError(f"{p!r} is not a valid regex: {exc}") from None
    return patterns


Regexes = Annotated[list[str], AfterValidator(_compile_all)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(Strict):
    """The polling/timeout policy. The defaults are the manual procedure's numbers (5 min × 6)."""

    poll_interval: Duration = Field(300.0, description="time between polls of a running worker")
    max_polls: int = Field(6, gt=0, description="polls before a still-running worker is stalled")
    stop_grace: Duration = Field(10.0, description="SIGTERM → wait this long → SIGKILL")
    max_remediations: int = Field(
        2, ge=0, description="remediation workers per phase before the phase fails"
    )
    silence_timeout: OffOrDuration | None = Field(
        None,
        description="no output (or stream event) and no CPU this long: stalled early; unset: "
        "the profile's, else off for text and 10m for stream formats; false: off",
    )
    exit_grace: Duration = Field(
        30.0, description="after a stream's final result, the worker must exit within this"
    )


class PolicyOverride(Strict):
    """Any subset of Policy, for a plan or a phase."""

    poll_interval: Duration | None = None
    max_polls: int | None = Field(None, gt=0)
    stop_grace: Duration | None = None
    max_remediations: int | None = Field(None, ge=0)
    silence_timeout: OffOrDuration | None = None
    exit_grace: Duration | None = None


OutputFormat = Literal["text", "codex-json", "claude-stream-json", "gemini-stream-json"]


class ModelPrice(Strict):
    """USD per million tokens of each kind, for cost estimates where the CLI reports none."""

    input: float = Field(ge=0, description="input tokens not read from a cache")
    cached_input: float = Field(ge=0, description="input tokens read from a cache")
    output: float = Field(ge=0, description="output tokens, reasoning included")


class Budgets(Strict):
    """Spending limits; each one unset means no limit. A plan's own may only be lower."""

    attempt_max_tokens: int | None = Field(None, gt=0, description="tokens of one attempt")
    attempt_max_cost_usd: float | None = Field(None, gt=0, description="USD of one attempt")
    plan_max_tokens: int | None = Field(None, gt=0, description="tokens of a whole plan")
    plan_max_cost_usd: float | None = Field(None, gt=0, description="USD of a whole plan")
    plan_max_wall: Duration | None = Field(
        None, description="wall-clock time of a whole plan, remediations included"
    )
    daily_max_cost_usd: float | None = Field(
        None, gt=0, description="USD of all plans of the daemon in one UTC day"
    )

    def limits(self) -> dict[str, float | None]:
        return {k: None if v is None else float(v) for k, v in self.model_dump().items()}


class WorkerProfile(Strict):
    """How to start one kind of worker: an argv template and extra environment."""

    command: list[str] = Field(
        description="argv; placeholders {prompt} {prompt_file} {plan} {phase} {attempt} {log} "
        "{python}",
    )
    env: dict[str, str] = Field(default_factory=dict, description="added to the worker's env")
    dangerous: bool = Field(
        False, description="gives the worker unsandboxed access (also inferred from its flags)"
    )
    rate_limit_patterns: Regexes = Field(
        default_factory=lambda: list(RATE_LIMIT_PATTERNS),
        description="regexes over the end of a failed attempt's log that mean a rate or usage "
        "limit (a named group `reset` holds the reset time): the profile is parked",
    )
    auth_patterns: Regexes = Field(
        default_factory=lambda: list(AUTH_PATTERNS),
        description="regexes over the end of a failed attempt's log that mean the login "
        "failed: the profile is blocked until `orchestrd unblock` or a reload",
    )
    auth_exit_codes: list[int] | None = Field(
        None, description="exit codes that mean the login failed; default: 41 for gemini"
    )
    rate_limit_backoff: Duration = Field(
        60.0, description="a limit with no reset time parks this long, doubling to 1h"
    )
    rate_limit_margin: Duration = Field(
        60.0, description="added to a printed reset time (coarse, and clocks differ)"
    )
    silence_timeout: OffOrDuration | None = Field(
        None, description="as [policy].silence_timeout, for this profile's workers"
    )
    worker_user: str | None = Field(None, description="overrides the config's worker_user")
    worker_group: str | None = Field(None, description="overrides the config's worker_group")
    output: OutputFormat = Field(
        "text",
        description="how its stdout is read: text (opaque), codex-json, "
        "claude-stream-json or gemini-stream-json (usage, cost, budgets)",
    )
    model: str | None = Field(
        None, description="the model it runs, for [prices] when its stream does not say (codex)"
    )
    launcher: Literal["local", "slurm"] | None = Field(
        None, description="where this profile's workers run; default: the config's launcher"
    )
    memory_max: int | Annotated[str, Field(pattern=r"^(\d+[KMGT]?|max)$")] | None = Field(
        None,
        description="the worker's cgroup memory.max (bytes, or e.g. '2G'); its OOM kills are "
        "reported in worker.exited",
    )
    pids_max: int | None = Field(None, gt=0, description="the worker's cgroup pids.max")
    cpu_weight: int | None = Field(
        None, ge=1, le=10000, description="the worker's cgroup cpu.weight (default 100)"
    )

    @property
    def limits(self) -> dict[str, str | int]:
        """The cgroup limits this profile sets (memory.max, pids.max, cpu.weight)."""
        return {
            key: value
            for key in ("memory_max", "pids_max", "cpu_weight")
            if (value := getattr(self, key)) is not None
        }

    @property
    def dangerous_flags(self) -> list[str]:
        """Why this profile is dangerous: its sandbox-bypass flags, or `dangerous = true`."""
        flags = [a for a in self.command if a in DANGEROUS_FLAGS]
        # option + value, written as two arguments or as `--option=value`
        for option, value in zip(self.command, [*self.command[1:], ""], strict=True):
            if value in DANGEROUS_OPTION_VALUES.get(option, ()):
                flags.append(f"{option} {value}")
        for arg in self.command:
            option, _, value = arg.partition("=")
            if value in DANGEROUS_OPTION_VALUES.get(option, ()) and arg not in flags:
                flags.append(arg)
        return flags or (["dangerous = true"] if self.dangerous else [])

    @pydantic.field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: list[str]) -> list[str]:
        if not command:
            raise ValueError(
                'is empty; give the program and its arguments, e.g. ["codex", "exec", "{prompt}"]'
            )
        for arg in command:
            for name in re.findall(r"\{(\w*)\}", arg):
                if name not in PLACEHOLDERS:
                    raise ValueError(
                        f"unknown placeholder {{{name}}} in {arg!r}; use one of "
                        + ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
                    )
        return command


PLACEHOLDERS = frozenset({"prompt", "prompt_file", "plan", "phase", "attempt", "log", "python"})

# Agent CLI flags that switch off the agent's own sandbox and approval prompts.
DANGEROUS_FLAGS = frozenset(
    {
        "--dangerously-bypass-approvals-and-sandbox",  # codex
        "--dangerously-skip-permissions",  # claude
        "--allow-dangerously-skip-permissions",  # claude
        "--yolo",  # gemini, codex
    }
)
# Options whose value switches the sandbox off.
DANGEROUS_OPTION_VALUES: dict[str, frozenset[str]] = {
    "--approval-mode": frozenset({"yolo"}),  # gemini
    "--sandbox": frozenset({"danger-full-access"}),  # codex
    "-s": frozenset({"danger-full-access"}),  # codex
    "--permission-mode": frozenset({"bypassPermissions"}),  # claude
}

# Names of environment variables whose values are secrets: never written to the audit log.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


class AuditSettings(Strict):
    path: Path | None = Field(
        None, description="JSON-lines audit log; default <state_dir>/audit.jsonl"
    )


PhaseKind = Literal["stub", "test", "impl", "verify", "other"]
# The rules, their names and defaults are evidence.RULES' own: a new rule is one class there.
EvidenceRule = Annotated[str, AfterValidator(evidence.known_rule)]

# Output that shows an expected failure is no red at all: the runner or the shell broke, so
# nothing was tested (a rejected option, a missing module, a workspace with no test files).
BROKEN_RUN = [
    r"Unknown option",
    r"CACError",
    r"Cannot find module",
    r"ERR_MODULE_NOT_FOUND",
    r"No test files found",
    r"command not found",
    r"\bSyntaxError\b",
    r"\bModuleNotFoundError\b",
    r"\bImportError\b",
    r"error: unrecognized arguments",
    r"(?i)\bno tests ran\b",
    r"\bRan 0 tests\b",
]
# Output that shows a passing run tested nothing.
EMPTY_RUN = [r"No test files found", r"(?i)\bno tests ran\b", r"\bRan 0 tests\b"]
# Words an implementation must not add outside tests: unfinished work handed on as finished.
# `placeholder` counts, except as a property/attribute name (`placeholder="Search"`).
UNFINISHED = [
    r"\b(?:TODO|FIXME|HACK|XXX)\b",
    r"NotYetImplemented",
    r"(?i)\bfor now\b",
    r"(?i)(?<![{.$])\bplaceholder\b(?!\s*\??\s*[=:}])",
]
PLACEHOLDERS_DEFAULT = [
    "<paste",
    "<insert",
    "<fill in",
    "[fill in",
    "YYYY-MM-DD",
    "HH:MM",
    "[TODO]",
    "<TODO>",
    "[TBD]",
    "<TBD>",
    "[placeholder]",
    "<placeholder>",
]
TEST_GLOBS = [
    "**/test_*.py",
    "**/*_test.py",
    "**/conftest.py",
    "**/*.test.ts",
    "**/*.spec.ts",
    "**/*.test.tsx",
    "**/*.spec.tsx",
    "**/*.test.js",
    "**/*.spec.js",
    "**/*.test.mjs",
    "**/*_test.go",
    "**/__tests__/**",
    "**/tests/**",
    "test/**",
]


class KindPatterns(Strict):
    """Regexes per phase kind: `all` applies to every kind, the kind's own list is added."""

    all: Regexes = Field(default_factory=list, description="for every phase kind")
    stub: Regexes = Field(default_factory=list, description="added for stub phases")
    test: Regexes = Field(default_factory=list, description="added for test phases")
    impl: Regexes = Field(default_factory=list, description="added for impl phases")
    verify: Regexes = Field(default_factory=list, description="added for verify phases")
    other: Regexes = Field(default_factory=list, description="added for other phases")

    def for_kind(self, kind: PhaseKind) -> list[str]:
        return [*self.all, *getattr(self, kind)]


class ExpectFailPatterns(KindPatterns):
    """What the output of an `expect = "fail"` command must not show (red for a wrong reason)."""

    all: Regexes = Field(
        default_factory=lambda: list(BROKEN_RUN),
        description="the runner or shell broke, nothing was tested",
    )
    test: Regexes = Field(
        default_factory=lambda: ["NotYetImplemented"],
        description="a red test phase fails on assertions, not on a stub's throw",
    )


class ExpectPassPatterns(KindPatterns):
    """What the output of an `expect = "pass"` command must not show (green for no reason)."""

    all: Regexes = Field(
        default_factory=lambda: list(EMPTY_RUN), description="a run that tested nothing"
    )


class ForbiddenPatterns(KindPatterns):
    """Regexes searched in the lines a worker added to non-test files."""

    impl: Regexes = Field(
        default_factory=lambda: list(UNFINISHED),
        description="an implementation hands on no unfinished work",
    )


def check_globs(patterns: list[str]) -> list[str]:
    for p in patterns:
        if not p.strip() or p.startswith(("/", "~")) or ".." in p.split("/"):
            raise ValueError(
                f'{p!r}: a glob is relative to the repo, e.g. "src/**/*.ts"; '
                "no leading '/', '~' or '..'"
            )
    return patterns


Globs = Annotated[list[str], AfterValidator(check_globs)]


class CheckSettings(Strict):
    log_error_patterns: Regexes = Field(
        default_factory=lambda: [r"Traceback \(most recent call last\)", r"\bError:"],
        description="regexes searched in a worker's log after it exits",
    )
    fail_on_log_errors: bool = Field(
        False, description="a log match fails the phase (otherwise it is only reported)"
    )
    verify_shell: list[str] = Field(
        default_factory=lambda: ["/bin/sh", "-c"], description="how verify commands are run"
    )
    evidence_rules: list[EvidenceRule] = Field(
        default_factory=lambda: list(evidence.DEFAULT_RULES),
        description="rules applied to report and completion files (a phase may override)",
    )
    placeholders: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(PLACEHOLDERS_DEFAULT),
        description="template text that must not be left in report/completion files "
        "(literal, any case)",
    )
    expect_fail_must_not_match: ExpectFailPatterns = Field(
        default_factory=ExpectFailPatterns,
        description="per phase kind: regexes an expected failure's output must not match",
    )
    expect_pass_must_not_match: ExpectPassPatterns = Field(
        default_factory=ExpectPassPatterns,
        description="per phase kind: regexes an expected pass's output must not match",
    )
    forbidden_patterns: ForbiddenPatterns = Field(
        default_factory=ForbiddenPatterns,
        description="per phase kind: regexes the lines a worker adds to non-test files must "
        "not match (a phase's forbidden_patterns replaces them)",
    )
    forbid_test_changes: list[PhaseKind] = Field(
        default_factory=lambda: list[PhaseKind](["impl"]),
        description="phase kinds whose workers must not change test files (a phase may override)",
    )
    max_evidence_bytes: int = Field(
        DEFAULT_MAX_BYTES,
        gt=0,
        description="a report or completion file larger than this fails its check unread",
    )
    test_globs: Globs = Field(
        default_factory=lambda: list(TEST_GLOBS),
        description="repo-relative globs of test files (** matches any folders)",
    )
    git_timeout: Duration = Field(
        30.0, description="each git command of the before/after snapshot is stopped after this"
    )


class SpoolSettings(Strict):
    rescan_interval: Duration = Field(
        0.5,
        description="the inbox is rescanned this often besides inotify (missed events); "
        "also bounds how long shutdown waits for the watcher thread",
    )
    max_plan_bytes: int = Field(
        1024 * 1024, gt=0, description="a larger file in the inbox is rejected unread"
    )


DEFAULT_NOTIFY_ON = [
    "plan.succeeded",
    "plan.failed",
    "plan.merge_failed",
    "plan.paused",
    "phase.failed",
    "daemon.reload_failed",
    "profile.parked",
    "profile.blocked",
]


class NotifyTarget(Strict):
    """One `[[notify]]` entry: which events, and a command or a URL to send them to."""

    on: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_ON),
        description="event names or globs (`check.*`); notify.* events are never sent",
    )
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="argv; the event JSON on stdin, the report in $ORCHESTRD_REPORT_FILE",
    )
    url: str | None = Field(None, pattern=r"^https?://", description="HTTP POST to this URL")
    format: Literal["json", "slack", "ntfy"] = Field(
        "json", description='url only: the event, {"text": …}, or ntfy\'s plain text'
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="url only; `$NAME`/`${NAME}` in a value is the daemon's environment variable",
    )
    timeout: Duration = Field(10.0, description="one delivery attempt is stopped after this")
    retry_for: Duration = Field(3600.0, description="retried with backoff for this long")
    backoff: Duration = Field(5.0, description="first retry after this, doubling up to 5 min")

    @pydantic.model_validator(mode="after")
    def _one_destination(self) -> NotifyTarget:
        if (self.command is None) == (self.url is None):
            raise ValueError('give either command = [argv] or url = "https://…", not both')
        return self


class MetricsSettings(Strict):
    textfile: Path | None = Field(
        None, description="write Prometheus metrics here (node_exporter's textfile collector)"
    )
    interval: Duration = Field(15.0, description="how often the textfile is rewritten")


LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def parse_listen(value: str) -> tuple[str, str | int]:
    """`"unix:/path"` → ("unix", path); `"HOST:PORT"` (`[::1]:PORT` for IPv6) → (host, port)."""
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(
                f"{value!r}: a unix socket needs an absolute path, e.g. "
                '"unix:/run/orchestrd/http.sock"'
            )
        return "unix", path
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f'{value!r} is not "unix:/path" or "HOST:PORT"; write e.g. '
            '"127.0.0.1:8765" or "unix:/run/orchestrd/http.sock"'
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class HttpSettings(Strict):
    """The read-only status page and JSON API (orchestrd.web)."""

    listen: str = Field(
        description='"unix:/run/orchestrd/http.sock" or "HOST:PORT" (port 0: any free port)'
    )
    token: str | None = Field(
        None,
        min_length=16,
        description="bearer token every request but /healthz must carry; required unless "
        "listen is a unix socket or a loopback address",
    )
    socket_group: str | None = Field(
        "orchestrd", description="group of the unix socket (mode 0660), if that group exists"
    )
    max_connections: int = Field(64, gt=0, description="connections at once; more are answered 503")
    timeout_keep_alive: Duration = Field(
        5.0, description="an idle keep-alive connection is closed after this"
    )

    @pydantic.field_validator("listen")
    @classmethod
    def _valid_listen(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @pydantic.model_validator(mode="after")
    def _token_off_loopback(self) -> HttpSettings:
        host, _ = parse_listen(self.listen)
        if host != "unix" and not is_loopback(host) and self.token is None:
            raise ValueError(
                f"listen = {self.listen!r} is reachable from other machines: set token = "
                '"<a long random string>" (e.g. `openssl rand -hex 32`) or listen on '
                "127.0.0.1 or a unix socket"
            )
        return self


class ContainmentSettings(Strict):
    cgroup_parent: Path | None = Field(
        None,
        description="outside systemd: the cgroup v2 directory under which the daemon makes its "
        "workers' cgroups; default: the daemon's own cgroup. Not writable: process groups",
    )


class SlurmSettings(Strict):
    """[launchers.slurm]: workers as batch jobs on a Slurm cluster whose nodes share the daemon's
    filesystem (same paths)."""

    partition: str | None = Field(None, description="sbatch --partition; default: the cluster's")
    constraint: str | None = Field(None, description="sbatch --constraint (node features)")
    time_limit: str | None = Field(
        None, description="sbatch --time (e.g. '2:00:00'); default: the partition's"
    )
    sbatch_args: list[str] = Field(
        default_factory=list, description="more sbatch options, e.g. ['--mem=8G', '--qos=low']"
    )
    poll_interval: Duration = Field(
        1.0, gt=0, description="how often squeue/scontrol and the shim's status file are read"
    )
    bin: Path | None = Field(
        None, description="folder of sbatch, squeue, scancel and scontrol; default: PATH"
    )
    python: str = Field(
        "python3", description="the python on the nodes that runs the shim around each worker"
    )
    max_jobs: int = Field(100, gt=0, description="jobs submitted at once (pending or running)")


class LaunchersSettings(Strict):
    slurm: SlurmSettings = SlurmSettings()


class Config(Strict):
    state_dir: Path = Field(Path("/var/lib/orchestrd"), description="plans/<id>/ live here")
    default_worker: str = Field("codex", description="profile used when a plan names none")
    max_workers: int = Field(8, gt=0, description="workers running at once, across all plans")
    isolation: Literal["none", "worktree"] = Field(
        "none",
        description='plans without the key: "none" runs them in the checkout, one per repo at '
        'a time; "worktree" in a git worktree each, side by side',
    )
    merge_recheck: Duration = Field(
        10.0,
        description="a merge blocked by uncommitted changes in the checkout is tried again "
        "this often (or at once on `orchestrd merge PLAN`)",
    )
    allowed_repo_roots: list[Path] = Field(
        default_factory=lambda: [Path("/srv/repos")],
        description="a plan's repo must be inside one of these",
    )
    env_passthrough: list[str] = Field(
        default_factory=list, description="daemon env variables passed on to workers"
    )
    audit: AuditSettings = AuditSettings()
    policy: Policy = Policy()
    checks: CheckSettings = CheckSettings()
    spool: SpoolSettings = SpoolSettings()
    http: HttpSettings | None = Field(
        None, description="serve the status page and JSON API; absent: nothing is served"
    )
    workers: dict[str, WorkerProfile] = Field(default_factory=dict)
    allow_dangerous_workers: bool = Field(
        False, description="let plans use profiles that bypass the agent's sandbox"
    )
    allow_root: bool = Field(
        False, description="let the daemon run as root (workers then need a worker_user)"
    )
    allow_root_workers: bool = Field(
        False,
        description="let a root daemon without worker_user run workers as root: only "
        "for throwaway containers where root is the only user (CI)",
    )
    worker_user: str | None = Field(
        None,
        description="workers and verify commands run as this user (privilege separation); "
        "needs root or CAP_SETUID+CAP_SETGID, else workers run as the daemon's user",
    )
    worker_group: str | None = Field(
        None, description="the workers' primary group; default: worker_user's own"
    )
    worker_pid_namespace: bool = Field(
        True,
        description="each worker alone in a user+PID namespace: its kill -9 -1 or "
        "pkill reaches no other plan's workers (needs unprivileged user namespaces)",
    )
    handoff_dir: Path | None = Field(
        None,
        description="per-attempt folders the worker user reads its prompt and the failed "
        "log from; default <state_dir>-handoff",
    )
    allowed_submitters: list[str] = Field(
        default_factory=list,
        description="users/groups whose inbox files are accepted; empty: anyone who can write",
    )
    redact: Regexes = Field(
        default_factory=list, description="regexes whose matches never reach the audit log"
    )
    max_log_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="a worker log is cut at this size (rest counted)"
    )
    notify: list[NotifyTarget] = Field(
        default_factory=list, description="[[notify]]: where events are sent, at least once"
    )
    metrics: MetricsSettings = MetricsSettings()
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="[prices.MODEL]: USD per million tokens, for cost estimates (a dated model "
        "id uses the longest entry it starts with)",
    )
    budgets: Budgets = Budgets()
    launcher: Literal["local", "slurm"] = Field(
        "local",
        description="where workers run: local (this machine, a cgroup per attempt) or slurm "
        "(batch jobs, [launchers.slurm])",
    )
    launchers: LaunchersSettings = LaunchersSettings()
    containment: ContainmentSettings = ContainmentSettings()

    @pydantic.model_validator(mode="after")
    def _default_worker_exists(self) -> Config:
        # with no profiles at all too: every plan that names none would fail at its first start
        if self.default_worker not in self.workers:
            raise ValueError(
                f"default_worker = {self.default_worker!r} names no [workers.*] profile; "
                f"define [workers.{self.default_worker}] or pick one of: "
                + (", ".join(sorted(self.workers)) or "(none defined)")
            )
        return self

    @property
    def audit_path(self) -> Path:
        return self.audit.path if self.audit.path is not None else self.state_dir / "audit.jsonl"

    def policy_for(self, *overrides: PolicyOverride | None) -> Policy:
        """The config policy with plan and phase overrides applied, later ones winning."""
        merged: dict[str, Any] = self.policy.model_dump()
        for o in overrides:
            if o is not None:
                merged.update(o.model_dump(exclude_none=True))
        return Policy(**merged)


def read_toml(path: Path, error: type[Exception], max_bytes: int | None = None) -> dict[str, Any]:
    """Parse a TOML file; every failure becomes `error` with the file name and the fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{path}: larger than {max_bytes} bytes; plans must be small TOML files")
    return parse_toml_bytes(path, raw, error)


def parse_toml_bytes(path: Path | str, raw: bytes, error: type[Exception]) -> dict[str, Any]:
    if not raw.strip():
        raise error(f"{path}: the file is empty; write a TOML document")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8 TOML"
        ) from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise error(f"{path}: invalid TOML: nested too deeply; flatten the document") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}; fix the syntax there") from None


def _absolute(p: Path, source: Path | str, key: str) -> Path:
    try:
        expanded = p.expanduser()
    except RuntimeError:  # `~name` of a user that does not exist
        raise ConfigError(
            f"{source}: {key}: {str(p)!r} is the home folder of no known user; "
            "write an absolute path"
        ) from None
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


def config_from_dict(data: dict[str, Any], source: Path | str) -> Config:
    try:
        cfg = Config.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(source, Config, exc)) from None
    # relative paths in a config are relative to the directory orchestrd runs in
    audit_path = cfg.audit.path
    audit = cfg.audit.model_copy(
        update={"path": _absolute(audit_path, source, "audit.path") if audit_path else None}
    )
    return cfg.model_copy(
        update={
            "state_dir": _absolute(cfg.state_dir, source, "state_dir"),
            "allowed_repo_roots": [
                _absolute(r, source, f"allowed_repo_roots[{i}]")
                for i, r in enumerate(cfg.allowed_repo_roots)
            ],
            "audit": audit,
            "handoff_dir": _absolute(cfg.handoff_dir, source, "handoff_dir")
            if cfg.handoff_dir
            else None,
        }
    )


def check_state_dir(config: Config, source: Path | str) -> None:
    """state_dir must be a folder this user can write, or one it can create; otherwise the
    first file opened there (the audit log) would be blamed instead of the key."""
    path = config.state_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "point state_dir at a folder the daemon's user can write (or create)"
    if not existing.is_dir():
        raise ConfigError(
            f"{source}: state_dir: {str(path)!r} cannot be used: {existing} is not a folder; {fix}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{source}: state_dir: {str(path)!r} cannot be used: {existing} is "
            f"not writable by this user (uid {os.geteuid()}); {fix}"
        )


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use, in lookup order."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("ORCHESTRD_CONFIG"):
        return Path(env)
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return BUNDLED_CONFIG


def load_config(explicit: str | os.PathLike[str] | None = None) -> tuple[Config, Path]:
    path = find_config(explicit)
    return config_from_dict(read_toml(path, ConfigError), path), path
