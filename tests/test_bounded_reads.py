"""A trainer that turns its event file into a sparse one cannot make the reader work
for it: holes are never read, and each read call does a bounded amount of work.

The trainer side runs as ``nobody`` (setpriv), in a run directory it owns, as a
hostile or buggy trainer would: ``truncate -s 8G`` on its own event file puts an
8 GiB hole after its records (which ``gradwatch`` once read on every change,
44 s each time).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
from conftest import require_binary, require_root
from writers import event, simple, write_scalars

from gradwatch.events.framing import frame
from gradwatch.events.logdir import ProblemLog
from gradwatch.events.records import CHUNK_BYTES, RecordTail
from gradwatch.events.scalars import EventFileReader

MiB = 1 << 20
HOLE = 8 << 30
WALL = 1_700_000_000.0
# What the tests let one read call spend: the old reader read the whole hole
# (8 GiB) in one call; with a budget it would stop here, pending.
BUDGET = 64 * MiB


@pytest.fixture
def trainer_dir():
    """A run directory the unprivileged trainer owns, in a logdir it can reach."""
    require_root()  # to play the trainer as nobody
    setpriv = require_binary("setpriv")
    nobody = pwd.getpwnam("nobody")
    root = tempfile.mkdtemp(prefix="gradwatch-sparse-")
    os.chmod(root, 0o755)
    run = os.path.join(root, "run")
    os.mkdir(run)
    os.chown(run, nobody.pw_uid, nobody.pw_gid)

    def as_trainer(*argv: str) -> None:
        drop = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        subprocess.run([*drop, *argv], check=True, cwd=run)

    yield run, as_trainer
    shutil.rmtree(root)


def holed_file(trainer_dir, steps: int) -> tuple[str, int, EventFileReader, ProblemLog]:
    """An event file of ``steps`` scalars from tensorboardX, handed to the trainer, who
    puts an 8 GiB hole after them; (path, where the records end, a reader, its problems)."""
    run, as_trainer = trainer_dir
    path = write_scalars("tensorboardX", run, [("loss", s, s / 4, WALL + s) for s in range(1, steps + 1)])
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    records_end = os.path.getsize(path)
    as_trainer("truncate", "-s", str(records_end + HOLE), path)
    problems = ProblemLog()
    return path, records_end, EventFileReader(path, on_problem=problems), problems


def test_an_8_gib_hole_at_the_end_is_never_read_and_reported_once(trainer_dir):
    path, records_end, reader, problems = holed_file(trainer_dir, 100)
    points = list(reader.read(budget=BUDGET))
    assert [(p[0], p[3]) for p in points] == [("loss", s / 4) for s in range(1, 101)]
    for _ in range(3):  # the writer "changes" the file again and again
        assert list(reader.read(budget=BUDGET)) == []
        assert not reader.pending
    # four calls: the records plus one chunk of the hole each, never the hole
    assert reader.tail.bytes_read <= 4 * (records_end + CHUNK_BYTES)
    assert reader.offset == records_end  # waiting there for what comes after
    assert problems.counts == {"sparse_hole": 1}

    # Records the trainer writes after the hole are found without reading it.
    run, as_trainer = trainer_dir
    record = frame(event([simple("loss", 99.5)], step=101, wall_time=WALL + 101))
    with open(os.path.join(run, "record"), "wb") as f:
        f.write(record)
    before = reader.tail.bytes_read
    as_trainer("sh", "-c", f"cat record >> {path}")
    assert [(p[0], p[3]) for p in reader.read(budget=BUDGET)] == [("loss", 99.5)]
    assert reader.tail.bytes_read - before <= 2 * CHUNK_BYTES + len(record)
    assert reader.offset == os.path.getsize(path)
    # the unreadable stretch is reported once more, as the region skipped to get there
    assert problems.counts == {"sparse_hole": 1, "corrupt_record": 1}


def test_a_finished_file_with_a_hole_is_read_to_its_end_without_reading_the_hole(trainer_dir):
    _, records_end, reader, problems = holed_file(trainer_dir, 10)
    assert len(list(reader.read(final=True, budget=BUDGET))) == 10  # what `gradwatch check` does
    assert reader.tail.bytes_read <= records_end + CHUNK_BYTES
    assert reader.offset == records_end + HOLE and not reader.pending
    assert problems.counts == {"sparse_hole": 1}


def test_a_read_budget_stops_at_a_record_and_resumes_exactly_there(tmp_path):
    import numpy as np
    from tensorboardX import SummaryWriter

    # records of many sizes (scalars, histograms), so chunks end inside records
    rng = np.random.default_rng(3)
    with SummaryWriter(str(tmp_path), flush_secs=3600) as w:
        for step in range(500):
            w.add_scalar("x", step / 8, step)
            w.add_histogram("w", rng.standard_normal(1 + step * 8), step)
    (path,) = (str(p) for p in tmp_path.iterdir())
    assert os.path.getsize(path) > 3 * CHUNK_BYTES
    whole = list(RecordTail(path).read())

    tail = RecordTail(path)
    got, calls = [], 0
    while True:
        calls += 1
        before = tail.bytes_read
        got.extend(tail.read(budget=CHUNK_BYTES))
        # one chunk, plus at most one more to finish a record
        assert tail.bytes_read - before <= 2 * CHUNK_BYTES
        if not tail.pending:
            break
    assert got == whole
    assert calls >= 3 and tail.offset == os.path.getsize(path)


def test_the_daemon_goes_round_its_files_while_one_has_much_to_read(tmp_path, monkeypatch):
    """A file with megabytes to read does not hold back another file's crossing."""
    import time

    import numpy as np
    from tensorboardX import SummaryWriter

    import gradwatch.daemon.reading as daemon_module
    from gradwatch.config import Config
    from gradwatch.daemon import Daemon
    from gradwatch.daemon.watcher import Changes

    monkeypatch.setattr(daemon_module, "READ_BUDGET", CHUNK_BYTES)
    logdir = tmp_path / "logdir"
    rng = np.random.default_rng(5)
    with SummaryWriter(str(logdir / "big"), flush_secs=3600) as w:
        for step in range(1, 301):  # about 4 MiB of histograms and scalars
            w.add_histogram("weights", rng.standard_normal(4096), step)
            w.add_scalar("gradients/norm", 1.0, step)
    with SummaryWriter(str(logdir / "small"), flush_secs=3600) as w:
        w.add_scalar("gradients/norm", 1e9, 1)
    d = Daemon(Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None))
    try:
        # both files known and not read yet, as when a writer appends to them after
        # the catch-up; no periodic rescan or poll during the test
        d.reader.refresh()
        d.follower.last_rescan = time.monotonic() + 3600
        (big,) = (p for p, (run, _) in d.reader.readers.items() if run == "big")
        (small,) = (p for p, (run, _) in d.reader.readers.items() if run == "small")

        d.follower.handle(Changes(frozenset({big})))  # the big file changed first: one budget of it is read
        assert d.reader.readers[big][1].offset < os.path.getsize(big)
        # the next turn reads the small file, and the big one on
        d.follower.handle(Changes(frozenset({small})))
        assert d.reader.readers[small][1].offset == os.path.getsize(small)
        assert [(a.run, a.rule) for a in d.book.firing()] == [("small", "gradient_explosion")]
        assert d.reader.readers[big][1].offset < os.path.getsize(big)  # still more to read
        turns = 2
        # a reader that never finished would spin here forever: cap the turns (about 4 MiB, a chunk a turn)
        while d.follower.read_again and turns < 100:
            d.follower.handle(Changes())
            turns += 1
        assert not d.follower.read_again, f"still reading after {turns} turns"
        assert turns >= 3 and d.reader.readers[big][1].offset == os.path.getsize(big)
        assert d.points == 300 + 1  # every point read once
    finally:
        d.shutdown()


