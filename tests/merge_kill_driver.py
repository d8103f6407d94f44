"""Merges plans' branches one after the other, the merge state of each saved in a JSON file
(atomically, fsynced) as the daemon saves it in state.toml: SIGKILLed at random moments by
test_merge_queue, started again, it must carry on from the saved states.

usage: merge_kill_driver.py REPO WORKTREES_ROOT STATES_DIR TARGET PLAN...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio

from orchestrd.merge import MergeJob, Merger, MergeState
from orchestrd.worktrees import RepoGit, branch_for


async def main(repo: Path, root: Path, states: Path, target: str, plans: list[str]) -> None:
    for plan in plans:
        file = states / f"{plan}.json"
        st = (
            MergeState.from_dict(json.loads(file.read_text()))
            if file.exists()
            else MergeState(target=target)
        )

        async def save(s: MergeState, file: Path = file) -> None:
            tmp = file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, json.dumps(s.as_dict()).encode())
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, file)

        async def verify(tree: Path) -> str | None:
            # slow enough that kills land during verification too
            done = await anyio.run_process(
                ["sh", "-c", "sleep 0.1; test -f base.txt"], cwd=tree, check=False
            )
            return None if done.returncode == 0 else "test -f base.txt failed"

        job = MergeJob(plan, RepoGit(repo, 30), RepoGit(root / plan, 30), branch_for(plan))
        st = await Merger(job, save, verify, lambda *a, **k: None).run(st)
        if st.step != "done":
            sys.exit(f"{plan}: {st.step} {st.reason}")


if __name__ == "__main__":
    a = sys.argv[1:]
    print("ready", flush=True)  # imports done: the test's random kill times count from here
    anyio.run(main, Path(a[0]), Path(a[1]), Path(a[2]), a[3], a[4:])
