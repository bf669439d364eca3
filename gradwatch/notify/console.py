"""Console notifier: what the seed trainer printed, from the outside.

On a terminal: a short coloured block per transition (no colour with
``NO_COLOR`` set or ``TERM=dumb``). Under systemd or a pipe: one line per
transition (journald keeps lines). With ``json``: one JSON object per line
for log pipelines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from gradwatch.alerts import DEESCALATED, ESCALATED, FIRING, REPEAT, RESOLVED, AlertEvent
from gradwatch.fmt import escape, human_or_na, json_dumps, rfc3339
from gradwatch.notify.base import Notifier

_COLOURS = {"critical": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;36m", "resolved": "\033[1;32m"}
_RESET = "\033[0m"
# Run and tag names come from the training job's files: a control character in them (ESC, CR,
# newline, U+202E) must not move the cursor, recolour, reorder or forge lines on the operator's
# terminal or in journald. fmt.escape is the one escaping every human-facing output uses.
_clean = escape


_VERB = {
    FIRING: "FIRING",
    ESCALATED: "ESCALATED",
    DEESCALATED: "DE-ESCALATED",
    RESOLVED: "RESOLVED",
    REPEAT: "STILL FIRING",
}


def _threshold(e: AlertEvent) -> str:
    # a growth rule's level is a factor: its rule renders it as "x10" in the annotations
    return _clean(e.annotations.get("threshold") or human_or_na(e.threshold))


class ConsoleNotifier(Notifier):
    """The daemon's console (``ConsoleNotifier(out)``) and ``type: console`` channels: one Notifier."""

    type = "console"
    default_group_wait = 0.0  # a terminal line costs nothing: print at once

    def __init__(
        self,
        out: TextIO | None = None,
        fmt: str = "auto",
        colour: bool | None = None,
        *,
        name: str = "console",
        **common: Any,
    ) -> None:
        super().__init__(name, **common)
        self.out = out or sys.stdout
        try:
            isatty = bool(self.out.isatty())
        except (AttributeError, ValueError, OSError):
            isatty = False
        self.fmt = ("block" if isatty else "line") if fmt in ("auto", "text") else fmt
        if colour is None:
            colour = isatty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.colour = colour

    def target(self) -> str:
        return "stdout"

    def send(self, events: list[AlertEvent]) -> None:
        self.write(self.render(events))

    def render(self, events: list[AlertEvent]) -> str:
        """The text for ``events``; the daemon renders before committing and writes right after."""
        render = {"json": self._json, "block": self._block}.get(self.fmt, self._line)
        return "".join(render(e) for e in events)

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()

    def _headline(self, e: AlertEvent) -> str:
        verb = _VERB.get(e.kind, e.kind.upper())
        sev = e.severity.upper()
        if e.kind in (ESCALATED, DEESCALATED) and e.previous:
            sev = f"{e.previous.upper()} -> {sev}"
        return f"{verb} {sev}"

    def _line(self, e: AlertEvent) -> str:
        parts = [
            rfc3339(time.time()),
            self._headline(e),
            e.rule,
            f"run={_clean(e.run)}",
            f"tag={_clean(e.tag)}",
            f"step={e.step}",
            f"value={human_or_na(e.value)}",
            f"threshold={_threshold(e)}",
        ]
        if e.catchup:
            parts.append("(active at start-up)")
        text = " ".join(p for p in parts if p)
        summary = e.annotations.get("summary")
        if summary:
            text += f" | {_clean(summary)}"
        rec = e.annotations.get("recommendation")
        if rec and e.kind != RESOLVED:
            text += f" | {_clean(rec)}"
        return text + "\n"

    def _block(self, e: AlertEvent) -> str:
        key = "resolved" if e.kind == RESOLVED else e.severity
        colour, reset = (_COLOURS.get(key, ""), _RESET) if self.colour else ("", "")
        head = f"{colour}{self._headline(e)}{reset}  {e.rule}"
        if e.catchup:
            head += "  (active at start-up)"
        lines = [
            head,
            f"  run {_clean(e.run)}   tag {_clean(e.tag)}",
            f"  step {e.step}   value {human_or_na(e.value)}   threshold {_threshold(e)}",
        ]
        if e.annotations.get("summary"):
            lines.append(f"  {_clean(e.annotations['summary'])}")
        if e.annotations.get("recommendation") and e.kind != RESOLVED:
            lines.append(f"  -> {_clean(e.annotations['recommendation'])}")
        return "\n".join(lines) + "\n\n"

    def _json(self, e: AlertEvent) -> str:
        doc = json.loads(e.to_json())
        doc["value"], doc["threshold"] = e.value, e.threshold  # NaN/Inf spelled as every JSON output does
        doc["status"] = e.status
        doc["time"] = rfc3339(e.ends_at or e.starts_at or 0)
        return json_dumps(doc, sort_keys=True) + "\n"
