"""A hostile trainer against a root daemon: symlinks, FIFOs and hard links planted under the logdir.

Issue 9. The trainer side runs as ``nobody`` (setpriv) in a logdir it owns; the daemon side runs
as root, which follows any symlink and opens any file unless told not to. Each test plants what
the attack planted, lets gradwatch write, then checks that the root-only target (a 0600 file or
0700 directory owned by root, outside the logdir) is unchanged, that nothing of its content
appears in the logdir, and that the refusal is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_binary, require_root
from daemon_support import Daemon, watch_args
from receivers import wait_until
from test_actions import event as alert_event
from writers import write_scalars

from gradwatch.alerts import AlertEvent
from gradwatch.daemon.writers import FlagWriter, StopFileWriter

TAG = "gradients/actor_cnn_norm"
NOBODY = ("--reuid=nobody", "--regid=nogroup", "--clear-groups")


def as_trainer(*argv: str) -> None:
    """Run ``argv`` as the unprivileged trainer (nobody)."""
    setpriv = require_binary("setpriv")
    p = subprocess.run([setpriv, *NOBODY, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def logdir():
    """A logdir owned by nobody, in a directory nobody can reach (pytest's tmp_path is 0700)."""
    require_root()
    base = tempfile.mkdtemp(prefix="gradwatch-attack-")
    os.chmod(base, 0o755)
    path = Path(base) / "logdir"
    path.mkdir()
    os.chown(path, 65534, 65534)
    yield path
    shutil.rmtree(base)


@dataclass
class Target:
    """A root-only file or directory outside the logdir, and what it looked like before."""

    path: Path
    token: str
    before: tuple

    @staticmethod
    def snapshot(path: Path) -> tuple:
        st = os.lstat(path)
        listing = sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()
        return (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_size, st.st_nlink, listing)

    def assert_untouched(self, logdir: Path) -> None:
        assert self.snapshot(self.path) == self.before
        self.assert_not_in(logdir)

    def assert_not_in(self, logdir: Path) -> None:
        if not self.token:
            return  # a directory: nothing to leak, only to write into
        for dirpath, _, files in os.walk(logdir):
            for name in files:
                p = Path(dirpath, name)
                if p.is_file() and not p.is_symlink():
                    assert self.token.encode() not in p.read_bytes(), f"{p} holds the secret"


@pytest.fixture
def secret_file(tmp_path):
    token = f"SECRET-{secrets.token_hex(8)}"
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({"private_key": token}))
    path.chmod(0o600)
    return Target(path, token, Target.snapshot(path))


@pytest.fixture
def secret_dir(tmp_path):
    path = tmp_path / "root-only"
    path.mkdir(mode=0o700)
    return Target(path, "", Target.snapshot(path))


def event(run: str = "run", **kw) -> AlertEvent:
    return alert_event(run=run, tag=TAG, **kw)


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


# -- the stop-file writer ------------------------------------------------------------------


def test_a_stop_file_symlinked_to_a_root_only_file_is_never_read_nor_written(logdir, secret_file, caplog):
    as_trainer("mkdir", str(logdir / "run"))
    as_trainer("ln", "-s", str(secret_file.path), str(logdir / "run" / "gradwatch-stop.json"))
    writer = StopFileWriter(str(logdir))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        for step in (200, 300, 400):
            assert writer.handle(event(step=step), None) is None
    secret_file.assert_untouched(logdir)
    assert os.readlink(logdir / "run" / "gradwatch-stop.json") == str(secret_file.path)  # left alone
    assert os.listdir(logdir / "run") == ["gradwatch-stop.json"]  # no temp file left behind
    (line,) = refusals(caplog)
    assert "gradwatch-stop.json is a symbolic link" in line and str(logdir / "run") in line
    assert (writer.refused, writer.written, writer.problems.counts) == (3, 0, {"run": 3})


