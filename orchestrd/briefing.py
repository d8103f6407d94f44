"""The worker's briefing for one attempt: its prompt (the phase's text, what failed before, the
contract), its environment, its command line and who it runs as, with its hand-off folder.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import anyio
import anyio.to_thread

from .checks import CheckResult
from .config import CheckSettings, Config, WorkerProfile
from .errors import OrchestrdError
from .fsutil import FileRefused, write_file
from .launchers import WorkerSpec, WorkerStartError
from .plan import Phase, Plan
from .privsep import Identity, handoff_root, identity_for, make_handoff, remove_handoff
from .prompt import (
    LOG_TAIL_LINES,
    base_env,
    contract_trailer,
    log_tail_without,
    read_prompt_file,
    remediation_section,
    render_command,
    tried_section,
)
from .state import PlanRecord
from .store import PlanFolder


@dataclasses.dataclass
class Handoff:
    """Who the attempt's worker runs as, and its hand-off folder (None: as the daemon)."""

    identity: Identity | None
    folder: Path | None = None

    async def remove(self) -> None:
        if self.folder is not None:
            await anyio.to_thread.run_sync(remove_handoff, self.folder)


def describe(failed: list[CheckResult]) -> str:
    return "; ".join(f"{r.name}: {r.reason}" for r in failed).replace("\0", "")


class Briefing:
    """Prepares an attempt's worker (a part of the plan's runner, which holds these)."""

    plan: Plan
    folder: PlanFolder
    record: PlanRecord
    _tried: tuple[int, str] | None

    def _prompt(
        self,
        phase: Phase,
        n: int,
        role: str,
        report: str,
        settings: CheckSettings,
        previous: tuple[list[CheckResult], Path] | None,
        baseline: str | None,
        shown_log: Path | None = None,
    ) -> str:
        """`shown_log`: where the worker finds the failed log (its hand-off copy)."""
        if phase.prompt is not None:
            text = phase.prompt
        else:
            assert phase.prompt_file is not None
            text = read_prompt_file(self.plan, phase.prompt_file)
        if previous is not None:
            failed, failed_log = previous
            echoed = self.folder.workers / f"prompt-{phase.id}-{n - 1}.md"
            tail = log_tail_without(failed_log, echoed, LOG_TAIL_LINES)
            text += remediation_section(failed, shown_log or failed_log, tail, baseline)
            if self._tried is not None:
                text += tried_section(*self._tried)
        return text + contract_trailer(self.plan, phase, n, role, report, settings)

    def _env(
        self,
        config: Config,
        profile: WorkerProfile,
        phase: Phase,
        n: int,
        role: str,
        report: str,
        log_path: Path,
        previous: tuple[list[CheckResult], Path] | None,
        handoff: Handoff,
    ) -> dict[str, str]:
        env = base_env(config)
        if handoff.identity is not None:
            env.update(handoff.identity.env())
        env.update(profile.env)
        env.update(
            ORCHESTRD_PLAN_ID=self.plan.id,
            ORCHESTRD_PHASE_ID=phase.id,
            ORCHESTRD_PHASE_KIND=phase.kind,
            ORCHESTRD_ATTEMPT=str(n),
            ORCHESTRD_ROLE=role,
            ORCHESTRD_REPORT=self.plan.in_plan_dir(report),
            ORCHESTRD_COMPLETION=os.pathsep.join(
                self.plan.in_plan_dir(c) for c in phase.completion_paths
            ),
            ORCHESTRD_MARKERS="\n".join(phase.markers),
            ORCHESTRD_LOG=str(log_path),
        )
        if (wt := self.record.state.worktree) is not None:
            env.update(ORCHESTRD_WORKTREE=str(self.plan.repo), ORCHESTRD_BASE=wt.base)
        if previous is not None:
            # the worker user cannot open the state folder: it reads a copy
            failed = handoff.folder / "failed.log" if handoff.folder else previous[1]
            env["ORCHESTRD_FAILED_LOG"] = str(failed)
            env["ORCHESTRD_FAILURE"] = describe(previous[0])
        return env

    async def _prepare(
        self,
        phase: Phase,
        config: Config,
        profile_name: str,
        n: int,
        role: str,
        report: str,
        log_path: Path,
        previous: tuple[list[CheckResult], Path] | None,
        baseline: str | None,
    ) -> tuple[WorkerSpec, dict[str, str], str, list[str], Handoff]:
        """The worker's spec, env, prompt, dangerous flags and hand-off folder;
        WorkerStartError if impossible."""
        profile = config.workers.get(profile_name)
        if profile is None:
            raise WorkerStartError(f"worker profile {profile_name!r} is not in the config")
        if profile.dangerous_flags and not config.allow_dangerous_workers:
            # the config was reloaded with the opt-in withdrawn: no new dangerous starts
            raise WorkerStartError(
                f"worker profile {profile_name!r} is dangerous "
                f"({', '.join(profile.dangerous_flags)}) and allow_dangerous_workers is off"
            )
        prompt_file = self.folder.workers / f"prompt-{phase.id}-{n}.md"
        try:
            identity = identity_for(config, profile)
            handoff = Handoff(identity)
            if identity is not None:
                # a folder per plan: ids may hold '-', and `<plan>-<phase>-<n>` of two plans can be
                # one name (plan a-b phase c, plan a phase b-c)
                handoff.folder = handoff_root(config) / self.plan.id / f"{phase.id}-{n}"
            shown = handoff.folder / "failed.log" if handoff.folder else None
            # reads files workers could have touched: off the event loop
            prompt = await anyio.to_thread.run_sync(
                self._prompt, phase, n, role, report, config.checks, previous, baseline, shown
            )
            prompt_file = self.folder.workers / f"prompt-{phase.id}-{n}.md"
            # a file name that is not UTF-8 (quoted in a reason) is written as its own bytes
            await anyio.to_thread.run_sync(
                write_file, prompt_file, prompt.encode("utf-8", "surrogateescape")
            )
            if identity is not None and handoff.folder is not None:
                await anyio.to_thread.run_sync(
                    make_handoff,
                    handoff.folder,
                    identity,
                    prompt,
                    previous[1] if previous else None,
                )
                prompt_file = handoff.folder / "prompt.md"
        except OSError as exc:
            raise WorkerStartError(f"cannot prepare the prompt: {exc}") from None
        except FileRefused as exc:
            raise WorkerStartError(f"cannot write the prompt {prompt_file}: it {exc}") from None
        except OrchestrdError as exc:  # the worker user is gone since the start
            raise WorkerStartError(str(exc)) from None
        values = {
            "prompt": prompt,
            "prompt_file": str(prompt_file),
            "plan": self.plan.id,
            "phase": phase.id,
            "attempt": str(n),
            "log": str(log_path),
            "python": sys.executable,
        }
        argv = render_command(profile, values)
        env = self._env(config, profile, phase, n, role, report, log_path, previous, handoff)
        spec = WorkerSpec(
            argv,
            env,
            self.plan.repo,
            log_path,
            identity,
            config.worker_pid_namespace,
            name=f"{self.plan.id}:{phase.id}:{n}",
            limits=profile.limits,
            launcher=profile.launcher or "",
        )
        return spec, env, prompt, profile.dangerous_flags, handoff
