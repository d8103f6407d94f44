"""Does the work, but its own report records a failed check under Status: PASS."""

import _tricks

if not _tricks.start("trick-contradiction"):
    _tricks.implement()
    _tricks.report(body="## Checks\n\n- Tests: PASS\n- Typecheck: FAIL (3 errors in calc.py)\n")
    _tricks.completion()
    _tricks.commit("trick: a failed check under Status: PASS")
