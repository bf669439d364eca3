"""Logdirs in object stores: s3:// against moto_server, gs:// against the GCS emulator, memory://.

The same event files give the same points and the same problems from a bucket
as from a disk; a listing is one request per poll, not one per run; an object
that a writer replaces whole with a longer one is read on from the saved
offset (one ranged GET of the new bytes), and from the start when the bytes
already read changed. The endpoint and keys come from the environment the
SDKs read (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST): no gradwatch flag.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import require_module
from daemon_support import wait_for
from objectstores import GcsEmulator, MotoS3
from receivers import refused_port
from test_records import DAMAGED, Recorder, payload, read_guarded
from writers import gradwatch_series, write_scalars

from gradwatch import cli
from gradwatch.events import logdir as logdir_module
from gradwatch.events.framing import frame
from gradwatch.events.logdir import ProblemLog, remote_logdir, scan
from gradwatch.events.records import RecordTail

SEED = [5191.0, 130486.0, 826256.0, 2860755.0, 7475702.0]  # the seed's actor CNN grad norms


@pytest.fixture(autouse=True)
def fresh_clients():
    """Each test builds its filesystems from its own environment (fsspec caches instances)."""
    yield
    logdir_module._remote_logdirs.clear()
    for name, fs_class in (("s3fs", "S3FileSystem"), ("gcsfs", "GCSFileSystem")):
        if sys.modules.get(name):
            getattr(sys.modules[name], fs_class).clear_instance_cache()


@pytest.fixture(scope="module")
def s3():
    server = MotoS3()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def gcs():
    server = GcsEmulator("logs")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        yield server
    server.stop()


_buckets = iter(range(1_000_000))


def new_bucket(s3: MotoS3) -> str:
    name = f"bucket-{next(_buckets)}"
    s3.filesystem().mkdir(name)
    return name


def training_logdir(root, writers=("tensorboardX", "tensorboard")) -> str:
    """Runs at the top, nested, and the logdir itself, written by real writers."""
    for i, kind in enumerate(writers):
        points = [("gradients/actor_cnn_norm", 100 * (s + 1), v) for s, v in enumerate(SEED)]
        write_scalars(kind, str(root / f"{kind}-run"), points)
        write_scalars(kind, str(root / "sweep" / f"lr-{i}"), [("loss", s, 1.0 / (s + 1)) for s in range(20)])
    write_scalars(writers[0], str(root), [("top", 1, 2.5)])
    os.makedirs(root / "_gradwatch" / "x", exist_ok=True)  # gradwatch's own flags: never read back
    shutil.copy(next((root / "sweep" / "lr-0").iterdir()), root / "_gradwatch" / "x")
    return str(root)


def upload(fs, local: str, url_path: str) -> None:
    fs.put(local.rstrip("/") + "/", url_path, recursive=True)


# ------------------------------------------------------------------------------------- s3


@pytest.mark.slow
@pytest.mark.parametrize("writers", [("tensorboardX", "tensorboard"), ("torch", "torch_tensor")])
def test_real_writers_files_in_s3_give_the_same_points_as_on_disk(s3, tmp_path, writers):
    if writers[0] == "torch":
        require_module("torch")
    local = training_logdir(tmp_path / "logs", writers)
    bucket = new_bucket(s3)
    upload(s3.filesystem(), local, f"{bucket}/team/logs")
    url = f"s3://{bucket}/team/logs"
    problems = ProblemLog()
    got = gradwatch_series(url, problems)
    assert got == gradwatch_series(local)
    assert {run for run, _ in got} == {".", *(f"{k}-run" for k in writers), "sweep/lr-0", "sweep/lr-1"}
    assert problems.counts == {}


# store -> (where the damaged files go, the logdir URL of that place)
DAMAGED_PLACES = {"s3": ("damaged", "s3://damaged"), "gcs": ("logs/damaged", "gs://logs/damaged")}


@pytest.fixture(scope="module", params=sorted(DAMAGED_PLACES))
def damaged_bucket(request):
    """Every damaged file of the local reader's conformance cases, one object each, in each store."""
    fs = request.getfixturevalue(request.param).filesystem()
    prefix, url = DAMAGED_PLACES[request.param]
    if request.param == "s3":
        fs.mkdir(prefix)  # the emulator's bucket "logs" exists already
    for i, (data, *_) in enumerate(DAMAGED.values()):
        fs.pipe_file(f"{prefix}/case-{i}/events.out.tfevents.1", data)
    return url