def test_a_run_directory_swapped_for_a_symlink_to_a_root_only_directory_gets_nothing(
    logdir, secret_dir, caplog
):
    as_trainer("ln", "-s", str(secret_dir.path), str(logdir / "run"))
    writer = StopFileWriter(str(logdir))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        assert writer.handle(event(), None) is None
        assert writer.handle(event(step=300), None) is None
    secret_dir.assert_untouched(logdir)
    (line,) = refusals(caplog)
    assert "run is a symbolic link" in line
    # a nested run through a swapped parent is refused the same way
    as_trainer("ln", "-s", str(secret_dir.path), str(logdir / "parent"))
    assert writer.handle(event(run="parent/child"), None) is None
    secret_dir.assert_untouched(logdir)
    assert writer.refused == 3
    # nor is a file behind the link taken for the run's stop-file (the daemon's re-write check)
    (secret_dir.path / "gradwatch-stop.json").write_text("{}")
    assert not writer.exists("run")
    as_trainer("mkdir", str(logdir / "real"))
    assert writer.handle(event(run="real"), None) is not None and writer.exists("real")


def test_a_fifo_or_a_hard_link_at_the_stop_file_path_is_never_opened_for_its_content(
    logdir, secret_file, caplog
):
    as_trainer("mkdir", str(logdir / "fifo"), str(logdir / "linked"))
    as_trainer("mkfifo", str(logdir / "fifo" / "gradwatch-stop.json"))
    # fs.protected_hardlinks stops nobody from linking root's file; where it is off the trainer could
    # (root plays that part here)
    os.link(secret_file.path, logdir / "linked" / "gradwatch-stop.json")
    before = Target.snapshot(secret_file.path)
    writer = StopFileWriter(str(logdir))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        assert writer.handle(event(run="fifo"), None) is None  # returns: open() did not block
        assert writer.handle(event(run="linked"), None) is None
    assert Target.snapshot(secret_file.path) == before
    os.unlink(logdir / "linked" / "gradwatch-stop.json")
    secret_file.assert_untouched(logdir)
    assert [re.search(r"stop\.json (.*?);", m).group(1) for m in refusals(caplog)] == [
        "is not a regular file",
        "has 2 hard links",
    ]


def test_the_stop_file_written_beside_a_trainer_is_its_own_regular_file(logdir, secret_file):
    """The safe path still does the job: a real run directory gets a regular 0644 stop-file."""
    as_trainer("mkdir", str(logdir / "run"))
    path = StopFileWriter(str(logdir)).handle(event(), None)
    st = os.lstat(path)
    assert (oct(st.st_mode), st.st_nlink) == (oct(0o100644), 1)
    assert json.loads(Path(path).read_text())["step"] == 200


# -- the TensorBoard flags writer ----------------------------------------------------------


def test_flags_refuse_a_symlinked_flags_dir_or_run_dir(logdir, secret_dir, caplog):
    as_trainer("ln", "-s", str(secret_dir.path), str(logdir / "_gradwatch"))
    flags = FlagWriter(str(logdir))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        flags.handle(event())
        flags.handle(event(step=300))
    secret_dir.assert_untouched(logdir)
    as_trainer("rm", str(logdir / "_gradwatch"))
    as_trainer("mkdir", "-p", str(logdir / "_gradwatch" / "a"))
    as_trainer("ln", "-s", str(secret_dir.path), str(logdir / "_gradwatch" / "a" / "b"))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        flags.handle(event(run="a/b"))
    secret_dir.assert_untouched(logdir)
    assert [m.split(": refused: ")[1] for m in refusals(caplog)] == [
        "_gradwatch is a symbolic link; left alone (logged once per run; counted)",
        "b is a symbolic link; left alone (logged once per run; counted)",
    ]
    assert (flags.refused, flags.errors) == (3, 0)


