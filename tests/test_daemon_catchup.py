"""The daemon's first catch-up on two cores (gradwatch/daemon/catchup.py) is the one-process catch-up.

A child decodes the later files while the daemon reads the first ones; the daemon then takes the
child's batches in file order. Whatever the split, the alerts, the points, the offsets, the
problems and every reader's state for the next live read must be those of one process reading
the files in turn, on real tensorboardX files, a corrupt record and a cut tail included.
"""

from __future__ import annotations

import io
import logging
import os

import pytest
from daemon_support import parse_alert_lines
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.util import tensor_util

import gradwatch.daemon.catchup as catchup
from gradwatch.config import Config
from gradwatch.daemon import Daemon
from gradwatch.events.framing import frame

TAG = "gradients/actor_cnn_norm"
_Decoded = catchup.Decoded


def _logdir(root, writer) -> None:
    for r in range(6):
        run = root / f"run{r}"
        diverges = r % 2 == 1  # from step 300 on: firing at the end of the catch-up
        points = [
            (s, {TAG: 20000.0 if diverges and s >= 300 else 10.0 + s, "loss": 1 / (s + 1)})
            for s in range(400)
        ]
        writer.write_many(run, points)
        writer.close(run)
    # damage: a flipped byte inside run2's file (a corrupt record), and run4's last record cut short
    run2 = next((root / "run2").iterdir())
    data = bytearray(run2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    run2.write_bytes(bytes(data))
    with open(next((root / "run5").iterdir()), "ab") as f:
        f.write(b"\x17" * 100)  # garbage after the last record: a resync that lasts to the end
    # and a last run with no point at all: a file_version record and garbage
    (root / "run9").mkdir()
    empty = event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString()
    (root / "run9" / "events.out.tfevents.1.x").write_bytes(frame(empty) + b"\x17" * 100)
    # run8: TF2 tensors of another plugin, which only the tag's first record says
    (root / "run8").mkdir()
    with open(root / "run8" / "events.out.tfevents.1.y", "wb") as f:
        for step in range(50):
            value = summary_pb2.Summary.Value(tag="pr", tensor=tensor_util.make_tensor_proto(1e9))
            if step == 0:
                value.metadata.plugin_data.plugin_name = "pr_curves"
            f.write(
                frame(
                    event_pb2.Event(
                        step=step, wall_time=1.0, summary=summary_pb2.Summary(value=[value])
                    ).SerializeToString()
                )
            )
    spike = event_pb2.Event(step=400, wall_time=1.0, summary=summary_pb2.Summary(value=[scalar(TAG, 1e9)]))
    with open(next((root / "run4").iterdir()), "ab") as f:
        f.write(frame(spike.SerializeToString())[:-10])


def scalar(tag: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _catch_up(tmp_path, name: str, monkeypatch, parallel: bool):
    started = []

    class Counted(catchup.ForkStream):
        def __init__(self, *args) -> None:
            started.append(args)
            super().__init__(*args)

    monkeypatch.setattr(catchup, "ForkStream", Counted)
    monkeypatch.setattr(catchup, "MIN_PARALLEL_BYTES", 0 if parallel else 1 << 62)
    monkeypatch.setattr(catchup, "usable_cores", lambda: 2)
    out = io.StringIO()
    d = Daemon(Config(logdir=str(tmp_path / "logdir"), state_dir=str(tmp_path / name), listen=None), out=out)
    try:
        assert d.catch_up() is True
        alerts = {k: (a.state, a.rank, a.step, a.value, a.seq) for k, a in d.book.alerts.items()}
        # the console's lines in order: the order the files were read in
        alerts["console"] = [
            (a["run"], a["rule"], a["verb"], a["step"]) for a in parse_alert_lines(out.getvalue())
        ]
        readers = {p: catchup.tail_state(r) for p, (_, r) in d.reader.readers.items()}
        return alerts, readers, dict(d.problems.counts), d.points, len(started)
    finally:
        d.shutdown()


@pytest.mark.parametrize(("share", "budget"), [(0.01, 4096), (1 / 3, 1 << 24), (0.9, 1 << 24)])
def test_a_catch_up_on_two_cores_is_the_catch_up_of_one_process(tmp_path, writer, monkeypatch, share, budget):
    _logdir(tmp_path / "logdir", writer)
    monkeypatch.setattr(catchup, "PARENT_SHARE", share)
    monkeypatch.setattr(catchup, "CATCHUP_BUDGET", budget)  # 4 KB: the child reports progress often
    alerts, readers, problems, points, forks = _catch_up(tmp_path, "one", monkeypatch, parallel=False)
    assert forks == 0
    got = _catch_up(tmp_path, "two", monkeypatch, parallel=True)
    assert got[4] == 1, "the child was not used"
    assert got[0] == alerts and len(alerts) == 7  # explosion and growth on runs 1, 3 and 5, and the console
    assert got[1] == readers  # offsets, checksummed tails, resync state: the next live read is the same
    # the cut record is awaited, not reported: the trainer may still be writing it
    assert got[2] == problems and problems.get("corrupt_record") and problems.get("truncated_record") is None
    assert got[3] == points and 0 < 6 * 400 * 2 - points < 10  # the corrupt record cost a point or two


def test_the_split_gives_the_child_the_larger_later_share_and_nothing_when_it_would_not_pay(monkeypatch):
    monkeypatch.setattr(catchup, "usable_cores", lambda: 2)
    sizes = {f"f{i}": 40 << 20 for i in range(6)}
    here, there = catchup.split(list(sizes), sizes)
    assert (here, there) == (["f0", "f1"], ["f2", "f3", "f4", "f5"])
    assert catchup.split(["f0"], sizes) == (["f0"], [])
    small = {"a": 1, "b": 1}
    assert catchup.split(["a", "b"], small) == (["a", "b"], [])
    monkeypatch.setattr(catchup, "usable_cores", lambda: 1)
    assert catchup.split(list(sizes), sizes) == (list(sizes), [])


def test_the_tail_state_handed_back_is_everything_a_reader_knows_about_its_file(tmp_path):
    from gradwatch.events.records import RecordTail

    tail = RecordTail(str(tmp_path / "x"))
    # what is not handed back: the configuration, the opener, and what only lasts one read call
    per_call_or_config = {"path", "_open", "max_record_bytes", "on_problem", "pending", "_budget_left"}
    per_call_or_config |= {"_call_start", "_known"}
    assert set(vars(tail)) == set(catchup.TAIL_STATE) | per_call_or_config


def test_a_stop_during_a_catch_up_on_two_cores_ends_the_child_and_the_next_start_reads_the_rest(
    tmp_path, writer, monkeypatch
):
    _logdir(tmp_path / "logdir", writer)
    _, _, _, points, _ = _catch_up(tmp_path, "whole", monkeypatch, parallel=True)
    monkeypatch.setattr(catchup, "PARENT_SHARE", 0.01)
    children = []

    class Stopping(catchup.Decoded):
        def batches(self):
            yield from super().batches()
            first.stop()  # SIGTERM after the child's first file

    monkeypatch.setattr(catchup, "Decoded", Stopping)
    real_stream = catchup.stream_files
    monkeypatch.setattr(catchup, "stream_files", lambda *a: children.append(real_stream(*a)) or children[-1])
    cfg = Config(logdir=str(tmp_path / "logdir"), state_dir=str(tmp_path / "state"), listen=None)
    first = Daemon(cfg)
    assert first.catch_up() is False
    read_first = first.points
    first.shutdown()
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0].pid, os.WNOHANG)  # the child was ended and reaped
    monkeypatch.setattr(catchup, "Decoded", _Decoded)
    second = Daemon(cfg)
    assert second.catch_up() is True
    second.shutdown()
    assert 0 < read_first < points and read_first + second.points == points


