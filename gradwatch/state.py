"""SQLite persistence: file offsets, alert states, rule states, meta.

Offsets, alert states, rule states and queued notifications of one batch
commit in one transaction (the outbox inserts through the same connection),
so after a kill -9 the daemon replays exactly the points it had not
committed and recomputes exactly the transitions it had not recorded.

Names are bytes on Linux. In memory they are ``str`` with surrogateescape
(``os.fsdecode``); in the database a name (path, run, tag, alert key) is TEXT
when it is valid UTF-8 (readable with the sqlite3 shell) and its raw bytes as
a BLOB when it is not (``db_text``), so ``run-\\xff`` round-trips. The outbox
stores its names the same way.

The schema is versioned with ``PRAGMA user_version`` (``SCHEMA_VERSION``);
``MIGRATIONS[v]`` brings a database from version ``v`` to ``v + 1``. A
database newer than this code is refused with a clear message.

Every row is validated when it is read: a row that cannot be understood is
logged once (table and key) and deleted; an impossible offset means "read
that file again from the start". An offset past the end of the file is the
reader's to notice (``file_shrunk``): the store cannot know file sizes.

One daemon per state directory: the directory itself is ``flock``ed, which
no one can take away by deleting a file (``gradwatch.lock`` only names the
holder's pid for the message).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from gradwatch.alerts import alert_key
from gradwatch.anomaly import AnomalyState
from gradwatch.rules import Rule, RuleState, Series, shown_name

log = logging.getLogger("gradwatch.state")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, run TEXT NOT NULL, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (run TEXT NOT NULL, tag TEXT NOT NULL, data TEXT NOT NULL,
                                   PRIMARY KEY (run, tag));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# the columns each table of ours must have
COLUMNS = {
    "files": ("path", "run", "offset"),
    "alerts": ("key", "data"),
    "series": ("run", "tag", "data"),
    "meta": ("key", "value"),
}

# SQLite's result codes for a file that is not, or no longer, a database
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26

DB_NAME = "gradwatch.db"
LOCK_NAME = "gradwatch.lock"


class StateError(Exception):
    """The state directory cannot be used (unwritable, locked by another daemon, not a database)."""


class StateSaveError(StateError, sqlite3.OperationalError):
    """State cannot be saved now (disk full, I/O error); the transaction was rolled back.

    Retrying later saves everything again. It is also an ``sqlite3.Error`` so callers
    that catch those for the outbox's inserts in the same transaction catch it too.
    """


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


# -- names: str in memory, TEXT or bytes on disk ---------------------------------
def db_text(name: str) -> str | bytes:
    """A name as stored: TEXT, or its raw bytes as a BLOB when it is not valid UTF-8.

    One name always has one stored form, so a primary key never gets a twin.
    """
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        # os.fsencode's rule on Linux, whatever the locale
        return name.encode("utf-8", "surrogateescape")


def from_db_text(value: str | bytes) -> str:
    """The in-memory name of a stored one (os.fsdecode's rule for bytes): lossless."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def shown(name: str) -> str:
    """A name for a log line: quoted and escaped as every other log line shows names; a path
    (up to PATH_MAX) is shown whole, so the dropped row can be found."""
    return shown_name(name, limit=4096)


# -- numbers in JSON --------------------------------------------------------------
def _num(v: float) -> Any:
    return v if v == v and v not in (float("inf"), float("-inf")) else repr(v)


def _unnum(v: Any) -> float:
    return float(v)


class BadRow(ValueError):
    """A stored row this code cannot use; the message says what is wrong with it."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise BadRow(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A number as ``_num`` writes it: int, float, or the repr of NaN/±Inf."""
    return _is_int(v) or isinstance(v, float) or v in ("nan", "inf", "-inf")


def _check_fields(d: Any, spec: dict[str, Callable[[Any], bool]], what: str) -> None:
    _expect(isinstance(d, dict), f"{what} is not a JSON object")
    for key, ok in spec.items():
        if key in d and not ok(d[key]):
            raise BadRow(f"{what}: {key} = {d[key]!r:.60} is not valid")


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


_NONFINITE = frozenset(("nan", "inf", "-inf"))


def _window(v: Any) -> bool:
    """A list of [step, value] pairs; checked with map and set, a window holds up to 1,024 points."""
    if not isinstance(v, list):
        return False
    if not v:
        return True
    if set(map(type, v)) != {list} or set(map(len, v)) != {2}:
        return False
    steps, values = zip(*v)
    if set(map(type, steps)) != {int}:
        return False
    kinds = set(map(type, values))
    return kinds <= {int, float, str} and (
        str not in kinds or set(x for x in values if type(x) is str) <= _NONFINITE
    )


RULE_STATE_FIELDS = {
    "streaks": _int_list,
    "window": _optional(_window),
    "last_wall": _optional(_is_number),
    "last_step": _optional(_is_int),
    "raw": _is_int,
    "ratio": _is_number,
}
SERIES_FIELDS = {
    "step": _is_int,
    "wall_time": _is_number,
    "value": _is_number,
    "rules": lambda v: isinstance(v, dict),
}
SAVED_RULE_FIELDS = {"rank": _is_int, "sig": lambda v: isinstance(v, str)}
ALERT_FIELDS = {
    "rule": lambda v: isinstance(v, str),
    "run": lambda v: isinstance(v, str),
    "tag": lambda v: isinstance(v, str),
    "state": lambda v: v in ("pending", "firing"),
    "rank": _is_int,
    "starts_at": _is_number,
    "last_notified": _is_number,
    "seq": _is_int,
    "clear_points": _is_int,
    "clear_since": _optional(_is_number),
    "step": _is_int,
    "value": _is_number,
    "wall_time": _is_number,
    "ratio": _is_number,
}


def check_series_doc(d: Any) -> None:
    """Raise BadRow unless ``d`` is a series document ``dump_series`` could have written."""
    _check_fields(d, SERIES_FIELDS, "series state")
    for name, got in d.get("rules", {}).items():
        _check_fields(got, SAVED_RULE_FIELDS, f"rule {name!r}")
        _expect("rank" in got and "state" in got, f"rule {name!r} lacks rank or state")
        _check_fields(got["state"], RULE_STATE_FIELDS, f"rule {name!r} state")


def check_alert_doc(key: str, d: Any) -> None:
    """Raise BadRow unless ``d`` is an alert state stored under ``key``."""
    _check_fields(d, ALERT_FIELDS, "alert state")
    _expect(all(k in d for k in ("rule", "run", "tag")), "alert state lacks rule, run or tag")
    _expect(alert_key(d["rule"], d["run"], d["tag"]) == key, "alert state does not match its key")


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


# The most growth-window points a saved state brings back: rules.py's bound on a live window
# (MAX_GROWTH_WINDOW). Before that bound a series rising at one step saved 1M points (14.9 MB);
# such a state, from an older gradwatch, must not come back whole.
MAX_LOADED_WINDOW = 1024


def load_rule_state(state: RuleState, d: dict[str, Any]) -> None:
    if len(d.get("streaks", [])) == len(state.streaks):
        state.streaks = list(d["streaks"])
    if d.get("window") is not None and state.window is not None:
        # the newest points: the window rises in step and value, and the oldest go first
        state.window = deque((int(s), _unnum(v)) for s, v in d["window"][-MAX_LOADED_WINDOW:])
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
    """Put a persisted series state back; rules that changed since start fresh.

    Raises BadRow (a ValueError) for a document ``dump_series`` cannot have written.
    """
    d = json.loads(text)
    check_series_doc(d)
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


# -- schema versions -------------------------------------------------------------
def _columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def _ensure_tables(conn: sqlite3.Connection, path: str) -> None:
    """Our tables with our columns; a table of another layout is set aside, not read."""
    for table, columns in COLUMNS.items():
        found = _columns(conn, table)
        if found and sorted(found) != sorted(columns):
            aside = f"{table}_unknown_layout"
            log.warning(
                "%s: table %s has columns (%s), not (%s); kept as %s, starting it afresh",
                path,
                table,
                ", ".join(found),
                ", ".join(columns),
                aside,
            )
            conn.execute(f"DROP TABLE IF EXISTS {aside}")
            conn.execute(f"ALTER TABLE {table} RENAME TO {aside}")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _number_the_unversioned(conn: sqlite3.Connection, path: str) -> None:
    """0 -> 1: the layout before schema versions is version 1's; it only gets its number.

    (Names that are not UTF-8 could not be saved then, so there is nothing to convert.)
    """


# MIGRATIONS[v] brings a database at version v to v + 1 (inside the caller's transaction)
MIGRATIONS: list[Callable[[sqlite3.Connection, str], None]] = [_number_the_unversioned]
assert len(MIGRATIONS) == SCHEMA_VERSION


def open_schema(conn: sqlite3.Connection, path: str) -> None:
    """Bring the database to SCHEMA_VERSION in one transaction; refuse a newer one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{path}: the state database has schema version {version}, newer than this "
                f"gradwatch knows ({SCHEMA_VERSION}); run the newer gradwatch on it, "
                "or give this one another --state-dir"
            )
        _ensure_tables(conn, path)
        for v in range(max(version, 0), SCHEMA_VERSION):
            MIGRATIONS[v](conn, path)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


class DamagedDatabase(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage: reads would fail later, in the middle of a start."""


def _open_db(path: str) -> sqlite3.Connection:
    conn = connect(path)
    try:
        open_schema(conn, path)
        # a few ms for a state DB; without it a damaged page is an exception deep in the first read
        found = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            raise DamagedDatabase("database disk image is damaged: " + "; ".join(found))
    except BaseException:
        conn.close()
        raise
    return conn


def _unreadable(e: sqlite3.DatabaseError) -> bool:
    """Not, or no longer, a database (Python 3.10 has no sqlite_errorcode: a StateError there)."""
    return isinstance(e, DamagedDatabase) or getattr(e, "sqlite_errorcode", None) in (
        SQLITE_CORRUPT,
        SQLITE_NOTADB,
    )


def _flock_holder(path: str) -> str | None:
    """The pid of a flock on ``path`` in /proc/locks ("5: FLOCK ADVISORY WRITE pid maj:min:inode 0 EOF")."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            return fields[4]
    return None


def _alert_row(key: tuple[str, ...], text: str) -> dict[str, Any]:
    d = json.loads(text)
    check_alert_doc(key[0], d)
    return d


def _series_row(key: tuple[str, ...], text: str) -> str:
    """The text, once it parses as a series document (kept as text, not as a dict of lists per point)."""
    check_series_doc(json.loads(text))
    return text


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class StateDB:
    """One daemon's state; ``lock`` (the default) refuses a second daemon on the same directory.

    Writes happen between ``begin()`` and ``commit()``; any of them raises StateSaveError
    when the database cannot save (the transaction is then rolled back, and a later retry
    saves everything). ``save_series`` writes only the series whose state changed since
    they were last committed.
    """

    def __init__(self, state_dir: str, lock: bool = True) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, DB_NAME)
        self._lock_fd: int | None = None
        # (run, tag) -> digest of the series document last committed, and those of this transaction
        self._saved: dict[tuple[str, str], bytes] = {}
        self._pending: dict[tuple[str, str], bytes] = {}
        try:
            os.makedirs(state_dir, exist_ok=True)
            if lock:
                self._lock()
            self.conn = self._open()
        except StateError:
            self._unlock()
            raise
        except sqlite3.Error as e:
            self._unlock()
            raise StateError(f"{self.path}: cannot use the state database: {e}") from None
        except OSError as e:
            self._unlock()
            raise StateError(
                f"{e.filename or state_dir}: cannot use the state directory: {e.strerror or e}"
            ) from None

    def _open(self) -> sqlite3.Connection:
        """The database at SCHEMA_VERSION; a file that is not one (any more) is set aside, not fatal."""
        try:
            return _open_db(self.path)
        except sqlite3.DatabaseError as e:
            if not _unreadable(e) or self._lock_fd is None:  # only the daemon that holds the lock moves files
                raise
            self._set_aside(e)
            return _open_db(self.path)

    def _set_aside(self, error: sqlite3.Error) -> None:
        aside = f"{self.path}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path + suffix, aside + suffix)
        log.error(
            "%s: %s; moved to %s, starting with an empty state (a first start: the history is "
            "evaluated silently, alerts still firing are notified once)",
            self.path,
            error,
            aside,
        )

    def _lock(self) -> None:
        # the directory, not a file in it: deleting gradwatch.lock must not let a second daemon in
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"{self.dir}: another gradwatch (pid {self._holder()}) is using this state directory; "
                "one daemon per state directory (give this one its own --state-dir)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._write_pid()

    def _pid_path(self) -> str:
        return os.path.join(self.dir, LOCK_NAME)

    def _write_pid(self) -> None:
        """Name the holder for a second daemon's message (the lock itself is the directory's)."""
        fd = os.open(
            self._pid_path(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def _holder(self) -> str:
        """The pid holding the lock: from gradwatch.lock, else from the kernel's /proc/locks."""
        try:
            fd = os.open(self._pid_path(), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return _flock_holder(self.dir) or "unknown"
        try:
            text = os.read(fd, 32).decode(errors="replace").strip()
        finally:
            os.close(fd)
        return text if text.isdigit() else _flock_holder(self.dir) or "unknown"

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._unlock()

    # -- reads at start-up: every row validated ----------------------------------
    def _rows(self, table: str, columns: str) -> Iterator[tuple]:
        return self.conn.execute(f"SELECT rowid, {columns} FROM {table}")

    def _drop(self, table: str, bad: list[tuple[int, str, str]]) -> None:
        """Log each unreadable row once (table and key) and delete it, so it is not logged again."""
        for _, key, why in bad:
            log.warning("%s: %s row %s is unreadable (%s); dropped", self.path, table, key, why)
        self._write_back(f"DELETE FROM {table} WHERE rowid = ?", [rowid for rowid, _, _ in bad])

    def _write_back(self, sql: str, rowids: list[int]) -> None:
        """Repair rows found at start-up (a failure only means they are found again next time)."""
        if not rowids:
            return
        try:
            with self._transaction():
                self.conn.executemany(sql, [(rowid,) for rowid in rowids])
        except StateError as e:
            log.warning("%s: cannot save the repaired rows (found again next start): %s", self.path, e)

    def files(self) -> dict[str, tuple[str, int]]:
        """path -> (run, offset); an impossible offset is 0: the file is read again from the start."""
        out: dict[str, tuple[str, int]] = {}
        bad: list[tuple[int, str, str]] = []
        reset: list[int] = []
        for rowid, path, run, offset in self._rows("files", "CAST(path AS BLOB), CAST(run AS BLOB), offset"):
            if not path or run is None:
                bad.append((rowid, shown(from_db_text(path or b"")), "no path or no run"))
                continue
            path_s = from_db_text(path)
            if not _is_int(offset) or offset < 0:
                log.warning(
                    "%s: files row %s has an impossible offset %r; reading the file again from the start",
                    self.path,
                    shown(path_s),
                    offset,
                )
                offset = 0
                reset.append(rowid)
            out[path_s] = (from_db_text(run), offset)
        self._drop("files", bad)
        # saved as 0 at once, so the warning is not repeated if the file is never read again
        self._write_back("UPDATE files SET offset = 0 WHERE rowid = ?", reset)
        return out

    def offsets(self) -> dict[str, int]:
        return {p: o for p, (_, o) in self.files().items()}

    def _documents(self, table: str, keys: str, parse: Callable[[tuple[str, ...], str], Any]) -> list[tuple]:
        """(decoded key columns, what ``parse`` made of the text) per row; rows it refuses are dropped."""
        good, bad = [], []
        for rowid, *key, data in self._rows(table, f"{keys}, CAST(data AS BLOB)"):
            names = tuple(from_db_text(k or b"") for k in key)
            try:
                _expect(all(key) and data is not None, "no key or no data")
                good.append((names, parse(names, data.decode())))
            except (ValueError, TypeError) as e:  # BadRow, JSONDecodeError, UnicodeDecodeError
                bad.append((rowid, " ".join(shown(n) for n in names), str(e)))
        self._drop(table, bad)
        return good

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {key: d for (key,), d in self._documents("alerts", "CAST(key AS BLOB)", _alert_row)}

    def series(self) -> dict[tuple[str, str], str]:
        """(run, tag) -> the saved document, for ``restore_series``."""
        out: dict[tuple[str, str], str] = {}
        for (run, tag), text in self._documents(
            "series", "CAST(run AS BLOB), CAST(tag AS BLOB)", _series_row
        ):
            out[(run, tag)] = text
            # a series that comes back unchanged is not written again
            self._saved[(run, tag)] = _digest(text)
        return out

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute(
            "SELECT rowid, CAST(value AS BLOB) FROM meta WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return default
        try:
            _expect(row[1] is not None, "no value")
            return row[1].decode()
        except (BadRow, UnicodeDecodeError) as e:
            self._drop("meta", [(row[0], shown(key), str(e))])
            return default

    # -- writes inside one transaction -------------------------------------------
    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Turn any database error into StateSaveError, after rolling the transaction back."""
        try:
            yield
        except sqlite3.Error as e:
            if isinstance(e, StateSaveError):
                raise
            self.rollback()
            # the message is SQLite's ("database or disk is full"): callers say which file and what failed
            raise StateSaveError(str(e)) from e

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.begin()
        with self._saving():
            yield
        self.commit()

    def begin(self) -> None:
        with self._saving():
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        with self._saving():
            self._check_still_here()
            self.conn.execute("COMMIT")
        self._saved.update(self._pending)
        self._pending.clear()

    def _check_still_here(self) -> None:
        """The locked directory must still be the state directory: once it was removed or renamed, a
        new daemon may be using the path, and this one's commits would go where no one reads them."""
        if self._lock_fd is None:
            return
        try:
            here, locked = os.stat(self.dir), os.fstat(self._lock_fd)
            moved = (here.st_dev, here.st_ino) != (locked.st_dev, locked.st_ino)
        except OSError:
            moved = True
        if moved:
            raise sqlite3.OperationalError(
                f"{self.dir} was removed or replaced while this daemon ran; restart it to use the new one"
            )

    def rollback(self) -> None:
        """Undo the transaction: series saved in it count as not saved (written again next time)."""
        self._pending.clear()
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def set_meta(self, key: str, value: str) -> None:
        with self._saving():
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def save_offsets(self, rows: list[tuple[str, str, int]]) -> None:
        """(path, run, offset) rows."""
        with self._saving():
            self.conn.executemany(
                "INSERT OR REPLACE INTO files (path, run, offset) VALUES (?, ?, ?)",
                [(db_text(p), db_text(r), o) for p, r, o in rows],
            )

    def forget_files(self, paths: list[str]) -> None:
        with self._saving():
            self.conn.executemany("DELETE FROM files WHERE path = ?", [(db_text(p),) for p in paths])

    def forget_run(self, run: str) -> None:
        with self._saving():
            self.conn.execute("DELETE FROM files WHERE run = ?", (db_text(run),))
            self.conn.execute("DELETE FROM series WHERE run = ?", (db_text(run),))
        for cache in (self._saved, self._pending):
            for key in [k for k in cache if k[0] == run]:
                del cache[key]

    def save_series(self, series: list[Series]) -> None:
        """Write the series whose document differs from the one last committed."""
        rows = []
        for s in series:
            key = (s.run, s.tag)
            text = dump_series(s)
            digest = _digest(text)
            if self._pending.get(key, self._saved.get(key)) == digest:
                continue
            self._pending[key] = digest
            rows.append((db_text(s.run), db_text(s.tag), text))
        with self._saving():
            self.conn.executemany("INSERT OR REPLACE INTO series (run, tag, data) VALUES (?, ?, ?)", rows)

    def save_alerts(self, changed: dict[str, dict[str, Any] | None]) -> None:
        with self._saving():
            for key, data in changed.items():
                if data is None:
                    self.conn.execute("DELETE FROM alerts WHERE key = ?", (db_text(key),))
                else:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO alerts (key, data) VALUES (?, ?)",
                        (db_text(key), json.dumps(data)),
                    )