def test_flags_never_append_to_a_file_swapped_in_for_ours(logdir, secret_file, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = logdir / "_gradwatch" / "run"
    as_trainer("mkdir", "-p", str(run_dir))  # the trainer made the directory first: it may write there
    flags = FlagWriter(str(logdir))
    flags.handle(event(run="run", step=100))
    (ours,) = os.listdir(run_dir)
    assert os.stat(run_dir / ours).st_mode & 0o777 == 0o644
    as_trainer("rm", "-f", str(run_dir / ours))
    as_trainer("ln", "-s", str(secret_file.path), str(run_dir / ours))  # a link with our file's name
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        flags.handle(event(run="run", kind="resolved", step=200))
        flags.handle(event(run="run", step=300))  # starts a new file of ours
    secret_file.assert_untouched(logdir)
    (line,) = refusals(caplog)
    assert f"{ours} is a symbolic link" in line
    os.unlink(run_dir / ours)
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("alerts/gradient_explosion/critical")] == [(300, 1.0)]


# -- failures repeat: logged once per run, counted ------------------------------------------


def test_a_repeated_failure_is_logged_once_per_run_and_counted(tmp_path, caplog):
    (tmp_path / "blocker").write_text("a file where the stop directory should be")
    writer = StopFileWriter(str(tmp_path / "logs"), template=str(tmp_path / "blocker" / "{run}.json"))
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        for step in (100, 200, 300):
            for run in ("a", "b"):
                assert writer.handle(event(run=run, step=step), None) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(
        m.endswith(f"File exists: {tmp_path / 'blocker'} (logged once per run; counted)") for m in errors
    )
    assert (writer.errors, writer.problems.counts) == (6, {"a": 3, "b": 3})
    (tmp_path / "blocker").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gradwatch.actions"):
        assert writer.handle(event(run="a", step=400), None) is not None
    assert "written again after 3 failed attempt(s)" in caplog.text
    assert writer.problems.counts == {"b": 3}


def test_stop_severity_never_on_the_command_line_wins_over_the_rules_stop(tmp_path, writer):
    """The packaged rules say `stop: critical`; `--stop-severity never` must still write nothing."""
    for name, extra in (("never", ["--stop-severity", "never"]), ("default", [])):
        logdir = tmp_path / name
        logdir.mkdir()
        d = Daemon(watch_args(logdir, tmp_path / f"state-{name}", *extra), str(tmp_path), name=name)
        try:
            d.wait_ready()
            writer.write(logdir / "run", 100, {TAG: 130486.0})
            # the stop-file is written before the alert reaches the console
            d.wait_alert(run="run", rule="gradient_explosion", severity="CRITICAL")
            assert d.stop() == 0
        finally:
            if d.proc.poll() is None:
                d.kill()
    assert not (tmp_path / "never" / "run" / "gradwatch-stop.json").exists()
    assert (tmp_path / "default" / "run" / "gradwatch-stop.json").exists()


# -- the real daemon ------------------------------------------------------------------------


def test_the_daemon_refuses_a_planted_stop_file_link_once_and_keeps_alerting(
    logdir, secret_file, writer, tmp_path
):
    as_trainer("mkdir", str(logdir / "run"))
    as_trainer("ln", "-s", str(secret_file.path), str(logdir / "run" / "gradwatch-stop.json"))
    writer.write(logdir / "run", 100, {TAG: 1.0})
    d = Daemon(watch_args(logdir, tmp_path / "state"), str(tmp_path))
    try:
        d.wait_ready()
        writer.write(logdir / "run", 200, {TAG: 130486.0})
        d.wait_alert(run="run", rule="gradient_explosion", verb="FIRING")
        writer.write(logdir / "run", 300, {TAG: 1.0})
        d.wait_alert(run="run", rule="gradient_explosion", verb="RESOLVED")
        writer.write(logdir / "run", 400, {TAG: 826256.0})  # fires again: refused again, not logged again
        d.wait_alert(run="run", rule="gradient_explosion", verb="FIRING", step="400")
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
        writer.close(logdir / "run")
    secret_file.assert_untouched(logdir)
    assert os.readlink(logdir / "run" / "gradwatch-stop.json") == str(secret_file.path)
    assert len(re.findall(r"refused: gradwatch-stop\.json is a symbolic link", d.err())) == 1, d.err()
    assert secret_file.token not in d.err() + d.out()


