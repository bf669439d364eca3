"""``gradwatch watch``: the daemon, split by job (docs/architecture.md).

The names tests and the command line import are re-exported here.
"""

from gradwatch.daemon.loop import (
    Daemon,
    ListenError,
    add_arguments,
    cmd_config_check,
    cmd_demo,
    cmd_watch,
    config_from_args,
    install_signals,
)

__all__ = [
    "Daemon",
    "ListenError",
    "add_arguments",
    "cmd_config_check",
    "cmd_demo",
    "cmd_watch",
    "config_from_args",
    "install_signals",
]
