"""The catch-up child's messages travel in packs (gradwatch/daemon/catchup.py ``packed``): the same
messages in the same order, few items for files that hold few points per MiB (so the child is not
held back by its bounded lead over the daemon), no pack larger than PACK_POINTS unless one batch
alone is, and a pack at least every PACK_SECONDS. Real tensorboardX files; the clock is the test's."""

from __future__ import annotations

import itertools
import os
import pickle

import numpy as np
import pytest
from tensorboardX import SummaryWriter

import gradwatch.daemon.catchup as catchup
from gradwatch.events.records import DEFAULT_MAX_RECORD_BYTES
from gradwatch.events.scalars import EventFileReader


class StoppedClock:
    """``time.monotonic`` for catchup.py: it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> StoppedClock:
    c = StoppedClock()
    monkeypatch.setattr(catchup, "time", c)
    return c


def histograms_file(root, steps: int = 300) -> str:
    """About 4 MiB: a histogram of 4,096 values and one scalar a step (a few hundred points a MiB)."""
    rng = np.random.default_rng(5)
    with SummaryWriter(str(root / "run"), flush_secs=3600) as w:
        for step in range(1, steps + 1):
            w.add_histogram("weights", rng.standard_normal(4096), step)
            w.add_scalar("gradients/norm", float(step), step)
    (path,) = (root / "run").iterdir()
    return str(path)


def scalars_file(root, steps: int = 12_000) -> str:
    """About 1 MiB of three scalars a step: batches of many thousand points."""
    with SummaryWriter(str(root / "dense"), flush_secs=3600) as w:
        for step in range(steps):
            for tag in ("a", "b", "c"):
                w.add_scalar(tag, step * 0.5, step)
    (path,) = (root / "dense").iterdir()
    return str(path)


def messages(paths: list[str]) -> list:
    return list(catchup.decode_files([(p, 0, DEFAULT_MAX_RECORD_BYTES) for p in paths]))


def plain(message) -> tuple:
    """A message with its columns as lists, to compare."""
    kind, path, problems, payload = message
    if kind == "batch":
        columns, state = payload
        payload = (
            [(c.tag, c.steps.tolist(), c.wall_times.tolist(), c.values.tolist()) for c in columns],
            state,
        )
    return kind, path, problems, payload


def points(pack: list) -> int:
    return sum(len(c) for kind, _, _, payload in pack if kind == "batch" for c in payload[0])


def test_a_file_of_histograms_goes_in_one_item_not_one_per_read(tmp_path, clock):
    path = histograms_file(tmp_path)
    sent = messages([path])
    assert len(sent) > 6  # a stat, a batch and a progress per 1 MiB read, an end
    packs = list(catchup.packed(iter(sent)))
    assert len(packs) == 1  # 300 points: far below PACK_POINTS, and the clock stood still
    assert [plain(m) for m in itertools.chain(*packs)] == [plain(m) for m in sent]
    # and what the daemon takes from a child's stream of packs is every message, per file
    grouped = [(p, [plain(m) for m in ms]) for p, ms in catchup.by_file(iter(packs))]
    assert grouped == [(path, [plain(m) for m in sent])]


def test_no_pack_holds_more_than_pack_points_unless_one_batch_does(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(catchup, "PACK_POINTS", 5_000)
    sent = messages([histograms_file(tmp_path), scalars_file(tmp_path)])
    packs = list(catchup.packed(iter(sent)))
    assert [plain(m) for m in itertools.chain(*packs)] == [plain(m) for m in sent]
    batches = [sum(1 for m in pack if m[0] == "batch") for pack in packs]
    assert any(points(pack) > 5_000 for pack in packs)  # the dense file's batches are larger
    for pack, n in zip(packs, batches):
        assert points(pack) <= 5_000 or n == 1
    # and full: a pack goes when the next batch would not fit, not before
    for pack, after in itertools.pairwise(packs):
        first = next(([m] for m in after if m[0] == "batch"), [])
        assert points(pack) >= 5_000 or points(pack) + points(first) > 5_000


def test_a_pack_goes_at_least_every_pack_seconds(tmp_path, clock):
    sent = messages([histograms_file(tmp_path)])

    def slow():  # the child takes 0.2 s per message: a file of big images
        for m in sent:
            clock.now += 0.2
            yield m

    packs = list(catchup.packed(slow()))
    assert [plain(m) for m in itertools.chain(*packs)] == [plain(m) for m in sent]
    assert len(packs) > 2
    # 0.2 s a message, a pack once 0.5 s have passed since the last one: three messages each
    assert all(len(pack) <= 3 for pack in packs)


def test_the_child_stream_is_in_packs(tmp_path):
    """The daemon's child sends packs: a whole file of histograms is one item of the stream."""
    path = histograms_file(tmp_path)
    reader = EventFileReader(path, 0)
    stream = catchup.stream_files([path], {path: ("run", reader)}, lambda: None)
    try:
        items = list(stream)
    finally:
        stream.close()
    assert len(items) < 3 < len(messages([path]))


def test_each_message_carries_the_reader_state_of_its_own_moment(tmp_path, clock):
    """A pack is pickled after the reader went on: a message's state must be a copy made when the
    message was, not the reader's live counters (a damaged record late in the file must not show in
    the problem counts of the batches before it)."""
    path = histograms_file(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # damage a record about 3/4 into the file
        f.seek(size * 3 // 4)
        damaged = bytes(b ^ 0xFF for b in f.read(16))
        f.seek(size * 3 // 4)
        f.write(damaged)
    files = [(path, 0, DEFAULT_MAX_RECORD_BYTES)]
    one_by_one = [pickle.loads(pickle.dumps(m)) for m in catchup.decode_files(files)]
    in_packs = [m for p in catchup._packed_files(files) for m in pickle.loads(pickle.dumps(p))]
    assert [plain(m) for m in in_packs] == [plain(m) for m in one_by_one]
    counted = [m[3][1]["problems"] for m in one_by_one if m[0] == "batch"]
    assert not counted[0] and counted[-1]  # the damage is counted by the last batch, not the first
