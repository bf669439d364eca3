"""``gradwatch watch s3://...`` and ``gs://...``: the daemon polls a bucket's listing.

Real ``gradwatch watch`` processes against real servers on loopback (moto_server, the GCS
emulator), with a run written by tensorboardX, uploaded, then rewritten whole and longer as
TF's S3 and GCS writers append. What a poll costs is counted in moto's own access log: one
LIST per poll, and no GET at all for an object whose listed size did not change.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
import urllib.request

import pytest
import test_remote
from conftest import require_module
from daemon_support import (
    ROOT,
    Daemon,
    Writer,
    event_files,
    kill_leftovers,
    parse_alert_lines,
    run_gradwatch,
    wait_for,
)
from objectstores import MotoS3
from receivers import free_port
from test_remote import new_bucket
from writers import write_scalars

from gradwatch.daemon.listing import JITTER, LIST_BACKOFF_CAP, ListingPoller
from gradwatch.events.remote import RemoteLogdir

# test_remote's servers (one per module) and its fresh fsspec clients for each test
s3, gcs, fresh_clients = test_remote.s3, test_remote.gcs, test_remote.fresh_clients

TAG = "gradients/actor_cnn_norm"
SPIKE = 2_860_755.0  # the seed's step-400 norm: critical (> 50,000)


@pytest.fixture(autouse=True)
def _no_leftover_daemons():
    yield
    kill_leftovers()


@pytest.fixture
def writer():
    w = Writer()
    yield w
    w.stop()


def watch(
    url: str, workdir, env: dict[str, str], *extra: str, name: str = "daemon", state: str = "state"
) -> Daemon:
    """A daemon on ``url`` logging to ``name.out`` and ``name.err``, its state in ``state``."""
    args = [url, "--state-dir", str(workdir / state), "--listen", "", "--poll-interval", "0.3"]
    return Daemon([*args, *extra], str(workdir), name=name, env=env)


def explosions(d: Daemon) -> list[tuple[str, str, str]]:
    """(verb, run, step) of each gradient_explosion line (the growth rule fires beside it)."""
    return [(a["verb"], a["run"], a["step"]) for a in d.alerts() if a["rule"] == "gradient_explosion"]


def object_gets(server: MotoS3, key: str, since: int) -> list[str]:
    return [r for r in server.requests()[since:] if r == f"GET /{key}"]


def lists_after(server: MotoS3, since: int, n: int, bucket: str) -> list[str]:
    """Every request from ``since`` on, once moto has logged ``n`` more listings of ``bucket``."""

    def enough() -> list[str] | None:
        new = server.requests()[since:]
        return new if sum(r.startswith(f"GET /{bucket}?list-type=2") for r in new) >= n else None

    return wait_for(enough, f"{n} listings of {bucket} in moto's log")


def upload_run(fs, run_dir, key_dir: str) -> str:
    """Upload (or upload again, whole: how TF's S3 writer appends) the run's one event file."""
    (path,) = event_files(str(run_dir))
    key = f"{key_dir}/{os.path.basename(path)}"
    fs.put_file(path, key)
    return key


@pytest.mark.slow
def test_s3_rewrite_alerts_once_unchanged_objects_cost_no_get_and_a_restart_reads_nothing_again(
    s3, tmp_path, writer
):
    fs = s3.filesystem()
    bucket = new_bucket(s3)
    run = tmp_path / "local" / "td3"
    writer.write_many(str(run), [(s, {TAG: 5191.0}) for s in (100, 200)])  # below warning
    key = upload_run(fs, run, f"{bucket}/logs/td3")
    url = f"s3://{bucket}/logs"
    # the endpoint and the keys come from the environment botocore reads: no gradwatch flag
    d = watch(url, tmp_path, s3.env())
    d.wait_ready()

    # polls of an unchanged bucket: a LIST each, not one GET of the object (counted from the
    # first poll's LIST on: moto logs the catch-up's GET before it, whenever its log line arrives)
    lists_after(s3, len(s3.requests()), 2, bucket)
    seen = len(s3.requests())
    polls = lists_after(s3, seen, 3, bucket)
    assert object_gets(s3, key, seen) == []
    assert {r.split("?")[0] for r in polls} == {f"GET /{bucket}"}

    writer.write(str(run), 300, {TAG: SPIKE})
    seen = len(s3.requests())
    upload_run(fs, run, f"{bucket}/logs/td3")
    alert = d.wait_alert(rule="gradient_explosion", run="td3", step="300")
    assert alert["verb"] == "FIRING" and alert["severity"] == "CRITICAL"
    lists_after(s3, len(s3.requests()), 2, bucket)  # polls after the alert: nothing more
    assert explosions(d) == [("FIRING", "td3", "300")]
    fired = [a["rule"] for a in d.alerts()]
    assert len(fired) == len(set(fired))  # every alert once
    # the grown object: one ranged GET (the 4 bytes before the offset and the new record)
    assert len(object_gets(s3, key, seen)) == 1
    assert d.stop() == 0
    assert "gradwatch-test-secret" not in d.err() + d.out()  # credentials never reach a log line
    # no stop-file: one spelled from the URL would be a local s3:/... below the daemon's cwd
    assert "no stop-files or TensorBoard flags are written" in d.err()
    assert not os.path.exists(os.path.join(ROOT, "s3:"))

    # a restart resumes at the saved offset: no alert again, no GET of the bytes already read
    seen = len(s3.requests())
    again = watch(url, tmp_path, s3.env(), name="again")
    again.wait_ready()
    lists_after(s3, seen, 3, bucket)
    assert object_gets(s3, key, seen) == []
    assert again.alerts() == []
    assert again.stop() == 0


@pytest.mark.slow
def test_gcs_rewrite_alerts_once(gcs, tmp_path, writer):
    fs = gcs.filesystem()
    run = tmp_path / "local" / "tpu-job"
    writer.write_many(str(run), [(s, {TAG: 120.0}) for s in range(5)])
    upload_run(fs, run, "logs/exp/tpu-job")
    d = watch("gs://logs/exp", tmp_path, gcs.env())
    d.wait_ready()
    d.wait_err("caught up on gs://logs/exp: 1 runs, 1 files, 5 points")
    writer.write(str(run), 5, {TAG: SPIKE})
    upload_run(fs, run, "logs/exp/tpu-job")  # how TF's GCS writer appends
    d.wait_alert(rule="gradient_explosion", run="tpu-job", step="5")
    writer.write(str(run), 6, {TAG: 130.0})
    upload_run(fs, run, "logs/exp/tpu-job")
    d.wait_alert(rule="gradient_explosion", verb="RESOLVED", run="tpu-job", step="6")
    assert explosions(d) == [("FIRING", "tpu-job", "5"), ("RESOLVED", "tpu-job", "6")]
    assert d.stop() == 0


def _metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.mark.slow
def test_an_outage_is_reported_once_backed_off_and_the_alert_arrives_after_it_exactly_once(tmp_path, writer):
    server = MotoS3()
    port = server.port
    env = server.env()
    fs = server.filesystem()
    fs.mkdir("logs")
    run = tmp_path / "local" / "td3"
    writer.write_many(str(run), [(s, {TAG: 5191.0}) for s in (100, 200)])
    upload_run(fs, run, "logs/td3")
    listen = f"127.0.0.1:{free_port()}"
    d = Daemon(
        ["s3://logs", "--state-dir", str(tmp_path / "state"), "--listen", listen, "--poll-interval", "0.3"],
        str(tmp_path),
        env=env,
    )
    try:
        d.wait_ready()
        server.stop()  # the store goes down mid-watch
        d.wait_err(r"s3://logs: unreadable directory: cannot list: .*; retrying with backoff")
        metrics_port = int(listen.rsplit(":", 1)[1])
        problems = 'gradwatch_read_problems_total{kind="unreadable_directory"}'
        # the local parts go on: /metrics answers and says so while the store is down
        assert wait_for(lambda: _metric(metrics_port, problems) == 1, "the outage in /metrics")

        writer.write(str(run), 300, {TAG: SPIKE})
        server = MotoS3(port)  # back on the same address, the trainer's last upload with it
        fs = server.filesystem()
        fs.mkdir("logs")
        upload_run(fs, run, "logs/td3")
        d.wait_err("s3://logs: listing works again", timeout=LIST_BACKOFF_CAP + 30)
        d.wait_alert(rule="gradient_explosion", run="td3", step="300", timeout=30)
        lists_after(server, 0, 3, "logs")
        assert explosions(d) == [("FIRING", "td3", "300")]
        assert len(re.findall("unreadable directory", d.err())) == 1  # once per outage
        assert _metric(metrics_port, problems) == 1
        assert "Traceback" not in d.err()
        assert d.stop() == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_shards_split_a_bucket_s_runs_between_replicas(s3, tmp_path, writer):
    fs = s3.filesystem()
    bucket = new_bucket(s3)
    runs = [f"sweep/lr-{i}" for i in range(8)]
    for r in runs:
        writer.write(str(tmp_path / "local" / r), 1, {TAG: 10.0})
        upload_run(fs, tmp_path / "local" / r, f"{bucket}/logs/{r}")
    url = f"s3://{bucket}/logs"
    daemons = [
        watch(url, tmp_path, s3.env(), "--shard", f"{i}/2", name=f"shard{i}", state=f"state{i}")
        for i in range(2)
    ]
    for d in daemons:
        d.wait_ready()
    for r in runs:
        writer.write(str(tmp_path / "local" / r), 2, {TAG: SPIKE})
        upload_run(fs, tmp_path / "local" / r, f"{bucket}/logs/{r}")

    def alerted() -> list[list[str]] | None:
        got = [sorted(run for _, run, _ in explosions(d)) for d in daemons]
        return got if sum(map(len, got)) >= len(runs) else None

    got = wait_for(alerted, "every run alerted")
    assert sorted(got[0] + got[1]) == runs  # each run by exactly one replica
    assert got[0] and got[1]
    for d in daemons:
        assert d.stop() == 0


# ------------------------------------------------------------------- the poller, no server


def test_watch_refuses_an_endpoint_for_a_local_logdir_and_a_bad_interval(tmp_path):
    done = run_gradwatch("watch", str(tmp_path), "--endpoint-url", "http://127.0.0.1:9", "--listen", "")
    assert done.returncode == 3
    assert "--endpoint-url / endpoint_url: is for s3:// and gs:// logdirs" in done.stderr
    done = run_gradwatch("watch", "s3://bucket/logs", "--poll-interval", "0", "--listen", "")
    assert done.returncode == 3
    assert "--poll-interval: expected a positive number of seconds" in done.stderr
    assert "Traceback" not in done.stderr


def test_listings_are_jittered_and_failures_back_off_exponentially_to_a_cap():
    require_module("fsspec")
    low = ListingPoller(RemoteLogdir("memory://jitter"), 5.0, uniform=lambda a, b: a)
    high = ListingPoller(RemoteLogdir("memory://jitter"), 5.0, uniform=lambda a, b: b)
    assert (low.next_delay(), high.next_delay()) == (5.0 * (1 - JITTER), 5.0 * (1 + JITTER))
    steps = []
    for failures in range(1, 9):
        high.failures = failures
        steps.append(high.next_delay())
    assert steps == [5.0, 10.0, 20.0, 40.0, LIST_BACKOFF_CAP, LIST_BACKOFF_CAP, LIST_BACKOFF_CAP, 60.0]


@contextlib.contextmanager
def in_process(tmp_path, root: str, **settings):
    """The daemon in a thread on ``memory://ROOT/logs`` (fsspec's in-process store: the same
    follower code as for a bucket); yields (daemon, console, memory filesystem)."""
    require_module("fsspec")
    import fsspec

    from gradwatch.config import Config
    from gradwatch.daemon import Daemon as InProcessDaemon

    fs = fsspec.filesystem("memory")
    fs.mkdir(f"/{root}/logs")
    cfg = Config(
        logdir=f"memory://{root}/logs", state_dir=str(tmp_path / "state"), listen=None, poll_interval=0.05
    )
    loader = settings.pop("config_loader", None)
    for name, value in settings.items():
        setattr(cfg, name, value)
    out = io.StringIO()
    d = InProcessDaemon(cfg, out=out, config_loader=loader)
    thread = threading.Thread(target=d.run, name="test-daemon")
    thread.start()
    try:
        wait_for(d.ready.is_set, "the catch-up")
        yield d, out, fs
    finally:
        d.stop()
        thread.join(20)
        fs.rm(f"/{root}", recursive=True)
    assert not thread.is_alive()


def test_memory_logdir_new_runs_are_read_and_deleted_objects_vanish_as_local_files(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    write_scalars("tensorboardX", str(tmp_path / "a"), [(TAG, 1, 10.0)])
    write_scalars("tensorboardX", str(tmp_path / "b"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
    (a_file,) = event_files(str(tmp_path / "a"))
    (b_file,) = event_files(str(tmp_path / "b"))
    with in_process(tmp_path, "watch-mem", forget_after=0.3) as (d, out, fs):
        fs.put_file(a_file, "/watch-mem/logs/a/" + os.path.basename(a_file))
        fs.pipe_file("/watch-mem/logs/a/checkpoint-1000.pt", b"weights")  # not an event file
        wait_for(lambda: d.follower.runs == 1, "run a")
        # a listing keeps only event files: checkpoints beside them cost no memory
        assert list(d.follower.remote.listed) == ["memory://watch-mem/logs/a/" + os.path.basename(a_file)]
        fs.put_file(b_file, "/watch-mem/logs/b/" + os.path.basename(b_file))  # a new run
        wait_for(lambda: "gradient_explosion run=b " in out.getvalue(), "the new run's alert")
        fs.rm("/watch-mem/logs/a", recursive=True)  # a deleted run: forgotten after forget_after
        wait_for(lambda: "run a disappeared" in caplog.text, "run a forgotten")
        assert d.follower.runs == 1 and "a" not in d.follower.known_runs
    assert [a["run"] for a in parse_alert_lines(out.getvalue()) if a["rule"] == "gradient_explosion"] == ["b"]


def test_a_reload_applies_a_new_poll_interval_and_keeps_the_endpoint(tmp_path, caplog):
    from gradwatch.config import Config

    caplog.set_level(logging.INFO, logger="gradwatch")
    reloaded = Config(
        logdir="memory://reload-mem/logs",
        state_dir=str(tmp_path / "state"),
        listen=None,
        poll_interval=0.2,
        endpoint_url="http://elsewhere:9000",
    )
    with in_process(tmp_path, "reload-mem", config_loader=lambda: reloaded) as (d, _, _):
        first = d.follower.watcher
        assert first.poll == 0.05
        d.request_reload()
        wait_for(lambda: d.follower.watcher.poll == 0.2, "the new interval")
        assert d.follower.watcher is not first and first._stopped.is_set()  # the old poller stopped
        assert d.config.endpoint_url is None
        assert "endpoint_url changed to 'http://elsewhere:9000': takes effect after a restart" in caplog.text


def test_poll_interval_and_endpoint_in_the_config_file(tmp_path, monkeypatch):
    from gradwatch.config import load_config
    from gradwatch.config.yaml import ConfigError

    good = tmp_path / "good.yaml"
    good.write_text("logdir: s3://team/runs\npoll_interval: 2s\nendpoint_url: http://minio:9000\n")
    cfg = load_config(str(good))
    # the URL is not taken relative to the file, and its state dir is the same from any cwd
    assert (cfg.logdir, cfg.poll_interval, cfg.endpoint_url) == ("s3://team/runs", 2.0, "http://minio:9000")
    state = cfg.resolved_state_dir()
    monkeypatch.chdir(tmp_path)
    assert cfg.resolved_state_dir() == state
    bad = tmp_path / "bad.yaml"
    bad.write_text("logdir: s3://team/runs\npoll_interval: 0s\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: poll_interval: expected a positive interval"):
        load_config(str(bad))


def test_a_busy_loop_gets_one_listing_and_no_list_requests_pile_up_meanwhile():
    """While the loop does not take listings (a long catch-up), the lister does not list again:
    memory stays one listing, and the store is not asked every interval for nothing."""
    require_module("fsspec")
    poller = ListingPoller(RemoteLogdir("memory://busy"), 0.01, uniform=lambda a, b: a)
    poller.start()
    try:
        wait_for(poller.untaken.is_set, "a first listing")
        time.sleep(0.3)  # a busy loop: 30 intervals without a wait()
        assert poller.lists == 1 and poller._queue.qsize() == 1
        assert poller.wait(5).poll  # taken: the next interval lists again
        wait_for(lambda: poller.lists == 2, "the listing after the one taken")
    finally:
        poller.stop()


def test_a_failed_get_ends_the_pass_so_an_outage_of_gets_costs_one_get_per_poll(tmp_path, monkeypatch):
    """The listing works but GETs fail (throttling, a permission on the objects): each failed GET
    holds the lister for the SDK's retries, so a pass stops at the first one and the other changed
    objects wait for the next poll, and the loop, which reads only bytes the lister fetched, makes
    none of its own; when GETs work again every object is read, each alert once."""
    from gradwatch.events import remote

    runs = ["r0", "r1", "r2"]
    for run in runs:
        write_scalars("tensorboardX", str(tmp_path / run), [(TAG, 1, 10.0)])
    with in_process(tmp_path, "get-outage") as (d, out, fs):
        for run in runs:
            (path,) = event_files(str(tmp_path / run))
            fs.put_file(path, f"/get-outage/logs/{run}/" + os.path.basename(path))
        wait_for(lambda: d.follower.runs == 3 and d.points == 3, "the three runs")
        fetch = remote.RemoteObject._fetch
        attempts = []

        def failing(self, offset, size):
            attempts.append((self.url, threading.current_thread().name))
            raise remote.RemoteError("SlowDown: please reduce your request rate")

        monkeypatch.setattr(remote.RemoteObject, "_fetch", failing)
        for run in runs:  # every run's object changes (rewritten, or one beside it): three GETs to make
            write_scalars("tensorboardX", str(tmp_path / f"{run}-more"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
            (path,) = event_files(str(tmp_path / f"{run}-more"))
            fs.put_file(path, f"/get-outage/logs/{run}/" + os.path.basename(path))
        wait_for(lambda: len(attempts) >= 3, "three failed GETs")
        # one failed GET per listing at most, never one per changed object, and none on the loop
        assert len(attempts) <= d.follower.watcher.lists, attempts
        assert {thread for _, thread in attempts} == {"gradwatch-lister"}
        problems = d.problems.counts
        assert problems.get("unreadable_file", 0) >= 1, problems  # each failure reported as before
        monkeypatch.setattr(remote.RemoteObject, "_fetch", fetch)
        wait_for(lambda: out.getvalue().count("gradient_explosion") >= 3, "the three alerts after the outage")
    alerts = [a["run"] for a in parse_alert_lines(out.getvalue()) if a["rule"] == "gradient_explosion"]
    assert sorted(alerts) == runs


def test_a_get_that_hangs_does_not_hold_the_loop(tmp_path, monkeypatch):
    """The listing works but the GET of a changed object never answers (a store that accepts and
    says nothing, for the SDK's whole retry cycle): the loop still does its other work, here a
    reload asked for meanwhile, and the object's alert arrives once the GET answers."""
    from gradwatch.config import Config
    from gradwatch.events import remote

    write_scalars("tensorboardX", str(tmp_path / "r0"), [(TAG, 1, 10.0)])
    write_scalars("tensorboardX", str(tmp_path / "r0-more"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
    (first,) = event_files(str(tmp_path / "r0"))
    (more,) = event_files(str(tmp_path / "r0-more"))
    reloaded = Config(
        logdir="memory://get-hangs/logs", state_dir=str(tmp_path / "state"), listen=None, poll_interval=0.07
    )
    with in_process(tmp_path, "get-hangs", config_loader=lambda: reloaded) as (d, out, fs):
        fs.put_file(first, "/get-hangs/logs/r0/events.out.tfevents.1.first")
        wait_for(lambda: d.follower.runs == 1 and d.points == 1, "the first object")
        fetch = remote.RemoteObject._fetch
        hanging, answer = threading.Event(), threading.Event()

        def hangs(self, offset, size):
            hanging.set()
            answer.wait(120)
            return fetch(self, offset, size)

        monkeypatch.setattr(remote.RemoteObject, "_fetch", hangs)
        try:
            fs.put_file(more, "/get-hangs/logs/r0/events.out.tfevents.2.more")
            wait_for(hanging.is_set, "a GET of the new object")
            d.request_reload()
            wait_for(lambda: d.follower.watcher.poll == 0.07, "the reload, while the GET hangs")
            assert "gradient_explosion" not in out.getvalue()  # not read yet: its bytes are not here
        finally:
            answer.set()
        wait_for(lambda: "gradient_explosion run=r0 " in out.getvalue(), "the alert once the GET answers")


def test_an_object_is_read_in_blocks_fetched_ahead_also_past_a_record_longer_than_a_block(
    tmp_path, monkeypatch
):
    """The lister fetches at most a block of each changed object per listing: the loop reads what
    was fetched and the next listing fetches on from there; a record longer than a block (a
    histogram) makes the next block longer instead of waiting for it for ever."""
    import numpy as np
    from tensorboardX import SummaryWriter

    import gradwatch.daemon.bucket as bucket

    with SummaryWriter(str(tmp_path / "r0"), flush_secs=3600) as w:
        w.add_histogram("weights", np.arange(512.0), 0)  # one record of a few kB
        for step in range(1, 41):
            w.add_scalar(TAG, SPIKE if step == 40 else 10.0, step)
    (path,) = event_files(str(tmp_path / "r0"))
    with in_process(tmp_path, "blocks") as (d, out, fs):
        monkeypatch.setattr(bucket, "BLOCK_BYTES", 256)
        gets = spy_on_gets(monkeypatch)
        fs.put_file(path, "/blocks/logs/r0/" + os.path.basename(path))
        wait_for(lambda: "gradient_explosion run=r0 " in out.getvalue(), "the alert at the last step")
        assert d.points == 40
        assert d.follower.remote.blocks == {}  # read: no bytes kept
        # in blocks: several GETs, each on the lister (the loop would read it whole with its own)
        assert len(gets) > 2 and {thread for thread, _, _ in gets} == {"gradwatch-lister"}, gets


def spy_on_gets(monkeypatch) -> list[tuple[str, str, int]]:
    """(thread, object URL, offset) of every GET made from now on."""
    from gradwatch.events import remote

    fetch = remote.RemoteObject._fetch
    gets: list[tuple[str, str, int]] = []

    def spy(self, offset, size):
        gets.append((threading.current_thread().name, self.url, offset))
        return fetch(self, offset, size)

    monkeypatch.setattr(remote.RemoteObject, "_fetch", spy)
    return gets


def test_bytes_fetched_for_an_offset_the_catch_up_has_left_are_not_read(tmp_path, monkeypatch):
    """The lister lists and fetches while the first catch-up reads (its listing waits for the loop):
    a block fetched from where the catch-up then was ends before where it got to. Read as the
    object's end it would look shrunk (read again from the start, every point twice); it is
    dropped, and the next listing fetches from where the reader is."""
    require_module("fsspec")
    import fsspec

    import gradwatch.daemon.bucket as bucket
    from gradwatch.config import Config
    from gradwatch.daemon import Daemon as InProcessDaemon
    from gradwatch.events import remote

    short = [(TAG, step, 10.0) for step in range(1, 31)]
    write_scalars("tensorboardX", str(tmp_path / "short"), short)
    write_scalars("tensorboardX", str(tmp_path / "long"), [*short, (TAG, 31, SPIKE)])
    (short_path,) = event_files(str(tmp_path / "short"))
    (long_path,) = event_files(str(tmp_path / "long"))
    fs = fsspec.filesystem("memory")
    key = "/stale/logs/r0/events.out.tfevents.1.host"
    fs.put_file(short_path, key)
    cfg = Config(
        logdir="memory://stale/logs", state_dir=str(tmp_path / "state"), listen=None, poll_interval=0.05
    )
    d = InProcessDaemon(cfg, out=(out := io.StringIO()))
    monkeypatch.setattr(bucket, "BLOCK_BYTES", 256)
    fetch = remote.RemoteObject._fetch

    def catch_up_waits_for_a_prefetch(self, offset, size):
        if threading.current_thread().name == "test-daemon" and not d.follower.watcher.untaken.is_set():
            fs.put_file(long_path, key)  # written on while the catch-up reads
            wait_for(d.follower.watcher.untaken.is_set, "the lister's listing and its block")
        return fetch(self, offset, size)

    monkeypatch.setattr(remote.RemoteObject, "_fetch", catch_up_waits_for_a_prefetch)
    thread = threading.Thread(target=d.run, name="test-daemon")
    thread.start()
    try:
        wait_for(lambda: "gradient_explosion run=r0 " in out.getvalue(), "the alert at step 31")
        assert d.points == 31  # each point once
        assert "file_shrunk" not in d.problems.counts, d.problems.counts
    finally:
        d.stop()
        thread.join(20)
        fs.rm("/stale", recursive=True)
    assert not thread.is_alive()


def test_the_docs_command_for_a_bucket_runs_as_pasted(s3, tmp_path):
    """docs/remote.md's `gradwatch watch s3://ml-team/runs ...`, word for word, against moto (the
    endpoint and credentials from the environment, as the docs say): it follows the bucket."""
    import shlex
    import subprocess
    import sys

    from snippets import snippet

    argv = shlex.split(snippet("docs/remote.md", "watch-bucket"))
    assert argv[0] == "gradwatch"
    fs = s3.filesystem()
    if not fs.exists("ml-team"):
        fs.mkdir("ml-team")
    env = {**os.environ, **s3.env(), "XDG_STATE_HOME": str(tmp_path)}  # the default state dir
    script = os.path.join(os.path.dirname(sys.executable), "gradwatch")
    proc = subprocess.Popen([script, *argv[1:]], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "caught up on s3://ml-team/runs" in line or len(lines) > 200:
                break
        assert any("caught up on s3://ml-team/runs" in line for line in lines), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
