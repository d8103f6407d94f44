"""Echoes its prompt into the log (which says `Status: PASS` in the worker contract), prints a
PASS of its own, writes the completion file — but never the report."""

import _tricks

if not _tricks.start("trick-echo"):
    _tricks.implement()
    _tricks.completion()
    _tricks.commit("trick: no report")
    print("All checks green.\nStatus: PASS")
