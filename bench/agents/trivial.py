"""The benchmarks' trivial worker: does the phase at once and exits.

It honours the orchestrd worker contract from the environment (cwd = the repo):
- writes ORCHESTRD_REPORT with `Status: PASS`;
- writes every file in ORCHESTRD_COMPLETION (os.pathsep-joined, repo-relative) containing every
  marker of ORCHESTRD_MARKERS (newline-joined);
- BENCH_SLEEP (seconds, optional): sleep before exiting;
- BENCH_EXIT_DIR (optional): right before exiting, append `time.time()` to
  `$BENCH_EXIT_DIR/<ORCHESTRD_PLAN_ID>.<ORCHESTRD_PHASE_ID>` — the worker's own exit timestamp,
  which the reaction benchmark compares with the next `worker.started` in the audit log.

Only `os`, `sys` and `time` are imported and it leaves with `os._exit(0)`, so the worker costs
little more than the interpreter's start-up: what is measured is the supervisor, not the agent.
argv is ignored (the profile passes `{prompt_file}` like a real agent CLI would get a prompt).
"""

import os
import time

env = os.environ


def _write(rel: str, text: str) -> None:
    d = os.path.dirname(rel)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(rel, "w", encoding="utf-8") as f:
        f.write(text)


phase = env.get("ORCHESTRD_PHASE_ID", "?")
_write(env["ORCHESTRD_REPORT"], f"# {phase} worker report\n\nStatus: PASS\n")
markers = "".join(f"{m}\n" for m in env.get("ORCHESTRD_MARKERS", "").split("\n") if m)
for rel in env.get("ORCHESTRD_COMPLETION", "").split(os.pathsep):
    if rel:
        _write(rel, f"# {phase} complete\n{markers}")
sleep = float(env.get("BENCH_SLEEP") or 0)
if sleep > 0:
    time.sleep(sleep)
exit_dir = env.get("BENCH_EXIT_DIR")
if exit_dir:
    name = f"{env.get('ORCHESTRD_PLAN_ID', '?')}.{phase}"
    fd = os.open(os.path.join(exit_dir, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{time.time():.6f}\n".encode())
    os.close(fd)
os._exit(0)
