"""The launcher seam: how a worker process is started, watched, stopped, and found again after a
crash — behind one protocol, so workers can run elsewhere (a cluster) without the runner, the
poll policy, the checks or recovery knowing where. Implementations live in this package
(`local.py`: a process group and a cgroup v2 per attempt on this machine).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from ..config import Config, SlurmSettings
from ..errors import OrchestrdError
from ..privsep import Identity

OutputObserver = Callable[[bytes], None]
"""Fed every chunk of a worker's output as it is read, before any of it is cut."""
HandleValue = str | int | None


class WorkerStartError(OrchestrdError):
    """The worker's command could not be executed (missing binary, bad cwd, no permission)."""


class WorkerLogError(OrchestrdError):
    """The worker's output could not be written to its log (a full disk, a folder gone)."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path
    identity: Identity | None = None
    """Run as this user (through nsinit); None: as the daemon's user."""
    pid_namespace: bool = True
    """With an identity: alone in a user+PID namespace (see nsinit)."""
    name: str = ""
    """Names the attempt where a launcher needs one (the local launcher's cgroup:
    `<plan>:<phase>:<attempt>`, ':' being in no id: `a.b` `c` and `a` `b.c` cannot meet);
    unique among running workers."""
    limits: Mapping[str, str | int] = dataclasses.field(default_factory=dict)
    """Resource limits (`memory_max`, `pids_max`, `cpu_weight`) where the launcher can set
    them."""
    launcher: str = ""
    """The kind of launcher that runs it (a profile's `launcher`); '': the config's."""


@dataclasses.dataclass(frozen=True)
class Handle:
    """What identifies a launched worker across daemon restarts: plain data, kept in
    state.toml. `kind` names the launcher that understands `fields`."""

    kind: str
    fields: Mapping[str, HandleValue]

    def to_dict(self) -> dict[str, HandleValue]:
        """For state.toml (which has no null: a field without a value is left out)."""
        return {"kind": self.kind, **{k: v for k, v in self.fields.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, HandleValue]) -> Handle:
        fields = {k: v for k, v in data.items() if k != "kind"}
        return cls(str(data["kind"]), fields)


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A process a worker left running after it exited (stopped by the launcher)."""

    pid: int
    command: str


@dataclasses.dataclass(frozen=True)
class Reaped:
    """What `reap` did with one recorded handle."""

    handle: Handle
    signal: signal.Signals | None
    """The last signal needed; None if nothing of it was left running."""
    stopped: tuple[Leftover, ...] = ()
    found: str = ""
    """How a worker no handle recorded was found (`sweep`); '' for a recorded one."""


class Worker(Protocol):
    """A running worker. Its output is pumped into its capped log while it runs."""

    @property
    def handle(self) -> Handle: ...

    @property
    def argv(self) -> Sequence[str]: ...

    @property
    def pid(self) -> int:
        """Names the worker in events (on another machine: whatever the launcher has)."""
        ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def placement(self) -> Mapping[str, str | int | float]:
        """Where it runs, for worker.started (a cluster: node, job_id, pending_s); {} here."""
        ...

    @property
    def output_bytes(self) -> int:
        """Bytes the worker wrote, kept or not."""
        ...

    @property
    def dropped_bytes(self) -> int:
        """Bytes cut from the log (past max_log_bytes)."""
        ...

    @property
    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this worker."""
        ...

    @property
    def left_running(self) -> tuple[Leftover, ...]:
        """What the worker left running after it exited (stopped when the launch ended)."""
        ...

    def cpu_sample(self) -> object:
        """What changes when the worker's processes use CPU or come and go (compared, never
        read: a silent worker is one whose sample stays the same). Blocking: a thread."""
        ...

    async def wait(self) -> int: ...

    def elapsed(self) -> float: ...

    def log_size(self) -> int: ...

    def tail(self, lines: int = 40, max_bytes: int = 16384) -> str: ...

    async def stop(self, grace: float) -> signal.Signals | None:
        """SIGTERM the worker's whole tree, wait up to `grace`, SIGKILL what is left; the
        last signal needed (None if it was gone). Survives cancellation."""
        ...


