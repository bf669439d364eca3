"""Runs and event files under a logdir, read as TensorBoard reads them, plus files that go
away or cannot be read."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import threading

import pytest
from writers import (
    assert_same_series,
    event,
    file_version,
    gradwatch_series,
    open_writer,
    reference_series,
    simple,
    write_events,
    write_scalars,
)

from gradwatch.events.logdir import FLAGS_DIR, LogdirError, LogdirReader, ProblemLog, read_logdir, scan

WALL = 1_700_000_000.0


def points(tag: str, steps, base: float = 0.0):
    return [(tag, s, base + s / 2, WALL + s) for s in steps]


def hand_file(path, tag: str, steps) -> str:
    return write_events(str(path), [file_version(), *(event([simple(tag, s)], s, WALL + s) for s in steps)])


def test_runs_are_directories_holding_tfevents_files(tmp_path):
    root = str(tmp_path)
    write_scalars("tensorboardX", root, points("root", [1, 2]))
    write_scalars("torch", f"{root}/exp 1/seed=0", points("loss", [1, 2, 3]))
    write_scalars("tensorboard", f"{root}/exp 1/seed=0/eval", points("acc", [5]))
    hand_file(tmp_path / "odd" / "my.tfevents.log", "odd", [7])  # "tfevents" anywhere in the name
    # never read: profiler placeholders, other files, our own flags
    hand_file(tmp_path / "odd" / "events.out.tfevents.9.host.profile-empty", "profile", [1])
    hand_file(tmp_path / "notes" / "events.json", "json", [1])
    write(tmp_path / "notes" / "README", b"not an event file")
    hand_file(tmp_path / FLAGS_DIR / "events.out.tfevents.1.gradwatch", "alerts/flag", [1])

    runs = scan(root, ProblemLog())
    assert sorted(runs) == [".", "exp 1/seed=0", "exp 1/seed=0/eval", "odd"]
    assert [os.path.basename(p) for p in runs["odd"]] == ["my.tfevents.log"]

    got = gradwatch_series(root)
    want = reference_series(root)
    del want[FLAGS_DIR, "alerts/flag"]  # TensorBoard shows our flags; we never read them back
    assert_same_series(got, want)
    assert sorted(got) == [
        (".", "root"),
        ("exp 1/seed=0", "loss"),
        ("exp 1/seed=0/eval", "acc"),
        ("odd", "odd"),
    ]


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_several_event_files_of_a_run_are_read_in_name_order(tmp_path):
    """A restarted writer: every file is read, in name order (as TensorBoard does)."""
    run = tmp_path / "run"
    # written in the opposite order to their names
    files = [
        write_scalars("tensorboardX", str(run), points("loss", [4, 5, 6])),
        write_scalars("torch", str(run), points("loss", [7])),
        write_scalars("torch", str(run), points("loss", [1, 2, 3])),
    ]
    for path, name in zip(files, ["2.b", "3.a", "1.c"]):
        os.rename(path, run / f"events.out.tfevents.{name}")
    got = gradwatch_series(str(tmp_path))
    assert [step for step, _, _ in got["run", "loss"]] == [1, 2, 3, 4, 5, 6, 7]
    assert_same_series(got, reference_series(str(tmp_path)))


def test_logdir_reader_follows_live_writers_and_resumes_from_offsets(tmp_path):
    logdir = str(tmp_path)
    w = open_writer("torch", f"{logdir}/train")
    try:
        for p in points("loss", [1, 2, 3]):
            w.add(*p)
        w.flush()
        reader = LogdirReader(logdir)
        assert list(reader.refresh()) == ["train"]
        assert [p[2] for p in reader.read_all()] == [1, 2, 3]
        assert list(reader.read_all()) == []
        for p in points("loss", [4, 5]):
            w.add(*p)
        w.flush()
        assert [p[2] for p in reader.read_all()] == [4, 5]
        saved = reader.offsets()

        # a new run appears; a restarted reader resumes the old one where it was
        write_scalars("tensorboard", f"{logdir}/eval", points("acc", [1]))
        for p in points("loss", [6]):
            w.add(*p)
        w.flush()
        restarted = LogdirReader(logdir, offsets=saved)
        restarted.refresh()
        got = [(run, tag, step) for run, tag, step, _, _ in restarted.read_all()]
        assert got == [("eval", "acc", 1), ("train", "loss", 6)]
    finally:
        w.close()


def test_file_vanishing_between_scan_and_read(tmp_path, caplog):
    hand_file(tmp_path / "a" / "events.out.tfevents.1.h", "x", [1, 2])
    gone = hand_file(tmp_path / "b" / "events.out.tfevents.1.h", "y", [1, 2])
    problems = ProblemLog()
    reader = LogdirReader(str(tmp_path), problems=problems)
    reader.refresh()
    os.remove(gone)
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        got = list(reader.read_all())
        assert list(reader.read_all()) == []
    assert [(run, tag, step) for run, tag, step, _, _ in got] == [("a", "x", 1), ("a", "x", 2)]
    assert problems.counts == {"vanished_file": 1}
    assert gone not in reader.readers
    assert [r.getMessage() for r in caplog.records] == [
        f"{gone}: vanished file: file disappeared while being read"
    ]


def test_vanished_file_in_a_one_shot_read(tmp_path):
    hand_file(tmp_path / "a" / "events.out.tfevents.1.h", "x", [1])
    gone = hand_file(tmp_path / "b" / "events.out.tfevents.1.h", "y", [1])
    problems = ProblemLog()
    it = read_logdir(str(tmp_path), problems)
    first = next(it)  # scanned both, read a
    os.remove(gone)
    assert [first, *it] == [("a", "x", 1, WALL + 1, 1.0)]
    assert problems.counts == {"vanished_file": 1}


def test_fifo_named_like_an_event_file_does_not_block(tmp_path, caplog):
    hand_file(tmp_path / "a" / "events.out.tfevents.1.h", "x", [1])
    os.makedirs(tmp_path / "b")
    fifo = str(tmp_path / "b" / "events.out.tfevents.1.h")
    os.mkfifo(fifo)
    problems = ProblemLog()
    out: list = []
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        t = threading.Thread(
            target=lambda: out.append(list(read_logdir(str(tmp_path), problems))), daemon=True
        )
        t.start()
        t.join(60)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert [p[:3] for p in out[0]] == [("a", "x", 1)]
    assert problems.counts == {"unreadable_file": 1}
    assert [r.getMessage() for r in caplog.records] == [f"{fifo}: unreadable file: not a regular file"]


def test_missing_logdir_is_a_clear_error(tmp_path):
    with pytest.raises(LogdirError, match="no such directory"):
        scan(str(tmp_path / "nope"), ProblemLog())
    write(tmp_path / "file", b"")
    with pytest.raises(LogdirError, match="not a directory"):
        list(read_logdir(str(tmp_path / "file")))


def test_problem_log_counts_and_logs_each_problem_once(caplog):
    problems = ProblemLog()
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        for _ in range(3):
            problems("corrupt_record", "/x/events", 120, "bad payload checksum")
        problems("corrupt_record", "/x/events", 999, "bad payload checksum")
        problems("unreadable_file", "/y/events", -1, "Permission denied")
    assert problems.counts == {"corrupt_record": 2, "unreadable_file": 1}
    assert problems.total == 3
    assert [r.getMessage() for r in caplog.records] == [
        "/x/events: offset 120: corrupt record: bad payload checksum",
        "/x/events: offset 999: corrupt record: bad payload checksum",
        "/y/events: unreadable file: Permission denied",
    ]


# ---------------------------------------------------------------- permissions

CHILD = """
import json, logging, sys
from gradwatch.events.logdir import LogdirError, LogdirReader, ProblemLog
logging.basicConfig(level=logging.WARNING, format="%(message)s")
problems = ProblemLog()
try:
    reader = LogdirReader(sys.argv[1], problems=problems)
    reader.refresh()
    points = [p[:3] for p in reader.read_all(final=True)]
    print(json.dumps({"points": points, "counts": problems.counts}))
