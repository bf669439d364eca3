"""Shim: moved to ``gradwatch.oneshot.export`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.oneshot.export

sys.modules[__name__] = gradwatch.oneshot.export
