"""`gemini -p` with no usable login: its auth message on stderr and exit code 41
(FatalAuthenticationError). Every start is counted in $AGENT_COUNTER (see _limits.py); with
$AGENT_QUIET set it prints nothing and only the exit code tells."""

from __future__ import annotations

import os
import sys

import _agent
import _limits

_agent.start("auth-gemini")
_limits.starts()
if not os.environ.get("AGENT_QUIET"):
    print(
        "Please set an Auth method in your /home/u/.gemini/settings.json or specify one of "
        "the following environment variables before running: GEMINI_API_KEY, "
        "GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA",
        file=sys.stderr,
    )
sys.exit(41)
