"""Shim: moved to ``gradwatch.oneshot.check`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.oneshot.check

sys.modules[__name__] = gradwatch.oneshot.check
