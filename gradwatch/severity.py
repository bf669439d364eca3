"""The one Severity type: every rank, name and comparison of an alert's severity.

``Severity`` is an ``IntEnum`` so the evaluation hot path keeps comparing
small ints (``Rule.evaluate`` returns the rank as an int, 0 meaning "no
condition"); everywhere else reads ``Severity(rank).label`` instead of a
string/rank table. A pending alert has no severity yet: ``PENDING_RANK``.
"""

from __future__ import annotations

from enum import IntEnum


class Severity(IntEnum):
    """An alert's severity; a higher value wins. ``OK`` (0) is no condition."""

    OK = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """The name in rule files, labels, payloads: ``"info"``, ``"warning"``, ``"critical"``, ``"ok"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, name: str | None) -> Severity:
        """``"warning"`` -> ``Severity.WARNING``; None, ``""`` or an unknown name -> ``Severity.OK``."""
        return _BY_LABEL.get(name or "", cls.OK)

    @classmethod
    def of_rank(cls, rank: int, default: str | None = "ok") -> str | None:
        """The label of ``rank`` (an int from the engine), ``default`` when it is no severity (0, pending)."""
        return _LABELS.get(rank, default)


# the severities a rule, a channel or a stop-file can name, lowest first
SEVERITY_NAMES: tuple[str, ...] = tuple(s.label for s in Severity if s is not Severity.OK)
_BY_LABEL = {s.label: s for s in Severity if s is not Severity.OK}
_LABELS = {int(s): s.label for s in Severity if s is not Severity.OK}

# Series.ranks value of a rule whose alert is pending (a streak toward ``for``, no severity yet)
PENDING_RANK = -1

__all__ = ["PENDING_RANK", "SEVERITY_NAMES", "Severity"]
