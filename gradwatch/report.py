"""Shim: moved to ``gradwatch.oneshot.report`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.oneshot.report

sys.modules[__name__] = gradwatch.oneshot.report
