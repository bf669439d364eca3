"""Names in the database: ``str`` in memory, TEXT on disk, or their raw bytes when not UTF-8.

Names are bytes on Linux. In memory they are ``str`` with surrogateescape
(``os.fsdecode``); in the database a name (path, run, tag, alert key) is TEXT
when it is valid UTF-8 (readable with the sqlite3 shell) and its raw bytes as
a BLOB when it is not, so ``run-\\xff`` round-trips. State rows and outbox
rows use the same rule.
"""

from __future__ import annotations


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
