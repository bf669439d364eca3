"""Shim: moved to ``gradwatch.daemon.watcher`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.daemon.watcher

sys.modules[__name__] = gradwatch.daemon.watcher
