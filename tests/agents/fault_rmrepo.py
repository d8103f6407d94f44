"""Deletes the repository it works in (its cwd), then exits 0: a worker that `rm -rf`s its
checkout, or an operator who removes it mid-plan."""

import os
import shutil

import _agent

_agent.start("fault-rmrepo")
here = os.getcwd()
shutil.rmtree(here)
print(f"removed {here}", flush=True)
