"""`orchestrd report`: a real daemon's plan as markdown (per phase: kind, status, attempts, wall
time, failed checks with their rules, what changed, where the logs are), written as report.md
into the archived folder; and `report --since` with failures first."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_config, make_plan, phase, run_cli
from daemon_support import Daemon, profile

AGENT = Path(__file__).parent / "agents" / "report_agent.py"


def _with_report_agent(daemon: Daemon) -> None:
    data = daemon.config_data()
    data["policy"]["max_remediations"] = 1
    data["workers"]["report"] = {
        **profile(AGENT_ALWAYS_BAD="P02"),
        "command": ["{python}", str(AGENT), "{prompt}"],
    }
    daemon.write_config(**{k: v for k, v in data.items()})


def test_report_names_the_remediated_and_the_failed_phase_with_their_rules(
    daemon: Daemon,
) -> None:
    _with_report_agent(daemon)
    daemon.start()
    data = daemon.plan_data("REP", phases=("P01", "P02", "P03"), worker="report")
    data["phases"][0]["kind"] = "stub"
    daemon.drop("REP.toml", data)
    daemon.submit("OK", repo="ok")
    daemon.wait_plans_end(["REP", "OK"])
    archived = daemon.wait_event("plan.archived", plan="REP")[0]
    report_md = Path(archived["report"])
    assert report_md == daemon.state_dir / "archive" / "REP" / "report.md"

    out = daemon.cli("report", "REP")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert report_md.read_text() == text  # the same markdown, written when the plan ended
    assert text.startswith("# Plan REP: failed\n")
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| P0")
    }
    assert "| stub | passed | 2 (1 remediation) |" in rows["P01"]
    assert "#1 evidence (placeholder)" in rows["P01"]
    assert "| failed | 2 (1 remediation) |" in rows["P02"]
    assert "#1 evidence (placeholder), #2 evidence (placeholder)" in rows["P02"]
    assert "| pending | 0 |" in rows["P03"]
    # each failed check with its file:line and rule
    assert "- P02 attempt 2, `evidence`: reports/P02-remediation-1-worker.md:5:" in text
    assert "[rule: placeholder]" in text
    assert f"`{daemon.state_dir / 'archive' / 'REP' / 'workers' / 'worker-P02-2.log'}`" in text

    data_json = json.loads(daemon.cli("report", "REP", "--json").stdout)
    assert [p["status"] for p in data_json["phases"]] == ["passed", "failed", "pending"]
    assert data_json["phases"][1]["failed_checks"][0]["rules"] == ["placeholder"]
    assert "tokens" not in data_json["phases"][0]  # no usage ledger in the state: no column

    since = daemon.cli("report", "--since", "1h")
    lines = [ln for ln in since.stdout.splitlines() if ln.startswith("- ")]
    assert [ln.split("**")[1] for ln in lines] == ["REP", "OK"]  # failures first
    assert "failed" in lines[0] and str(report_md) in lines[0]
    none = daemon.cli("report", "--since", "now")
    assert "nothing ended" in none.stdout


def test_orchestrd_run_leaves_report_md_in_the_plans_folder(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    make_plan(tmp_path, [phase("P01", kind="stub"), phase("P02")])
    result = run_cli("run", "plan.toml", "--config", config, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "state" / "plans" / "T" / "report.md").read_text()
    assert written.startswith("# Plan T: succeeded\n")
    assert "| P01 | stub | passed | 1 |" in written
    shown = run_cli("report", "T", "--config", config, cwd=tmp_path)
    assert shown.stdout == written
