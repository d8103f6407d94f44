"""A test phase made red for the wrong reason: the tests are written, but the test script passes
the runner an option it does not know (`--filter`), so the runner exits 1 and no test runs."""

import _tricks

if not _tricks.start("trick-wrong-red"):
    _tricks.write(_tricks.TESTS, _tricks.RED_TEST)
    _tricks.write(_tricks.SCRIPT, "python3 tools/vitest.py run --filter calc\n")
    _tricks.report()
    _tricks.completion()
    _tricks.commit("trick: test script with an option the runner rejects")
