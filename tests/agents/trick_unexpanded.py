"""Does the work, but its completion file quotes the test run as `$(…)` — written through a
quoted heredoc, so the shell never expanded it — where the output should be."""

import _tricks

if not _tricks.start("trick-unexpanded"):
    _tricks.implement()
    _tricks.report()
    _tricks.completion(
        extra="\n## Test output\n\n```\n"
        "$(python3 tools/vitest.py run --root=packages/core calc 2>&1)\n```\n"
    )
    _tricks.commit("trick: completion file with an unexpanded $(…)")