def test_the_daemon_writes_nothing_into_a_run_dir_swapped_for_a_link_between_two_points(
    logdir, secret_dir, caplog, tmp_path
):
    """The in-process daemon, with the trainer's swap played at the moment the daemon acts on a point."""
    from gradwatch.config import Config
    from gradwatch.daemon import Daemon as InProcessDaemon

    as_trainer("mkdir", str(logdir / "run"))
    write_scalars("tensorboardX", str(logdir / "run"), [(TAG, 100, 130486.0)])
    state = tmp_path / "state"
    out = open(tmp_path / "console.txt", "w")  # noqa: SIM115 - closed below
    daemon = InProcessDaemon(Config(logdir=str(logdir), state_dir=str(state), listen=None), out=out)
    real_handle = daemon.stopper.handle
    swapped = threading.Event()

    def swap_then_handle(e, rule_stop):
        # the point is read from the real directory; the trainer swaps it before the write
        if not swapped.is_set():
            as_trainer("mv", str(logdir / "run"), str(logdir / "run.real"))
            as_trainer("ln", "-s", str(secret_dir.path), str(logdir / "run"))
            swapped.set()
        return real_handle(e, rule_stop)

    daemon.stopper.handle = swap_then_handle
    thread = threading.Thread(target=daemon.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        thread.start()
        try:
            assert daemon.ready.wait(30)
            wait_until(lambda: daemon.stopper.refused, timeout=30, what="the refused stop-file")
        finally:
            daemon.stop()
            thread.join(30)
            out.close()
    secret_dir.assert_untouched(logdir)
    assert len(refusals(caplog)) == 1 and "run is a symbolic link" in refusals(caplog)[0]


def test_an_unwritable_logdir_costs_one_log_line_per_run_however_often_it_fails(tmp_path, writer):
    """Issue 8: 1,000 runs in a read-only logdir gave 2,001 error lines; now one per run."""
    require_root()  # only root can drop capabilities with setpriv --bounding-set
    setpriv = require_binary("setpriv")
    logdir = tmp_path / "logdir"
    runs = [f"run-{i:02d}" for i in range(30)]
    for run in runs:
        writer.write(logdir / run, 100, {TAG: 1.0})
        os.chmod(logdir / run, 0o555)
    # root without CAP_DAC_OVERRIDE obeys chmod like any user
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    d = Daemon(watch_args(logdir, tmp_path / "state"), str(tmp_path), prefix=drop)
    try:
        d.wait_ready()
        for step in (200, 300):  # fires, then re-tried on every new point while it still fires
            for run in runs:
                writer.write(logdir / run, step, {TAG: 130486.0})
        writer.write(logdir / "zz-sync", 1, {TAG: 130486.0})  # handled after all of the above
        d.wait_alert(run="zz-sync", rule="gradient_explosion")
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
        for run in runs:
            os.chmod(logdir / run, 0o755)
    failed = r"cannot write stop-file .*/(run-\d\d)/gradwatch-stop\.json: Permission denied"
    lines = re.findall(failed, d.err())
    assert sorted(lines) == runs, d.err()[-3000:]


def test_an_event_file_symlinked_to_a_root_only_run_is_not_read(logdir, tmp_path, writer):
    """Someone else's private run (0700, root) must not reach this daemon's alerts and metrics."""
    private = tmp_path / "private-run"
    private.mkdir(mode=0o700)
    writer.write(private, 100, {TAG: 7777777.0})
    writer.close(private)
    (target,) = private.glob("*tfevents*")
    as_trainer("mkdir", str(logdir / "run"))
    as_trainer("ln", "-s", str(target), str(logdir / "run" / target.name))
    state = tmp_path / "state"
    d = Daemon(watch_args(logdir, state), str(tmp_path))
    try:
        d.wait_ready()
        writer.write(logdir / "zz-sync", 1, {TAG: 130486.0})  # handled after the planted link
        d.wait_alert(run="zz-sync", rule="gradient_explosion")
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
    assert [a["run"] for a in d.alerts()] == ["zz-sync"], d.out()
    assert "7777777" not in d.out() + d.err()
    assert len(re.findall(rf"{target.name}: .*symbolic link", d.err())) == 1, d.err()
