"""Does the work but marks it with the `a` phase's marker (`@plan:T.P08a`) instead of its own,
in the code and in the completion file."""

import _tricks

if not _tricks.start("trick-p08a"):
    _tricks.implement(marker_suffix="a")
    _tricks.report()
    _tricks.completion(marker_suffix="a")
    _tricks.commit("trick: the a-phase's marker instead of the phase's own")
