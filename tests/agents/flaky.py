"""Fails as the primary worker, passes as the remediation worker (ORCHESTRD_ROLE).

How the primary fails is $AGENT_FIRST: `fail` (a FAIL report, the default), `crash` (traceback,
exit 1), `garbage` (binary bytes with NULs in the log, exit 1), `hang` (never exits) or
`noreport` (exits 0 without a report).
"""

import os
import sys
import time

import _agent

_agent.start("flaky")
if os.environ["ORCHESTRD_ROLE"] == "remediation":
    _agent.finish_passing()
else:
    first = os.environ.get("AGENT_FIRST", "fail")
    print(f"primary attempt {os.environ['ORCHESTRD_ATTEMPT']}: failing by {first}", flush=True)
    if first == "crash":
        raise RuntimeError("the agent crashed")
    if first == "garbage":  # a tool dumped a binary file into the log, then the agent died
        sys.stdout.flush()
        sys.stdout.buffer.write(b"\x7fELF\x00\x01\xff\xfe Error: \x00 binary\n")
        sys.exit(1)
    if first == "hang":
        while True:
            time.sleep(1)
    if first == "fail":
        _agent.write_report("Status: FAIL")
