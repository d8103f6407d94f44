"""The plan file schema: plan, phases, verify commands; path rules that keep a plan inside its
repo, globs, marker matching."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field

from .budgets import raised_above
from .config import (
    Budgets,
    Config,
    Duration,
    EvidenceRule,
    Globs,
    PhaseKind,
    PolicyOverride,
    Regexes,
    Strict,
    check_globs,
    parse_toml_bytes,
    read_toml,
)
from .errors import PlanError, describe_validation_error

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"

RequiredLine = Literal["phase", "timestamp"]
REMEDIATION_REPORT = "reports/{id}-remediation-{n}-worker.md"


def relative_path(value: str) -> str:
    """A path that must stay inside its base folder: relative, no `..`, no NUL."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty relative path")
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    p = PurePosixPath(value)
    if p.is_absolute() or value.startswith("~"):
        raise ValueError(f"{value!r} is absolute; write it relative to the plan's repo/plan_dir")
    if ".." in p.parts:
        raise ValueError(f"{value!r} leaves its folder with '..'; keep paths inside the repo")
    return value


RelPath = pydantic.functional_validators.AfterValidator(relative_path)


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Patterns = Annotated[Regexes, BeforeValidator(_one_or_many)]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A repo-relative glob as a regex on `/`-separated paths: `*` and `?` stay within a folder,
    `**/` matches any folders (none included), a trailing `**` everything below."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_prefix(pattern: str) -> str:
    """The folders of a glob before its first wildcard: where a walk for it starts."""
    parts = pattern.split("/")[:-1]
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed)


class VerifyCommand(Strict):
    """A command the daemon runs itself, in the repo, after the worker; judged by its exit code
    and its output."""

    run: str = Field(min_length=1, description="shell command, run with [checks].verify_shell")
    expect: Literal["pass", "fail"] = Field("pass", description="'fail' for red test phases")
    timeout: Duration = Field(600.0, description="killed (and failed) after this long")
    must_match: Patterns = Field(
        default_factory=list,
        description="regex (or list): the output must match each, e.g. 'AssertionError' for a "
        "test phase that must be red on an assertion",
    )
    must_not_match: Patterns = Field(
        default_factory=list,
        description="regex (or list): the output must match none; added to the config's "
        "[checks.expect_fail_must_not_match] / [checks.expect_pass_must_not_match] for the "
        "phase's kind",
    )
    default_must_not_match: bool = Field(
        True, description="false: the config's must_not_match defaults do not apply to this command"
    )


class MarkerPath(Strict):
    """Files in the repo that must carry the phase's markers, e.g. `{ glob = "src/**/*.ts",
    min = 3 }`."""

    glob: str = Field(description="repo-relative glob; ** matches any folders")
    min: int = Field(1, ge=1, description="at least this many matching files hold each marker")

    @pydantic.field_validator("glob")
    @classmethod
    def _relative_glob(cls, v: str) -> str:
        return check_globs([v])[0]


