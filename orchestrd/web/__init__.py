"""The read-only status page and JSON API the daemon serves when its config has `[http]`."""

from .server import Listener

__all__ = ["Listener"]
