"""``gradwatch alerts``: what fired, when, for how long, and what was sent to which channel.

Reads the daemon's state database (read-only, while the daemon runs): the
alert history (gradwatch/history.py) and the outbox's delivery rows. Writes a
table for people, JSON, or CSV (one row per notification, so a spreadsheet
can count deliveries per channel).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import time
import urllib.parse
from typing import TextIO

from gradwatch.fmt import escape, json_number
from gradwatch.history import TABLE as HISTORY_TABLE
from gradwatch.history import Episode, Query, episodes, has_table
from gradwatch.store import DB_NAME


class AlertLogError(Exception):
    """The state database cannot be read: one line for the user, exit 3."""


def open_readonly(state_dir: str) -> sqlite3.Connection:
    """The daemon's state database, read-only (the daemon may be running and holds its lock)."""
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        raise AlertLogError(
            f"{path}: no state database; has `gradwatch watch` run with this state directory "
            "(--state-dir, or the logdir it watched)?"
        )
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=10)
        conn.execute("PRAGMA busy_timeout=10000")
        if not has_table(conn, HISTORY_TABLE):
            raise AlertLogError(
                f"{path}: no alert history yet (a gradwatch older than the `alerts` command wrote it; "
                "the next alert the daemon records starts it)"
            )
    except sqlite3.Error as e:
        raise AlertLogError(f"{path}: cannot read the state database: {e}") from None
    return conn


def load(state_dir: str, query: Query) -> list[Episode]:
    conn = open_readonly(state_dir)
    try:
        return episodes(conn, query)
    except sqlite3.Error as e:
        raise AlertLogError(
            f"{os.path.join(state_dir, DB_NAME)}: cannot read the alert history: {e}"
        ) from None
    finally:
        conn.close()


def iso(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def duration_text(seconds: float) -> str:
    """3725 -> ``1h2m5s``; 42 -> ``42s``."""
    s = round(max(seconds, 0.0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    parts += [f"{h}h"] if h else []
    parts += [f"{m}m"] if m else []
    return "".join(parts) + (f"{s}s" if s or not parts else "")


def sent_text(ep: Episode) -> str:
    """``webhook: firing delivered, resolved retrying (3 attempts)``; channels in order of first use."""
    if not ep.deliveries:
        return "-"
    by_channel: dict[str, list[str]] = {}
    for d in ep.deliveries:
        tries = f" ({d.attempts} attempts)" if d.status in ("retrying", "failed") and d.attempts > 1 else ""
        by_channel.setdefault(d.channel, []).append(f"{d.kind} {d.status}{tries}")
    return "; ".join(f"{escape(ch)}: {', '.join(items)}" for ch, items in by_channel.items())


def write_table(found: list[Episode], out: TextIO, now: float, since: float) -> None:
    out.write(f"{len(found)} alerts firing at some time since {iso(since)}\n")
    if not found:
        return
    header = ("STARTED (UTC)", "FOR", "SEVERITY", "RULE", "RUN", "TAG", "STEP", "SENT")
    rows = [
        (
            iso(ep.starts_at),
            duration_text(ep.duration(now)) + ("" if ep.ends_at is not None else " (firing)"),
            ep.worst if ep.worst == ep.severity else f"{ep.worst} (now {ep.severity})",
            escape(ep.rule),
            escape(ep.run),
            escape(ep.tag),
            f"{ep.first_step}..{ep.last_step}" if ep.last_step != ep.first_step else str(ep.first_step),
            sent_text(ep),
        )
        for ep in found
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n")


def episode_json(ep: Episode, now: float) -> dict:
    return {
        "rule": ep.rule,
        "run": ep.run,
        "tag": ep.tag,
        "severity": ep.worst,
        "last_severity": ep.severity,
        "starts_at": iso(ep.starts_at),
        "ends_at": iso(ep.ends_at) or None,
        "firing": ep.ends_at is None,
        "duration_seconds": round(ep.duration(now), 3),
        "first": {"step": ep.first_step, "value": json_number(ep.first_value)},
        "last": {"step": ep.last_step, "value": json_number(ep.last_value)},
        "transitions": ep.transitions,
        "at_startup": ep.catchup,
        "summary": ep.summary,
        "notifications": [
            {**d.to_json(), "enqueued_at": iso(d.enqueued_at), "done_at": iso(d.done_at) or None}
            for d in ep.deliveries
        ],
    }


def write_json(found: list[Episode], out: TextIO, now: float, since: float) -> None:
    doc = {"since": iso(since), "alerts": [episode_json(ep, now) for ep in found]}
    json.dump(doc, out, indent=2)
    out.write("\n")


CSV_COLUMNS = (
    "starts_at", "ends_at", "duration_seconds", "severity", "rule", "run", "tag", "first_step",
    "first_value", "last_step", "last_value", "channel", "kind", "status", "attempts", "enqueued_at",
    "done_at", "error",
)  # fmt: skip


def write_csv(found: list[Episode], out: TextIO, now: float, since: float) -> None:
    """One row per notification; an alert nothing was sent for has one row with empty channel columns.
    Names are escaped as in the table (a run name that is not UTF-8 shows its bytes as ``\\xNN``)."""
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for ep in found:
        alert = [
            iso(ep.starts_at), iso(ep.ends_at), round(ep.duration(now), 3), ep.worst, escape(ep.rule),
            escape(ep.run), escape(ep.tag), ep.first_step, ep.first_value, ep.last_step, ep.last_value,
        ]  # fmt: skip
        for d in ep.deliveries or [None]:
            if d is None:
                w.writerow([*alert, *[""] * 7])
                continue
            error = escape(d.error or "")
            w.writerow(
                [
                    *alert,
                    escape(d.channel),
                    d.kind,
                    d.status,
                    d.attempts,
                    iso(d.enqueued_at),
                    iso(d.done_at),
                    error,
                ]
            )
