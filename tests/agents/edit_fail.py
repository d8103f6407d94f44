"""Changes a source file (`src/feature.py`, different on each attempt) and reports
`Status: FAIL`: a worker that tries something and does not get there."""

import os
from pathlib import Path

import _agent

_agent.start("edit-fail")
attempt = os.environ["ORCHESTRD_ATTEMPT"]
src = Path("src/feature.py")
src.parent.mkdir(exist_ok=True)
src.write_text(f"def feature():\n    return {attempt}  # attempt {attempt}\n" * int(attempt))
_agent.write_report(f"Status: FAIL\n\nAttempt {attempt} did not get the feature working.")
_agent.write_completion()
print("done: Status: FAIL")
