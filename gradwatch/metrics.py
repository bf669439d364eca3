"""Shim: moved to ``gradwatch.exporter.collector`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.exporter.collector

sys.modules[__name__] = gradwatch.exporter.collector