def test_when_the_child_dies_the_daemon_reads_its_files_itself(tmp_path, writer, monkeypatch):
    _logdir(tmp_path / "logdir", writer)
    monkeypatch.setattr(catchup, "PARENT_SHARE", 0.01)
    expected = _catch_up(tmp_path, "one", monkeypatch, parallel=False)
    real = catchup.decode_files

    def dies_after_two_files(files):
        for n, message in enumerate(real(files)):
            if message[0] == "stat" and n > 0 and message[1] == files[2][0]:
                os._exit(9)  # the OOM killer, in the middle of the child's share
            yield message

    monkeypatch.setattr(catchup, "decode_files", dies_after_two_files)
    warnings = io.StringIO()
    handler = logging.StreamHandler(warnings)  # our own: another test's setup_logging stops propagation
    logging.getLogger("gradwatch").addHandler(handler)
    try:
        got = _catch_up(tmp_path, "two", monkeypatch, parallel=True)
    finally:
        logging.getLogger("gradwatch").removeHandler(handler)
    assert got[4] == 1
    assert "died before it had sent everything; reading its files here" in warnings.getvalue()
    assert got[:4] == expected[:4]


def test_the_catch_up_observes_batches_of_one_read_chunk(tmp_path, monkeypatch):
    """The first catch-up reads CATCHUP_BUDGET (one read chunk) of a file per read, so no batch
    of columns the engine gets spans more than a chunk's records (with the live 16 MiB budget
    they spanned two, and the catch-up of one big file peaked about 9 MiB higher)."""
    from writers import event, file_version, simple, write_events

    from gradwatch.events.records import CHUNK_BYTES

    path = str(tmp_path / "logdir" / "run" / "events.out.tfevents.1.host")
    n = 60_000  # about 3.6 MB: three and a half chunks
    write_events(
        path, [file_version(), *(event([simple(TAG, 1.0)], step=s, wall_time=1.0) for s in range(n))]
    )
    per_record = (os.path.getsize(path) - 16) / n
    d = Daemon(Config(logdir=str(tmp_path / "logdir"), state_dir=str(tmp_path / "state"), listen=None))
    sizes: list[int] = []
    observe_many = d.engine.observe_many

    def recording(batches):
        sizes.extend(len(steps) for _, _, steps, _, _ in batches)
        observe_many(batches)

    monkeypatch.setattr(d.engine, "observe_many", recording)
    try:
        assert d.catch_up()
    finally:
        d.shutdown()
    assert sum(sizes) == n == d.points
    assert max(sizes) * per_record < 1.5 * CHUNK_BYTES  # about one chunk (records vary in length); two before
