"""A stand-in for a JavaScript test runner (vitest), copied into the git repos of
tests/test_tricks.py as `tools/vitest.py`.

`run [PATTERN]` runs the unittest files `tests/test_*PATTERN*.py` of the current folder (or of
`--root=DIR`); `--workspace` runs every `packages/*` and, like a vitest workspace, exits 1 when one
of them has no test files even if the others passed; any other option is rejected the way cac
(vitest's argument parser) rejects it.
"""

import subprocess
import sys
from pathlib import Path

roots, pattern = ["."], ""
for arg in sys.argv[1:]:
    if arg == "run":
        continue
    if arg == "--workspace":
        roots = sorted(str(p) for p in Path("packages").iterdir() if p.is_dir())
    elif arg.startswith("--root="):
        roots = [arg.split("=", 1)[1]]
    elif arg.startswith("-"):
        print(f"CACError: Unknown option `{arg}`", file=sys.stderr)
        sys.exit(1)
    else:
        pattern = arg

failed = False
for root in roots:
    tests = Path(root, "tests")
    files = sorted(tests.glob(f"test_*{pattern}*.py")) if tests.is_dir() else []
    if not files:
        print(f"[{root}] No test files found, exiting with code 1", flush=True)
        failed = True
        continue
    for f in files:
        # -B: a test file restored within the same second keeps its size and mtime, and a
        # cached .pyc of the edited version would be run instead
        rc = subprocess.run(
            [sys.executable, "-B", "-m", "unittest", "-v", f"tests.{f.stem}"],
            cwd=root,
            stderr=subprocess.STDOUT,
        ).returncode
        print(f"[{root}] {'PASS' if rc == 0 else 'FAIL'} {f.relative_to(root)}", flush=True)
        failed |= rc != 0
sys.exit(1 if failed else 0)
