"""Exits 0 having made its report folder and its completion folder symlink loops (`reports ->
reports`, `.completed -> .completed`): a worker (or a checkout) with a cyclic link where the
supervisor has to read. Nothing it claims can be read."""

import os

import _agent

_agent.start("fault-symlink-loop")
for folder in ("reports", ".completed"):
    os.symlink(folder, folder)
print("made reports/ and .completed/ symlink loops", flush=True)
