"""Moved to the ``gradwatch.store`` package (issue 11); this path re-exports it until the shims go."""

from gradwatch.store import *  # noqa: F403
from gradwatch.store import __all__  # noqa: F401
