"""A worker whose report keeps the template's placeholder (evidence rule `placeholder`) on its
primary attempt, and in every attempt of the phases named in AGENT_ALWAYS_BAD; otherwise an
honest PASS. Gives `orchestrd report` a remediated phase and a failed one."""

import os

import _agent

_agent.start("report")
phase = os.environ["ORCHESTRD_PHASE_ID"]
bad = phase in os.environ.get("AGENT_ALWAYS_BAD", "").split(",")
if bad or os.environ["ORCHESTRD_ROLE"] == "primary":
    _agent.write_report("## Verification\n\n<paste command outputs>\n\nStatus: PASS")
    _agent.write_completion()
    print("left the placeholder in")
else:
    _agent.finish_passing()
