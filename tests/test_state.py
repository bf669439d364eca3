"""The state store on a real SQLite database: names as bytes, hostile rows, schema versions, saving.

Hostile rows are written with ``sqlite3`` directly, the way a bad disk, an older gradwatch or a
person with the sqlite3 shell would leave them; then the store is opened as the daemon opens it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3

import pytest
from fs_support import fill, tmpfs

from gradwatch.alerts import ACTIVE, Alert, alert_key
from gradwatch.config.rulefiles import load_rules
from gradwatch.engine import Engine
from gradwatch.store import (
    DB_NAME,
    MAX_LOADED_WINDOW,
    SCHEMA_VERSION,
    StateDB,
    StateError,
    StateSaveError,
    dump_series,
    restore_series,
)

TAG = "gradients/actor_cnn_norm"
# a run directory whose name is not UTF-8, as os.listdir returns it
RUN = os.fsdecode(b"run-\xff")


def series_of(run: str, tag: str, values: list[float]):
    """A real Series of the packaged rules after ``values`` at steps 100, 200, ..."""
    engine = Engine(load_rules(), lambda *a: None)
    s = engine.series(run, tag)
    assert s is not None, f"no packaged rule matches {tag}"
    for i, v in enumerate(values):
        engine.observe(run, tag, 100 * (i + 1), 1000.0 + i, v)
    return s


def firing_alert(rule: str, run: str, tag: str) -> dict:
    a = Alert(rule, run, tag)
    a.state, a.rank, a.step, a.value = ACTIVE, 3, 300, 826256.0
    return a.to_dict()


def saved(state: StateDB, offsets=(), series=(), alerts=None) -> None:
    state.begin()
    state.save_offsets(list(offsets))
    state.save_series(list(series))
    state.save_alerts(alerts or {})
    state.commit()


def raw_db(state_dir) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(state_dir, DB_NAME), isolation_level=None)


def test_names_that_are_not_utf8_round_trip_through_save_and_reopen(tmp_path):
    path = os.path.join(str(tmp_path), RUN, os.fsdecode(b"events.out.tfevents.1.host\xfe"))
    tag = os.fsdecode(b"grad/\xc3_norm")  # a tag is a name too
    s = series_of(RUN, tag, [5191.0, 130486.0])
    key = alert_key("gradient_explosion", RUN, tag)
    state = StateDB(str(tmp_path / "state"))
    saved(state, [(path, RUN, 4242)], [s], {key: firing_alert("gradient_explosion", RUN, tag)})
    state.close()

    state = StateDB(str(tmp_path / "state"))
    assert state.files() == {path: (RUN, 4242)}
    assert list(state.alerts()) == [key]
    assert state.alerts()[key]["run"] == RUN
    texts = state.series()
    assert list(texts) == [(RUN, tag)]
    again = series_of(RUN, tag, [])
    restore_series(again, texts[(RUN, tag)])
    assert (again.step, again.value, again.ranks) == (s.step, s.value, s.ranks)
    state.close()
    # on disk: the name's own bytes, what `ls` shows, not a re-encoding of the str
    db = raw_db(tmp_path / "state")
    assert db.execute("SELECT path, run FROM files").fetchall() == [(os.fsencode(path), b"run-\xff")]
    db.close()


def test_a_utf8_name_stays_text_that_the_sqlite3_shell_shows(tmp_path):
    state = StateDB(str(tmp_path))
    saved(state, [("/logs/exploding/events.out.tfevents.1", "exploding", 960)])
    state.close()
    db = raw_db(tmp_path)
    assert db.execute("SELECT path, run, typeof(path) FROM files").fetchall() == [
        ("/logs/exploding/events.out.tfevents.1", "exploding", "text")
    ]
    db.close()


def test_forgetting_a_run_with_an_undecodable_name_deletes_its_rows(tmp_path):
    state = StateDB(str(tmp_path))
    path = os.path.join(str(tmp_path), RUN, "events.out.tfevents.1")
    saved(state, [(path, RUN, 10)], [series_of(RUN, TAG, [1.0])])
    state.begin()
    state.forget_run(RUN)
    state.commit()
    assert state.files() == {}
    assert state.series() == {}
    state.close()


def unversioned_db(state_dir) -> sqlite3.Connection:
    """The layout every gradwatch before schema versions wrote: names as TEXT, user_version 0."""
    os.makedirs(state_dir, exist_ok=True)
    db = raw_db(state_dir)
    db.executescript(
        """
        CREATE TABLE files (path TEXT PRIMARY KEY, run TEXT NOT NULL, offset INTEGER NOT NULL);
        CREATE TABLE alerts (key TEXT PRIMARY KEY, data TEXT NOT NULL);
        CREATE TABLE series (run TEXT NOT NULL, tag TEXT NOT NULL, data TEXT NOT NULL,
                             PRIMARY KEY (run, tag));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """
    )
    return db


def test_an_unversioned_database_is_migrated_and_keeps_its_state(tmp_path):

    s = series_of("exploding", TAG, [5191.0, 130486.0])
    key = alert_key("gradient_explosion", "exploding", TAG)
    db = unversioned_db(tmp_path)
    db.execute("INSERT INTO files VALUES ('/logs/exploding/events.out.tfevents.1', 'exploding', 960)")
    db.execute(
        "INSERT INTO alerts VALUES (?, ?)",
        (key, json.dumps(firing_alert("gradient_explosion", "exploding", TAG))),
    )
    db.execute("INSERT INTO series VALUES ('exploding', ?, ?)", (TAG, dump_series(s)))
    db.execute("INSERT INTO meta VALUES ('catchup_done', '1')")
    db.close()

    state = StateDB(str(tmp_path))
    assert state.files() == {"/logs/exploding/events.out.tfevents.1": ("exploding", 960)}
    assert list(state.alerts()) == [key]
    assert list(state.series()) == [("exploding", TAG)]
    assert state.meta("catchup_done") == "1"
    # a migrated name is the same key as the one the daemon saves next: one row, not two
    saved(state, [("/logs/exploding/events.out.tfevents.1", "exploding", 1000)])
    assert state.files() == {"/logs/exploding/events.out.tfevents.1": ("exploding", 1000)}
    state.close()
    db = raw_db(tmp_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 1
    db.close()


def test_a_newer_schema_is_a_clear_error_and_left_untouched(tmp_path):
    db = unversioned_db(tmp_path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this gradwatch"):
        StateDB(str(tmp_path))
    db = raw_db(tmp_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()
    StateDB(str(tmp_path / "other")).close()  # the lock was given back: nothing else is held


def test_a_table_of_another_layout_is_set_aside_not_read(tmp_path, caplog):
    os.makedirs(tmp_path, exist_ok=True)
    db = raw_db(tmp_path)
    db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, position INTEGER)")
    db.execute("INSERT INTO files VALUES ('/logs/a/events.out.tfevents.1', 5)")
    db.close()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
    assert state.files() == {}
    assert "table files has columns (path, position)" in caplog.text
    saved(state, [("/logs/a/events.out.tfevents.1", "a", 7)])
    assert state.files() == {"/logs/a/events.out.tfevents.1": ("a", 7)}
    state.close()


HOSTILE = [
    # (table, row, what the log names)
    ("alerts", ("broken", "{not json"), "'broken'"),
    ("alerts", ("list", "[1, 2]"), "'list'"),
    ("alerts", ("r\x1fx\x1ft", json.dumps({"rule": "r", "run": "x", "tag": "t", "rank": "high"})), "rank"),
    (
        "alerts",
        ("r\x1fx\x1ft2", json.dumps({"rule": "r", "run": "y", "tag": "t2"})),
        "does not match its key",
    ),
    ("alerts", ("bytes", b"\xff\xfe"), "'bytes'"),
    ("series", ("run", "tag", "null"), "'run' 'tag'"),
    (
        "series",
        ("run", "tag2", json.dumps({"step": 1, "rules": {"g": {"rank": 1, "state": {"window": 5}}}})),
        "window",
    ),
    ("series", ("run", "tag3", json.dumps({"step": "one"})), "step"),
    *[
        (
            "series",
            ("run", f"w{i}", json.dumps({"rules": {"g": {"rank": 1, "state": {"window": w}}}})),
            "window",
        )
        for i, w in enumerate([[[1]], [[1, "x"]], [[1.5, 2.0]], [[True, 2.0]], [{"1": 2}], [[1, 2.0], 3]])
    ],
    ("meta", ("catchup_done", b"\xff"), "'catchup_done'"),
]


def test_hostile_rows_are_logged_once_and_dropped(tmp_path, caplog):
    good = alert_key("gradient_explosion", "exploding", TAG)
    db = unversioned_db(tmp_path)
    db.execute(
        "INSERT INTO alerts VALUES (?, ?)",
        (good, json.dumps(firing_alert("gradient_explosion", "exploding", TAG))),
    )
    for table, row, _ in HOSTILE:
        db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    db.close()

    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert list(state.alerts()) == [good]
        assert state.series() == {}
        assert state.meta("catchup_done") is None  # as on a first start
    for table, _, named in HOSTILE:
        assert any(f"{table} row" in r.message and named in r.message for r in caplog.records), (table, named)
    assert len(caplog.records) == len(HOSTILE)
    state.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert list(state.alerts()) == [good]
        assert state.series() == {}
        assert state.meta("catchup_done") is None
    assert caplog.records == []  # dropped for good: not logged at every start
    state.close()


@pytest.mark.parametrize("offset", [-960, 3.5, "nine", None])
def test_an_impossible_offset_means_reading_the_file_again_from_the_start(tmp_path, caplog, offset):
    db = unversioned_db(tmp_path)
    # NOT NULL is the old schema's; a NULL gets there through a table without it
    db.execute("CREATE TABLE files2 (path TEXT PRIMARY KEY, run TEXT NOT NULL, offset INTEGER)")
    db.execute("DROP TABLE files")
    db.execute("ALTER TABLE files2 RENAME TO files")
    db.execute("INSERT INTO files VALUES ('/logs/a/events.out.tfevents.1', 'a', ?)", (offset,))
    db.close()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert state.files() == {"/logs/a/events.out.tfevents.1": ("a", 0)}
    assert "impossible offset" in caplog.text and "events.out.tfevents.1" in caplog.text
    state.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert state.files() == {"/logs/a/events.out.tfevents.1": ("a", 0)}
    assert caplog.records == []  # said once
    state.close()


def test_a_row_whose_text_is_not_utf8_is_dropped_not_a_crash(tmp_path, caplog):
    db = unversioned_db(tmp_path)
    db.execute("INSERT INTO series VALUES ('run', 'tag', CAST(x'7bff7d' AS TEXT))")
    db.close()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert state.series() == {}
    assert "series row 'run' 'tag' is unreadable" in caplog.text
    state.close()


def test_a_dropped_row_shows_its_undecodable_name_as_the_console_does(tmp_path, caplog):
    """Review 9: state's log lines used repr(), which showed byte 0xff as '\\udcff'; every other
    output shows it as \\xff (fmt.escape), and a bidi override was left raw."""
    db = unversioned_db(tmp_path)
    db.execute("INSERT INTO series VALUES (CAST(x'72ff' AS TEXT), 'a\u202eb', CAST(x'7bff7d' AS TEXT))")
    db.close()
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
        assert state.series() == {}
    assert "series row 'r\\xff' 'a\\u202eb' is unreadable" in caplog.text
    state.close()


def test_a_file_that_is_not_a_database_is_set_aside_and_the_daemon_starts_afresh(tmp_path, caplog):
    garbage = bytes(range(256)) * 20
    (tmp_path / DB_NAME).write_bytes(garbage)
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
    assert state.files() == {} and state.meta("catchup_done") is None
    saved(state, [("/logs/a/events.out.tfevents.1", "a", 7)])
    state.close()
    (aside,) = [n for n in os.listdir(tmp_path) if n.startswith(DB_NAME + ".unreadable-")]
    assert (tmp_path / aside).read_bytes() == garbage  # kept for a post-mortem, not deleted
    assert f"file is not a database; moved to {tmp_path / aside}" in caplog.text


# page 2 is the files table's root (reads would fail), page 3 its primary key index (reads work,
# lookups go wrong): SQLite lays a new database out in the order of the CREATE statements
@pytest.mark.parametrize("page_no", [2, 3])
def test_a_damaged_page_is_found_at_open_not_in_the_middle_of_a_start(tmp_path, caplog, page_no):
    state = StateDB(str(tmp_path))
    saved(state, [(f"/logs/run{i:04}/events.out.tfevents.1", f"run{i:04}", i) for i in range(500)])
    state.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = state.conn.execute("PRAGMA page_size").fetchone()[0]
    state.close()
    # as a bad sector leaves it
    with open(tmp_path / DB_NAME, "r+b") as f:
        f.seek((page_no - 1) * page)
        f.write(b"\xff" * page)
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        state = StateDB(str(tmp_path))
    assert state.files() == {}
    saved(state, [("/logs/a/events.out.tfevents.1", "a", 7)])
    assert state.files() == {"/logs/a/events.out.tfevents.1": ("a", 7)}
    state.close()
    assert "database disk image is" in caplog.text and ".unreadable-" in caplog.text


def test_an_oversized_growth_window_from_an_older_gradwatch_comes_back_bounded(tmp_path):
    # what an older gradwatch saved for a series rising at one constant step: 100,000 points
    s = series_of("a", TAG, [])
    doc = json.loads(dump_series(s))
    growth = doc["rules"]["gradient_growth"]["state"]
    growth["window"] = [[0, 100.0 + i * 1e-3] for i in range(100_000)]
    again = series_of("a", TAG, [])
    restore_series(again, json.dumps(doc))
    (window,) = [st.window for st in again.states if st.window is not None]
    assert len(window) == MAX_LOADED_WINDOW
    assert window[-1] == (0, 100.0 + 99_999 * 1e-3)  # the newest are kept
    assert len(dump_series(again)) < 64_000


def test_a_state_directory_moved_away_under_the_daemon_is_not_written_to_unseen(tmp_path):
    state = StateDB(str(tmp_path / "state"))
    saved(state, [("/logs/a/events.out.tfevents.1", "a", 10)])
    os.rename(tmp_path / "state", tmp_path / "moved")  # or rm -rf: a new daemon may take the path now
    with pytest.raises(StateSaveError, match="state was removed or replaced while this daemon ran"):
        saved(state, [("/logs/a/events.out.tfevents.1", "a", 20)])
    assert not state.conn.in_transaction
    state.close()
    moved = StateDB(str(tmp_path / "moved"))
    assert moved.files() == {"/logs/a/events.out.tfevents.1": ("a", 10)}
    moved.close()


def test_only_series_that_changed_are_written(tmp_path):
    state = StateDB(str(tmp_path))
    quiet = series_of("a", TAG, [1.0, 2.0])
    busy = series_of("a", "gradients/critic_cnn_norm", [1.0, 2.0])
    saved(state, series=[quiet, busy])
    before = state.conn.total_changes
    saved(state, series=[quiet, busy])
    assert state.conn.total_changes == before
    busy_engine_step = busy.step + 100
    busy.step = busy_engine_step
    saved(state, series=[quiet, busy])
    assert state.conn.total_changes == before + 1
    state.close()
    # after a restart the loaded rows count as written
    state = StateDB(str(tmp_path))
    state.series()
    before = state.conn.total_changes
    saved(state, series=[quiet, busy])
    assert state.conn.total_changes == before
    state.close()


class PageLimit:
    """SQLite's own limit on the database's pages: the same SQLITE_FULL, no root needed."""

    def __init__(self, tmp_path) -> None:
        self.dir = str(tmp_path)

    def fill(self, state: StateDB) -> None:
        pages = state.conn.execute("PRAGMA page_count").fetchone()[0]
        state.conn.execute(f"PRAGMA max_page_count = {pages}")

    def free(self, state: StateDB) -> None:
        state.conn.execute("PRAGMA max_page_count = 1073741823")

    def close(self) -> None:
        pass


class FullFilesystem:
    """A real 4 MB tmpfs filled with a file (root mounts it, here and in CI)."""

    def __init__(self, tmp_path) -> None:
        self._mount = tmpfs(str(tmp_path / "state"), "4M")
        self.dir = self._mount.__enter__()
        self.filler = ""

    def fill(self, state: StateDB) -> None:
        self.filler = fill(self.dir)

    def free(self, state: StateDB) -> None:
        os.unlink(self.filler)

    def close(self) -> None:
        self._mount.__exit__(None, None, None)


@pytest.mark.parametrize("space", [PageLimit, FullFilesystem])
def test_a_failed_save_is_one_error_type_and_the_next_commit_saves_everything(tmp_path, space):
    space = space(tmp_path)
    try:
        state = StateDB(space.dir)
        s = series_of("a", TAG, [1.0])
        saved(state, [("/logs/a/events.out.tfevents.1", "a", 10)], [s])
        space.fill(state)
        s.step = 500
        many = [(f"/logs/a/{i:04}/events.out.tfevents.{'x' * 200}", "a", i) for i in range(2000)]
        with pytest.raises(StateSaveError, match=r"^database or disk is full$") as raised:
            state.begin()
            state.save_series([s])  # saved first: its digest must not count once the batch fails
            state.save_offsets(many)
            state.commit()
        assert isinstance(raised.value, StateError) and isinstance(raised.value, sqlite3.Error)
        assert not state.conn.in_transaction
        assert len(state.files()) == 1  # rolled back: nothing of the failed batch is there

        space.free(state)
        saved(state, many, [s])
        assert len(state.files()) == 2001
        assert json.loads(state.series()[("a", TAG)])["step"] == 500
        state.close()
    finally:
        space.close()
