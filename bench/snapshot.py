"""The cost of the git snapshots around a worker attempt, on a repository of N files.

    python bench/snapshot.py [--files 3000]

Times, with the orchestrd found first on sys.path (run it with PYTHONPATH set to an older
checkout to compare): the first snapshot of a plan, a later snapshot after 10 files changed,
and one whole attempt (PhaseGit.start_attempt + end_attempt: two snapshots and the diffs).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from orchestrd.config import TEST_GLOBS
from orchestrd.gitsnap import Git, PhaseGit


def make_repo(root: Path, files: int) -> Path:
    repo = root / "repo"
    for i in range(files):
        path = repo / f"pkg{i % 50:02d}" / ("tests" if i % 10 == 0 else "src") / f"m{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}():\n    return {i}\n" * 20)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "init"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    return repo


def touch(repo: Path, round_: int) -> None:
    """Modify 10 files."""
    for j in range(10 * round_, 10 * round_ + 10):
        kind = "tests" if j % 10 == 0 else "src"
        (repo / f"pkg{j % 50:02d}" / kind / f"m{j}.py").write_text(f"# {round_}\n")


async def main(files: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_repo(root, files)
        git = Git(repo, root / "scratch", timeout=60)
        t = time.perf_counter()
        await git.snapshot("first")
        first = time.perf_counter() - t
        later = []
        for r in range(5):
            touch(repo, r)
            t = time.perf_counter()
            await git.snapshot(f"s{r}")
            later.append(time.perf_counter() - t)
        watch = "watch" in inspect.signature(PhaseGit).parameters
        attempts = []
        for r in range(5, 10):
            pgit = PhaseGit(git, tuple(TEST_GLOBS)) if watch else PhaseGit(git)  # type: ignore[call-arg]
            t = time.perf_counter()
            await pgit.start_attempt(f"a{r}")
            touch(repo, r)
            await pgit.end_attempt(f"a{r}")
            attempts.append(time.perf_counter() - t)
    ms = 1000
    print(
        f"{files} files: first snapshot {first * ms:.0f} ms, later snapshot "
        f"{statistics.median(later) * ms:.0f} ms, whole attempt (2 snapshots + diffs) "
        f"{statistics.median(attempts) * ms:.0f} ms (medians of 5)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3000)
    anyio.run(main, parser.parse_args().files)
