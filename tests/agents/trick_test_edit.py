"""An implementation phase that weakens the test instead of implementing: the test now expects
what the stub returns, so the suite is green."""

import _tricks

if not _tricks.start("trick-test-edit"):
    text = _tricks.TESTS.read_text().replace("add(2, 3), 5)", "add(2, 3), 0)")
    _tricks.write(_tricks.TESTS, text)
    _tricks.report()
    _tricks.completion()
    _tricks.commit("trick: test weakened in the implementation phase")
