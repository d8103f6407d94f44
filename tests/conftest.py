"""Shared helpers: a config and a plan written as real TOML files under tmp_path, a plan run
in-process through the runner library, the orchestrd CLI as a subprocess, and the audit log
read back as JSON lines.

Fake agents live in tests/agents/; each one in AGENT_NAMES is a worker profile of `make_config`
under its file name (`pass`, `hang`, `unkillable`, …), and `pass` is the default worker.

Parallel runs (`make test`: pytest-xdist, `-n 4 --dist loadgroup`): each test may run on any
worker process, beside tests of other files. Everything a test makes lives under its own
tmp_path (or a tempfile.mkdtemp name), ports are bound as port 0, and each daemon has a cgroup
tree of its own. A test that uses something of which the machine has one (a fixed system user,
a fixed file outside tmp_path, a fixed port, a session/module fixture that must exist once, a
cluster) carries `pytest.mark.xdist_group("<resource>")`, which puts every test of that group
on one worker, one after the other. The groups so far:
- "users": creates/deletes system users (`orchestrd-test-worker`, `-daemon`, `-wt`):
  test_privsep.py, test_parallel_plans.py's worker-user test;
- "browser": the headless browser and the docs/*.png screenshots: test_web_browser.py;
- "slurm": the Slurm cluster (tests/slurm_support.py): every test that uses the `cluster`
  fixture, and the launcher contract's `slurm` runs — marked here, at collection
  (`pytest_collection_modifyitems`), so the cluster is started by one worker only (its cgroups
  under /sys/fs/cgroup are named after its nodes: two clusters would share them).
A session-scoped fixture runs once per worker process: one that touches a machine-wide thing
must be in a group (or be safe to run twice at once).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from daemon_support import Daemon

from orchestrd import lifecycle
from orchestrd.audit import AuditLog
from orchestrd.config import Config, load_config
from orchestrd.launchers import open_launcher
from orchestrd.plan import Plan, load_plan
from orchestrd.runner import PlanRunner
from orchestrd.state import PhaseState, PlanRecord, PlanState
from orchestrd.states import PhaseStatus, PlanStatus
from orchestrd.store import PlanFolder

AGENTS = Path(__file__).parent / "agents"
AGENT_NAMES = (
    "pass",
    "fail_report",
    "no_report",
    "crash",
    "hang",
    "unkillable",
    "leave_grandchild",
    "flaky",
)
REPO_ROOT = Path(__file__).parent.parent


@pytest.hookimpl(trylast=True)  # after xdist's own hook, so the id is set once, right
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the Slurm tests in the "slurm" group, and make `--dist loadgroup` group at all under
    pytest 9: xdist 3.8 appends `@<group>` to a test's id by writing `item._nodeid`, which
    pytest 9 no longer reads (the id lives in `item._id`), so every group was silently ignored
    and two Slurm clusters could start at once. The id is rewritten here the way xdist means
    it (skipped where xdist's own rewrite took)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        slurm_param = callspec is not None and callspec.params.get("launcher") == "slurm"
        if "cluster" in getattr(item, "fixturenames", ()) or slurm_param:
            item.add_marker(pytest.mark.xdist_group("slurm"))
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers for loadgroup
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        )
        suffix = "@" + "_".join(names)
        if not names or item.nodeid.endswith(suffix):
            continue
        grouped = item.nodeid + suffix
        if isinstance(getattr(item, "_id", None), str) or not hasattr(item, "_id"):
            item._nodeid = grouped  # pytest < 9
        else:
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(grouped)
        assert item.nodeid == grouped, f"could not put {item.nodeid} in xdist group {suffix}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def agent_profile(name: str, **env: str) -> dict[str, Any]:
    """A worker profile running tests/agents/<name>.py with the prompt as its argument."""
    profile: dict[str, Any] = {"command": ["{python}", str(AGENTS / f"{name}.py"), "{prompt}"]}
    if env:
        profile["env"] = env
    return profile


def make_config(tmp_path: Path, **overrides: Any) -> Path:
    """Write `tmp_path/orchestrd.toml`: state in tmp_path/state, repos allowed under tmp_path,
    millisecond policy, one profile per fake agent. Nested tables in `overrides` are merged
    (`policy={"max_polls": 2}` keeps the other policy keys)."""
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "default_worker": "pass",
        "allowed_repo_roots": [str(tmp_path)],
        # a worker that exits is noticed at once, so a long interval costs passing tests nothing
        # and leaves slow machines room; stall tests set their own short interval
        "policy": {
            "poll_interval": "0.5s",
            "max_polls": 40,
            "stop_grace": "0.2s",
            "max_remediations": 1,
        },
        "workers": {name: agent_profile(name) for name in AGENT_NAMES},
    }
    path = tmp_path / "orchestrd.toml"
    path.write_text(tomli_w.dumps(_merge(data, overrides)), encoding="utf-8")
    return path


def phase(pid: str = "P01", **fields: Any) -> dict[str, Any]:
    """One [[phases]] table: a prompt and a marker by default."""
    return {"id": pid, "prompt": f"Do phase {pid}.", "markers": [f"@plan:T.{pid}"], **fields}


def make_plan(
    tmp_path: Path,
    phases: list[dict[str, Any]] | None = None,
    name: str = "plan.toml",
    repo: Path | None = None,
    **fields: Any,
) -> Path:
    """Write a plan (id T, repo tmp_path/repo, created) and return its path."""
    repo = repo or tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    data = {"id": "T", "repo": str(repo), **fields, "phases": phases or [phase()]}
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def read_events(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The audit log's JSON lines as dicts in file order (key order kept), optionally one kind."""
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [e for e in events if event is None or e["event"] == event]


