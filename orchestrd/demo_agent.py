"""A scripted stand-in for a coding agent, so orchestrd can be tried without one installed.

Like `codex exec` it prints a header and the prompt to stderr, then "works": it writes every
```file:PATH block of its prompt into the repository, and finally the report and completion
files named by the ORCHESTRD_* contract variables. With `--json` it prints what it does as
`codex exec --json` would (thread, turn, file changes, the turn's token usage), so a profile
with `output = "codex-json"` shows a usage ledger without any agent installed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

_BLOCK = re.compile(r"^```file:(?P<path>\S+)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


class Stream:
    """Plain lines, or codex-json events with a running token count (about 4 bytes a token:
    the demo has no model to ask)."""

    def __init__(self, json_lines: bool, prompt: str) -> None:
        self.json = json_lines
        self.items = 0
        self.input = 900 + len(prompt.encode()) // 4  # a real agent's system prompt, and ours
        self.output = 0
        if json_lines:
            self.event({"type": "thread.started", "thread_id": f"demo-{os.getpid()}"})
            self.event({"type": "turn.started"})

    def event(self, data: dict[str, object]) -> None:
        print(json.dumps(data, separators=(",", ":")), flush=True)

    def item(self, item: dict[str, object]) -> None:
        self.items += 1
        self.event({"type": "item.completed", "item": {"id": f"item_{self.items}", **item}})

    def wrote(self, target: Path, body: str) -> None:
        self.output += 40 + len(body.encode()) // 4
        if self.json:
            change = {"path": str(target), "kind": "add"}
            self.item({"type": "file_change", "changes": [change], "status": "completed"})
        else:
            print(f"wrote {target}", flush=True)

    def done(self, text: str) -> None:
        if not self.json:
            print(text)
            return
        self.output += len(text.encode()) // 4
        self.item({"type": "agent_message", "text": text})
        # cached: the system prompt, read from the provider's cache after the first request
        usage = {
            "input_tokens": self.input,
            "cached_input_tokens": 768,
            "output_tokens": self.output,
            "reasoning_output_tokens": 0,
        }
        self.event({"type": "turn.completed", "usage": usage})


def main(argv: list[str]) -> int:
    json_lines = "--json" in argv[1:2]
    if json_lines:
        argv = [argv[0], *argv[2:]]
    if len(argv) != 2:
        print("usage: python -m orchestrd.demo_agent [--json] PROMPT_FILE", file=sys.stderr)
        return 2
    prompt = Path(argv[1]).read_text(encoding="utf-8")
    phase = os.environ.get("ORCHESTRD_PHASE_ID", "?")
    print(f"demo-agent 1.0 — phase {phase}, workdir {os.getcwd()}", file=sys.stderr)
    print("--------\nuser\n" + prompt, file=sys.stderr)
    delay = float(os.environ.get("DEMO_AGENT_DELAY", "0.3"))
    out = Stream(json_lines, prompt)
    for m in _BLOCK.finditer(prompt):
        target = Path(m.group("path"))
        if target.is_absolute() or ".." in target.parts:
            print(f"refusing to write outside the repo: {target}", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(m.group("body"), encoding="utf-8")
        out.wrote(target, m.group("body"))
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
    out.done(f"report {report}: Status: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
