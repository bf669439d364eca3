"""Errors of the daemon that the command turns into exit codes."""

from __future__ import annotations

import errno


class ListenError(Exception):
    """The metrics/health endpoint cannot listen where it was told to."""

    def __init__(self, listen: str, error: OSError) -> None:
        self.in_use = error.errno == errno.EADDRINUSE
        hint = (
            "another process (another gradwatch?) listens there: give this one its own --listen "
            "HOST:PORT, or --listen '' to turn the endpoint off"
            if self.in_use
            else "check the host part of --listen / listen:"
        )
        reason = error.strerror or str(error)
        if "cannot listen" in reason:  # the exporter's own message already names the address
            super().__init__(f"{reason}; {hint}")
        else:
            super().__init__(f"cannot listen on {listen}: {reason}; {hint}")
