"""Shim: moved to ``gradwatch.daemon.sdnotify`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.daemon.sdnotify

sys.modules[__name__] = gradwatch.daemon.sdnotify
