"""An alert's data: ``AlertEvent``, the one transition type every notifier, the outbox, the
stop-file writer and the metrics see, and ``Alert``, one (rule, run, tag)'s state in the
AlertBook (gradwatch/alerts.py), as saved in the state DB."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gradwatch.fmt import stored_number

# kinds of transition that reach people
FIRING = "firing"
ESCALATED = "escalated"
DEESCALATED = "deescalated"
RESOLVED = "resolved"
REPEAT = "repeat"


def alert_key(rule: str, run: str, tag: str) -> str:
    return f"{rule}\x1f{run}\x1f{tag}"


@dataclass
class AlertEvent:
    """One notifiable transition of one alert (rule, run, tag)."""

    rule: str
    run: str
    tag: str
    kind: str  # firing | escalated | deescalated | resolved | repeat
    severity: str  # current severity; for resolved, the last one it had
    previous: str | None  # severity before an escalation / de-escalation
    step: int
    value: float
    wall_time: float  # of the point that caused it (0 for timer events)
    threshold: float | None
    starts_at: float  # epoch seconds the alert started firing
    ends_at: float | None  # set on resolved
    labels: dict[str, str] = field(default_factory=dict)  # alertname, severity, run, tag + rule labels
    annotations: dict[str, str] = field(default_factory=dict)  # summary, recommendation, ...
    catchup: bool = False  # part of the one summary sent after catching up on history
    seq: int = 0  # per-alert sequence number, to keep order per alert

    @property
    def key(self) -> str:
        return alert_key(self.rule, self.run, self.tag)

    @property
    def status(self) -> str:
        """Alertmanager's two statuses."""
        return "resolved" if self.kind == RESOLVED else "firing"

    @property
    def fingerprint(self) -> str:
        """Stable id of the alert (not of one transition), from its identity labels."""
        ident = {k: v for k, v in sorted(self.labels.items()) if k != "severity"}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        d = asdict(self)
        d["value"] = stored_number(self.value)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertEvent:
        d: dict[str, Any] = json.loads(text)
        d["value"] = float(d["value"])
        return cls(**d)


# -- lifecycle -----------------------------------------------------------------

PENDING = "pending"
ACTIVE = "firing"


class Alert:
    """The lifecycle state of one (rule, run, tag)."""

    __slots__ = (
        "clear_points",
        "clear_since",
        "last_notified",
        "rank",
        "ratio",
        "rule",
        "run",
        "seq",
        "starts_at",
        "state",
        "step",
        "tag",
        "value",
        "wall_time",
    )

    def __init__(self, rule: str, run: str, tag: str) -> None:
        self.rule = rule
        self.run = run
        self.tag = tag
        self.state = PENDING
        self.rank = 0
        self.starts_at = 0.0
        self.last_notified = 0.0
        self.seq = 0
        self.clear_points = 0
        self.clear_since: float | None = None
        self.step = 0
        self.value = math.nan
        self.wall_time = 0.0
        self.ratio = 0.0  # growth rules: the ratio at the last point, for timer and summary events

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["value"] = stored_number(self.value)
        d["ratio"] = stored_number(self.ratio)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        a = cls(d["rule"], d["run"], d["tag"])
        for k in cls.__slots__:
            if k in d:
                setattr(a, k, d[k])
        a.value = float(a.value)
        a.ratio = float(a.ratio)
        return a
