"""The state database (layer 3): one SQLite file per state directory.

``db`` (connect, the directory lock, schema versions and migrations),
``documents`` (the JSON of series and alert states, validated on read),
``rows`` (``StateDB``: offsets, alert states, rule states, meta),
``outbox_rows`` (the outbox's SQL).
"""

from gradwatch.store.db import (
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    StateError,
    StateSaveError,
    connect,
)
from gradwatch.store.documents import (
    MAX_LOADED_WINDOW,
    BadRow,
    dump_rule_state,
    dump_series,
    load_rule_state,
    restore_series,
    rule_signature,
)
from gradwatch.store.names import db_text, from_db_text
from gradwatch.store.rows import StateDB

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "MAX_LOADED_WINDOW",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BadRow",
    "StateDB",
    "StateError",
    "StateSaveError",
    "connect",
    "db_text",
    "dump_rule_state",
    "dump_series",
    "from_db_text",
    "load_rule_state",
    "restore_series",
    "rule_signature",
]
