"""Runs read on several cores give exactly what one process gives.

``gradwatch check`` splits a large logdir's runs into groups read in forked
children (gradwatch/events/parallel.py); the merge must not change a byte of
its report, nor lose a problem.
"""

from __future__ import annotations

import io
import os

import pytest
from tensorboardX import SummaryWriter

import gradwatch.events.parallel as parallel
from gradwatch.config.rulefiles import load_rules
from gradwatch.events.logdir import ProblemLog, scan
from gradwatch.events.parallel import STREAM_AHEAD_ITEMS, ChildFailed, ForkStream, fork_map, split_runs
from gradwatch.oneshot.check import run_check, write_json, write_text

WALL = 1_700_000_000.0


def write_run(logdir, run: str, seed: int) -> None:
    """Gradient norms that cross the default rules at run-dependent steps, and a loss."""
    w = SummaryWriter(os.path.join(str(logdir), run), flush_secs=3600)
    for step in range(1, 301):
        norm = 100.0 * step if (step + seed) % 97 else 1e6 + seed
        w.add_scalar("gradients/actor_cnn_norm", norm, step, walltime=WALL + step)
        w.add_scalar("gradients/critic_mlp_norm", float(step % (10 + seed)), step, walltime=WALL + step)
        w.add_scalar("loss", 1.0 / step, step, walltime=WALL + step)
    w.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for i, run in enumerate(["b", "a/1", "a/2", "c", "d", "e/x/y", "f"]):
        write_run(root, run, i)
    # a damaged record in one run: counted once, whichever process reads it
    (path,) = (root / "c").iterdir()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return str(root)


def report(logdir: str) -> tuple:
    """The text and JSON reports, the problems, and the result's own order of series."""
    problems = ProblemLog()
    result = run_check(logdir, load_rules(None), problems)
    text, doc = io.StringIO(), io.StringIO()
    write_text(result, text)
    write_json(result, doc)
    return text.getvalue(), doc.getvalue(), problems.counts, list(result.findings), list(result.stats)


def test_check_on_two_cores_reports_exactly_what_one_process_does(logdir, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 1 << 60)
    one = report(logdir)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    groups = split_runs(scan(logdir, ProblemLog()))
    assert len(groups) == 2 and all(groups)  # the runs really were split
    two = report(logdir)
    assert two == one
    assert one[2] == {"corrupt_record": 1}
    assert "CRITICAL" in one[0]


def test_groups_are_balanced_by_bytes_and_deterministic(tmp_path):
    sizes = {"big": 50 << 20, "mid": 30 << 20, "small1": 10 << 20, "small2": 10 << 20}
    runs = {}
    for run, size in sizes.items():
        path = tmp_path / f"{run}.tfevents"
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: the size is all split_runs looks at
        runs[run] = [str(path)]
    groups = split_runs(runs, cores=2)
    # the first group, this process's (it also merges and writes), is the lighter one
    assert groups == [
        {"mid": runs["mid"], "small1": runs["small1"], "small2": runs["small2"]},
        {"big": runs["big"]},
    ]
    even = {f"r{i}": runs["small1"] for i in range(20)}  # 20 runs of 10 MiB
    first, second = split_runs(even, cores=2)
    assert (len(first), len(second)) == (9, 11)
    assert split_runs(dict(reversed(runs.items())), cores=2) == groups
    assert split_runs(runs, cores=1) == [runs]
    assert split_runs({"big": runs["big"]}, cores=2) == [{"big": runs["big"]}]  # one run: no fork


def test_fork_map_runs_the_first_group_here_and_reports_a_child_that_fails():
    pids = fork_map(lambda group: (os.getpid(), sorted(group)), [{"a": []}, {"b": []}, {"c": []}])
    assert [g for _, g in pids] == [["a"], ["b"], ["c"]]
    assert pids[0][0] == os.getpid() and len({p for p, _ in pids}) == 3

    def fails_in_child(group):
        if "b" in group:
            raise ValueError("bad group")
        return 1

    with pytest.raises(ChildFailed, match="ValueError: bad group"):
        fork_map(fails_in_child, [{"a": []}, {"b": []}])
    with pytest.raises(ChildFailed, match="died"):
        fork_map(lambda group: os._exit(3) if "b" in group else 1, [{"a": []}, {"b": []}])


