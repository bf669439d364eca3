"""Points in columns: one series' points from one batch of records as numpy arrays.

The per-point reader (``EventFileReader.read``) yields a tuple per point; the
one-shot commands and the daemon's catch-up read millions of points, and the
rules evaluate a series' points a batch at a time (engine.observe_batch), so
the reader hands them over in columns instead: for each batch of records, the
points of each tag in file order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradwatch.events.framing import at_every_byte as _strided


class Columns(NamedTuple):
    """The points of one tag in one batch of records, in file order."""

    tag: str
    steps: np.ndarray  # int64
    wall_times: np.ndarray  # float64
    values: np.ndarray  # float64

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.steps)

    def points(self):
        """(step, wall_time, value) per point as Python numbers, for the per-point paths."""
        return zip(self.steps.tolist(), self.wall_times.tolist(), self.values.tolist())


# ---------------------------------------------------------------- bulk decoding of a batch

# Bytes from a record's start that template_hits reads whatever the record's length: the
# step's varint as one 8-byte word 10 bytes in. What it reads past a short record's end (its
# footer, the next record) is never used.
_READ_AHEAD = 18
_CONT_BITS = 0x8080808080808080  # the continuation bit of each of 8 varint bytes
_LOW7 = np.uint64(0x7F)
# Up to this many templates of one summary length are compared one by one; more are
# looked up by a binary search of the sorted heads.
_FEW_HEADS = 8


def _distinct(a: np.ndarray) -> list:
    """The distinct values of ``a`` (integers), ascending, as Python numbers: ``np.unique(a).tolist()``
    without its first call's import of numpy.ma (about 28 ms, paid in each forked reader),
    counted in one pass when they span a few thousand values (summary lengths) instead of sorted."""
    if not len(a):
        return []
    low, high = int(a.min()), int(a.max())
    if high - low < 1 << 12:
        return (np.flatnonzero(np.bincount(a - low, minlength=high - low + 1)) + low).tolist()
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))].tolist()


class TemplateHits(NamedTuple):
    """The records of a batch that a learnt template decodes, in batch order."""

    records: np.ndarray  # int64: index of each such record in the batch
    tags: np.ndarray  # int64: index into ``names`` per record
    names: list[str]
    steps: np.ndarray
    wall_times: np.ndarray
    values: np.ndarray


def _steps(buf: bytes, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The varints at ``at`` as protobuf reads an int64: (values, bytes each took).

    A varint longer than 8 bytes (a step of 2**56 or more, every negative step) is
    reported as taking 0 bytes; the caller decodes those few one at a time.
    """
    words = _strided(buf, "<u8")[at]
    ends = ~words
    ends &= np.uint64(_CONT_BITS)  # the high bit of each byte that ends a varint
    last = np.negative(ends)
    last &= ends  # the first of them, alone: 2**(8j + 7) for a varint of j + 1 bytes
    mask = np.left_shift(last, np.uint64(1))
    mask -= np.uint64(1)  # the varint's own bytes (all 64 bits for 8 bytes, and for none)
    words &= mask
    # last's float64 exponent (bits 52 to 62) is 1023 + 8j + 7: j + 1 = (exponent - 1022) >> 3
    nbytes = ((last.astype(np.float64).view(np.int64) >> 52) - 1022) >> 3
    nbytes[last == 0] = 0  # longer than 8 bytes
    steps = words & _LOW7
    for i in range(1, int(nbytes.max(initial=0))):
        steps |= (words >> np.uint64(i)) & np.uint64(0x7F << (7 * i))
    return steps.view(np.int64), nbytes


def template_hits(
    buf: bytes,
    starts: np.ndarray,
    lens: np.ndarray,
    templates: dict[int, tuple[int, dict]],
    more_templates: dict[int, list[tuple[int, dict]]],
    step_of,
) -> TemplateHits:
    """The records that ScalarDecoder's templates decode, decoded at once.

    The records' payloads are in ``buf`` (the bytes they were framed from), record i's
    ``lens[i]`` bytes from ``starts[i]``: read where they are, never copied.
    A record is decoded by a template exactly when ScalarDecoder.decode's fast path would
    decode it: an Event starting with wall_time (0x09, 8 bytes) and step (0x10, a varint),
    then a summary of a length a template has, holding the template's bytes before
    (``head``) and after (``tail``) the value. ``step_of(i)`` decodes the step of record
    i when it is too long for the vectorised varint: (step, summary start in its payload),
    IndexError when malformed.
    """
    if not templates:  # a new file's first records: nothing learnt yet
        none = np.empty(0, np.int64)
        return TemplateHits(none, none, [], none, np.empty(0), np.empty(0))
    # Only records short enough to hold a template's summary are looked at (histograms
    # and images never are): a summary starts 11 to 20 bytes into its Event. The varint
    # read takes 8 bytes from the 11th: a record too close to the end of ``buf`` for that
    # is left to the one-at-a-time path. Records in file order: the last start is the nearest the end.
    if not len(lens) or (lens.max() <= max(templates) + 20 and starts[-1] <= len(buf) - _READ_AHEAD):
        return _hits(buf, starts, lens, templates, more_templates, step_of)
    looked_at = (lens <= max(templates) + 20) & (starts <= len(buf) - _READ_AHEAD)
    some = np.flatnonzero(looked_at)
    hits = _hits(buf, starts[some], lens[some], templates, more_templates, lambda i: step_of(int(some[i])))
    return hits._replace(records=some[hits.records])


