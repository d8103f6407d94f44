"""A scripted stand-in for a coding agent, so orchestrd can be tried without one installed.

Like `codex exec` it prints a header and the prompt to stderr, then "works": it writes every
```file:PATH block of its prompt into the repository, and finally the report and completion
files named by the ORCHESTRD_* contract variables.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

_BLOCK = re.compile(r"^```file:(?P<path>\S+)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m orchestrd.demo_agent PROMPT_FILE", file=sys.stderr)
        return 2
    prompt = Path(argv[1]).read_text(encoding="utf-8")
    phase = os.environ.get("ORCHESTRD_PHASE_ID", "?")
    print(f"demo-agent 1.0 — phase {phase}, workdir {os.getcwd()}", file=sys.stderr)
    print("--------\nuser\n" + prompt, file=sys.stderr)
    delay = float(os.environ.get("DEMO_AGENT_DELAY", "0.3"))
    for m in _BLOCK.finditer(prompt):
        target = Path(m.group("path"))
        if target.is_absolute() or ".." in target.parts:
            print(f"refusing to write outside the repo: {target}", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(m.group("body"), encoding="utf-8")
        print(f"wrote {target}")
        time.sleep(delay)
    report = Path(os.environ["ORCHESTRD_REPORT"])
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {phase} worker report\n\nStatus: PASS\n", encoding="utf-8")
    markers = os.environ.get("ORCHESTRD_MARKERS", "")
    for name in filter(None, os.environ.get("ORCHESTRD_COMPLETION", "").split(os.pathsep)):
        done = Path(name)
        done.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"<!-- {m} -->\n" for m in markers.splitlines() if m)
        done.write_text(f"# {phase} complete\n{body}", encoding="utf-8")
    print(f"report {report}: Status: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
