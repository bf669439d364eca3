"""The daemon in a thread of the test process, where a test needs to reach inside it.

inotify failures are made real by replacing watchdog's InotifyObserver (one that raises
ENOSPC as the kernel does, one that starts but never reports, as on a network filesystem).
The writer is still a real tensorboardX process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import threading

import pytest
from daemon_support import parse_alert_lines, wait_for
from tensorboard.compat.proto import event_pb2, summary_pb2

import gradwatch.daemon.follower as daemon_module
import gradwatch.daemon.reading as reading_module
from gradwatch.config import Config
from gradwatch.config.yaml import ConfigError
from gradwatch.daemon import Daemon
from gradwatch.events import records, scalars
from gradwatch.events.framing import frame

TAG = "gradients/actor_cnn_norm"


class Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)

    def wait(self, needle: str, timeout: float = 20.0) -> None:
        wait_for(lambda: needle in self.text(), f"{needle!r} in the log:\n{self.text()}", timeout)


@pytest.fixture
def logs():
    # our own handler: cli.setup_logging (run by other tests in this process) stops propagation
    handler = Logs()
    logger = logging.getLogger("gradwatch")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@contextlib.contextmanager
def running(config: Config):
    out = io.StringIO()
    d = Daemon(config, out=out)
    thread = threading.Thread(target=d.run, name="test-daemon")
    thread.start()
    try:
        yield d, out
    finally:
        d.stop()
        thread.join(20)
        assert not thread.is_alive(), "the daemon did not stop"


def wait_alert(out: io.StringIO, **fields: str) -> dict[str, str]:
    def found():
        return next(
            (a for a in parse_alert_lines(out.getvalue()) if all(a[k] == v for k, v in fields.items())),
            None,
        )

    return wait_for(found, f"an alert with {fields}; console:\n{out.getvalue()}")


def config(tmp_path, **kw) -> Config:
    kw.setdefault("logdir", str(tmp_path / "logdir"))
    return Config(state_dir=str(tmp_path / "state"), listen=None, **kw)


def test_inotify_out_of_watches_falls_back_to_polling(tmp_path, writer, logs, monkeypatch):
    import watchdog.observers.inotify

    class OutOfWatches:
        def __init__(self, *args, **kwargs) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers.inotify, "InotifyObserver", OutOfWatches)
    (tmp_path / "logdir").mkdir()
    with running(config(tmp_path)) as (d, out):
        assert d.ready.wait(20)
        assert d.watcher.mode == "poll"
        assert "inotify watch limit reached" in logs.text()
        assert "polling every 1s instead" in logs.text()
        writer.write(tmp_path / "logdir" / "run", 100, {TAG: 60000.0})
        wait_alert(out, run="run", rule="gradient_explosion", severity="CRITICAL")


class SilentObserver:
    """Starts like inotify does on NFS, and then never reports the writes of other hosts."""

    def __init__(self, *args, **kwargs) -> None:
        self.daemon = True
        self._alive = False

    def schedule(self, *args, **kwargs) -> None:
        pass

    def start(self) -> None:
        self._alive = True

    def stop(self) -> None:
        self._alive = False

    def join(self, timeout=None) -> None:
        pass

    def is_alive(self) -> bool:
        return self._alive


@pytest.mark.parametrize("missed", ["append", "new file"])
def test_inotify_that_misses_writes_is_noticed_and_replaced_by_polling(
    tmp_path, writer, logs, monkeypatch, missed
):
    import watchdog.observers.inotify

    monkeypatch.setattr(watchdog.observers.inotify, "InotifyObserver", SilentObserver)
    monkeypatch.setattr(daemon_module, "MISSED_AFTER", 0.0)
    run = tmp_path / "logdir" / "run"
    writer.write(run, 100, {TAG: 100.0})
    with running(config(tmp_path, rescan_interval=0.3)) as (d, out):
        assert d.ready.wait(20)
        assert d.watcher.mode == "inotify"
        target = run if missed == "append" else tmp_path / "logdir" / "new-run"
        writer.write(target, 200, {TAG: 60000.0})
        # the periodic safety check reads it anyway, and tells why it now polls
        wait_alert(out, run=target.name, rule="gradient_explosion", step="200")
        logs.wait(
            "did not report changes to 1 event file(s)"
            if missed == "append"
            else "never reported the new file"
        )
        assert d.watcher.mode == "poll"
        writer.write(target, 300, {TAG: 1.0})
        wait_alert(out, run=target.name, rule="gradient_explosion", verb="RESOLVED", step="300")


def test_a_symlinked_logdir_is_followed_through_inotify(tmp_path, writer):
    real = tmp_path / "real"
    (real / "run").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    # no periodic rescan within the test: only inotify events can bring the alert
    with running(config(tmp_path, logdir=str(link), rescan_interval=3600)) as (d, out):
        assert d.ready.wait(20)
        writer.write(real / "run", 1, {TAG: 1.0})
        wait_for(lambda: d.points == 1, "the first point")
        # an append to a known file: its inotify path is under real/, the daemon knows it under link/
        writer.write(real / "run", 2, {TAG: 60000.0})
        wait_alert(out, run="run", rule="gradient_explosion")
        assert d.watcher.mode == "inotify"


def test_logdir_created_late_deleted_and_created_again(tmp_path, writer, logs):
    logdir = tmp_path / "logdir"
    with running(config(tmp_path, forget_after=0.5)) as (d, out):
        logs.wait("no such directory; waiting for it")
        assert not d.ready.is_set()
        writer.write(logdir / "first", 100, {TAG: 60000.0})
        wait_alert(out, run="first", rule="gradient_explosion")
        assert d.ready.wait(20)
        assert d.watcher.mode == "inotify", logs.text()

        writer.close(logdir / "first")
        shutil.rmtree(logdir)
        logs.wait("waiting for it to come back")
        logs.wait("run first disappeared 0.5s ago; forgot it")

        writer.write(logdir / "second", 100, {TAG: 60000.0})
        wait_alert(out, run="second", rule="gradient_explosion")
        assert "is back; watching it again" in logs.text()
        assert d.watcher.mode == "inotify", logs.text()  # seen once as 'poll': the log says why
        writer.close(logdir / "second")


def _multi_value_file(path, records: int, per_record: int) -> list[tuple[int, float]]:
    """An event file whose records each hold several scalars (TF1 merged summaries do this)."""
    points = []
    with open(path, "wb") as f:
        f.write(frame(event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString()))
        for step in range(records):
            value = 60000.0 if step % 4 == 1 else 10.0
            values = [
                summary_pb2.Summary.Value(tag=f"grad_norm/{k}", simple_value=value) for k in range(per_record)
            ]
            points += [(step, value)] * per_record
            ev = event_pb2.Event(wall_time=2.0 + step, step=step, summary=summary_pb2.Summary(value=values))
            f.write(frame(ev.SerializeToString()))
    return points


def test_a_stop_in_the_middle_of_a_big_file_commits_nothing_half_read(tmp_path, monkeypatch):
    monkeypatch.setattr(reading_module, "BATCH_POINTS", 7)
    run = tmp_path / "logdir" / "run"
    run.mkdir(parents=True)
    points = _multi_value_file(run / "events.out.tfevents.1.merged", records=30, per_record=3)

    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 200)  # batches of a few records...
    monkeypatch.setattr(records, "CHUNK_BYTES", 256)  # ... read a few records at a time
    first = Daemon(config(tmp_path))
    observe_many = first.engine.observe_many

    def observe_then_stop(batches):
        observe_many(batches)
        first.stop()  # SIGTERM arrives while the file is being read

    first.engine.observe_many = observe_then_stop
    assert first.catch_up() is False
    first.shutdown()
    assert 7 <= first.points < len(points)  # it stopped at the first look after 7 points, between batches
    # the second start reads the file again from its start: no point skipped or counted twice
    second = Daemon(config(tmp_path))
    assert second.catch_up() is True
    second.shutdown()
    assert second.points == len(points)

    # the same alerts as one uninterrupted reading with its own state
    whole = Daemon(Config(logdir=str(tmp_path / "logdir"), state_dir=str(tmp_path / "whole"), listen=None))
    whole.catch_up()
    expected = {k: (a.state, a.rank, a.step, a.seq) for k, a in whole.book.alerts.items()}
    whole.shutdown()
    again = Daemon(config(tmp_path))
    got = {k: (a.state, a.rank, a.step, a.seq) for k, a in again.book.alerts.items()}
    again.shutdown()
    assert got == expected and len(got) == 6  # explosion and growth on three tags


def test_a_read_error_inside_a_batch_loses_none_of_its_points(tmp_path, monkeypatch):
    """The reader fails (EIO) inside a batch it has not handed over: the offset goes back to the
    batch's start (the reader's own rollback, read_columns; the daemon undoes nothing), so the next
    reading has every point once. Fails if the offset stays where the reader stopped (the points it
    had read of that batch are skipped for good)."""
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 200)  # batches of a few records...
    monkeypatch.setattr(records, "CHUNK_BYTES", 256)  # ... read a few records at a time
    run = tmp_path / "logdir" / "run"
    run.mkdir(parents=True)
    points = _multi_value_file(run / "events.out.tfevents.1.merged", records=90, per_record=1)
    read_frames = records.RecordTail.read_frames
    failed = []

    def fails_once(self, *args):
        for k, frames in enumerate(read_frames(self, *args)):
            if k == 3 and not failed:  # an I/O error cannot be made on demand here: raise one
                failed.append(k)
                raise OSError(errno.EIO, "Input/output error")
            yield frames

    monkeypatch.setattr(records.RecordTail, "read_frames", fails_once)
    first = Daemon(config(tmp_path))
    first.catch_up()
    first.shutdown()
    second = Daemon(config(tmp_path))
    second.catch_up()
    second.shutdown()
    assert failed and first.points + second.points == len(points)


RELOAD_RULES = """
rules:
  - name: streak
    match: {{tags: ["x/value"]}}
    thresholds: {{warning: 10}}
    for: {n}
{extra}
"""


def test_reload_keeps_the_state_of_unchanged_rules(tmp_path, writer, logs):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RELOAD_RULES.format(n=3, extra=""))
    cfg_file = tmp_path / "gradwatch.yaml"
    cfg_file.write_text(
        f"logdir: {tmp_path / 'logdir'}\nstate_dir: {tmp_path / 'state'}\nlisten: ''\nrules: [{rules}]\n"
    )
    from gradwatch.config import load_config

    run = tmp_path / "logdir" / "run"
    writer.write(run, 0, {"x/value": 1.0})
    with running(load_config(str(cfg_file))) as (d, out):
        assert d.ready.wait(20)
        writer.write_many(run, [(1, {"x/value": 50.0}), (2, {"x/value": 50.0})])
        wait_for(lambda: d.points == 3, "the two points to be read")
        # another rule joins; `streak` is unchanged and keeps its count of 2
        rules.write_text(
            RELOAD_RULES.format(
                n=3, extra="  - name: other\n    match: {tags: [y]}\n    nonfinite: warning\n"
            )
        )
        d.request_reload()
        logs.wait("reloaded: 2 rules")
        writer.write(run, 3, {"x/value": 50.0})
        wait_alert(out, rule="streak", verb="FIRING", step="3")

        # a changed rule starts afresh, but its firing alert stays and resolves normally
        rules.write_text(RELOAD_RULES.format(n=2, extra=""))
        d.request_reload()
        logs.wait("reloaded: 1 rules")
        writer.write(run, 4, {"x/value": 1.0})
        wait_alert(out, rule="streak", verb="RESOLVED", step="4")


def test_a_second_daemon_on_the_same_state_directory_is_refused(tmp_path):
    (tmp_path / "logdir").mkdir()
    first = Daemon(config(tmp_path))
    try:
        with pytest.raises(
            ConfigError, match=f"another gradwatch \\(pid {os.getpid()}\\) is using this state"
        ):
            Daemon(config(tmp_path))
    finally:
        first.shutdown()
    Daemon(config(tmp_path)).shutdown()  # free again once the first one is gone


def test_missing_logdir_in_the_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no logdir to watch"):
        Daemon(Config(state_dir=str(tmp_path), listen=None))


def test_an_unusable_state_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot use the state directory"):
        Daemon(Config(logdir=str(tmp_path), state_dir=str(tmp_path / "file" / "state"), listen=None))


ABSENT_RULES = """
rules:
  - name: stalled
    match: {tags: ["loss"]}
    absent_for: 1s
    severity: warning
"""


def test_a_series_that_stops_logging_fires_stalled_also_after_a_restart(tmp_path, writer):
    rules = tmp_path / "rules.yaml"
    rules.write_text(ABSENT_RULES)
    run = tmp_path / "logdir" / "run"
    writer.write(run, 1, {"loss": 0.5})
    cfg = config(tmp_path, rules=[str(rules)])
    with running(cfg) as (d, out):
        assert d.ready.wait(20)
        writer.write(run, 2, {"loss": 0.4})
        fired = wait_alert(out, rule="stalled", verb="FIRING")
        assert (fired["step"], fired["threshold"]) == ("2", "1")
        writer.write(run, 3, {"loss": 0.3})
        wait_alert(out, rule="stalled", verb="RESOLVED", step="3")

    # a restart with no new point: the series comes back from the state and still stalls
    writer.write(run, 4, {"loss": 0.2})
    with running(cfg) as (d, out):
        assert d.ready.wait(20)
        wait_alert(out, rule="stalled", verb="FIRING", step="4")