def _hits(
    buf: bytes, starts: np.ndarray, lens: np.ndarray, templates: dict, more_templates: dict, step_of
) -> TemplateHits:
    """template_hits of records none of which is too long for a template."""
    cand, starts, steps, at, summary_lens = _summaries(buf, lens, starts, step_of)
    matched = _Matched(len(cand))
    for length in _distinct(summary_lens):
        entry = templates.get(length)
        if entry is not None:
            matched.add(buf, at, np.flatnonzero(summary_lens == length), length, entry, more_templates)
    tag_of, value_at, double = matched.tag_of, matched.value_at, matched.double
    hit = np.flatnonzero(tag_of >= 0)
    if len(hit) < len(cand):  # else every candidate decoded (a file of scalars): nothing to take
        cand, starts, tag_of, value_at, double, steps = (
            cand[hit],
            starts[hit],
            tag_of[hit],
            value_at[hit],
            double[hit],
            steps[hit],
        )
    with np.errstate(invalid="ignore"):  # a signalling NaN is quieted, as struct's "<f" does
        if not double.any():  # one dtype: no masks
            values = _strided(buf, "<f4")[value_at].astype(np.float64)
        else:
            values = np.empty(len(value_at), np.float64)
            values[~double] = _strided(buf, "<f4")[value_at[~double]]
            values[double] = _strided(buf, "<f8")[value_at[double]]
    wall_times = _strided(buf, "<f8")[starts + 1]
    return TemplateHits(cand, tag_of, matched.names, steps, wall_times, values)


