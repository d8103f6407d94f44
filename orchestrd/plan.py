"""The plan file schema: plan, phases, verify commands; path rules that keep a plan inside its repo."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pydantic
from pydantic import Field

from .config import Config, Duration, PolicyOverride, Strict, parse_toml_bytes, read_toml
from .errors import PlanError, describe_validation_error

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
MAX_PLAN_BYTES = 1024 * 1024

PhaseKind = Literal["stub", "test", "impl", "verify", "other"]


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


class VerifyCommand(Strict):
    """A command the daemon runs itself, in the repo, after the worker; judged by its exit code."""

    run: str = Field(min_length=1, description="shell command, run with [checks].verify_shell")
    expect: Literal["pass", "fail"] = Field("pass", description="'fail' for red test phases")
    timeout: Duration = Field(600.0, description="killed (and failed) after this long")


class Phase(Strict):
    id: str = Field(pattern=ID_PATTERN, description="unique within the plan, e.g. P05")
    kind: PhaseKind = "other"
    prompt: str | None = Field(None, description="the worker's prompt (or prompt_file)")
    prompt_file: str | None = Field(None, description="relative to plan_dir")
    report: str | None = Field(None, description="default reports/{id}-worker.md")
    completion: list[str] | None = Field(None, description="default [.completed/{id}.md]")
    markers: list[str] = Field(default_factory=list, description="in every completion file")
    policy: PolicyOverride | None = None
    fail_on_log_errors: bool | None = Field(None, description="overrides [checks]")
    verify: list[VerifyCommand] = Field(default_factory=list)

    @pydantic.field_validator("prompt_file", "report")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return None if v is None else relative_path(v)

    @pydantic.field_validator("completion")
    @classmethod
    def _relative_list(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [relative_path(p) for p in v]

    @pydantic.model_validator(mode="after")
    def _one_prompt(self) -> Phase:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("give exactly one of prompt = \"...\" or prompt_file = \"path\"")
        return self

    @property
    def report_path(self) -> str:
        return self.report or f"reports/{self.id}-worker.md"

    @property
    def completion_paths(self) -> list[str]:
        return self.completion if self.completion is not None else [f".completed/{self.id}.md"]


class Plan(Strict):
    id: str = Field(pattern=ID_PATTERN, description="[A-Za-z0-9._-], at most 128 characters")
    repo: Path = Field(description="absolute path of the checkout the workers run in")
    plan_dir: str = Field("", description="relative to repo; base of report/completion paths")
    worker: str | None = Field(None, description="worker profile; default from the config")
    policy: PolicyOverride | None = None
    phases: list[Phase] = Field(min_length=1)

    @pydantic.field_validator("plan_dir")
    @classmethod
    def _plan_dir(cls, v: str) -> str:
        return v if v in ("", ".") else relative_path(v)

    @pydantic.model_validator(mode="after")
    def _unique_phases(self) -> Plan:
        seen: set[str] = set()
        for phase in self.phases:
            if phase.id in seen:
                raise ValueError(f"phase id {phase.id!r} appears twice; phase ids must be unique")
            seen.add(phase.id)
        return self

    def in_plan_dir(self, rel: str) -> str:
        """A plan_dir-relative path as a repo-relative one."""
        return os.path.normpath(os.path.join(self.plan_dir, rel)) if self.plan_dir else rel

    def phase(self, phase_id: str) -> Phase:
        for p in self.phases:
            if p.id == phase_id:
                return p
        raise KeyError(phase_id)


def confine(base: Path, rel: str) -> Path:
    """`base/rel` resolved through symlinks; PlanError if it ends up outside `base`."""
    root = base.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise PlanError(f"{rel!r} resolves to {target}, outside {root}; keep paths inside the repo")
    return target


def plan_from_dict(
    data: dict[str, Any], source: Path | str, config: Config, base_dir: Path | None = None
) -> Plan:
    """Validate a parsed plan against the schema and the config (profile, repo roots, paths).

    `base_dir` resolves a relative `repo` (plans given on the command line); plans dropped
    into the inbox have none, so their repo must be absolute.
    """
    if base_dir is not None and isinstance(data.get("repo"), str):
        repo = Path(data["repo"]).expanduser()
        if not repo.is_absolute():
            data = {**data, "repo": str((base_dir / repo).resolve())}
    try:
        plan = Plan.model_validate(data)
    except pydantic.ValidationError as exc:
        raise PlanError(describe_validation_error(source, Plan, exc)) from None
    check_against_config(plan, source, config)
    return plan


def check_against_config(plan: Plan, source: Path | str, config: Config) -> None:
    if not plan.repo.is_absolute():
        raise PlanError(f"{source}: repo: {str(plan.repo)!r} is relative; write an absolute path")
    worker = plan.worker or config.default_worker
    if worker not in config.workers:
        key = "worker" if plan.worker else "(config) default_worker"
        known = ", ".join(sorted(config.workers)) or "none configured"
        raise PlanError(
            f"{source}: {key}: no worker profile {worker!r} in the config; use one of: {known}"
        )
    flags = config.workers[worker].dangerous_flags
    if flags and not config.allow_dangerous_workers:
        raise PlanError(
            f"{source}: worker: profile {worker!r} is dangerous ({', '.join(flags)}: the agent "
            "gets full, unsandboxed access to the repository); the operator must opt in with "
            "allow_dangerous_workers = true in the config, or use another profile"
        )
    repo = plan.repo.resolve()
    roots = [r.resolve() for r in config.allowed_repo_roots]
    if not any(repo == r or r in repo.parents for r in roots):
        raise PlanError(
            f"{source}: repo: {str(plan.repo)!r} is not inside allowed_repo_roots "
            f"({', '.join(map(str, roots)) or 'none'}); move the checkout or extend the config"
        )
    if not repo.is_dir():
        raise PlanError(f"{source}: repo: {str(plan.repo)!r} is not a directory; clone it first")
    for i, phase in enumerate(plan.phases):
        rels = {"report": phase.report_path}
        rels.update({f"completion[{j}]": c for j, c in enumerate(phase.completion_paths)})
        if phase.prompt_file:
            rels["prompt_file"] = phase.prompt_file
        for key, rel in rels.items():
            try:
                confine(repo, plan.in_plan_dir(rel))
            except PlanError as exc:
                raise PlanError(f"{source}: phases[{i}].{key}: {exc}") from None
        if phase.prompt_file and not (repo / plan.in_plan_dir(phase.prompt_file)).is_file():
            raise PlanError(
                f"{source}: phases[{i}].prompt_file: {plan.in_plan_dir(phase.prompt_file)!r} "
                f"does not exist in {repo}; fix the path (it is relative to plan_dir)"
            )


def load_plan(path: Path, config: Config, base_dir: Path | None = None) -> Plan:
    """Read and validate a plan file (at most MAX_PLAN_BYTES)."""
    return plan_from_dict(read_toml(path, PlanError, MAX_PLAN_BYTES), path, config, base_dir)


def parse_plan_bytes(raw: bytes, source: str, config: Config) -> Plan:
    return plan_from_dict(parse_toml_bytes(source, raw, PlanError), source, config)


def phase_marker_regex(marker: str) -> re.Pattern[str]:
    """A marker matched with a boundary: `@plan:X.P08` never matches `@plan:X.P08a`.

    `@plan:ID` and `@plan ID` (a space, as agents write in doc comments) are the same marker.
    """
    body = re.escape(marker)
    if marker.startswith("@plan:"):
        body = r"@plan[:\s]\s*" + re.escape(marker[len("@plan:") :])
    return re.compile(r"(?<![\w.-])" + body + r"(?![\w-])")
