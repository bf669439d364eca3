"""SIGTERM/SIGINT stop gracefully with the state flushed (docs/commands.md): what was read
since the last (lazy) commit is saved at shutdown, so a restart reads nothing twice."""

from __future__ import annotations

import os

from tensorboardX import SummaryWriter

import gradwatch.daemon.unit_of_work as daemon_module
from gradwatch.config import Config
from gradwatch.daemon import Daemon
from gradwatch.daemon.watcher import Changes
from gradwatch.store import StateDB


def test_shutdown_commits_what_was_read_since_the_last_commit(tmp_path, monkeypatch):
    # points without a transition wait for the next lazy commit: make that never come
    monkeypatch.setattr(daemon_module, "COMMIT_EVERY", 3600.0)
    logdir, state = tmp_path / "logdir", tmp_path / "state"
    w = SummaryWriter(str(logdir / "run"), flush_secs=3600)
    d = None
    try:
        w.add_scalar("loss", 1.0, 1)
        w.flush()
        d = Daemon(Config(logdir=str(logdir), state_dir=str(state), listen=None))
        d.catch_up()
        (path,) = d.reader.readers
        caught_up_at = d.reader.readers[path][1].offset
        for step in range(2, 2002):
            w.add_scalar("loss", 1.0, step)
        w.flush()
        d.follower.handle(Changes(frozenset({path})))
        read_to = d.reader.readers[path][1].offset
        assert read_to == os.path.getsize(path) > caught_up_at
        assert d.checkpoint(lazy=True)  # skipped: nothing urgent, and the last commit is recent
    finally:
        w.close()
        if d is not None:
            d.shutdown()  # what SIGTERM/SIGINT end in
    db = StateDB(str(state), lock=False)
    try:
        offsets = {p: offset for p, (_, offset) in db.files().items()}
    finally:
        db.close()
    assert offsets == {path: read_to}  # closing the writer appends after this; not read yet