def test_after_a_child_fails_the_others_are_still_waited_for_and_their_pipes_closed(tmp_path):
    """Review 25: the first failing child raised at once; the children after it were never
    waited for (zombies) and their pipe fds stayed open in the caller."""

    def fails_in_child(group):
        (tmp_path / str(os.getpid())).touch()  # who the children were
        if "b" in group:
            raise ValueError("bad group")
        return 1

    fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ChildFailed, match="ValueError: bad group"):
        fork_map(fails_in_child, [{"a": []}, {"b": []}, {"c": []}, {"d": []}])
    assert set(os.listdir("/proc/self/fd")) <= fds  # no pipe of c or d left open
    children = [int(p.name) for p in tmp_path.iterdir() if int(p.name) != os.getpid()]
    assert len(children) == 3
    for pid in children:  # every child was reaped: no zombie left
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _items(arg):
    n, marker = arg
    yield from ({"i": i, "data": bytes(1000)} for i in range(n))
    with open(marker, "w") as f:
        f.write("all made")


def _fails(arg):
    yield 1
    raise ValueError(f"broken {arg}")


def _wait_for(path, seconds=60.0):
    import time

    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def test_a_fork_stream_reads_ahead_of_its_parent_and_gives_every_item_in_order(tmp_path):
    marker = tmp_path / "done"
    n = STREAM_AHEAD_ITEMS  # all of them fit ahead: the child finishes before anything is taken
    stream = ForkStream(_items, (n, str(marker)))
    assert _wait_for(marker), "the child did not make its items before the parent took one"
    assert [item["i"] for item in stream] == list(range(n))
    with pytest.raises(ChildProcessError):
        os.waitpid(stream.pid, os.WNOHANG)  # reaped


def test_a_fork_stream_reports_the_childs_traceback_and_can_be_closed_early(tmp_path):
    stream = ForkStream(_fails, "here")
    taken = []
    with pytest.raises(ChildFailed, match="ValueError: broken here"):
        for item in stream:
            taken.append(item)
    assert taken == [1]
    # closed before the end: the child (blocked on a full queue) is killed and reaped
    early = ForkStream(_items, (10_000, str(tmp_path / "never")))
    next(iter(early))
    early.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(early.pid, os.WNOHANG)


def _slow(arg):
    import time

    yield 1
    time.sleep(arg)
    yield 2


def test_a_child_that_dies_or_hangs_is_a_child_failure_and_a_stop_signal_is_not_for_it(monkeypatch, tmp_path):
    import signal
    import time

    # killed (the OOM killer) after its first item: the next take says so, not a pickle error
    stream = ForkStream(_items, (10_000, str(tmp_path / "never")))
    it = iter(stream)
    next(it)
    os.kill(stream.pid, signal.SIGKILL)
    with pytest.raises(ChildFailed, match="died before it had sent everything"):
        list(it)
    # SIGTERM (systemd signals the whole cgroup) is left to the parent, which ends the child
    stream = ForkStream(_slow, 0.5)
    it = iter(stream)
    assert next(it) == 1
    os.kill(stream.pid, signal.SIGTERM)
    assert list(it) == [2]
    # silent past the limit: ended, reported; the waiting parent was called back meanwhile
    monkeypatch.setattr(parallel, "STREAM_WAIT_TICK", 0.05)
    monkeypatch.setattr(parallel, "STREAM_SILENCE_LIMIT", 0.3)
    waits = []
    stream = ForkStream(_slow, 60, on_wait=lambda: waits.append(time.monotonic()))
    with pytest.raises(ChildFailed, match="sent nothing for"):
        list(stream)
    assert len(waits) >= 5
    with pytest.raises(ChildProcessError):
        os.waitpid(stream.pid, os.WNOHANG)


ORPHAN = """
import os, sys
sys.path.insert(0, sys.argv[1])
from test_parallel import _items
from gradwatch.events.parallel import ForkStream
stream = ForkStream(_items, (100_000, sys.argv[2]))
next(iter(stream))
print(stream.pid, flush=True)
os._exit(0)  # the daemon dies (kill -9) in the middle of its catch-up
"""


def test_a_child_whose_parent_died_ends_instead_of_blocking_forever(tmp_path):
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN, here, str(tmp_path / "never")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = int(out.stdout.split()[0])
    assert _gone(pid), f"the orphaned reader {pid} is still there"


def _gone(pid: int, seconds: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True  # exited; a zombie until init reaps it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
