"""What the trick agents share: the honest way to do a phase of the tiny workspace built by
tests/test_tricks.py (packages/core/calc.py, its tests, scripts/test.sh), and git commits.

An agent that commits a trick names its commit `trick: …`; the honest remediation worker reverts
such a commit first, as a careful person would, then does the phase properly.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import _agent

CALC = Path("packages/core/calc.py")
TESTS = Path("packages/core/tests/test_calc.py")
SCRIPT = Path("scripts/test.sh")
RED_TEST = """import unittest

from calc import add


class AddTest(unittest.TestCase):
    def test_add_exists(self) -> None:
        self.assertTrue(callable(add))

    def test_adds(self) -> None:
        self.assertEqual(add(2, 3), 5)
"""
HONEST_SCRIPT = "python3 tools/vitest.py run --root=packages/core calc\n"


def env(name: str) -> str:
    return os.environ[name]


def remediation() -> bool:
    return env("ORCHESTRD_ROLE") == "remediation"


def markers(suffix: str = "") -> list[str]:
    return [m + suffix for m in env("ORCHESTRD_MARKERS").splitlines() if m]


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    return done.stdout


def commit(message: str) -> None:
    git("add", "-A")
    git("commit", "-q", "--allow-empty", "-m", message)


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def run(command: str) -> tuple[int, str]:
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def implement(marker_suffix: str = "") -> None:
    tags = " ".join(markers(marker_suffix))
    write(CALC, f"def add(a: int, b: int) -> int:\n    return a + b  # {tags}\n")


def report(status: str = "PASS", body: str = "") -> None:
    phase = env("ORCHESTRD_PHASE_ID")
    kind = env("ORCHESTRD_PHASE_KIND")
    command = f"sh {SCRIPT}" if kind == "test" else HONEST_SCRIPT.strip()
    rc, output = run(command)
    verdict = "FAIL (expected: red, the new test fails on its assertion)" if rc else "PASS"
    if not body:
        body = (
            "## Commands\n\n```bash\n"
            f'{command} 2>&1 | tee "reports/{phase}-$(date +%s).log"\n```\n\n'
            f"## Output\n\n```\n{output}\n```\n\n"
            f"- `{command}`: {verdict}\n- Typecheck: PASS\n"
        )
    write(
        env("ORCHESTRD_REPORT"),
        f"# {phase} worker report\n\nPhase: {phase}\nCompleted: {now()}\n\n{body}\n"
        f"Status: {status}\n",
    )


def completion(marker_suffix: str = "", extra: str = "") -> None:
    phase = env("ORCHESTRD_PHASE_ID")
    for name in filter(None, env("ORCHESTRD_COMPLETION").split(os.pathsep)):
        body = "".join(f"- {m}\n" for m in markers(marker_suffix))
        write(name, f"# {phase} done\n\nPhase: {phase}\nCompleted: {now()}\n\n{body}{extra}")


def do_the_work(kind: str) -> None:
    if kind == "test":
        write(TESTS, RED_TEST)
        write(SCRIPT, HONEST_SCRIPT)
    elif kind == "impl":
        implement()


def honest() -> None:
    """The phase done properly, after reverting the failed attempt's trick commit if any."""
    if git("log", "-1", "--format=%s").startswith("trick:"):
        git("revert", "--no-edit", "HEAD")
    do_the_work(env("ORCHESTRD_PHASE_KIND"))
    report()
    completion()
    commit(f"{env('ORCHESTRD_PHASE_ID')}: done")
    print("done: Status: PASS")


def start(name: str) -> bool:
    """The usual agent start (header, prompt echo, record); True for the honest remediation."""
    _agent.start(name)
    if remediation():
        honest()
        return True
    return False
