"""`bench/run.py --list` names every registered benchmark once, with the target its summary
line is held against (what `--quick` prints one line each for). Runs no benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_list_prints_one_line_per_registered_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    names = [line.partition(":")[0] for line in out.splitlines()]
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import run; "
        "print(','.join(run.BENCHES))"
    )
    registered = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert names == registered.split(",")
    assert "supervisord" in names and "cli" in names
    assert all(line.partition(": ")[2] for line in out.splitlines())
