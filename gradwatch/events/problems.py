"""The kinds of damage a reader reports (each once, with file and offset) and counts."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("gradwatch.events")

# Problem kinds reported through ``on_problem`` (and counted in metrics).
CORRUPT = "corrupt_record"
TRUNCATED = "truncated_record"
ZERO_PADDING = "zero_padding"
SHRUNK = "file_shrunk"
REPLACED = "file_replaced"
UNDECODABLE = "undecodable_record"
SPARSE_HOLE = "sparse_hole"

# on_problem(kind, path, offset, detail)
ProblemHandler = Callable[[str, str, int, str], None]


def log_problem(kind: str, path: str, offset: int, detail: str) -> None:
    """The default ``on_problem``: one warning line with file and offset."""
    log.warning("%s: offset %d: %s: %s", path, offset, kind.replace("_", " "), detail)
