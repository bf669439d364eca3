"""One event file's new scalar points: a tail reader (records.py) and a decoder (decoder.py).

``EventFileReader.read()`` yields a point at a time; ``read_columns()`` a batch of records'
points at a time, one Columns per tag (columns.py), decoded in bulk where the decoder's
templates allow and one record at a time where they do not.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gradwatch.events.columns import Columns, ColumnsBuilder, template_hits
from gradwatch.events.decoder import (  # re-exported: the reader's public names
    MAX_SHARED_TEMPLATES,
    MAX_TEMPLATES,
    NotAnEvent,
    ScalarDecoder,
    TemplateStore,
    _Event,
)
from gradwatch.events.records import UNDECODABLE, Frames, RecordTail
from gradwatch.events.tensor_scalars import tensor_scalar
from gradwatch.events.wire import varint

__all__ = [
    "MAX_SHARED_TEMPLATES",
    "MAX_TEMPLATES",
    "EventFileReader",
    "NotAnEvent",
    "ScalarDecoder",
    "TemplateStore",
    "_Event",
    "tensor_scalar",
]

# How many bytes of records one Columns batch spans (plus the record that reaches it): the
# rules pay a fixed cost per series per batch (bench/data/mixed: 1 MiB batches cost check
# about 0.15 CPU s more than 2 MiB ones), the daemon's memory grows with it
_COLUMN_BATCH_BYTES = 2 << 20
# Batches of fewer records are decoded one record at a time: numpy's fixed cost per
# call is more than it saves on them.
_BULK_MIN_RECORDS = 64
# Records decoded one at a time after a template was learnt, per record left in the
# batch, before the rest is matched against the templates again: matching costs about
# that many times less per record, so re-matching never costs more than it saves.
_REMATCH_AFTER = 64
# Matches of a batch after which only that rule starts another (a match at once when a
# newly learnt template decodes the next record would cost one match per new tag).
_EAGER_MATCHES = 8


def _step(payload: bytes) -> tuple[int, int]:
    """An Event's step, read where the template fast path reads it: (step, next position)."""
    return varint(payload, 10)


