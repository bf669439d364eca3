"""Shim: moved to ``gradwatch.daemon.writers`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.daemon.writers

sys.modules[__name__] = gradwatch.daemon.writers
