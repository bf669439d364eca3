"""The watcher says where to look as typed Changes, from real inotify and real polling."""

import time

from tensorboardX import SummaryWriter

from gradwatch.daemon.watcher import Changes, Watcher


def changes_until(watcher: Watcher, seen, deadline: float = 30.0) -> Changes:
    """Merge what ``wait`` returns until ``seen(changes)`` (the deadline only bounds a failure)."""
    merged = Changes()
    end = time.monotonic() + deadline
    while time.monotonic() < end and not seen(merged):
        c = watcher.wait(0.2)
        merged = Changes(
            merged.paths | c.paths,
            merged.rescan or c.rescan,
            merged.poll or c.poll,
            merged.new_dir or c.new_dir,
        )
    return merged


def test_inotify_reports_the_new_run_directory_and_its_event_file(tmp_path):
    w = Watcher(str(tmp_path))
    w.start()
    try:
        assert w.mode == "inotify"
        with SummaryWriter(str(tmp_path / "run")) as writer:
            writer.add_scalar("gradients/norm", 1.0, 1)
        (path,) = (tmp_path / "run").iterdir()
        got = changes_until(w, lambda c: str(path) in c.paths and c.new_dir)
        assert str(path) in got.paths and got.rescan and got.new_dir and not got.poll
        assert all("\0" not in p for p in got.paths)  # markers never reach the paths
    finally:
        w.stop()


def test_polling_asks_for_a_poll_and_sees_directory_changes(tmp_path):
    w = Watcher(str(tmp_path), poll=0.05)
    w.start()
    w.remember_dirs(None)
    got = changes_until(w, lambda c: c.poll)
    assert got.poll and not got.paths
    assert not w.dirs_changed()
    (tmp_path / "run").mkdir()
    assert w.dirs_changed()  # the logdir's mtime moved: the follower rescans


def test_wake_asks_for_a_rescan(tmp_path):
    w = Watcher(str(tmp_path))
    w.wake()
    assert w.wait(0) == Changes(rescan=True)
