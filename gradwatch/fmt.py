"""The one policy for text a human reads and for numbers JSON cannot hold.

Run and tag names come from the trainer's files (DESIGN.md: untrusted, bytes
decoded with ``surrogateescape``). Before one reaches a terminal, a log line or
a report, :func:`escape` makes sure it cannot start a new line (forging a
``FIRING CRITICAL`` line in journald), send a terminal escape sequence, or
reorder what the operator sees with bidi controls (U+202E makes
``run-gpj.exe`` read as ``run-exe.jpg``).

JSON has no NaN or Infinity: :func:`json_number` is the one spelling for every
JSON output (``"NaN"``, ``"Infinity"``, ``"-Infinity"``: what ``float()`` reads
back and what JavaScript's ``Number()`` understands). Numbers a human reads
(alerts, reports, Slack) go through :func:`human`; numbers stored in the state
DB and the outbox go through :func:`stored_number` (Python's own spelling,
``"nan"``/``"inf"``/``"-inf"``: the stored format, which must not change
without a migration).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

# Bidi embeddings/overrides (U+202A-U+202E), isolates (U+2066-U+2069), marks
# (U+200E/U+200F) and the Arabic letter mark (U+061C): invisible, and they
# reorder the text around them.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))


def _escape_table() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}  # C0, DEL, C1
    table.update({c: f"\\u{c:04x}" for c in _BIDI})
    # U+DC80-U+DCFF is how surrogateescape keeps an undecodable byte: show the byte
    table.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})
    # any other lone surrogate cannot be encoded at all: show its code point
    table.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000) if c not in table})
    return table


_ESCAPES = _escape_table()


def escape(text: object) -> str:
    """``text`` safe to show to a human: controls, bidi marks and lone surrogates as ``\\xNN``/``\\uNNNN``.

    Printable text (any script, emoji) is kept as it is; the result always
    encodes as UTF-8 and holds no line break.
    """
    return str(text).translate(_ESCAPES)


def shown_name(name: str, limit: int = 60) -> str:
    """A possibly huge name for a log line: quoted, escaped by :func:`escape`, cut to ``limit`` characters."""
    if len(name) <= limit:
        return f"'{escape(name)}'"
    return f"'{escape(name[:limit])}'... ({len(name):,} characters)"


def json_number(v: float | None) -> float | str | None:
    """JSON has no NaN/Inf: they become the strings "NaN", "Infinity", "-Infinity"."""
    if v is None or math.isfinite(v):
        return v
    if v != v:
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def human(x: float) -> str:
    """826256.0 -> ``826,256``; 0.5 -> ``0.5``; 1.5e-05 -> ``1.5e-05``; NaN -> ``NaN``; ±Inf -> ``±Inf``."""
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if 1e-3 <= abs(x) < 1e15:
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.2f}"
    return f"{x:.4g}"


def human_or_na(v: float | None) -> str:
    """:func:`human`, or ``n/a`` when there is no value (an event without a threshold)."""
    return "n/a" if v is None else human(float(v))


# how the state DB and the outbox spell the numbers JSON cannot hold; float() reads them back
STORED_NONFINITE = frozenset(("nan", "inf", "-inf"))


def stored_number(v: float) -> float | str:
    """A number for a stored JSON document: itself, or ``"nan"``/``"inf"``/``"-inf"`` (``repr``)."""
    return v if math.isfinite(v) else repr(float(v))


def rfc3339(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (logs, stop-files, Alertmanager, webhooks)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (at any depth) spelled by :func:`json_number`."""
    if isinstance(obj, float):
        return json_number(obj)
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes the invalid tokens ``NaN``/``Infinity``."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


# json's C encoder: ``json.dump(..., indent=...)`` runs the pure-Python one (0.15-0.2 s for check's
# 850 KB document of 1,000 findings), so write_json lays out the outer levels itself
_encode_line = json.JSONEncoder().encode


def write_json(doc: Any, out: TextIO, depth: int = 2, indent: int = 2) -> None:
    """``json.dump(doc, out, indent=indent)`` and a newline, except that containers deeper than
    ``depth`` levels are written on one line each (``", "`` and ``": "`` between items): a
    document of many records stays readable and greppable, a record to a line, and is written
    by the C encoder. With a depth beyond the document's the text is ``json.dump``'s."""
    parts: list[str] = []
    _layout(doc, depth, 0, " " * indent, parts)
    parts.append("\n")
    out.write("".join(parts))


def _layout(obj: Any, depth: int, level: int, pad: str, parts: list[str]) -> None:
    if isinstance(obj, dict):
        laid_out = depth > 0 and obj and all(isinstance(k, str) for k in obj)
    else:
        laid_out = depth > 0 and isinstance(obj, (list, tuple)) and obj
    if not laid_out:
        parts.append(_encode_line(obj))
        return
    inner = "\n" + pad * (level + 1)
    if isinstance(obj, dict):
        parts.append("{")
        for i, (key, value) in enumerate(obj.items()):
            parts.append(("," if i else "") + inner + _encode_line(key) + ": ")
            _layout(value, depth - 1, level + 1, pad, parts)
        parts.append("\n" + pad * level + "}")
    else:
        parts.append("[")
        for i, value in enumerate(obj):
            parts.append(("," if i else "") + inner)
            _layout(value, depth - 1, level + 1, pad, parts)
        parts.append("\n" + pad * level + "]")


__all__ = [
    "STORED_NONFINITE",
    "escape",
    "human",
    "human_or_na",
    "json_dumps",
    "json_number",
    "json_safe",
    "rfc3339",
    "shown_name",
    "stored_number",
    "write_json",
]