def test_a_record_larger_than_the_budget_is_still_read(tmp_path):
    """The budget bounds the work of a call, never progress: a 3 MB image record read
    with a 1 MiB budget completes (a reader stuck at its start would spin forever)."""
    import numpy as np
    from tensorboardX import SummaryWriter

    rng = np.random.default_rng(4)
    with SummaryWriter(str(tmp_path), flush_secs=3600) as w:
        for step in range(3):
            w.add_scalar("x", step, step)
            w.add_image("big", rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8), step)
    (path,) = (str(p) for p in tmp_path.iterdir())
    whole = list(RecordTail(path).read())
    assert max(map(len, whole)) > 2 * CHUNK_BYTES

    tail = RecordTail(path)
    got = []
    for _ in range(2 * len(whole)):
        got.extend(tail.read(budget=CHUNK_BYTES))
        if not tail.pending:
            break
    assert got == whole and tail.offset == os.path.getsize(path)


def test_a_long_written_zero_tail_is_checked_a_budget_at_a_time(tmp_path):
    """Zeros written as data (a preallocating filesystem, not a hole) are checked on
    from where the last call stopped, so a tail longer than the budget is still done."""
    path = write_scalars("tensorboardX", str(tmp_path), [("x", s, s / 2, WALL + s) for s in range(10)])
    records_end = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * (6 * CHUNK_BYTES))
    problems = ProblemLog()
    reader = EventFileReader(path, on_problem=problems)
    got = []
    for _ in range(10):
        got.extend(reader.read(budget=CHUNK_BYTES))
        if not reader.pending:
            break
    assert len(got) == 10 and not reader.pending
    assert reader.offset == records_end  # the zeros are awaited: data may still land there
    assert problems.counts == {}