class Launcher(Protocol):
    kind: str

    def launch(
        self,
        spec: WorkerSpec,
        max_log_bytes: int,
        grace: float,
        on_output: OutputObserver | None = None,
    ) -> AbstractAsyncContextManager[Worker]:
        """Run a headless worker for the body of the `async with`; on the way out — normal,
        error or cancellation — whatever is left of it is stopped (`left_running` lists it)
        and its output drained. WorkerStartError if it cannot start, WorkerLogError (after
        it ended) if its output could not be logged."""
        ...

    def close(self) -> None:
        """Release what opening it set up (an empty cgroup tree)."""
        ...

    def describe(self) -> dict[str, str]:
        """How workers are contained, and why (daemon.started: containment, containment_reason
        and where)."""
        ...

    def warnings(self, limits: Mapping[str, object]) -> list[str]:
        """Why some of these limits cannot be set here (say so once, never fail)."""
        ...

    async def reap(self, handles: Sequence[Handle], grace: float) -> list[Reaped]:
        """Stop what recorded handles (of an earlier daemon run) left running."""
        ...

    async def respawned(self, worker: Worker, grace: float) -> list[Leftover]:
        """For `grace` after `worker` was stopped, stop what starts its session again (a
        helper of the agent) and say what it was; nothing where no process can outlive the
        worker's stop (a cgroup, a PID namespace of its own)."""
        ...

    async def sweep(self, folders: Sequence[Path], grace: float) -> list[Reaped]:
        """Stop what an earlier daemon run left that no handle records (a worker started just
        before a crash, a descendant that left its worker): whatever it finds of its own, and
        what belongs to the plans whose workers' folders are `folders`."""
        ...


class Launchers:
    """The launchers a config uses, as one: a worker goes to its spec's kind (a profile's
    `launcher`, else the config's), a handle back to the kind that made it."""

    kind = "any"

    def __init__(self, default: str, launchers: Mapping[str, Launcher]) -> None:
        self.default = default
        self.launchers = dict(launchers)

    def _of(self, kind: str) -> Launcher:
        kind = kind or self.default
        if kind not in self.launchers:
            from .slurm import SlurmLauncher  # a handle of a kind the config no longer uses

            assert kind == SlurmLauncher.kind, kind
            self.launchers[kind] = SlurmLauncher(SlurmSettings())
        return self.launchers[kind]

    def launch(
        self,
        spec: WorkerSpec,
        max_log_bytes: int,
        grace: float,
        on_output: OutputObserver | None = None,
    ) -> AbstractAsyncContextManager[Worker]:
        return self._of(spec.launcher).launch(spec, max_log_bytes, grace, on_output)

    def close(self) -> None:
        for launcher in self.launchers.values():
            launcher.close()

    def describe(self) -> dict[str, str]:
        described: dict[str, str] = {}
        for launcher in self.launchers.values():
            described |= launcher.describe()
        return described

    def warnings(self, limits: Mapping[str, object]) -> list[str]:
        return self._of(self.default).warnings(limits)

    async def reap(self, handles: Sequence[Handle], grace: float) -> list[Reaped]:
        reaped = []
        for handle in handles:
            reaped += await self._of(handle.kind).reap([handle], grace)
        return reaped

    async def respawned(self, worker: Worker, grace: float) -> list[Leftover]:
        return await self._of(worker.handle.kind).respawned(worker, grace)

    async def sweep(self, folders: Sequence[Path], grace: float) -> list[Reaped]:
        found = []
        for launcher in self.launchers.values():
            found += await launcher.sweep(folders, grace)
        return found


def open_launcher(kind: str, config: Config | None, tag: str = "") -> Launcher:
    """The launchers of `config` (its `launcher` the default, each profile's too), their
    containment set up (the daemon, `orchestrd run` with a `tag` of its own); without a
    config, only what reaping recorded handles takes (an offline cancel)."""
    from .local import LocalLauncher

    launchers: dict[str, Launcher] = {"local": LocalLauncher.open(config, tag)}
    kinds = {kind} | ({p.launcher for p in config.workers.values()} if config else set())
    if "slurm" in kinds and config is not None:
        from .slurm import SlurmLauncher

        launchers["slurm"] = SlurmLauncher(config.launchers.slurm)
    return Launchers(kind, launchers)
