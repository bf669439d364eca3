"""``gradwatch watch``: the daemon, split by job (docs/architecture.md).

The names tests and the command line import are re-exported here.
"""

from gradwatch.daemon.command import (
    add_arguments,
    cmd_config_check,
    cmd_watch,
    config_from_args,
    install_signals,
)
from gradwatch.daemon.errors import ListenError
from gradwatch.daemon.loop import Daemon
from gradwatch.daemon.status import Status

__all__ = [
    "Daemon",
    "ListenError",
    "Status",
    "add_arguments",
    "cmd_config_check",
    "cmd_watch",
    "config_from_args",
    "install_signals",
]