class Phase(Strict):
    id: str = Field(pattern=ID_PATTERN, description="unique within the plan, e.g. P05")
    kind: PhaseKind = "other"
    prompt: str | None = Field(None, description="the worker's prompt (or prompt_file)")
    prompt_file: str | None = Field(None, description="relative to plan_dir")
    report: str | None = Field(None, description="default reports/{id}-worker.md")
    remediation_report: str | None = Field(
        None,
        description="report of remediation attempt {n} (relative to plan_dir); default "
        "reports/{id}-remediation-{n}-worker.md",
    )
    completion: list[str] | None = Field(None, description="default [.completed/{id}.md]")
    markers: list[str] = Field(default_factory=list, description="in every completion file")
    marker_paths: list[MarkerPath] = Field(
        default_factory=list, description="repo files that must carry the markers too"
    )
    prerequisites: list[str] = Field(
        default_factory=list,
        description="ids of earlier phases whose markers must be present before this one starts",
    )
    report_requires: list[RequiredLine] = Field(
        default_factory=list,
        description="lines the report must have: 'phase' (Phase: <id>), 'timestamp' (a date)",
    )
    completion_requires: list[RequiredLine] = Field(
        default_factory=list, description="the same, for every completion file"
    )
    evidence_rules: list[EvidenceRule] | None = Field(
        None, description="overrides [checks].evidence_rules ([] switches them off)"
    )
    protect: Globs = Field(
        default_factory=list,
        description="repo-relative globs of files the worker must not change (added to the "
        "plan's protect and the plan's own prompt files)",
    )
    forbid_test_changes: bool | None = Field(
        None, description="default: true for the kinds in [checks].forbid_test_changes (impl)"
    )
    forbidden_patterns: Regexes | None = Field(
        None,
        description="regexes the lines the worker adds to non-test files must not match; "
        "default [checks.forbidden_patterns] for the kind; [] switches them off",
    )
    policy: PolicyOverride | None = None
    fail_on_log_errors: bool | None = Field(None, description="overrides [checks]")
    verify: list[VerifyCommand] = Field(default_factory=list)
    precheck: list[VerifyCommand] = Field(
        default_factory=list,
        description="commands run before the phase's first worker (after its prerequisites); "
        "one that does not end as expected fails the phase before any worker starts",
    )
    remediation_worker: str | None = Field(
        None, description="profile of this phase's remediation workers (e.g. a stronger model)"
    )
    remediation_backoff: Duration | None = Field(
        None, description="wait this long after a failed attempt before the next one"
    )
    allow_no_changes: bool | None = Field(
        None,
        description="a phase that changes nothing but its report and completion files "
        "passes (default: true for verify and other phases)",
    )

    @pydantic.field_validator("prompt_file", "report")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return None if v is None else relative_path(v)

    @pydantic.field_validator("remediation_report")
    @classmethod
    def _remediation_template(cls, v: str | None) -> str | None:
        if v is None:
            return None
        for name in re.findall(r"\{(\w*)\}", v):
            if name not in ("n", "id"):
                raise ValueError(
                    f"unknown placeholder {{{name}}} in {v!r}; use {{n}} (the remediation "
                    "number) and {id} (the phase id)"
                )
        return relative_path(v)

    @pydantic.field_validator("completion")
    @classmethod
    def _relative_list(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [relative_path(p) for p in v]

    @pydantic.model_validator(mode="after")
    def _one_prompt(self) -> Phase:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError('give exactly one of prompt = "..." or prompt_file = "path"')
        if self.marker_paths and not self.markers:
            raise ValueError(
                "marker_paths: the phase has no markers to look for; add "
                f'markers = ["@plan:PLAN.{self.id}"] or remove marker_paths'
            )
        return self

    @property
    def report_path(self) -> str:
        return self.report or f"reports/{self.id}-worker.md"

    def report_for(self, remediation: int) -> str:
        """The report of the primary attempt (0) or of remediation attempt `remediation`."""
        if remediation == 0:
            return self.report_path
        template = self.remediation_report or REMEDIATION_REPORT
        return template.replace("{n}", str(remediation)).replace("{id}", self.id)

    @property
    def completion_paths(self) -> list[str]:
        return self.completion if self.completion is not None else [f".completed/{self.id}.md"]


class Plan(Strict):
    id: str = Field(pattern=ID_PATTERN, description="[A-Za-z0-9._-], at most 128 characters")
    repo: Path = Field(description="absolute path of the checkout the workers run in")
    plan_dir: str = Field("", description="relative to repo; base of report/completion paths")
    worker: str | None = Field(None, description="worker profile; default from the config")
    policy: PolicyOverride | None = None
    budgets: Budgets | None = Field(
        None, description="lower spending limits for this plan (never above the config's)"
    )
    protect: Globs = Field(
        default_factory=list,
        description="repo-relative globs of files no worker of this plan may change",
    )
    phases: list[Phase] = Field(min_length=1)
    isolation: Literal["none", "worktree"] | None = Field(
        None,
        description='"worktree": the plan runs in a git worktree of its own, beside other '
        "plans on the repo; default the config's isolation",
    )
    base: str | None = Field(
        None,
        description="worktree plans: the branch or commit they start from, fixed when the plan "
        "is accepted; default the repo's current branch",
    )
    merge: Literal["branch", "rebase"] = Field(
        "branch",
        description='worktree plans: "branch" leaves the result on orchestrd/<plan-id>; '
        '"rebase" merges it through the repo\'s merge queue',
    )
    target: str | None = Field(
        None, description='the branch a merge = "rebase" plan is merged into; default its base'
    )
    merge_verify: list[VerifyCommand] | None = Field(
        None,
        description="run on the rebased branch before it is merged; default the last phase's "
        'verify commands with expect = "pass"',
    )
    delete_branch: bool = Field(
        False, description="delete orchestrd/<plan-id> when the plan is archived, if merged"
    )

    @pydantic.field_validator("id")
    @classmethod
    def _not_dots(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(f"{v!r} names a folder, not a plan; use letters or digits")
        return v

    @pydantic.field_validator("repo")
    @classmethod
    def _sane_repo(cls, v: Path) -> Path:
        text = str(v)
        if "\0" in text:
            raise ValueError("must not contain a NUL byte")
        if len(text.encode()) > 4000 or any(len(p.encode()) > 255 for p in v.parts):
            raise ValueError("is too long for a path; use the checkout's real, short path")
        return v

    @pydantic.field_validator("plan_dir")
    @classmethod
    def _plan_dir(cls, v: str) -> str:
        return v if v in ("", ".") else relative_path(v)

    def in_plan_dir(self, rel: str) -> str:
        """A plan_dir-relative path as a repo-relative one."""
        return os.path.normpath(os.path.join(self.plan_dir, rel)) if self.plan_dir else rel

    def phase(self, phase_id: str) -> Phase:
        for p in self.phases:
            if p.id == phase_id:
                return p
        raise KeyError(phase_id)

    def protected_globs(self, phase: Phase) -> list[str]:
        """What `phase`'s workers must not change: the plan's own prompt files, `protect`."""
        prompts = [self.in_plan_dir(p.prompt_file) for p in self.phases if p.prompt_file]
        return [*prompts, *self.protect, *phase.protect]

    def contract_files(self) -> list[re.Pattern[str]]:
        """Repo-relative paths (as regexes) of every report and completion file of the plan:
        what workers are asked to write, never a violation of the change rules."""
        out = []
        for p in self.phases:
            fixed = [p.report_path, *p.completion_paths]
            out += [re.compile(re.escape(self.in_plan_dir(rel)) + r"\Z") for rel in fixed]
            template = self.in_plan_dir(p.remediation_report or REMEDIATION_REPORT)
            pieces = [re.escape(x.replace("{id}", p.id)) for x in template.split("{n}")]
            out.append(re.compile(r"\d+".join(pieces) + r"\Z"))
        return out


_PLAN_ID = re.compile(ID_PATTERN)


def is_plan_id(text: str) -> bool:
    return bool(_PLAN_ID.fullmatch(text)) and set(text) != {"."}


def check_plan_id(plan_id: str, label: str) -> None:
    """A plan id names a folder under plans/ and archive/ and a file in control/: every id, from
    a plan file or from the command line, must follow the rule of a plan file's `id` (the
    schema's pattern, and not only dots, which would name plans/ itself or state_dir)."""
    if not _PLAN_ID.fullmatch(plan_id):  # `/`, control characters, too long, empty
        raise PlanError(
            f"{label}: id: {plan_id!r} is not a plan id; use letters, digits, "
            "'.', '_' or '-' (at most 128 characters)"
        )
    if set(plan_id) == {"."}:
        raise PlanError(
            f"{label}: id: {plan_id!r} names a folder, not a plan; use letters, digits, "
            "'.', '_' or '-' with at least one letter or digit"
        )


def _under(root: Path, rel: str) -> Path:
    """`(root / rel).resolve()` for a resolved `root`, looking only at `rel`'s own components
    (resolve walks `root`'s again, one lstat each): plain names are followed while they exist
    and are no symlink, and what does not exist yet is joined as written, as resolve does.
    Anything else — a symlink, `..`, an absolute `rel` — is left to resolve itself."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts:
        return (root / rel).resolve()
    path = str(root)
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        path = f"{path}/{part}" if path != "/" else f"/{part}"
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            rest = [p for p in parts[i + 1 :] if p not in ("", ".")]
            return Path(path, *rest)
        except OSError:  # not ours to look into (EACCES, …): as resolve has it
            return (root / rel).resolve()
        if stat.S_ISLNK(mode):
            return (root / rel).resolve()
    return Path(path)


def confine(base: Path, rel: str, resolved: bool = False) -> Path:
    """`base/rel` resolved through symlinks; PlanError if it ends up outside `base`.
    `resolved`: `base` is resolved already (a plan's checks resolve its repo once, not once
    per path: reading 1,000 queued plans at start-up spent 28 % of its time here)."""
    root = base if resolved else base.resolve()
    try:
        target = _under(root, rel)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise PlanError(f"{rel!r} cannot be resolved ({exc}); remove the symlink loop") from None
    if target != root and root not in target.parents:
        raise PlanError(f"{rel!r} resolves to {target}, outside {root}; keep paths inside the repo")
    return target


def plan_from_dict(
    data: dict[str, Any], source: Path | str, config: Config, base_dir: Path | None = None
) -> Plan:
    """Validate a parsed plan against the schema and the config (profile, repo roots, paths).

    Every problem of a kind is reported at once: the schema's errors come with the phase id
    errors (duplicates, prerequisites), and the config's checks with each other.
    `base_dir` resolves a relative `repo` (plans given on the command line); plans dropped
    into the inbox have none, so their repo must be absolute.
    """
    if base_dir is not None and isinstance(data.get("repo"), str):
        repo = Path(data["repo"]).expanduser()
        if not repo.is_absolute():
            data = {**data, "repo": str((base_dir / repo).resolve())}
    problems = phase_id_problems(data, source)
    try:
        plan = Plan.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = [describe_validation_error(source, Plan, exc), *problems]
        raise PlanError("\n".join(lines)) from None
    if problems:
        raise PlanError("\n".join(problems))
    if plan.isolation is None:
        plan = plan.model_copy(update={"isolation": config.isolation})
    check_against_config(plan, source, config)
    return plan


def phase_id_problems(data: dict[str, Any], source: Path | str) -> list[str]:
    """Phase ids that appear twice, and `prerequisites` that name no earlier phase (phases run
    in file order), read from the document itself so they show beside the schema's errors."""
    phases = data.get("phases")
    if not isinstance(phases, list):
        return []
    ids = [p.get("id") if isinstance(p, dict) else None for p in phases]
    known = {i for i in ids if isinstance(i, str)}
    out: list[str] = []
    earlier: list[str] = []
    for i, (pid, phase) in enumerate(zip(ids, phases, strict=True)):
        if isinstance(pid, str) and pid in earlier:
            out.append(
                f"{source}: phases[{i}].id: phase id {pid!r} appears twice; phase ids "
                "must be unique"
            )
        reqs = phase.get("prerequisites") if isinstance(phase, dict) else None
        for req in reqs if isinstance(reqs, list) else []:
            if not isinstance(req, str) or req in earlier:
                continue
            where = "a later phase" if req in known else "no phase"
            where = "this phase itself" if req == pid else where
            before = ", ".join(earlier) or f"there are none before {pid}"
            out.append(
                f"{source}: phases[{i}].prerequisites: {req!r} is {where}; name "
                f"earlier phases only ({before})"
            )
        if isinstance(pid, str):
            earlier.append(pid)
    return out


def check_against_config(plan: Plan, source: Path | str, config: Config) -> None:
    """The plan against the config and the disk (profile, repo roots, paths in the repo);
    PlanError with every problem found, one per line."""
    errors: list[str] = []
    if not plan.repo.is_absolute():
        raise PlanError(f"{source}: repo: {str(plan.repo)!r} is relative; write an absolute path")
    worker = plan.worker or config.default_worker
    if worker not in config.workers:
        key = "worker" if plan.worker else "(config) default_worker"
        known = ", ".join(sorted(config.workers)) or "none configured"
        errors.append(
            f"{source}: {key}: no worker profile {worker!r} in the config; use one of: {known}"
        )
    elif (flags := config.workers[worker].dangerous_flags) and not config.allow_dangerous_workers:
        errors.append(
            f"{source}: worker: profile {worker!r} is dangerous ({', '.join(flags)}: the agent "
            "gets full, unsandboxed access to the repository); the operator must opt in with "
            "allow_dangerous_workers = true in the config, or use another profile"
        )
    for ph in plan.phases:
        fix = ph.remediation_worker
        if fix is not None and fix not in config.workers:
            known = ", ".join(sorted(config.workers)) or "none configured"
            errors.append(
                f"{source}: phases[{ph.id}].remediation_worker: no worker profile {fix!r} in "
                f"the config; use one of: {known}"
            )
        elif (
            fix is not None
            and config.workers[fix].dangerous_flags
            and not (config.allow_dangerous_workers)
        ):
            errors.append(
                f"{source}: phases[{ph.id}].remediation_worker: profile {fix!r} is dangerous; "
                "the operator must opt in with allow_dangerous_workers = true, or use another"
            )
    if plan.budgets is not None:
        errors += [
            f"{source}: budgets.{name}: {plan.budgets.limits()[name]:g} is above the config's "
            f"{config.budgets.limits()[name]:g}; a plan may only lower a budget (the operator "
            f"raises it for one plan with `orchestrd resume {plan.id} --budget {name}=…`)"
            for name in raised_above(config.budgets.limits(), plan.budgets.limits())
        ]
    repo = plan.repo.resolve()
    roots = [r.resolve() for r in config.allowed_repo_roots]
    if not any(repo == r or r in repo.parents for r in roots):
        errors.append(
            f"{source}: repo: {str(plan.repo)!r} is not inside allowed_repo_roots "
            f"({', '.join(map(str, roots)) or 'none'}); move the checkout or extend the config"
        )
    elif not repo.is_dir():
        errors.append(f"{source}: repo: {str(plan.repo)!r} is not a directory; clone it first")
    else:
        errors += _path_problems(plan, repo, source)
    errors += _isolation_problems(plan, source)
    if errors:
        raise PlanError("\n".join(errors))


def _isolation_problems(plan: Plan, source: Path | str) -> list[str]:
    """Merge and branch keys of a plan that runs in the checkout itself, where they mean
    nothing."""
    if plan.isolation == "worktree":
        return []
    used = [
        key
        for key, value in (
            ("base", plan.base),
            ("merge", plan.merge if plan.merge != "branch" else None),
            ("target", plan.target),
            ("merge_verify", plan.merge_verify),
            ("delete_branch", plan.delete_branch or None),
        )
        if value is not None
    ]
    return [
        f'{source}: {key}: only a plan with isolation = "worktree" has a branch to merge; '
        'set isolation = "worktree" or leave the key out'
        for key in used
    ]


def _path_problems(plan: Plan, repo: Path, source: Path | str) -> list[str]:
    """Report, completion and prompt paths that lead out of the repo, or prompts missing."""
    errors = []
    for i, phase in enumerate(plan.phases):
        rels = {"report": phase.report_path, "remediation_report": phase.report_for(1)}
        rels.update({f"completion[{j}]": c for j, c in enumerate(phase.completion_paths)})
        if phase.prompt_file:
            rels["prompt_file"] = phase.prompt_file
        for key, rel in rels.items():
            try:
                confine(repo, plan.in_plan_dir(rel), resolved=True)
            except PlanError as exc:
                errors.append(f"{source}: phases[{i}].{key}: {exc}")
        if phase.prompt_file and not (repo / plan.in_plan_dir(phase.prompt_file)).is_file():
            errors.append(
                f"{source}: phases[{i}].prompt_file: {plan.in_plan_dir(phase.prompt_file)!r} "
                f"does not exist in {repo}; fix the path (it is relative to plan_dir)"
            )
    return errors


def load_plan(path: Path, config: Config, base_dir: Path | None = None) -> Plan:
    """Read and validate a plan file (at most [spool] max_plan_bytes: the limit it was taken
    in with)."""
    raw = read_toml(path, PlanError, config.spool.max_plan_bytes)
    return plan_from_dict(raw, path, config, base_dir)


def plan_from_bytes(
    raw: bytes, source: Path | str, config: Config, base_dir: Path | None = None
) -> Plan:
    """A plan file's bytes checked as the daemon checks an inbox file: its size against
    [spool] max_plan_bytes, UTF-8 TOML, the schema, the config, the id. `validate`, `submit`,
    `run` and `import` (on what it writes) all go through here."""
    limit = config.spool.max_plan_bytes
    if len(raw) > limit:
        raise PlanError(
            f"{source}: larger than [spool] max_plan_bytes ({limit}), so the daemon would "
            "reject it unread; split the plan, or put long prompts in prompt_file"
        )
    plan = plan_from_dict(parse_toml_bytes(source, raw, PlanError), source, config, base_dir)
    check_plan_id(plan.id, str(source))
    return plan


def parse_plan_bytes(raw: bytes, source: str, config: Config) -> Plan:
    return plan_from_dict(parse_toml_bytes(source, raw, PlanError), source, config)


def phase_marker_regex(marker: str) -> re.Pattern[str]:
    """A marker matched with a boundary: `@plan:X.P08` never matches `@plan:X.P08a`.

    `@plan:ID` and `@plan ID` (a space, as agents write in doc comments) are the same marker.
    """
    body = re.escape(marker)
    if marker.startswith("@plan:"):
        body = r"@plan[:\s]\s*" + re.escape(marker[len("@plan:") :])
    # `(?!\.\d)`: `@plan:X.P0` is not `@plan:X.P0.5` (decimal phase numbers)
    return re.compile(r"(?<![\w.-])" + body + r"(?![\w-]|\.\d)")
