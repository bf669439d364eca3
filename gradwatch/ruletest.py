"""Shim: moved to ``gradwatch.oneshot.ruletest`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.oneshot.ruletest

sys.modules[__name__] = gradwatch.oneshot.ruletest
