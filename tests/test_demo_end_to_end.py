"""The demo a person runs first (`make run`): the example plan, the bundled demo worker and a
config derived from the bundled local default, through the real CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w
from conftest import REPO_ROOT, read_events, run_cli


def test_demo_plan_runs_end_to_end_with_the_bundled_demo_worker(tmp_path: Path) -> None:
    config = tomllib.loads((REPO_ROOT / "orchestrd/local.toml").read_text())
    config["state_dir"] = str(tmp_path / "state")
    config["allowed_repo_roots"] = [str(tmp_path)]
    (tmp_path / "orchestrd.toml").write_text(tomli_w.dumps(config))
    plan = tomllib.loads((REPO_ROOT / "config/examples/demo.toml").read_text())
    plan["repo"] = "repo"  # relative to the plan file, as in the example
    (tmp_path / "repo").mkdir()
    (tmp_path / "demo.toml").write_text(tomli_w.dumps(plan))

    result = run_cli("run", "demo.toml", "--config", "orchestrd.toml", "-q", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan DEMO-calc: succeeded")
    events = read_events(tmp_path / "state/audit.jsonl")
    assert [e["phase"] for e in events if e["event"] == "phase.passed"] == [
        "P01",
        "P02",
        "P03",
        "P04",
    ]
    assert events[-1]["event"] == "plan.succeeded"
    assert not [e for e in events if e["event"] in ("check.failed", "remediation.started")]
    # the test phase was red and the implementation phase green, judged by the daemon itself
    verify = {e["phase"]: e for e in events if e.get("check") == "verify[0]"}
    assert (verify["P02"]["returncode"], verify["P02"]["expect"]) == (1, "fail")
    assert (verify["P03"]["returncode"], verify["P03"]["expect"]) == (0, "pass")
    repo = tmp_path / "repo"
    assert "return a + b" in (repo / "calc.py").read_text()
    assert "Status: PASS" in (repo / "plan/reports/P04-worker.md").read_text()
    assert "@plan:DEMO-calc.P03" in (repo / "plan/.completed/P03.md").read_text()
    folder = tmp_path / "state/plans/DEMO-calc"
    assert tomllib.loads((folder / "state.toml").read_text())["status"] == "succeeded"
    assert len((folder / "worker-pids.txt").read_text().splitlines()) == 8
