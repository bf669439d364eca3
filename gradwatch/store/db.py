"""The state database itself: one SQLite connect, the state directory's lock, schema versions.

The schema is versioned with ``PRAGMA user_version`` (``SCHEMA_VERSION``);
``MIGRATIONS[v]`` brings a database from version ``v`` to ``v + 1``. A
database newer than this code is refused with a clear message. The outbox's
table (``store/outbox_rows.py``) is created with the state tables, in the same
database, so offsets, alert states and queued notifications commit together.

One daemon per state directory: the directory itself is ``flock``ed, which
no one can take away by deleting a file (``gradwatch.lock`` only names the
holder's pid for the message).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable

from gradwatch.store.outbox_rows import create_tables as create_outbox_tables

# the state's log lines keep the name operators know
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


def connect(path: str, busy_timeout: float = 30.0) -> sqlite3.Connection:
    """The one way gradwatch opens its database: autocommit (transactions are explicit), WAL,
    waiting up to ``busy_timeout`` seconds (not failing) while another connection writes."""
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL survives a process kill; only a power cut may lose the last commits
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


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
    create_outbox_tables(conn)


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


class DirectoryLock:
    """An exclusive ``flock`` on the state directory itself, held until ``release``.

    The directory, not a file in it: deleting ``gradwatch.lock`` (which only names
    the holder's pid, for a second daemon's message) must not let a second daemon in.
    """

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"{state_dir}: another gradwatch (pid {self._holder()}) is using this state directory; "
                "one daemon per state directory (give this one its own --state-dir)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self.fd: int | None = fd
        try:
            self._write_pid()
        except OSError:
            self.release()
            raise

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

    def check_still_here(self) -> None:
        """The locked directory must still be the state directory: once it was removed or renamed, a
        new daemon may be using the path, and this one's commits would go where no one reads them."""
        if self.fd is None:
            return
        try:
            here, locked = os.stat(self.dir), os.fstat(self.fd)
            moved = (here.st_dev, here.st_ino) != (locked.st_dev, locked.st_ino)
        except OSError:
            moved = True
        if moved:
            raise sqlite3.OperationalError(
                f"{self.dir} was removed or replaced while this daemon ran; restart it to use the new one"
            )

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class DamagedDatabase(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage: reads would fail later, in the middle of a start."""


def open_db(path: str) -> sqlite3.Connection:
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


def unreadable(e: sqlite3.DatabaseError) -> bool:
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
