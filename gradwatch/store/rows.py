"""State rows: file offsets, alert states, rule states (series) and meta, in one ``StateDB``.

Offsets, alert states, rule states and queued notifications of one batch
commit in one transaction (the outbox inserts through the same connection),
so after a kill -9 the daemon replays exactly the points it had not
committed and recomputes exactly the transitions it had not recorded.

Every row is validated when it is read: a row that cannot be understood is
logged once (table and key) and deleted; an impossible offset means "read
that file again from the start". An offset past the end of the file is the
reader's to notice (``file_shrunk``): the store cannot know file sizes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from gradwatch.fmt import shown_name
from gradwatch.rules import Series
from gradwatch.store.db import (
    DB_NAME,
    DirectoryLock,
    StateError,
    StateSaveError,
    open_db,
    unreadable,
)
from gradwatch.store.documents import (
    BadRow,
    digest,
    dump_series,
    expect,
    is_int,
    parse_alert_row,
    parse_series_row,
)
from gradwatch.store.names import db_text, from_db_text

log = logging.getLogger("gradwatch.state")


def shown(name: str) -> str:
    """A name for a log line: quoted and escaped as every other log line shows names; a path
    (up to PATH_MAX) is shown whole, so the dropped row can be found."""
    return shown_name(name, limit=4096)


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
        self._lock: DirectoryLock | None = None
        # (run, tag) -> digest of the series document last committed, and those of this transaction
        self._saved: dict[tuple[str, str], bytes] = {}
        self._pending: dict[tuple[str, str], bytes] = {}
        try:
            os.makedirs(state_dir, exist_ok=True)
            if lock:
                self._lock = DirectoryLock(state_dir)
            self.conn = self._open()
        except StateError:
            self._release()
            raise
        except sqlite3.Error as e:
            self._release()
            raise StateError(f"{self.path}: cannot use the state database: {e}") from None
        except OSError as e:
            self._release()
            raise StateError(
                f"{e.filename or state_dir}: cannot use the state directory: {e.strerror or e}"
            ) from None

    def _open(self) -> sqlite3.Connection:
        """The database at SCHEMA_VERSION; a file that is not one (any more) is set aside, not fatal."""
        try:
            return open_db(self.path)
        except sqlite3.DatabaseError as e:
            if not unreadable(e) or self._lock is None:  # only the daemon that holds the lock moves files
                raise
            self._set_aside(e)
            return open_db(self.path)

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

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self._release()

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
            if not is_int(offset) or offset < 0:
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

    def _documents(self, table: str, keys: str, parse: Callable[[tuple[str, ...], str], Any]) -> list[tuple]:
        """(decoded key columns, what ``parse`` made of the text) per row; rows it refuses are dropped."""
        good, bad = [], []
        for rowid, *key, data in self._rows(table, f"{keys}, CAST(data AS BLOB)"):
            names = tuple(from_db_text(k or b"") for k in key)
            try:
                expect(all(key) and data is not None, "no key or no data")
                good.append((names, parse(names, data.decode())))
            except (ValueError, TypeError) as e:  # BadRow, JSONDecodeError, UnicodeDecodeError
                bad.append((rowid, " ".join(shown(n) for n in names), str(e)))
        self._drop(table, bad)
        return good

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {key: d for (key,), d in self._documents("alerts", "CAST(key AS BLOB)", parse_alert_row)}

    def series(self) -> dict[tuple[str, str], str]:
        """(run, tag) -> the saved document, for ``restore_series``."""
        out: dict[tuple[str, str], str] = {}
        for (run, tag), text in self._documents(
            "series", "CAST(run AS BLOB), CAST(tag AS BLOB)", parse_series_row
        ):
            out[(run, tag)] = text
            # a series that comes back unchanged is not written again
            self._saved[(run, tag)] = digest(text)
        return out

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute(
            "SELECT rowid, CAST(value AS BLOB) FROM meta WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return default
        try:
            expect(row[1] is not None, "no value")
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
            if self._lock is not None:
                self._lock.check_still_here()
            self.conn.execute("COMMIT")
        self._saved.update(self._pending)
        self._pending.clear()

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
            stamp = digest(text)
            if self._pending.get(key, self._saved.get(key)) == stamp:
                continue
            self._pending[key] = stamp
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
