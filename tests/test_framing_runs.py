"""Runs of records framed at once: the same records, offsets and problems as the walk
header by header.

A writer logging the same tags every step repeats its record lengths; RecordTail
then predicts where the next records start and checks all their headers at once
(framing.repeating_run). Every file here is read with that fast path and with the
walk alone (``_WALK_BEFORE_RUN`` so large that no run is ever tried), and compared.
"""

from __future__ import annotations

import random
import sys

import pytest
from test_records import GARBAGE, Recorder, flip, read_guarded

from gradwatch.events import records
from gradwatch.events.framing import frame, period, repeating_run
from gradwatch.events.records import CHUNK_BYTES, RecordTail

PATTERN = (30, 41, 41, 52, 7)  # payload lengths a step of five tags might have


def payloads_of(steps: int, pattern=PATTERN, first_step: int = 0) -> list[bytes]:
    """One payload per tag and step, each unique, its length from ``pattern``."""
    out = []
    for step in range(first_step, first_step + steps):
        for tag, length in enumerate(pattern):
            body = f"{step}:{tag}|".encode()
            out.append((body * (length // len(body) + 1))[:length])
    return out


def records_at(payloads: list[bytes]) -> list[int]:
    """Where each record starts in the file of ``payloads``."""
    at, out = 0, []
    for p in payloads:
        out.append(at)
        at += len(p) + 16
    return out


P = payloads_of(6000)  # about 1.3 MiB: runs cross chunk borders
GOOD = b"".join(map(frame, P))
AT = records_at(P)
LONGER = payloads_of(2000, (30, 41, 42, 52, 7), first_step=6000)  # one tag's length grows

# name -> file bytes
FILES = {
    "clean": GOOD,
    "a length grows part-way": GOOD + b"".join(map(frame, LONGER)),
    "tags change order part-way": GOOD + b"".join(map(frame, payloads_of(2000, PATTERN[::-1]))),
    "length CRC flip in a run": flip(GOOD, AT[1003] + 9),
    "length flip in a run": flip(GOOD, AT[2502] + 1),
    "payload flip in a run": flip(GOOD, AT[4001] + 20),
    "footer flip in a run": flip(GOOD, AT[4443] - 1),
    "truncated mid-record": GOOD[: AT[-3] + 30],
    "truncated mid-header": GOOD[: AT[-2] + 5],
    "zero-padded tail": GOOD + b"\0" * 5000,
    "garbage in the middle": GOOD[: AT[3000]] + GARBAGE + GOOD[AT[3000] :],
    "one record missing": GOOD[: AT[1500]] + GOOD[AT[1501] :],
    "a record of another length": GOOD[: AT[2000]] + frame(b"x" * 99) + GOOD[AT[2000] :],
}


def read_with_and_without_runs(path: str, final: bool, monkeypatch, **options):
    """(payloads, offset, problem reports) for a read with runs, then the walk alone."""
    out = []
    for walk in (records._WALK_BEFORE_RUN, sys.maxsize):
        monkeypatch.setattr(records, "_WALK_BEFORE_RUN", walk)
        tail = RecordTail(path, on_problem=Recorder(), **options)
        got = read_guarded(tail, final)
        assert read_guarded(tail, final) == []
        out.append((got, tail.offset, tail.on_problem.reports, tail.records))
    return out


@pytest.mark.parametrize("final", [True, False], ids=["final", "tailing"])
@pytest.mark.parametrize("name", FILES)
def test_runs_frame_what_the_walk_frames(name, final, tmp_path, monkeypatch):
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(FILES[name])
    with_runs, walked = read_with_and_without_runs(str(path), final, monkeypatch)
    assert with_runs == walked
    if name == "clean":
        assert with_runs[0] == P


def test_a_file_appended_in_pieces_frames_the_same(tmp_path, monkeypatch):
    """Cut anywhere (mid-header, mid-payload, at a chunk border), read after each piece."""
    rng = random.Random(5)
    data = FILES["a length grows part-way"]
    tails = {}
    for walk in (records._WALK_BEFORE_RUN, sys.maxsize):
        monkeypatch.setattr(records, "_WALK_BEFORE_RUN", walk)
        path = tmp_path / f"events.out.tfevents.{walk}"
        path.write_bytes(b"")
        tail = RecordTail(str(path), on_problem=Recorder())
        got, cut = [], 0
        rng.seed(5)
        while cut < len(data):
            step = rng.choice([3, 100, 4096, 70_000, CHUNK_BYTES])
            with open(path, "ab") as f:
                f.write(data[cut : cut + step])
            cut += step
            got.append((read_guarded(tail), tail.offset))
        tails[walk] = (got, tail.on_problem.reports)
    with_runs, walked = tails.values()
    assert with_runs == walked
    assert [p for batch, _ in with_runs[0] for p in batch] == P + LONGER


@pytest.mark.parametrize("cut", [-20, -4, -3, -2, -1, 0, 5, 12])
def test_a_file_ending_inside_a_record_frames_the_same(cut, tmp_path, monkeypatch):
    """The file ends inside a record deep in a run (its payload, footer or next header),
    then the rest is appended."""
    end = AT[700] + cut
    path = tmp_path / "events.out.tfevents.1"
    reads = []
    for walk in (records._WALK_BEFORE_RUN, sys.maxsize):
        monkeypatch.setattr(records, "_WALK_BEFORE_RUN", walk)
        path.write_bytes(GOOD[:end])
        tail = RecordTail(str(path), on_problem=Recorder())
        first = (read_guarded(tail), tail.offset)
        path.write_bytes(GOOD)
        reads.append((first, read_guarded(tail), tail.offset, tail.on_problem.reports))
    assert reads[0] == reads[1]
    assert reads[0][0][0] + reads[0][1] == P


@pytest.mark.parametrize("pattern", [(30,), (30, 41), PATTERN], ids=["period1", "period2", "period5"])
def test_a_bad_header_in_the_last_row_of_a_run_is_no_record(pattern, tmp_path, monkeypatch):
    """A run's headers are compared a place in the pattern at a time; the last record at each place
    (a full last row, or a partial one: 301 records) must be compared too. Its length checksum
    flipped, payload and footer intact: not a record, reported once at its offset."""
    payloads = payloads_of(301, pattern)[:301]
    at = records_at(payloads)
    good = b"".join(map(frame, payloads))
    for back in range(1, len(pattern) + 1):
        path = tmp_path / f"events.out.tfevents.{back}"
        path.write_bytes(flip(good, at[-back] + 9))
        with_runs, walked = read_with_and_without_runs(str(path), True, monkeypatch)
        assert with_runs == walked
        got, _, reports, _ = with_runs
        assert [(kind, offset) for kind, _, offset, _ in reports] == [("corrupt_record", at[-back])]
        assert got == payloads[:-back] + payloads[len(payloads) - back + 1 :]


def test_runs_are_taken_on_a_repeating_file():
    """The fast path is taken: every record of a repeating buffer in one call."""
    taken, end = repeating_run(GOOD, AT[5], [len(p) for p in P[5:10]])
    assert taken == P[5:] and end == len(GOOD)
    taken, end = repeating_run(GOOD, AT[5], [len(p) for p in P[6:11]])  # a wrong prediction
    assert taken == [] and end == AT[5]


@pytest.mark.parametrize(
    ("lengths", "want"),
    [([5, 6, 5, 6, 5, 6], 2), ([5, 5, 5, 5], 1), ([1, 2, 3, 1, 2, 4], None), ([3, 4, 3], None), ([], None)],
)
def test_period_of_record_lengths(lengths, want):
    assert period(lengths) == want