@pytest.mark.slow
@pytest.mark.parametrize("final", [True, False], ids=["final", "tailing"])
@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_files_read_from_a_bucket_like_from_disk(damaged_bucket, name, final, tmp_path):
    data, read_back, when_final, when_tailing = DAMAGED[name]
    i = list(DAMAGED).index(name)
    url = f"{damaged_bucket}/case-{i}/events.out.tfevents.1"
    remote = remote_logdir(damaged_bucket)
    remote.list_event_files()
    problems = Recorder()
    tail = RecordTail(url, on_problem=problems, opener=remote.open)
    assert read_guarded(tail, final) == [payload(i) for i in read_back]
    assert read_guarded(tail, final) == []  # a second poll reports nothing new
    assert problems.kinds == (when_final if final else when_tailing)
    assert {path for _, path, _, _ in problems.reports} <= {url}  # problems name the object
    # and exactly what the local reader makes of the same bytes
    local = tmp_path / "events.out.tfevents.1"
    local.write_bytes(data)
    local_tail = RecordTail(str(local), on_problem=Recorder())
    read_guarded(local_tail, final)
    assert tail.offset == local_tail.offset
    assert tail.problems == local_tail.problems


def test_object_replaced_whole_is_read_on_from_the_offset_or_again_from_the_start(s3):
    """TF's S3 and GCS writers append by rewriting the whole object on each flush."""
    fs = s3.filesystem()
    bucket = new_bucket(s3)
    key = f"{bucket}/run/events.out.tfevents.1"
    first = b"".join(frame(payload(i)) for i in range(4))
    fs.pipe_file(key, first)
    remote = remote_logdir(f"s3://{bucket}")
    remote.list_event_files()
    problems = Recorder()
    tail = RecordTail(f"s3://{key}", on_problem=problems, opener=remote.open)
    assert list(tail.read()) == [payload(i) for i in range(4)]

    # rewritten with the same bytes and two more records: one GET, from 4 bytes before the
    # offset (the bytes checked for a rewrite) to the end, and only the new records
    longer = first + frame(payload(4)) + frame(payload(5))
    fs.pipe_file(key, longer)
    remote.list_event_files()
    before = (remote.requests.gets, remote.requests.bytes_fetched)
    assert list(tail.read()) == [payload(4), payload(5)]
    assert remote.requests.gets - before[0] == 1
    assert remote.requests.bytes_fetched - before[1] == len(longer) - len(first) + 4
    assert problems.kinds == []

    # replaced by another object, longer, whose bytes differ: read again from the start
    other = b"".join(frame(payload(i, 90)) for i in range(7))
    fs.pipe_file(key, other)
    remote.list_event_files()
    assert list(tail.read()) == [payload(i, 90) for i in range(7)]
    assert problems.kinds == [("file_replaced", len(longer))]

    # replaced by a shorter one
    fs.pipe_file(key, frame(b"new run"))
    remote.list_event_files()
    assert list(tail.read()) == [b"new run"]
    assert problems.kinds[1:] == [("file_shrunk", len(other))]


