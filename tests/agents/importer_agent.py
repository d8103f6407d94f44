"""Fake agent for the importer's round trip: does the phase its prompt file describes.

It checks that its prompt is the phase's markdown file (the Phase ID is in it), leaves
`work/<PHASE>.txt` behind for the phase's verify commands, then writes the report
(`Status: PASS`) and every completion file with every marker, as the worker contract says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    prompt = Path(argv[1]).read_text(encoding="utf-8")
    plan, phase = os.environ["ORCHESTRD_PLAN_ID"], os.environ["ORCHESTRD_PHASE_ID"]
    is_phase_file = f"{plan}.{phase}" in prompt
    work = Path("work")
    work.mkdir(exist_ok=True)
    (work / f"{phase}.txt").write_text(f"{phase} done\n", encoding="utf-8")
    report = Path(os.environ["ORCHESTRD_REPORT"])
    report.parent.mkdir(parents=True, exist_ok=True)
    status = "PASS" if is_phase_file else "FAIL (the prompt is not the phase file)"
    report.write_text(f"# {phase}\n\nStatus: {status}\n", encoding="utf-8")
    markers = [m for m in os.environ.get("ORCHESTRD_MARKERS", "").splitlines() if m]
    for name in filter(None, os.environ.get("ORCHESTRD_COMPLETION", "").split(os.pathsep)):
        done = Path(name)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(
            f"# {phase} complete\n" + "".join(f"<!-- {m} -->\n" for m in markers), encoding="utf-8"
        )
    print(f"importer-agent: {phase} {'ok' if is_phase_file else 'wrong prompt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
