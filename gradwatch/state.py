"""SQLite persistence: file offsets, alert states, rule states, meta.

Offsets, alert states, rule states and queued notifications of one batch
commit in one transaction (the outbox inserts through the same connection),
so after a kill -9 the daemon replays exactly the points it had not
committed and recomputes exactly the transitions it had not recorded.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import deque
from typing import Any

from gradwatch.rules import RuleState, Series

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, run TEXT NOT NULL, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (run TEXT NOT NULL, tag TEXT NOT NULL, data TEXT NOT NULL,
                                   PRIMARY KEY (run, tag));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

DB_NAME = "gradwatch.db"


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _num(v: float) -> Any:
    return v if v == v and v not in (float("inf"), float("-inf")) else repr(v)


def _unnum(v: Any) -> float:
    return float(v)


def dump_rule_state(state: RuleState) -> dict[str, Any]:
    return {
        "streaks": state.streaks,
        "window": [[s, _num(v)] for s, v in state.window] if state.window is not None else None,
        "last_wall": state.last_wall,
        "last_step": state.last_step,
        "raw": state.raw,
        "ratio": _num(state.ratio),
    }


def load_rule_state(state: RuleState, d: dict[str, Any]) -> None:
    if len(d.get("streaks", [])) == len(state.streaks):
        state.streaks = list(d["streaks"])
    if d.get("window") is not None and state.window is not None:
        state.window = deque((int(s), _unnum(v)) for s, v in d["window"])
    state.last_wall = d.get("last_wall")
    state.last_step = d.get("last_step")
    state.raw = int(d.get("raw", 0))
    state.ratio = _unnum(d.get("ratio", 0.0))


def dump_series(s: Series) -> str:
    return json.dumps(
        {
            "step": s.step,
            "wall_time": s.wall_time,
            "value": _num(s.value),
            "rules": {
                r.name: {"rank": s.ranks[i], "state": dump_rule_state(s.states[i])}
                for i, r in enumerate(s.rules)
            },
        }
    )


def restore_series(s: Series, text: str) -> None:
    """Put a persisted series state back; rules that changed since start fresh."""
    d = json.loads(text)
    s.step = d.get("step", 0)
    s.wall_time = d.get("wall_time", 0.0)
    s.value = _unnum(d.get("value", "nan"))
    saved = d.get("rules", {})
    for i, r in enumerate(s.rules):
        if r.name in saved:
            s.ranks[i] = int(saved[r.name]["rank"])
            load_rule_state(s.states[i], saved[r.name]["state"])


class StateDB:
    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, DB_NAME)
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # -- reads at start-up ---------------------------------------------------
    def offsets(self) -> dict[str, int]:
        return {p: o for p, o in self.conn.execute("SELECT path, offset FROM files")}

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(d) for k, d in self.conn.execute("SELECT key, data FROM alerts")}

    def series(self) -> dict[tuple[str, str], str]:
        return {(r, t): d for r, t, d in self.conn.execute("SELECT run, tag, data FROM series")}

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    # -- writes inside one transaction ---------------------------------------
    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def save_offsets(self, rows: list[tuple[str, str, int]]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO files (path, run, offset) VALUES (?, ?, ?)", rows)

    def forget_files(self, paths: list[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def forget_run(self, run: str) -> None:
        self.conn.execute("DELETE FROM files WHERE run = ?", (run,))
        self.conn.execute("DELETE FROM series WHERE run = ?", (run,))

    def save_series(self, series: list[Series]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO series (run, tag, data) VALUES (?, ?, ?)",
            [(s.run, s.tag, dump_series(s)) for s in series],
        )

    def save_alerts(self, changed: dict[str, dict[str, Any] | None]) -> None:
        for key, data in changed.items():
            if data is None:
                self.conn.execute("DELETE FROM alerts WHERE key = ?", (key,))
            else:
                self.conn.execute(
                    "INSERT OR REPLACE INTO alerts (key, data) VALUES (?, ?)", (key, json.dumps(data))
                )
