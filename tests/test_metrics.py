"""Metrics from a real daemon, written as a node_exporter textfile: plans by status, attempts
by outcome, remediations, check failures by rule, phase durations and exit→next-worker
reactions, parsed back with prometheus-client's own parser."""

from __future__ import annotations

from pathlib import Path

from daemon_support import Daemon, profile
from prometheus_client.parser import text_string_to_metric_families

AGENT = Path(__file__).parent / "agents" / "report_agent.py"


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = path.read_text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_textfile_counts_a_remediated_and_a_failed_phase(daemon: Daemon, tmp_path: Path) -> None:
    textfile = tmp_path / "orchestrd.prom"
    data = daemon.config_data()
    data["policy"]["max_remediations"] = 1
    data["workers"]["report"] = {
        **profile(AGENT_ALWAYS_BAD="P02"),
        "command": ["{python}", str(AGENT), "{prompt}"],
    }
    data["metrics"] = {"textfile": str(textfile), "interval": "0.1s"}
    daemon.write_config(**data)
    daemon.start()
    daemon.drop("M.toml", daemon.plan_data("M", phases=("P01", "P02"), worker="report"))
    daemon.submit("OK", repo="ok", phases=("P01", "P02"))
    daemon.wait_plans_end(["M", "OK"])
    daemon.wait_event("plan.archived", count=2)

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        if not textfile.exists():
            return None
        got = samples(textfile)
        done = got.get(("orchestrd_plans", (("status", "succeeded"),))) == 1
        return got if done and got.get(("orchestrd_plans", (("status", "failed"),))) else None

    got = daemon.wait_for(settled, what="the textfile with both plans ended")
    assert got[("orchestrd_plans", (("status", "failed"),))] == 1
    assert got[("orchestrd_workers_running", ())] == 0
    # M: P01 primary + remediation, P02 primary + remediation; OK: two phases
    assert got[("orchestrd_attempts_total", (("outcome", "ok"),))] == 6
    assert got[("orchestrd_remediations_total", ())] == 2
    assert (
        got[("orchestrd_check_failures_total", (("check", "evidence"), ("rule", "placeholder")))]
        == 3
    )
    assert (
        got[("orchestrd_phase_duration_seconds_count", (("kind", "other"), ("outcome", "passed")))]
        == 3
    )
    assert (
        got[("orchestrd_phase_duration_seconds_count", (("kind", "other"), ("outcome", "failed")))]
        == 1
    )
    # every worker after the first of its plan follows an exit: 3 in M, 1 in OK
    assert got[("orchestrd_reaction_seconds_count", ())] == 4
    assert not list(tmp_path.glob("orchestrd.prom.*"))  # written atomically, no leftovers
