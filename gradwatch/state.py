"""SQLite persistence: file offsets, alert states, rule states, meta.

Offsets, alert states, rule states and queued notifications of one batch
commit in one transaction (the outbox inserts through the same connection),
so after a kill -9 the daemon replays exactly the points it had not
committed and recomputes exactly the transitions it had not recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections import deque
from typing import Any

from gradwatch.anomaly import AnomalyState
from gradwatch.rules import Rule, RuleState, Series

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, run TEXT NOT NULL, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (run TEXT NOT NULL, tag TEXT NOT NULL, data TEXT NOT NULL,
                                   PRIMARY KEY (run, tag));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

DB_NAME = "gradwatch.db"
LOCK_NAME = "gradwatch.lock"


class StateError(Exception):
    """The state directory cannot be used (unwritable, locked by another daemon, not a database)."""


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
        # anomaly rules: the window of recent points (gradwatch/anomaly.py)
        "anomaly": state.extra.dump() if isinstance(state.extra, AnomalyState) else None,
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


_signatures: dict[int, tuple[Rule, str]] = {}


def rule_signature(rule: Rule) -> str:
    """What a rule's evaluation state depends on; a state saved under another signature is stale."""
    cached = _signatures.get(id(rule))
    if cached is not None and cached[0] is rule:
        return cached[1]
    sig = repr(
        (
            rule.kind,
            rule.levels,
            rule.below,
            rule.absolute,
            rule.for_points,
            rule.within_steps,
            rule.absent_for,
            rule.min_value,
            # anomaly and baseline settings; other kinds keep the signature they had
            *(x.signature() for x in (rule.detector, rule.baseline) if x is not None),
        )
    )
    _signatures[id(rule)] = (rule, sig)
    return sig


def dump_series(s: Series) -> str:
    return json.dumps(
        {
            "step": s.step,
            "wall_time": s.wall_time,
            "value": _num(s.value),
            # a baseline's reference series: its points, which a restart does not read again
            "history": s.history.dump() if s.history is not None else None,
            "rules": {
                r.name: {"rank": s.ranks[i], "sig": rule_signature(r), "state": dump_rule_state(s.states[i])}
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
        got = saved.get(r.name)
        if got is None or got.get("sig", rule_signature(r)) != rule_signature(r):
            continue
        s.ranks[i] = int(got["rank"])
        load_rule_state(s.states[i], got["state"])
        if r.detector is not None and isinstance(got["state"].get("anomaly"), dict):
            s.states[i].extra = r.detector.load(got["state"]["anomaly"])
    if s.history is not None and isinstance(d.get("history"), dict):
        s.history.restore(d["history"])


class StateDB:
    """One daemon's state; ``lock`` (the default) refuses a second daemon on the same directory."""

    def __init__(self, state_dir: str, lock: bool = True) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, DB_NAME)
        self._lock_fd: int | None = None
        try:
            os.makedirs(state_dir, exist_ok=True)
            if lock:
                self._lock()
            self.conn = connect(self.path)
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            self._unlock()
            raise StateError(f"{self.path}: cannot use the state database: {e}") from None
        except OSError as e:
            self._unlock()
            raise StateError(
                f"{e.filename or state_dir}: cannot use the state directory: {e.strerror or e}"
            ) from None

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"{self.dir}: another gradwatch (pid {holder}) is using this state directory; "
                "one daemon per state directory (give this one its own --state-dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._unlock()

    # -- reads at start-up ---------------------------------------------------
    def offsets(self) -> dict[str, int]:
        return {p: o for p, o in self.conn.execute("SELECT path, offset FROM files")}

    def files(self) -> dict[str, tuple[str, int]]:
        """path -> (run, offset)."""
        return {p: (r, o) for p, r, o in self.conn.execute("SELECT path, run, offset FROM files")}

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
        if self.conn.in_transaction:
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
