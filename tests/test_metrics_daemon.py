"""The daemon feeds the exporter: counts, alerts and reload outcome appear on /metrics."""

import threading
import urllib.error
import urllib.request

import pytest
from writers import write_scalars

from gradwatch.config import Config
from gradwatch.daemon import Daemon


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_daemon_metrics_counts_alerts_and_reload(tmp_path):
    logdir = tmp_path / "logdir"
    points = [
        ("gradients/actor_cnn_norm", s, v) for s, v in [(100, 5191.0), (200, 130486.0), (300, 826256.0)]
    ]
    write_scalars("tensorboardX", str(logdir / "exploding"), points)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: big\n    match: {tags: ['gradients/*']}\n    thresholds: {critical: 50000}\n"
    )
    cfg = Config(
        logdir=str(logdir), rules=[str(rules)], state_dir=str(tmp_path / "state"), listen="127.0.0.1:0"
    )
    daemon = Daemon(cfg, out=open(tmp_path / "console.txt", "w"))  # noqa: SIM115 - closed by the daemon's end
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(20)
        port = daemon.metrics.port
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5).status == 200
        m = _scrape(port)
        # file_version record + 3 scalar records
        assert m["gradwatch_records_read_total"] == 4
        assert m["gradwatch_points_read_total"] == 3
        assert m['gradwatch_scalar_value{run="exploding",tag="gradients/actor_cnn_norm"}'] == 826256.0
        assert (
            m[
                'gradwatch_alert{rule="big",run="exploding",severity="critical",tag="gradients/actor_cnn_norm"}'
            ]
            == 1
        )
        assert m["gradwatch_config_last_reload_successful"] == 1
        (info,) = [k for k in m if k.startswith("gradwatch_build_info{")]
        assert 'shard=""' in info  # not sharded

        rules.write_text("rules:\n  - name: big\n    thresholds: {critical: 'fifty thousand'}\n")
        assert daemon.reload() is False
        assert _scrape(port)["gradwatch_config_last_reload_successful"] == 0
        rules.write_text("rules:\n  - name: big\n    thresholds: {critical: 50000}\n")
        assert daemon.reload() is True
        assert _scrape(port)["gradwatch_config_last_reload_successful"] == 1
    finally:
        daemon.stop()
        thread.join(20)
    assert not thread.is_alive()
    # closed, not answering with an error status (HTTPError is a URLError too)
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=2)
    assert isinstance(err.value.reason, ConnectionRefusedError)


def test_a_sharded_daemon_says_its_shard_on_metrics(tmp_path):
    from gradwatch.events.shard import Shard

    cfg = Config(logdir=str(tmp_path), state_dir=str(tmp_path / "state"), listen="127.0.0.1:0")
    cfg.shard = Shard(1, 3)
    daemon = Daemon(cfg, out=open(tmp_path / "console.txt", "w"))  # noqa: SIM115 - closed by the daemon's end
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(20)
        (info,) = [k for k in _scrape(daemon.metrics.port) if k.startswith("gradwatch_build_info{")]
        assert 'shard="1/3"' in info
    finally:
        daemon.stop()
        thread.join(20)
    assert not thread.is_alive()