class EventFileReader:
    """Tail-reads one event file and yields its new scalar points.

    ``offset`` (what to persist) and problem counters live on ``tail``.
    ``offset`` is exact at every yield: just past the record of the point
    yielded (at its start while more points of the same record follow).
    """

    __slots__ = ("decoder", "tail", "undecodable")

    def __init__(
        self, path: str, offset: int = 0, templates: TemplateStore | None = None, **tail_options
    ) -> None:
        self.tail = RecordTail(path, offset, **tail_options)
        # ``templates``: the logdir's shared templates (LogdirReader's), None for a file alone
        self.decoder = ScalarDecoder(templates)
        self.undecodable = 0

    @property
    def path(self) -> str:
        return self.tail.path

    @property
    def offset(self) -> int:
        return self.tail.offset

    def read(self, final: bool = False, budget: int | None = None) -> Iterator[tuple[str, int, float, float]]:
        """Each new point as (tag, step, wall_time, value); ``budget``: see RecordTail.read."""
        return self._read(final, None, budget)

    def read_run(
        self, run: str, final: bool = False, budget: int | None = None
    ) -> Iterator[tuple[str, str, int, float, float]]:
        """Each new point as (run, tag, step, wall_time, value): what a logdir reader yields."""
        return self._read(final, run, budget)

    def read_columns(
        self, final: bool = False, budget: int | None = None, batch_bytes: int | None = None
    ) -> Iterator[list[Columns]]:
        """The new points a batch of records at a time, one Columns per tag (see columns.py).

        After each yield ``offset`` is just past the batch, so a consumer that
        commits between yields commits whole batches; a batch ends at the first
        record that ends ``batch_bytes`` (_COLUMN_BATCH_BYTES) or more after the last one,
        whatever ``budget`` (see RecordTail.read) reads at once. When reading fails (OSError)
        the reader goes back to the state its last yield left (the call's start
        before any): offset, problem counts and all, so a retry reads the rest
        once. The points are the ones ``read`` yields, decoded a batch of records at once.
        """
        tail, decoder = self.tail, self.decoder
        decoder.adopt_shared()
        out = ColumnsBuilder()
        handed = (tail.checkpoint(), self.undecodable)
        decoder.checkpoint()
        try:
            for frames in tail.read_frames(final, budget, batch_bytes or _COLUMN_BATCH_BYTES):
                self._decode_batch(out, frames)
                if frames.at_cut and out:
                    yield out.build()
                    out = ColumnsBuilder()
                    handed = (tail.checkpoint(), self.undecodable)
                    decoder.checkpoint()
        except OSError:
            tail.rollback(handed[0])
            self.undecodable = handed[1]
            # the records read again must decode with the per-tag plugin decisions they had
            decoder.rollback()
            raise
        if out:
            yield out.build()

    def _decode_batch(self, out: ColumnsBuilder, frames: Frames) -> None:
        """Decode one batch of records (see RecordTail.read_frames) into ``out``."""
        first, batch, lens = frames.start, frames.payloads, frames.lengths
        if len(batch) < _BULK_MIN_RECORDS:
            end = first
            for i, p in enumerate(batch):
                end += len(p) + 16
                out.add_points(i, self._decode_one(p, end))
        else:
            if lens is None:
                lens = np.fromiter(map(len, batch), np.int64, count=len(batch))
            ends = np.cumsum(lens + 16)  # where each record ends, from the first's start
            starts = ends - lens
            starts += frames.at - 4  # each payload's start in frames.buf
            ends += first  # and in the file
            templates, more = self.decoder._templates, self.decoder._more_templates
            i = matches = 0
            while i < len(batch):
                hits = template_hits(
                    frames.buf, starts[i:], lens[i:], templates, more, lambda j, i=i: _step(batch[i + j])
                )
                matches += 1
                stop = self._decode_misses(out, batch, ends, i, hits, matches <= _EAGER_MATCHES)
                out.add_hits(i, hits, stop)
                i = stop
        out.end_batch(len(batch))

    def _decode_misses(
        self, out: ColumnsBuilder, batch: list[bytes], ends, first: int, hits, eager: bool
    ) -> int:
        """Decode one at a time the records from ``first`` that no template decoded, until
        the templates changed so that ``hits`` may be wrong (one was forgotten) or matching
        the rest again pays (new ones learnt); returns where to match again."""
        if len(hits.records) == len(batch) - first:  # every record decoded in bulk
            return len(batch)
        decoder = self.decoder
        missed = np.ones(len(batch) - first, bool)
        missed[hits.records] = False
        templates, forgotten = decoder._template_count, decoder.forgotten
        for slow, i in enumerate((np.flatnonzero(missed) + first).tolist()):
            if decoder._template_count != templates and (
                # a template learnt since decodes this record: likely the rest too (a
                # writer logs the same tags every step), or many went one at a time
                (eager and decoder.by_template(batch[i]) is not None)
                or slow * _REMATCH_AFTER >= len(batch) - i
            ):
                return i
            out.add_points(i, self._decode_one(batch[i], int(ends[i])))
            if decoder.forgotten != forgotten:
                return i + 1
        return len(batch)

    def _decode_one(self, p: bytes, end: int) -> list[tuple[str, int, float, float]]:
        """The points of one record ending at file offset ``end``; an undecodable one is reported."""
        try:
            return self.decoder.decode(p)
        except NotAnEvent as e:
            self.undecodable += 1
            self.tail.report_problem(
                UNDECODABLE, end - len(p) - 16, f"valid checksums but not an Event ({e}); skipped"
            )
            return []

    @property
    def pending(self) -> bool:
        """The last read stopped at its budget; more of the file is waiting."""
        return self.tail.pending

    def _read(self, final: bool, run: str | None, budget: int | None) -> Iterator[tuple]:
        decoder = self.decoder
        decoder.adopt_shared()
        templates = decoder._templates
        tail = self.tail
        # The template fast path of ScalarDecoder.decode, inlined: this loop
        # is where the daemon and the one-shot commands spend their time.
        for end, batch in tail.read_batches(final, budget):
            for p in batch:
                end += len(p) + 16
                try:
                    if p[0] == 9 and p[9] == 16:
                        # steps below 2**21 (one to three varint bytes) inline
                        b = p[10]
                        if b < 128:
                            step, s = b, 11
                        else:
                            b2 = p[11]
                            if b2 < 128:
                                step, s = (b & 127) | (b2 << 7), 12
                            else:
                                b3 = p[12]
                                if b3 < 128:
                                    step, s = (b & 127) | ((b2 & 127) << 7) | (b3 << 14), 13
                                else:
                                    step, s = varint(p, 10)
                        entry = templates.get(len(p) - s)
                        if entry is not None:
                            hit = entry[1].get(p[s : s + entry[0]])
                            if hit is not None and (hit[0] is None or p.endswith(hit[0])):
                                wall_time, value = hit[2][s](p)
                                tail.offset = end
                                if run is None:
                                    yield (hit[1], step, wall_time, value)
                                else:
                                    yield (run, hit[1], step, wall_time, value)
                                continue
                except IndexError:
                    pass
                points = self._decode_one(p, end)
                last = len(points) - 1
                for i, point in enumerate(points):
                    tail.offset = end if i == last else end - len(p) - 16
                    yield point if run is None else (run, *point)
            tail.offset = end
