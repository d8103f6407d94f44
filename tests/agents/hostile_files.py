"""Does its work, then leaves something hostile where orchestrd reads, named by $HOSTILE:

- `fifo_report`, `fifo_completion`: that file is a named pipe nobody writes (open(2) of it
  blocks a reader forever);
- `fifo_log`: its own log (the file orchestrd tails and scans) replaced by a named pipe;
- `fifo_marker`: `src/marked.py`, a file the phase's marker_paths glob names, is a named pipe;
- `fifo_prompt`: the next phase's prompt_file (`prompts/P02.md`) becomes a named pipe;
- `fifo_next_prompt`, `fifo_next_log`: the prompt file or the log orchestrd will write for the
  next attempt (its remediation) is made a named pipe first (opening one for writing blocks
  until someone reads), and the report says FAIL;
- `huge_report`: the report says `Status: PASS`, then is made a sparse gigabyte;
- `escapes`: prints an error line full of terminal escapes (OSC title, clear screen, colours,
  BEL, NUL) and a second one with 8-bit CSI and a bidi override.
"""

import os
from pathlib import Path

import _agent

_agent.start("hostile-files")
what = os.environ["HOSTILE"]
_agent.write_report("Status: PASS")
_agent.write_completion()
report = Path(os.environ["ORCHESTRD_REPORT"])
if what == "fifo_report":
    report.unlink()
    os.mkfifo(report)
elif what == "fifo_completion":
    for name in filter(None, os.environ.get("ORCHESTRD_COMPLETION", "").split(os.pathsep)):
        os.unlink(name)
        os.mkfifo(name)
elif what == "fifo_log":
    log = os.environ["ORCHESTRD_LOG"]
    os.unlink(log)
    os.mkfifo(log)
elif what == "fifo_marker":
    Path("src").mkdir(exist_ok=True)
    os.mkfifo("src/marked.py")
elif what == "fifo_prompt":
    Path("prompts").mkdir(exist_ok=True)
    os.unlink("prompts/P02.md")
    os.mkfifo("prompts/P02.md")
elif what.startswith("fifo_next_"):
    workers = Path(os.environ["ORCHESTRD_LOG"]).parent
    phase = os.environ["ORCHESTRD_PHASE_ID"]
    name = "prompt-{}-2.md" if what == "fifo_next_prompt" else "worker-{}-2.log"
    os.mkfifo(workers / name.format(phase))
    _agent.write_report("Status: FAIL")
elif what == "huge_report":
    os.truncate(report, 1 << 30)
elif what == "escapes":
    print("Error: \x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\0 done", flush=True)
    print("Error: \x9b31m\u202eevil", flush=True)
print(f"left {what}", flush=True)
