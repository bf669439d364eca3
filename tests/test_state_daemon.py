"""The state store under the real daemon: ``python -m gradwatch watch`` processes, a tensorboardX writer.

Names that are not UTF-8, hostile rows left in the state DB, and a second daemon on the same state
directory once the lock file is deleted.
"""

from __future__ import annotations

import json
import os

from daemon_support import Daemon, event_files, wait_for, watch_args
from test_state import unversioned_db

from gradwatch.store import LOCK_NAME, StateDB

TAG = "gradients/actor_cnn_norm"


def saved_files(state_dir) -> dict[str, tuple[str, int]]:
    store = StateDB(str(state_dir), lock=False)
    try:
        return store.files()
    finally:
        store.close()


def test_a_run_whose_name_is_not_utf8_is_watched_saved_and_resumed(tmp_path, writer):
    logdir, state = tmp_path / "logdir", tmp_path / "state"
    run_dir = os.path.join(str(logdir), os.fsdecode(b"run-\xff"))
    writer.write_many(run_dir, [(100, {TAG: 5191.0}), (200, {TAG: 130486.0})])

    first = Daemon(watch_args(logdir, state), str(tmp_path), "first")
    first.wait_ready()
    first.wait_alert(verb="FIRING", rule="gradient_explosion", step="200")
    writer.write(run_dir, 300, {TAG: 12.0})
    first.wait_alert(verb="RESOLVED", rule="gradient_explosion", step="300")
    assert first.stop() == 0
    assert "Traceback" not in first.err()
    files = saved_files(state)
    assert files == {p: (os.fsdecode(b"run-\xff"), os.path.getsize(p)) for p in event_files(run_dir)}

    # a restart resumes from the saved offset: nothing read twice, nothing notified again
    second = Daemon(watch_args(logdir, state), str(tmp_path), "second")
    second.wait_ready()
    writer.write(run_dir, 400, {TAG: 60000.0})
    second.wait_alert(verb="FIRING", rule="gradient_explosion", step="400")
    assert second.stop() == 0
    assert {a["step"] for a in second.alerts()} == {"400"}
    assert "Traceback" not in second.err()


def test_the_daemon_starts_on_hostile_state_rows_and_reads_the_files_again(tmp_path, writer):
    logdir, state = tmp_path / "logdir", tmp_path / "state"
    writer.write_many(logdir / "negative", [(100, {TAG: 5191.0}), (200, {TAG: 130486.0})])
    writer.write_many(logdir / "beyond", [(100, {TAG: 5191.0}), (200, {TAG: 70000.0})])
    (negative,) = event_files(str(logdir / "negative"))
    (beyond,) = event_files(str(logdir / "beyond"))
    # what an older gradwatch (no schema version, names as TEXT) plus a bad disk or a person left
    db = unversioned_db(state)
    db.execute("INSERT INTO meta VALUES ('catchup_done', '1')")
    db.execute("INSERT INTO files VALUES (?, 'negative', -4096)", (negative,))
    db.execute("INSERT INTO files VALUES (?, 'beyond', ?)", (beyond, 10**12))
    key = f"gradient_explosion\x1fnegative\x1f{TAG}"
    db.execute('INSERT INTO alerts VALUES (?, \'{"rule": "gradient_explosion", "ra\')', (key,))
    db.execute("INSERT INTO series VALUES ('beyond', ?, ?)", (TAG, json.dumps({"step": [], "rules": 3})))
    db.close()

    daemon = Daemon(watch_args(logdir, state), str(tmp_path))
    daemon.wait_ready()
    # both files were read from the start: their crossings are seen
    daemon.wait_alert(verb="FIRING", rule="gradient_explosion", run="negative", step="200")
    daemon.wait_alert(verb="FIRING", rule="gradient_explosion", run="beyond", step="200")
    assert daemon.stop() == 0
    err = daemon.err()
    assert "impossible offset -4096; reading the file again from the start" in err
    assert "alerts row 'gradient_explosion\\x1fnegative\\x1fgradients/actor_cnn_norm' is unreadable" in err
    assert "series row 'beyond' 'gradients/actor_cnn_norm' is unreadable" in err
    assert "Traceback" not in err
    got = {p: offset for p, (_, offset) in saved_files(state).items()}
    assert got == {negative: os.path.getsize(negative), beyond: os.path.getsize(beyond)}


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(tmp_path):
    logdir, state = tmp_path / "logdir", tmp_path / "state"
    logdir.mkdir()
    first = Daemon(watch_args(logdir, state), str(tmp_path), "first")
    first.wait_ready()
    os.unlink(state / LOCK_NAME)

    second = Daemon(watch_args(logdir, state), str(tmp_path), "second")
    # it either refuses and exits, or starts watching: the old lock let it in
    wait_for(lambda: second.proc.poll() is not None or "watching" in second.err(), "the second daemon")
    if second.proc.poll() is None:
        second.stop()
    assert second.proc.returncode == 3, second.err()
    # the pid file is gone with the lock file, the lock is not (and the kernel still names its holder)
    assert f"another gradwatch (pid {first.proc.pid}) is using this state directory" in second.err()
    assert "Traceback" not in second.err()
    assert first.proc.poll() is None
    assert first.stop() == 0
    # and once the first one is gone, a new daemon may have the directory
    third = Daemon(watch_args(logdir, state), str(tmp_path), "third")
    third.wait_ready()
    wait_for(lambda: (state / LOCK_NAME).read_text().strip() == str(third.proc.pid), "the new pid")
    assert third.stop() == 0
