"""Alert lifecycle: inactive -> pending -> firing -> resolved.

(Lifecycle logic follows; the event type below is what every notifier,
the outbox, the stop-file writer and the metrics see.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

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
        d["value"] = _num(self.value)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertEvent:
        d: dict[str, Any] = json.loads(text)
        d["value"] = float(d["value"])
        return cls(**d)


def _num(v: float) -> Any:
    # JSON has no NaN/Inf; float("nan"), float("inf") read these back
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return v
