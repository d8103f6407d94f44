"""Counting for the limit agents: each start appends its wall-clock time to `$AGENT_COUNTER`
(default `.agent/limit-starts` in the working directory), so a test can see how many workers
started and when; the first `$AGENT_LIMIT_TIMES` starts (default 1) hit the limit."""

from __future__ import annotations

import os
import time
from pathlib import Path


def starts() -> int:
    """Record this start; returns how many starts there were, this one included."""
    counter = Path(os.environ.get("AGENT_COUNTER", ".agent/limit-starts"))
    counter.parent.mkdir(parents=True, exist_ok=True)
    with counter.open("a", encoding="utf-8") as f:
        f.write(f"{time.time()}\n")
    return len(counter.read_text(encoding="utf-8").splitlines())


def limited() -> bool:
    return starts() <= int(os.environ.get("AGENT_LIMIT_TIMES", "1"))
