"""orchestrd: a supervisor daemon for phase-by-phase coding-agent plans."""

__version__ = "0.1.0"
