"""systemd's sd_notify protocol with the standard library.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name``
for the abstract namespace); each message is one datagram of
``KEY=value`` lines. Without the variable every call is a no-op that
returns False, so the daemon calls these unconditionally::

    sdnotify.ready("watching 3 runs")       # READY=1 + STATUS=
    interval = sdnotify.watchdog_interval() # None, or seconds between pings
    sdnotify.watchdog()                     # WATCHDOG=1, every ``interval``
    sdnotify.reloading(); sdnotify.ready()  # around a SIGHUP reload
    sdnotify.stopping()                     # STOPPING=1 on SIGTERM

Errors (socket gone, permission) are logged once and swallowed: a lost
notification must never stop the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("gradwatch.sdnotify")

_warned: set[str] = set()


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":
        return "\0" + addr[1:]
    if addr[0] != "/":
        # e.g. vsock:... (systemd 253+ for VMs): not ours to speak
        _warn_once(
            "address", f"NOTIFY_SOCKET={addr!r} is not a unix socket path; systemd notifications are off"
        )
        return None
    return addr


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("%s", message)


def notify(message: str) -> bool:
    """Send one datagram of ``KEY=value`` lines; True if it was sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        _warn_once("send", f"cannot notify systemd at {os.environ.get('NOTIFY_SOCKET')}: {e.strerror or e}")
        return False
    return True


def _status(text: str | None) -> str:
    # STATUS is one line; a newline would start a new (bogus) assignment
    return "" if text is None else "\nSTATUS=" + " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + _status(status))


def status(text: str) -> bool:
    return notify(_status(text).lstrip("\n"))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def reloading(status: str | None = None) -> bool:
    """RELOADING=1; send :func:`ready` when the reload is done."""
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}" + _status(status))


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + _status(status))


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None when not asked for.

    Follows sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive
    integer, and ``WATCHDOG_PID``, when set, must be this process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        _warn_once(
            "watchdog", f"WATCHDOG_USEC={usec!r} is not a number of microseconds; watchdog pings are off"
        )
        return None
    if value <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return value / 1e6 / 2


__all__ = ["notify", "ready", "reloading", "status", "stopping", "watchdog", "watchdog_interval"]


class Watchdog:
    """systemd's watchdog (WatchdogSec=): a ping at most every half interval, nothing when not asked."""

    def __init__(self) -> None:
        self.every: float | None = None
        self._last = time.monotonic()

    def start(self) -> None:
        self.every = watchdog_interval()

    def ping(self) -> None:
        if self.every and time.monotonic() - self._last >= self.every:
            watchdog()
            self._last = time.monotonic()

    def due_in(self, now: float) -> float | None:
        """Seconds until the next ping is due (None: no watchdog)."""
        return self._last + self.every - now if self.every else None
