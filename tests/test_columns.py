"""The columnar reader gives the per-point reader's points, grouped per tag and batch, offsets exact."""

from __future__ import annotations

import numpy as np

from gradwatch.events import scalars
from gradwatch.events.logdir import LogdirReader
from gradwatch.events.scalars import EventFileReader


def _write(path, n_steps: int, tags=("a/grad_norm", "b/loss")) -> None:
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(path), flush_secs=3600, max_queue=10_000)
    for step in range(n_steps):
        for k, tag in enumerate(tags):
            w.add_scalar(tag, step * 1.5 + k, step)
    w.close()


def _flatten(batches):
    return [(c.tag, s, w, v) for columns in batches for c in columns for s, w, v in c.points()]


def _file(d):
    return next(str(p) for p in d.iterdir() if "tfevents" in p.name)


def test_columns_hold_the_per_point_readers_points_in_file_order_per_tag(tmp_path):
    _write(tmp_path, 3000)
    path = _file(tmp_path)
    expected = list(EventFileReader(path).read(final=True))
    batches = list(EventFileReader(path).read_columns(final=True))
    got = _flatten(batches)
    assert sorted(got, key=lambda p: (p[0], p[1])) == sorted(expected, key=lambda p: (p[0], p[1]))
    for columns in batches:
        for c in columns:
            assert c.steps.dtype == np.int64 and c.values.dtype == np.float64
            assert list(c.steps) == sorted(c.steps)  # file order within a tag


def test_each_yield_leaves_the_offset_past_whole_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 4096)
    _write(tmp_path, 2000)
    path = _file(tmp_path)
    reader = EventFileReader(path)
    seen = 0
    for columns in reader.read_columns(final=True):
        seen += sum(len(c) for c in columns)
        # a fresh reader from this offset reads exactly the points not yet seen
        rest = sum(1 for _ in EventFileReader(path, reader.offset).read(final=True))
        assert seen + rest == 4000
    assert seen == 4000


def test_logdir_columns_name_the_run(tmp_path):
    _write(tmp_path / "r1", 10)
    _write(tmp_path / "r2", 10)
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    runs = {run for run, _ in reader.read_all_columns(final=True)}
    assert runs == {"r1", "r2"}