@dataclasses.dataclass
class Run:
    """What a plan run left behind."""

    status: PlanStatus
    config: Config
    plan: Plan

    @property
    def folder(self) -> Path:
        return self.config.state_dir / "plans" / self.plan.id

    @property
    def repo(self) -> Path:
        return self.plan.repo

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.config.audit_path, event)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def agent(self, phase_id: str = "P01", attempt: int = 1) -> dict[str, Any]:
        """What the fake agent of that attempt recorded about itself."""
        data: dict[str, Any] = json.loads(
            (self.repo / ".agent" / f"{phase_id}-{attempt}.json").read_text()
        )
        return data

    def pids(self, phase_id: str = "P01", attempt: int = 1) -> list[int]:
        text = (self.repo / f"pids-{phase_id}-{attempt}.txt").read_text()
        return [int(p) for p in text.split()]


async def run_plan(config_path: Path, plan_path: Path, passed: Sequence[str] = ()) -> Run:
    """Run one plan in this process through the runner library, as `orchestrd run` does;
    the `passed` phases passed before (as after a retry or a restart)."""
    config, _ = load_config(config_path)
    plan = load_plan(plan_path, config, base_dir=plan_path.parent)
    folder = PlanFolder(config.state_dir / "plans" / plan.id)
    folder.create()
    audit = AuditLog(config.audit_path)
    try:
        log = audit.bind(plan=plan.id)
        state = PlanState(
            plan=plan.id,
            phases={
                p.id: PhaseState(status=PhaseStatus.PASSED if p.id in passed else "pending")
                for p in plan.phases
            },
        )
        record = PlanRecord(folder.state_file, state, log)
        await record.save()
        launcher = open_launcher(config.launcher, config)
        try:
            runner = PlanRunner(plan, record, folder, lambda: config, log, launcher)
            status = (await lifecycle.carry_out(record, plan, runner)).status
        finally:
            launcher.close()
    finally:
        audit.close()
    return Run(status, config, plan)


def run_cli(
    *args: str | Path, cwd: Path, env_extra: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrd ARGS` as a real subprocess (no $ORCHESTRD_CONFIG leaking in)."""
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRD_CONFIG"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(env_extra or {})
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "orchestrd", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
        **kwargs,
    )


def alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """The real daemon as a subprocess on tmp_path (started by the test); at the end it is
    stopped, and no worker may have outlived it, nor may its stderr hold a traceback."""
    d = Daemon(tmp_path)
    yield d
    leftovers = d.cleanup()
    assert leftovers == [], f"workers outlived the daemon: {leftovers}"
    assert "Traceback" not in d.stderr(), d.stderr()
