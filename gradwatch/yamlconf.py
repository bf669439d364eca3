"""Moved to ``gradwatch.config.yaml`` (issue 11); this path is the same module until the shims go."""

import sys

from gradwatch.config import yaml as _moved

sys.modules[__name__] = _moved
