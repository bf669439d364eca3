"""``gradwatch watch s3://...`` while the store answers listings but holds an object's GET.

A real ``gradwatch watch`` process and a real S3 server (moto's, run in this test's process so the
test can hold its GetObject handler: the request is accepted and not answered, as a store that
hangs does, for the SDK's whole read timeout). The daemon's loop must go on meanwhile: it applies
a reload (SIGHUP) while the GET hangs, and the alert of the object arrives once the GET answers.
"""

from __future__ import annotations

import signal
import threading

import pytest
from conftest import require_module
from daemon_support import Daemon, event_files, wait_for
from receivers import free_port
from writers import write_scalars

TAG = "gradients/actor_cnn_norm"
SPIKE = 2_860_755.0


@pytest.fixture
def held_s3(monkeypatch):
    """moto's S3 on loopback in this process; ``hold`` makes every GetObject wait (``held`` is set
    once one does) until ``answer`` is set."""
    require_module("moto")
    require_module("s3fs")
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    hold, held, answer = threading.Event(), threading.Event(), threading.Event()
    get_object = S3Response.get_object

    def maybe_held(self):
        if hold.is_set():
            held.set()
            answer.wait(120)
        return get_object(self)

    monkeypatch.setattr(S3Response, "get_object", maybe_held)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", hold, held, answer
    finally:
        answer.set()
        server.stop()


def test_a_get_held_by_the_store_does_not_hold_the_loop(tmp_path, held_s3):
    import s3fs

    endpoint, hold, held, answer = held_s3
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "gradwatch-test-key",
        "AWS_SECRET_ACCESS_KEY": "gradwatch-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    fs = s3fs.S3FileSystem(
        key="x", secret="x", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
    )
    fs.mkdir("held")
    write_scalars("tensorboardX", str(tmp_path / "calm"), [(TAG, 1, 10.0)])
    write_scalars("tensorboardX", str(tmp_path / "spike"), [(TAG, 1, 10.0), (TAG, 2, SPIKE)])
    (calm,) = event_files(str(tmp_path / "calm"))
    (spike,) = event_files(str(tmp_path / "spike"))
    fs.put_file(calm, "held/logs/r0/events.out.tfevents.1.calm")
    args = [
        "s3://held/logs",
        "--state-dir",
        str(tmp_path / "state"),
        "--listen",
        "",
        "--poll-interval",
        "0.2",
    ]
    d = Daemon(args, str(tmp_path), env=env)
    try:
        d.wait_ready()
        hold.set()
        fs.put_file(spike, "held/logs/r0/events.out.tfevents.2.spike")
        wait_for(held.is_set, "the daemon's GET of the new object, held by the store")
        d.signal(signal.SIGHUP)
        d.wait_err("reloaded: ")  # the loop went on while the GET hangs
        assert "gradient_explosion" not in d.out()
        answer.set()
        d.wait_alert(rule="gradient_explosion", run="r0", verb="FIRING")
        assert d.stop() == 0
    finally:
        answer.set()
        d.stop()