except LogdirError as e:
    print(json.dumps({"error": str(e)}))
"""

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_dac_override() -> None:
    """In the child before exec: root keeps its uid but loses the capabilities that
    let it read any file, so chmod 000 denies it as it denies everyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def read_unprivileged(logdir: str) -> tuple[dict, str]:
    """Read ``logdir`` in a child that file permissions apply to, even when tests run as root."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, logdir],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_unreadable_file_and_directory_are_counted_and_skipped(tmp_path):
    hand_file(tmp_path / "ok" / "events.out.tfevents.1.h", "x", [1])
    locked_file = hand_file(tmp_path / "locked file" / "events.out.tfevents.1.h", "y", [1])
    hand_file(tmp_path / "locked dir" / "events.out.tfevents.1.h", "z", [1])
    os.chmod(locked_file, 0)
    os.chmod(tmp_path / "locked dir", 0)
    try:
        result, log = read_unprivileged(str(tmp_path))
    finally:
        os.chmod(tmp_path / "locked dir", 0o755)
    assert result == {"points": [["ok", "x", 1]], "counts": {"unreadable_directory": 1, "unreadable_file": 1}}
    assert f"{locked_file}: unreadable file: Permission denied" in log.splitlines()
    assert f"{tmp_path / 'locked dir'}: unreadable directory: Permission denied" in log.splitlines()


def test_unreadable_logdir_is_a_clear_error(tmp_path):
    logdir = tmp_path / "logs"
    hand_file(logdir / "events.out.tfevents.1.h", "x", [1])
    os.chmod(logdir, 0)
    try:
        result, _ = read_unprivileged(str(logdir))
    finally:
        os.chmod(logdir, 0o755)
    assert result == {"error": f"{logdir}: permission denied"}


def test_memory_grows_with_series_not_points(tmp_path, monkeypatch):
    """Reading 5x the points of the same series needs no more memory: nothing is kept per point."""
    import tracemalloc

    from gradwatch.events import records

    # Smaller reads, so both files span many (the bench shows the real sizes).
    monkeypatch.setattr(records, "CHUNK_BYTES", 64 << 10)

    def peak_reading(n: int) -> int:
        logdir = tmp_path / str(n)
        write_events(
            str(logdir / "events.out.tfevents.1.h"),
            (event([simple(f"tag{i % 5}", i / 7)], i, WALL + i) for i in range(n)),
        )
        last = {}
        tracemalloc.start()
        try:
            for run, tag, step, wall_time, value in read_logdir(str(logdir)):
                last[run, tag] = (step, wall_time, value)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(last) == 5
        return peak

    peak_reading(2_000)  # first use imports numpy: not part of what is measured
    small, large = peak_reading(10_000), peak_reading(50_000)
    assert large < 1.25 * small, f"peak {large} bytes for 50k points, {small} for 10k"