def test_a_poll_lists_once_whatever_the_number_of_runs(s3, tmp_path):
    bucket = new_bucket(s3)
    for i in range(40):
        write_scalars("tensorboardX", str(tmp_path / f"run-{i:02d}"), [("loss", 0, float(i))])
    upload(s3.filesystem(), str(tmp_path), f"{bucket}/logs")
    url = f"s3://{bucket}/logs"
    remote = remote_logdir(url)
    seen = len(s3.wait_for_log(1))
    assert len(scan(url, ProblemLog())) == 40
    listing = s3.wait_for_log(seen + 1)[seen:]
    assert listing == [f"GET /{bucket}?list-type=2&prefix=logs/&delimiter=&encoding-type=url"]
    # a second poll lists again (the listing cache is dropped), still one request
    scan(url, ProblemLog())
    assert len(s3.wait_for_log(seen + 2)[seen:]) == 2
    # reading every run: one GET per object (the size came with the listing: no HEAD)
    seen = len(s3.wait_for_log(seen + 2))
    points = list(logdir_module.read_logdir(url))
    assert len(points) == 40
    reads = s3.wait_for_log(seen + 41)[seen:]
    assert sum(r.startswith(f"GET /{bucket}?list-type=2") for r in reads) == 1
    assert sorted(r for r in reads if "list-type" not in r) == sorted(
        f"GET /{bucket}/logs/run-{i:02d}/{os.listdir(tmp_path / f'run-{i:02d}')[0]}" for i in range(40)
    )
    assert remote.requests.gets >= 40


@pytest.mark.slow
def test_check_and_export_of_an_s3_logdir_match_the_local_ones(s3, tmp_path, capsys):
    local = training_logdir(tmp_path / "logs")
    bucket = new_bucket(s3)
    upload(s3.filesystem(), local, f"{bucket}/logs")
    url = f"s3://{bucket}/logs"

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("check", url, "--json", "-v")
    local_code, local_out, _ = run("check", local, "--json")
    assert code == local_code == 2  # the seed's norms: critical
    doc, local_doc = json.loads(out), json.loads(local_out)
    assert doc.pop("logdir") == url
    local_doc.pop("logdir")
    assert doc == local_doc
    assert "gradwatch-test-secret" not in out + err  # the SDK's credentials never reach a log line
    assert run("export", url, "--format", "csv")[1] == run("export", local, "--format", "csv")[1]


@pytest.mark.slow
def test_unreachable_store_is_unknown_with_the_reason_and_no_traceback(s3, monkeypatch, capsys):
    with refused_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        assert cli.main(["check", "s3://bucket/logs"]) == 3
    out, err = capsys.readouterr()
    assert out.startswith("UNKNOWN")
    assert "s3://bucket/logs: cannot list: EndpointConnectionError: Could not connect" in out + err
    assert "Traceback" not in out + err


def test_endpoint_url_flag_reaches_a_store_the_environment_does_not_name(s3, monkeypatch, capsys):
    bucket = new_bucket(s3)
    s3.filesystem().pipe_file(f"{bucket}/run/events.out.tfevents.1", frame(payload(0)))
    with refused_port() as port:  # the environment names a dead endpoint; the flag wins
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        assert cli.main(["export", f"s3://{bucket}", "--endpoint-url", s3.endpoint]) == 3  # no scalars
    assert "no scalar points in s3://" in capsys.readouterr().err
    # listed and read from moto (whose access log line may land a moment after the response)
    wait_for(lambda: f"GET /{bucket}/run/events.out.tfevents.1" in s3.requests(), "moto's log of the GET")
    assert cli.main(["export", "logs/", "--endpoint-url", s3.endpoint]) == 3
    assert "--endpoint-url is for s3:// and gs:// logdirs" in capsys.readouterr().err


def test_a_password_in_a_quoted_endpoint_url_never_reaches_the_message():
    # botocore refuses such URLs before it connects, but any client may quote its URL in an error
    from gradwatch.events.remote import _reason

    e = ConnectionError('Could not connect to "http://minio-user:minio-password@10.0.0.1:9000/b?x"\nmore')
    assert _reason(e) == 'ConnectionError: Could not connect to "http://10.0.0.1:9000/b?x"'


def test_missing_bucket_is_a_clear_error(s3, capsys):
    assert cli.main(["export", "s3://no-such-bucket/logs"]) == 3
    err = capsys.readouterr().err
    assert "s3://no-such-bucket/logs: cannot list: FileNotFoundError" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------ gcs