def _summaries(
    buf: bytes, lens: np.ndarray, starts: np.ndarray, step_of
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The records laid out as the fast path reads them (wall_time, then step): their
    indexes, starts in ``buf``, steps, where each one's summary starts in ``buf`` and
    its length."""
    u8 = np.frombuffer(buf, np.uint8)
    laid_out = (lens >= 11) & (u8[starts] == 9) & (u8[starts + 9] == 16)
    if laid_out.all():  # a file of scalars: nothing to take by index
        cand = np.arange(len(lens))
    else:
        cand = np.flatnonzero(laid_out)
        starts, lens = starts[cand], lens[cand]
    steps, nbytes = _steps(buf, starts + 10)
    for i in np.flatnonzero(nbytes == 0).tolist():  # long varints: one at a time
        try:
            steps[i], s = step_of(int(cand[i]))
            nbytes[i] = s - 10
        except IndexError:
            nbytes[i] = lens[i]  # not a varint within the record: no summary left
    nbytes += 10
    return cand, starts, steps, starts + nbytes, lens - nbytes


class _Matched:
    """Per candidate record: its template's tag (an index into ``names``, -1 while none
    matched), where its value is and whether it is a double."""

    def __init__(self, n: int) -> None:
        self.tag_of = np.full(n, -1, np.int64)
        self.value_at = np.zeros(n, np.int64)
        self.double = np.zeros(n, bool)
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, buf: bytes, at: np.ndarray, group: np.ndarray, length: int, entry, more_templates) -> None:
        """Match the records ``group`` (summaries of ``length`` bytes starting at ``at``)
        against the templates of that length, the main entry first."""
        for n, (voff, heads) in enumerate((entry, *more_templates.get(length, ()))):
            if n:  # lengths' groups are disjoint: only this length's earlier entries matched some
                group = group[self.tag_of[group] < 0]
            if not group.size or not heads:
                continue
            for (tail, tag, _), members in _match_heads(buf, at[group], voff, heads):
                size = length - voff - len(tail or b"")
                members = group[members]
                if tail is not None and members.size:
                    tails = _as_integers(buf, at[members] + voff + size, len(tail))
                    members = members[_equal(tails, tail)]
                if tag not in self._index:
                    self._index[tag] = len(self.names)
                    self.names.append(tag)
                self.tag_of[members] = self._index[tag]
                self.value_at[members] = at[members] + voff
                self.double[members] = size == 8


def _match_heads(buf: bytes, at: np.ndarray, voff: int, heads: dict) -> list[tuple[tuple, np.ndarray]]:
    """(template, indexes into ``at``) for each template whose head is the ``voff`` bytes at ``at``."""
    if voff == 0:
        template = heads.get(b"")
        return [] if template is None else [(template, np.arange(len(at)))]
    if len(heads) <= _FEW_HEADS:
        got = _as_integers(buf, at, voff)
        found = ((template, np.flatnonzero(_equal(got, head))) for head, template in heads.items())
        return [(template, members) for template, members in found if members.size]
    got = _strided(buf, f"V{voff}")[at]
    known = sorted(heads)
    sorted_heads = np.frombuffer(b"".join(known), f"V{voff}")
    where = np.minimum(np.searchsorted(sorted_heads, got), len(known) - 1)
    matched = np.flatnonzero(sorted_heads[where] == got)
    where = where[matched]
    return [(heads[known[i]], matched[where == i]) for i in _distinct(where)]


# Groups of at least this many records compare their bytes as integers (_as_integers); smaller
# ones as void items, one numpy call per template instead of two per word: numpy's fixed cost
# per call is more than void items cost there (bench/data/mixed: groups of tens of records).
_INTEGERS_FROM = 256


def _as_integers(buf: bytes, at: np.ndarray, width: int) -> np.ndarray | list[tuple[int, np.ndarray]]:
    """The ``width`` bytes at each of ``at`` (not empty), to compare with _equal: for
    _INTEGERS_FROM positions or more, a few unsigned integers each, as (offset in the
    bytes, one integer per position) for overlapping words that cover them. numpy compares
    void items a byte at a time, and the heads of one summary length differ only late, in
    their tags (bench/data/runs: 40 ns a record and head as void items, a few as integers)."""
    got = _strided(buf, f"V{width}")[at]  # one gather; the words are views of it
    if len(at) < _INTEGERS_FROM:
        return got
    size = 8 if width >= 8 else 4 if width >= 4 else 2 if width >= 2 else 1
    offsets = sorted({*range(0, width - size + 1, size), width - size})
    return [(o, np.ndarray((len(at),), f"<u{size}", buffer=got, offset=o, strides=(width,))) for o in offsets]


def _equal(words: np.ndarray | list[tuple[int, np.ndarray]], expected: bytes) -> np.ndarray:
    """Per position of ``words`` (_as_integers), whether its bytes are ``expected``."""
    if isinstance(words, np.ndarray):  # void items
        return words == np.void(expected)
    (o, first), *rest = words
    size = first.itemsize
    equal = first == int.from_bytes(expected[o : o + size], "little")
    for o, word in rest:
        equal &= word == int.from_bytes(expected[o : o + size], "little")
    return equal


class ColumnsBuilder:
    """The points of a run of batches, decoded in bulk or one record at a time, -> one
    Columns per tag (tags in order of first point, each tag's points in file order)."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        # (record numbers, tag numbers, steps, wall times, values) per bulk-decoded part
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._points: list[tuple[int, int, int, float, float]] = []  # decoded one at a time
        self._first = 0  # record number of the current batch's first record

    def __bool__(self) -> bool:
        return bool(self._points) or any(len(part[0]) for part in self._parts)

    def _tag_number(self, tag: str) -> int:
        number = self._names.get(tag)
        if number is None:
            number = self._names[tag] = len(self._names)
        return number

    def add_hits(self, first: int, hits: TemplateHits, stop: int) -> None:
        """The hits of records ``first + hits.records`` of this batch, those before ``stop``."""
        n = int(np.searchsorted(hits.records, stop - first))
        numbers = np.array([self._tag_number(t) for t in hits.names], np.int64)
        self._parts.append(
            (
                hits.records[:n] + (self._first + first),
                numbers[hits.tags[:n]],
                hits.steps[:n],
                hits.wall_times[:n],
                hits.values[:n],
            )
        )

    def add_points(self, record: int, points: list[tuple[str, int, float, float]]) -> None:
        """The points of record ``record`` of this batch, decoded one at a time."""
        record += self._first
        for tag, step, wall_time, value in points:
            self._points.append((record, self._tag_number(tag), step, wall_time, value))

    def end_batch(self, records: int) -> None:
        self._first += records

    def build(self) -> list[Columns]:
        # file order: the bulk parts are in it (each after the last), so are the points
        # decoded one at a time (a few records where a batch was cut); a record's points
        # come all from one or the other, in order
        columns = [np.concatenate(column) for column in zip(*self._parts)] if self._parts else None
        if self._points:
            records, tags, steps, wall_times, values = zip(*self._points)
            one_at_a_time = (
                np.array(records, np.int64),
                np.array(tags, np.int64),
                np.array(steps, np.int64),
                np.array(wall_times, np.float64),
                np.array(values, np.float64),
            )
            if columns is None:
                columns = one_at_a_time
            else:  # merged in: not sorted again
                where = np.searchsorted(columns[0], one_at_a_time[0])
                columns = [np.insert(bulk, where, few) for bulk, few in zip(columns, one_at_a_time)]
        _, tags, steps, wall_times, values = columns
        names = list(self._names)
        if len(names) == 1:
            return [Columns(names[int(tags[0])], steps, wall_times, values)]
        small = tags.astype(np.int16) if len(names) < 1 << 15 else tags  # a radix sort
        by_tag = np.argsort(small, kind="stable")
        groups = np.split(by_tag, np.flatnonzero(np.diff(small[by_tag])) + 1)
        groups.sort(key=lambda group: group[0])  # tags in order of their first point
        return [
            Columns(names[int(tags[group[0]])], steps[group], wall_times[group], values[group])
            for group in groups
        ]
