"""Shim: moved to ``gradwatch.exporter.http`` (issue 11); removed once nothing imports this path."""

import sys

import gradwatch.exporter.http

sys.modules[__name__] = gradwatch.exporter.http
