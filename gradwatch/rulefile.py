"""Moved to ``gradwatch.config.rulefiles`` (issue 11); this path is the same module until the shims go."""

import sys

from gradwatch.config import rulefiles as _moved

sys.modules[__name__] = _moved
