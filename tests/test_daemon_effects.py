"""A transition's side effects cannot lose it, and no single file can hold the loop.

Found in review: a stop-file template the OS refuses (a NUL byte) raised out of the
commit after the transition had been taken from the alert book, so it reached neither
the console nor the outbox, and the loop's own commit sat outside its ``try``: the
daemon thread died. And a new event file that appeared after the catch-up was read
whole, however large, while systemd's watchdog waited.
"""

from __future__ import annotations

import io
import logging
import os
import time

import numpy as np
import pytest
from tensorboardX import SummaryWriter

import gradwatch.daemon.reading as daemon_module
from gradwatch.config import Config, check_stop_file_template
from gradwatch.daemon import Daemon
from gradwatch.daemon.watcher import Changes
from gradwatch.events.records import CHUNK_BYTES


def _images_then_a_crossing(path: str, steps: int) -> None:
    """A run that logs megabytes of histograms, then one exploding gradient norm."""
    rng = np.random.default_rng(3)
    with SummaryWriter(path, flush_secs=3600) as w:
        for step in range(1, steps + 1):
            w.add_histogram("weights", rng.standard_normal(4096), step)
            w.add_scalar("gradients/norm", 1.0, step)
        w.add_scalar("gradients/norm", 1e9, steps + 1)


def test_a_stop_file_template_with_a_nul_byte_is_refused_at_start_up():
    with pytest.raises(ValueError, match="NUL"):
        check_stop_file_template("/x/{run}\0.json")


def test_a_failing_side_effect_loses_no_transition_and_stops_nothing(tmp_path, monkeypatch, caplog):
    """An effect that raises (here: the stop-file writer, as a bug would) is logged once;
    the transition is still printed and committed, and the next one too."""
    logdir = tmp_path / "logdir"
    with SummaryWriter(str(logdir / "run"), flush_secs=3600) as w:
        w.add_scalar("gradients/norm", 1.0, 1)
    out = io.StringIO()
    d = Daemon(Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None), out=out)
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("a bug in the stop-file writer")

    monkeypatch.setattr(d.stopper, "handle", broken)
    try:
        d.catch_up()
        caplog.set_level(logging.ERROR, logger="gradwatch")
        for step, value in ((2, 1e9), (3, 1.0), (4, 1e9)):
            with SummaryWriter(str(logdir / "run"), flush_secs=3600) as w:
                w.add_scalar("gradients/norm", value, step)
            d.follower.rescan()
            d.follower.handle(Changes(frozenset(d.reader.readers)))
            assert d.checkpoint() is True  # committed: not stuck on the failing effect
        firings = [e for e, _ in calls if e.kind == "firing" and e.severity == "critical"]
        assert {e.step for e in firings} >= {2, 4}  # both firings reached the (broken) writer
        printed = out.getvalue()
        assert printed.count("FIRING CRITICAL") == 2 and "RESOLVED" in printed
        assert d.effect_failures["writing the stop-file"] >= 3  # firing, resolved, firing
        for what, n in d.effect_failures.items():
            logged = [r for r in caplog.records if r.getMessage().startswith(f"{what} failed")]
            assert len(logged) == 1, (what, n)  # once, with its traceback, however often it fails
        saved = d.state.alerts()
        explosion = [a for key, a in saved.items() if key.startswith("gradient_explosion")]
        assert [a["state"] for a in explosion] == ["firing"]  # committed, not lost with the effect
    finally:
        d.shutdown()


def test_a_big_new_file_after_the_catch_up_is_read_a_budget_per_turn(tmp_path, monkeypatch):
    """The live daemon reads a large file that appears later in turns, like an appended one."""
    monkeypatch.setattr(daemon_module, "READ_BUDGET", CHUNK_BYTES)
    logdir = tmp_path / "logdir"
    (logdir / "small").mkdir(parents=True)
    d = Daemon(Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None))
    try:
        d.catch_up()
        d.ready.set()  # what run() does after the catch-up
        _images_then_a_crossing(str(logdir / "big"), 300)  # about 4 MiB
        d.follower.rescan()
        (big,) = (p for p, (run, _) in d.reader.readers.items() if run == "big")
        assert d.reader.readers[big][1].offset < os.path.getsize(big)  # one budget, not the file
        assert big in d.follower.read_again
        turns = 1
        while d.follower.read_again and turns < 100:
            d.follower.handle(Changes())
            turns += 1
        assert turns > 2 and d.reader.readers[big][1].offset == os.path.getsize(big)
        assert ("big", "gradient_explosion") in [(a.run, a.rule) for a in d.book.firing()]
    finally:
        d.shutdown()


def test_the_catch_up_reads_a_big_file_in_budgets_keeping_its_progress(tmp_path, monkeypatch):
    """The first catch-up still reads each file to its end (so it can summarise), but a budget
    at a time, answering the watchdog and committing exact offsets in between."""
    monkeypatch.setattr(daemon_module, "READ_BUDGET", CHUNK_BYTES)
    logdir = tmp_path / "logdir"
    _images_then_a_crossing(str(logdir / "big"), 300)
    d = Daemon(Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None))
    pings: list[float] = []
    monkeypatch.setattr(d, "_ping", lambda: pings.append(time.monotonic()))
    offsets: list[int] = []
    checkpoint = d.checkpoint

    def recording_checkpoint(*args, **kwargs):
        offsets.extend(r.offset for _, r in d.reader.readers.values())
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(d, "checkpoint", recording_checkpoint)
    try:
        assert d.catch_up()
        (big,) = d.reader.readers
        size = os.path.getsize(big)
        assert d.reader.readers[big][1].offset == size and not d.follower.read_again
        partial = [o for o in offsets if 0 < o < size]
        assert len(partial) >= 2  # progress between budgets, not only at the end
        assert len(pings) >= len(partial)
        # a first start summarises what still fires at the end of the catch-up
        assert ("big", "gradient_explosion") in [(a.run, a.rule) for a in d.book.firing()]
    finally:
        d.shutdown()
