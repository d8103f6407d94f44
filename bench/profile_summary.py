#!/usr/bin/env python3
"""Summarise a py-spy `--format raw` profile (collapsed stacks) of the orchestrd daemon.

    python bench/profile_summary.py bench/results/profile-throughput.raw [--top 25]

Prints, per thread kind (event loop, anyio to_thread workers, asyncio child watchers, the
watchfiles thread), its share of the samples, then for the event loop thread:
- the busy share (samples not parked in the selector),
- a breakdown by orchestrd activity (the first matching rule below, on the whole stack),
- the top functions by *self* samples (leaf frame, file:line) and by *inclusive* samples
  (function anywhere in the stack, counted once per stack).
A profile recorded with --idle includes threads blocked in syscalls (waitpid, fsync, epoll);
without it only on-CPU samples are kept.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

THREAD_KINDS = [
    ("child watcher (waitpid thread per worker)", ("ThreadedChildWatcher._do_waitpid",)),
    ("anyio to_thread worker", ("WorkerThread.run",)),
    ("watchfiles thread", ("watchfiles/main.py",)),
    ("event loop", ("BaseEventLoop.run_forever",)),
]

# (label, regex on the joined stack) — first match wins; order = most specific first
ACTIVITIES = [
    ("idle: selector wait", r"select \([^)]*selectors\.py:\d+\)$"),
    ("audit: echo to stderr (_console: json.loads + format)", r"_console"),
    ("audit: json encoding (_to_json)", r"_to_json"),
    ("audit: redaction (Redactor.deep)", r"Redactor\.deep|_redact"),
    ("audit: timestamp (_timestamp: datetime.now().astimezone())", r"_timestamp"),
    ("audit: file write+flush+inode stat (AuditSink.msg/_current)", r"AuditSink"),
    ("audit: structlog / key order", r"_order_keys|structlog/"),
    (
        "state: serialise (dump_state / redacted_state: model_dump + tomli_w)",
        r"dump_state|redacted_state",
    ),
    ("state: atomic_write (write+fsync+rename+dir fsync)", r"atomic_write"),
    ("git: PhaseGit / Git._run (git processes spawned from the loop)", r"gitsnap\.py"),
    (
        "spawn: fork/exec in the loop (subprocess / asyncio transport)",
        r"_execute_child|subprocess\.py|_make_subprocess_transport|base_subprocess",
    ),
    ("worker: group_members /proc scan", r"group_members|_stat_fields"),
    ("worker: log pump / launch (anyio.open_file, pipe)", r"_pump|launch|_open \("),
    ("spool: take (parse plan, validate)", r"Spool\.take|parse_plan|read_plan_file"),
    ("checks: inspect (log scan, report, completion)", r"checks\.py"),
    ("runner: prompt / ledger / env", r"_prompt|append_ledger|_env \(|render_command|_prepare"),
    ("poll: watch loop (policy.py)", r"policy\.py"),
    ("archive", r"archive_plan|PlanFolder\.archive"),
    ("pydantic (other)", r"pydantic"),
    ("anyio / asyncio machinery", r"anyio/|asyncio/"),
]


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((stack.split(";"), n))
    return stacks


def thread_kind(frames: list[str]) -> str:
    joined = ";".join(frames)
    for label, needles in THREAD_KINDS:
        if any(n in joined for n in needles):
            return label
    return "other"


def short(frame: str) -> str:
    # "func (path/to/file.py:123)" → keep the last two path parts
    m = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not m:
        return frame
    func, file, line = m.groups()
    parts = file.split("/")
    return f"{func} ({'/'.join(parts[-2:])}:{line})"


def func_of(frame: str) -> str:
    m = re.match(r"(.*) \((.*):\d+\)$", frame)
    if not m:
        return frame
    func, file = m.groups()
    return f"{func} ({'/'.join(file.split('/')[-2:])})"


def summarise(path: Path, top: int) -> str:  # noqa: C901 - a report, read top to bottom
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    out = [f"{path}: {total} samples"]
    kinds: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        kinds[thread_kind(frames)] += n
    out.append("threads:")
    for k, n in kinds.most_common():
        out.append(f"  {100 * n / total:5.1f}%  {k}")
    loop = [(f, n) for f, n in stacks if thread_kind(f) == "event loop"]
    lt = sum(n for _, n in loop)
    if not lt:
        return "\n".join(out)
    idle = sum(n for f, n in loop if re.search(ACTIVITIES[0][1], f[-1] if f else ""))
    out.append(
        f"event loop: {lt} samples, busy {100 * (lt - idle) / lt:.1f}% "
        f"(idle in selector {100 * idle / lt:.1f}%)"
    )
    acts: collections.Counter[str] = collections.Counter()
    for frames, n in loop:
        joined = ";".join(frames)
        leaf = frames[-1] if frames else ""
        for label, rx in ACTIVITIES:
            target = leaf if label.startswith("idle") else joined
            if re.search(rx, target):
                acts[label] += n
                break
        else:
            acts["other"] += n
    out.append("event loop by activity (% of event-loop samples; first matching rule):")
    for k, n in acts.most_common():
        out.append(f"  {100 * n / lt:5.1f}%  {k}")
    busy = [(f, n) for f, n in loop if not re.search(ACTIVITIES[0][1], f[-1] if f else "")]
    selfc: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()  # innermost orchestrd frame (file:line)
    for frames, n in busy:
        selfc[short(frames[-1])] += n
        for fn in {func_of(f) for f in frames}:
            incl[fn] += n
        mine = [f for f in frames if "orchestrd/" in f and "__main__" not in f]
        if mine:
            own[short(mine[-1])] += n
    out.append("event loop, top self (leaf frame) — % of all event-loop samples:")
    for k, n in selfc.most_common(top):
        out.append(f"  {100 * n / lt:5.1f}%  {k}")
    out.append("event loop, innermost orchestrd line on the stack — % of event-loop samples:")
    for k, n in own.most_common(top):
        out.append(f"  {100 * n / lt:5.1f}%  {k}")
    out.append("event loop, top inclusive — % of event-loop samples:")
    for k, n in incl.most_common(top + 15):
        if any(
            s in k
            for s in (
                "<module>",
                "runpy",
                "_run_module",
                "cli.py",
                "run_daemon",
                "_eventloop.py",
                "runners.py",
                "run_until_complete",
                "run_forever",
                "Handle._run",
                "AsyncIOBackend.run",
            )
        ):
            continue
        out.append(f"  {100 * n / lt:5.1f}%  {k}")
    # the other threads: where they spend their samples (innermost orchestrd line)
    for kind in ("anyio to_thread worker",):
        ths = [(f, n) for f, n in stacks if thread_kind(f) == kind]
        tt = sum(n for _, n in ths)
        if not tt:
            continue
        c: collections.Counter[str] = collections.Counter()
        for frames, n in ths:
            mine = [f for f in frames if "orchestrd/" in f]
            c[short(mine[-1]) if mine else short(frames[-1])] += n
        out.append(f"{kind}: {tt} samples; innermost orchestrd line (or leaf):")
        for k, n in c.most_common(12):
            out.append(f"  {100 * n / tt:5.1f}%  {k}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