@pytest.mark.slow
def test_gcs_logdir_gives_the_same_points_and_reads_rewritten_objects_on(gcs, tmp_path):
    local = training_logdir(tmp_path / "logs")
    fs = gcs.filesystem()
    upload(fs, local, "logs/exp")
    problems = ProblemLog()
    assert gradwatch_series("gs://logs/exp", problems) == gradwatch_series(local)
    assert problems.counts == {}

    key = "logs/tail/run/events.out.tfevents.1"
    first = b"".join(frame(payload(i)) for i in range(3))
    fs.pipe_file(key, first)
    remote = remote_logdir("gs://logs/tail")
    assert list(scan("gs://logs/tail", ProblemLog())) == ["run"]
    tail = RecordTail(f"gs://{key}", on_problem=problems, opener=remote.open)
    assert list(tail.read()) == [payload(i) for i in range(3)]
    fs.pipe_file(key, first + frame(payload(3)))  # how TF's GCS writer appends
    remote.list_event_files()
    fetched = remote.requests.bytes_fetched
    assert list(tail.read()) == [payload(3)]
    assert remote.requests.bytes_fetched - fetched == len(frame(payload(3))) + 4
    assert problems.counts == {}


# --------------------------------------------------------------------------------- memory


def test_memory_logdir_exports_like_the_local_one(tmp_path, capsys):
    require_module("fsspec")
    import fsspec

    local = training_logdir(tmp_path / "logs")
    fs = fsspec.filesystem("memory")
    upload(fs, local, "/exp/logs")
    try:
        assert cli.main(["export", "memory://exp/logs"]) == 0
        remote_out = capsys.readouterr().out
        assert cli.main(["export", local]) == 0
        assert remote_out == capsys.readouterr().out
        tag = ["--tag", "gradients/actor_cnn_norm"]
        assert cli.main(["report", "memory://exp/logs", *tag, "--json"]) == 0
        remote_report = json.loads(capsys.readouterr().out)
        assert cli.main(["report", local, *tag, "--json"]) == 0
        assert remote_report == json.loads(capsys.readouterr().out)
    finally:
        fs.rm("/exp", recursive=True)


def test_a_missing_client_package_says_which_extra_to_install():
    require_module("fsspec")
    # a fresh process: fsspec keeps the classes it imported; None in sys.modules is what
    # `import s3fs` meets when s3fs is not installed
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from gradwatch import cli; sys.exit(cli.main(['check', 's3://bucket/logs']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "s3://bucket/logs: pip install 'gradwatch[s3]'" in done.stderr
    assert done.stdout.startswith("UNKNOWN")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_check_reads_a_remote_logdir_in_one_process(s3, tmp_path, monkeypatch, capsys):
    from gradwatch.events import parallel

    local = training_logdir(tmp_path / "logs")
    bucket = new_bucket(s3)
    upload(s3.filesystem(), local, f"{bucket}/logs")
    # a logdir that would be split over two forked readers if it were local
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    monkeypatch.setattr(parallel, "file_size", lambda path: 1)
    assert cli.main(["check", f"s3://{bucket}/logs", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"] and doc["problems"] == {}


@pytest.mark.slow
def test_memory_reading_a_large_object_is_bounded_by_the_block_not_the_object(s3):
    import tracemalloc

    from gradwatch.events import remote as remote_module

    fs = s3.filesystem()
    bucket = new_bucket(s3)
    record = frame(b"x" * (1 << 20))
    fs.pipe_file(f"{bucket}/run/events.out.tfevents.1", record * 48)  # 48 MiB and a bit
    remote = remote_logdir(f"s3://{bucket}")
    remote.list_event_files()
    tail = RecordTail(f"s3://{bucket}/run/events.out.tfevents.1", opener=remote.open)
    tracemalloc.start()
    try:
        n = sum(1 for _ in tail.read(final=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 48 and tail.problems == {}
    size = len(record) * 48
    assert remote.requests.bytes_fetched == size  # no byte twice
    assert remote.requests.gets == -(-size // remote_module.BLOCK_BYTES)  # 8 MiB a GET
    # measured: 28 MiB (the block, the client's buffers, the slices); the whole object would be 48+
    assert peak < 5 * remote_module.BLOCK_BYTES, f"peak {peak >> 20} MiB for a 48 MiB object"
