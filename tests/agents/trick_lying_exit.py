"""A test phase whose exit code lies: no failing test is written (the target suite passes), but
the test script runs the whole workspace, where another package has no test files — so the
command exits 1 anyway and `expect = "fail"` would be satisfied."""

import _tricks

if not _tricks.start("trick-lying-exit"):
    _tricks.write(_tricks.SCRIPT, "python3 tools/vitest.py --workspace run calc\n")
    _tricks.report()
    _tricks.completion()
    _tricks.commit("trick: workspace run that exits 1 for another package")
