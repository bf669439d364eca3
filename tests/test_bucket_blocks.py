"""A bucket's objects read from the blocks the lister fetches ahead, when they shrink, are rewritten,
or compete for the bytes of one listing (review findings after the GETs moved off the loop).

The daemon runs in a thread on fsspec's ``memory://`` store (the same follower code as for a
bucket); each test checks which thread made every GET: after the first catch-up, only the lister.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from daemon_support import event_files, wait_for
from test_remote_watch import SPIKE, TAG, in_process, spy_on_gets
from writers import write_scalars


def only_the_lister(gets: list[tuple[str, str, int]]) -> bool:
    return {thread for thread, _, _ in gets} <= {"gradwatch-lister"}


def replaced(tmp_path, monkeypatch, root: str, first: list, then: list, problem: str) -> list:
    """A daemon on ``memory://root`` reads an object of the points ``first``, then the object is
    replaced by one of ``then`` ending in a spike: its alert arrives, ``problem`` is counted once;
    every GET made after the first version was read."""
    for name, points in (("first", first), ("then", then)):
        write_scalars("tensorboardX", str(tmp_path / name), points)
    (first_path,) = event_files(str(tmp_path / "first"))
    (then_path,) = event_files(str(tmp_path / "then"))
    key = f"/{root}/logs/r0/events.out.tfevents.1.host"
    with in_process(tmp_path, root) as (d, out, fs):
        fs.put_file(first_path, key)
        wait_for(lambda: d.points == len(first), "the first version")
        gets = spy_on_gets(monkeypatch)
        fs.put_file(then_path, key)
        wait_for(lambda: "gradient_explosion run=r0 " in out.getvalue(), "the replaced object's alert")
        assert d.points == len(first) + len(then)
        assert d.problems.counts.get(problem) == 1, d.problems.counts
    return gets


def test_an_object_replaced_by_a_shorter_one_is_read_again_from_the_start(tmp_path, monkeypatch):
    """An object of 30 points replaced by a shorter one holding a spike (a run restarted under the
    same key): its size is below the reader's offset, so RecordTail must see it shrunk and read it
    from 0. Found in review: the lister fetched only from the old offset, nothing was ever read."""
    first = [(TAG, s, 10.0) for s in range(1, 31)]
    gets = replaced(tmp_path, monkeypatch, "shrink", first, [(TAG, 1, 10.0), (TAG, 2, SPIKE)], "file_shrunk")
    assert only_the_lister(gets), gets


def test_an_object_replaced_by_a_shorter_one_longer_than_a_block_is_read_again(tmp_path, monkeypatch):
    """The same when the shorter object holds more than a block (scaled down to 256 B): the
    first block from 0 is read as the object shrunk, the rest comes with later blocks."""
    import gradwatch.daemon.bucket as bucket

    monkeypatch.setattr(bucket, "BLOCK_BYTES", 256)
    first = [(TAG, s, 10.0) for s in range(1, 61)]
    then = [*[(TAG, s, 10.0) for s in range(1, 30)], (TAG, 30, SPIKE)]
    gets = replaced(tmp_path, monkeypatch, "shrink-long", first, then, "file_shrunk")
    assert only_the_lister(gets), gets


def test_an_object_rewritten_at_the_same_size_is_read_again_with_no_get_on_the_loop(tmp_path, monkeypatch):
    """Rewritten with other bytes at the same size: RecordTail finds the bytes before its offset
    changed and starts again at 0, before the block fetched ahead. Found in review: the loop then
    made the GET itself; now the next listing fetches from 0 on the lister."""
    same = [(TAG, s, 10.0) for s in range(1, 30)]
    gets = replaced(
        tmp_path,
        monkeypatch,
        "rewritten",
        [*same, (TAG, 30, 10.0)],
        [*same, (TAG, 30, SPIKE)],
        "file_replaced",
    )
    assert only_the_lister(gets), gets
    assert [offset for _, _, offset in gets][-1] == 0  # the last block fetched from the start


def test_runs_writing_more_than_a_listing_fetches_do_not_starve_the_runs_listed_after_them(
    tmp_path, monkeypatch
):
    """Four runs write more than a block per poll (images, in real life) and the bytes one listing
    may fetch hold four blocks (scaled down: 256 B and 1 KiB for 8 MiB and 32 MiB). Found in review:
    the lister fetched in listing order, so the budget went to them every poll and the run listed
    after them, which diverges, was never read. Least recently fetched go first now."""
    import gradwatch.daemon.bucket as bucket

    write_scalars("tensorboardX", str(tmp_path / "r0"), [(TAG, s, 10.0) for s in range(1, 6001)])  # ~300 kB
    write_scalars("tensorboardX", str(tmp_path / "r4"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
    data = {run: Path(event_files(str(tmp_path / run))[0]).read_bytes() for run in ("r0", "r4")}
    with in_process(tmp_path, "starve") as (_, out, fs):
        monkeypatch.setattr(bucket, "BLOCK_BYTES", 256)
        monkeypatch.setattr(bucket, "PREFETCH_BYTES", 1024)
        gets = spy_on_gets(monkeypatch)
        stop = threading.Event()

        # 512 B per run every 0.05 s, more than a block per poll, for 30 s (the alert's wait)
        def busy_runs() -> None:
            size = 100
            while not stop.wait(0.05) and size < len(data["r0"]):
                size += 512
                for run in ("r0", "r1", "r2", "r3"):
                    fs.pipe_file(f"/starve/logs/{run}/events.out.tfevents.1.h", data["r0"][:size])

        writing = threading.Thread(target=busy_runs, daemon=True)
        writing.start()
        try:
            wait_for(lambda: len({url for _, url, _ in gets}) == 4, "the busy runs fetched")
            fs.pipe_file("/starve/logs/r4/events.out.tfevents.1.h", data["r4"])  # the run that diverges
            wait_for(
                lambda: "gradient_explosion run=r4 " in out.getvalue(), "the alert of the run listed last"
            )
        finally:
            stop.set()
            writing.join()
        assert only_the_lister(gets), gets


def forbid(monkeypatch, run: str | None, error: Exception) -> list[tuple[int, str]]:
    """GETs of the objects of the runs whose names start with ``run`` (every object's for None)
    fail with the SDK's ``error``, translated as every SDK error is (RemoteObject._call); (listing,
    run) of each GET of every object."""
    from gradwatch.events import remote

    fetch = remote.RemoteObject._fetch
    attempts: list[tuple[int, str]] = []

    def sdk_fails():
        raise error

    def forbidden(self, offset, size):
        name = self.url.rsplit("/", 2)[1]
        attempts.append((self.requests.lists, name))
        if run is None or name.startswith(run):
            self._call(sdk_fails)
        return fetch(self, offset, size)

    monkeypatch.setattr(remote.RemoteObject, "_fetch", forbidden)
    return attempts


def one_forbidden_object(tmp_path, monkeypatch, root: str, error: Exception) -> list[tuple[int, str]]:
    """r0's and r1's objects change, r0's GET always fails with ``error``: r1's alert arrives, and
    r0's failure is reported; (listing, run) of each GET."""
    for run in ("r0", "r1"):
        write_scalars("tensorboardX", str(tmp_path / run), [(TAG, 1, 10.0)])
        write_scalars("tensorboardX", str(tmp_path / f"{run}-more"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
    with in_process(tmp_path, root) as (d, out, fs):
        for run in ("r0", "r1"):
            fs.put_file(event_files(str(tmp_path / run))[0], f"/{root}/logs/{run}/events.out.tfevents.1.h")
        wait_for(lambda: d.points == 2, "both runs")
        attempts = forbid(monkeypatch, "r0", error)
        for run in ("r0", "r1"):
            more = event_files(str(tmp_path / f"{run}-more"))[0]
            fs.put_file(more, f"/{root}/logs/{run}/events.out.tfevents.1.h")
        wait_for(lambda: "gradient_explosion run=r1 " in out.getvalue(), "the alert of the run listed after")
        assert d.problems.counts.get("unreadable_file", 0) >= 1, d.problems.counts
    assert "gradient_explosion run=r0 " not in out.getvalue()
    return attempts


def test_an_object_whose_get_always_fails_does_not_starve_the_objects_listed_after_it(tmp_path, monkeypatch):
    """Found in review: the first failed GET ended every pass, always in listing order, so one
    object the daemon may not read (a KMS key on that object only) muted every run after it. The
    object that failed now goes last in the next pass (any failure still ends its pass)."""
    attempts = one_forbidden_object(tmp_path, monkeypatch, "failing", OSError("timed out"))
    first = attempts[0]
    assert first[1] == "r0", attempts  # listing order at first, and the pass ended there
    assert (first[0], "r1") not in attempts, attempts


def _gcsfs_forbidden() -> OSError:
    """What gcsfs raises for a GET answered 403: its own response check, given that answer."""
    # (conftest.py turns off gcsfs's gRPC bucket probe before this first import of gcsfs)
    from gcsfs.retry import validate_response  # installed by .ci/run with the object-store tests

    try:
        validate_response(403, b'{"error": {"message": "denied by policy"}}', "logs/r0/o")
    except OSError as e:
        return e
    raise AssertionError("gcsfs accepted a 403")


@pytest.mark.parametrize("store", ["s3fs", "gcsfs"])
def test_a_get_refused_for_its_object_alone_does_not_end_the_pass(tmp_path, monkeypatch, store):
    """Access denied (s3fs raises PermissionError for a 403, gcsfs an OSError "Forbidden: ...") is
    that object's failure, not the store's: the other objects are fetched in the same pass."""
    error = PermissionError("AccessDenied") if store == "s3fs" else _gcsfs_forbidden()
    attempts = one_forbidden_object(tmp_path, monkeypatch, f"refused-{store}", error)
    assert attempts[:2] == [(attempts[0][0], "r0"), (attempts[0][0], "r1")], attempts


def test_gets_refused_for_every_object_cost_a_few_failed_gets_per_poll(tmp_path, monkeypatch):
    """A bucket policy that denies every GET while the listing works: the pass ends after
    REFUSED_PER_PASS refused GETs, not one per changed object per poll."""
    from gradwatch.events.remote import REFUSED_PER_PASS

    runs = [f"r{i}" for i in range(2 * REFUSED_PER_PASS)]
    for run in runs:
        write_scalars("tensorboardX", str(tmp_path / run), [(TAG, 1, 10.0)])
    with in_process(tmp_path, "denied") as (d, _, fs):
        attempts = forbid(monkeypatch, None, PermissionError("AccessDenied"))
        for run in runs:
            fs.put_file(event_files(str(tmp_path / run))[0], f"/denied/logs/{run}/events.out.tfevents.1.h")
        wait_for(lambda: len({run for _, run in attempts}) == len(runs), "every object tried")
        per_listing = [n for n, _ in attempts]
        assert max(per_listing.count(n) for n in per_listing) == REFUSED_PER_PASS, attempts
        assert d.points == 0


def _record_ends(data: bytes) -> list[int]:
    """Where each TFRecord of ``data`` ends (length, its CRC, the payload, its CRC)."""
    ends, at = [], 0
    while at < len(data):
        at += 16 + int.from_bytes(data[at : at + 8], "little")
        ends.append(at)
    return ends


def test_many_objects_refused_for_good_do_not_starve_a_run_that_changes(tmp_path, monkeypatch):
    """Found in review: only the first failed GET of a pass went last, so with more objects refused
    for good than REFUSED_PER_PASS, refused ones tried longer ago than a run's last read filled
    every pass, and that run was fetched listings late when it grew (its alert with it). Every
    object whose last GET failed now goes after every other object."""
    from gradwatch.events.remote import REFUSED_PER_PASS

    refused = [f"d{i:02}" for i in range(3 * REFUSED_PER_PASS)]
    write_scalars("tensorboardX", str(tmp_path / "d"), [(TAG, 1, 10.0)])
    write_scalars("tensorboardX", str(tmp_path / "zz"), [(TAG, 1, 10.0), (TAG, 2, 10.0), (TAG, 3, SPIKE)])
    data = Path(event_files(str(tmp_path / "zz"))[0]).read_bytes()
    ends = _record_ends(data)  # the file version, then one record a point
    logs = "/many-refused/logs"
    with in_process(tmp_path, "many-refused") as (d, out, fs):
        fs.pipe_file(f"{logs}/zz/events.out.tfevents.1.h", data[: ends[1]])
        wait_for(lambda: d.points == 1, "the run read once")
        attempts = forbid(monkeypatch, "d", PermissionError("AccessDenied"))
        for run in refused:
            fs.put_file(event_files(str(tmp_path / "d"))[0], f"{logs}/{run}/events.out.tfevents.1.h")
        wait_for(lambda: {run for _, run in attempts} >= set(refused), "every refused object tried")
        # the run grows: read again, so fetched more recently than the refused objects were tried
        fs.pipe_file(f"{logs}/zz/events.out.tfevents.1.h", data[: ends[2]])
        wait_for(lambda: d.points == 2, "the run read again")
        put_at = d.follower.watcher.lists
        fs.pipe_file(f"{logs}/zz/events.out.tfevents.1.h", data)
        wait_for(lambda: "gradient_explosion run=zz " in out.getvalue(), "the alert of the run that grew")
        got_at = d.follower.watcher.lists
    assert got_at <= put_at + 2, (put_at, got_at, attempts)
