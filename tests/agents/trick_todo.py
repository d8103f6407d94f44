"""Implements, but hands on unfinished work in the code: a TODO and a "for now" shortcut."""

import _tricks

if not _tricks.start("trick-todo"):
    _tricks.write(
        _tricks.CALC,
        "def add(a: int, b: int) -> int:\n"
        "    # TODO: handle overflow\n"
        f"    return a + b  # for now {' '.join(_tricks.markers())}\n",
    )
    _tricks.report()
    _tricks.completion()
    _tricks.commit("trick: unfinished work left in the code")
