"""Does the work, but leaves the report template's placeholders in: the date and the outputs."""

import os

import _tricks

if not _tricks.start("trick-placeholder"):
    _tricks.implement()
    phase = os.environ["ORCHESTRD_PHASE_ID"]
    _tricks.write(
        os.environ["ORCHESTRD_REPORT"],
        f"# {phase} worker report\n\nPhase: {phase}\nCompleted: YYYY-MM-DD HH:MM\n\n"
        "## Verification\n\n<paste command outputs>\n\nStatus: PASS\n",
    )
    _tricks.completion()
    _tricks.commit("trick: report template left unfilled")
