"""``anomaly`` and ``baseline`` rules in a real ``gradwatch watch``, with a real tensorboardX writer:
live alerts, a baseline still training behind the run, and state kept across a restart."""

from __future__ import annotations

import itertools

import pytest
from daemon_support import Daemon, Writer, watch_args
from seed_series import SEED, clipped, exploding

TAG = "gradients/actor_cnn_norm"

RULES = f"""
rules:
  - name: vs_clipped
    match: {{tags: "{TAG}", runs: "run2*"}}
    baseline: {{run: run3, factor: 10}}
    stop: never
  - name: norm_spike
    match: {{tags: "{TAG}", runs: "spiky*"}}
    anomaly: {{log: true, direction: above}}
    stop: never
  - name: sync
    match: {{tags: "sync/value"}}
    thresholds: {{warning: 0}}
    stop: never
"""


class Env:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.logdir = tmp_path / "logdir"
        self.logdir.mkdir()
        self.state = tmp_path / "state"
        self.rules = tmp_path / "rules.yaml"
        self.rules.write_text(RULES)
        self.writer = Writer()
        self.syncs = itertools.count(1)
        self.daemon: Daemon | None = None

    def start(self, name: str) -> Daemon:
        self.daemon = Daemon(
            watch_args(self.logdir, self.state, "--rules", str(self.rules)), str(self.tmp), name
        )
        self.daemon.wait_ready()
        return self.daemon

    def write(self, run: str, points) -> None:
        self.writer.write_many(self.logdir / run, [(s, {TAG: v}) for s, v in points])

    def sync(self) -> None:
        """Returns once the daemon has handled everything written before (inotify keeps the order)."""
        n = next(self.syncs)
        self.writer.write(self.logdir / f"zz-sync-{n}", n, {"sync/value": 1.0})
        self.daemon.wait_alert(run=f"zz-sync-{n}", rule="sync")  # type: ignore[union-attr]

    def alerts(self, rule: str) -> list[tuple[str, str, str, str]]:
        return [
            (a["verb"], a["severity"], a["run"], a["step"])
            for a in self.daemon.alerts()  # type: ignore[union-attr]
            if a["rule"] == rule
        ]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.writer.stop()
        if e.daemon is not None and e.daemon.proc.poll() is None:
            e.daemon.stop()


def test_live_baseline_fires_at_200_and_a_baseline_behind_is_not_evidence(env):
    env.start("live")
    env.write("run3", clipped(every=100)[:2])  # the clipped run at steps 100 and 200
    # read before run2's points: a baseline behind is no evidence, and a point is judged once
    # (under load the daemon could otherwise read the new run2 file first)
    env.sync()
    env.write("run2", sorted(SEED.items())[:2])  # 5,191 (x2.6) and 130,486 (x37)
    env.daemon.wait_alert(rule="vs_clipped", run="run2", step="200", verb="FIRING")
    # a second run that runs ahead of the baseline: 826,256 at step 300 is x165 of 5,000, but the
    # baseline has not logged step 300 yet -- no evidence, no alert
    env.write("run2-ahead", [(100, 5_191.0), (300, 826_256.0)])
    env.sync()
    assert [a for a in env.alerts("vs_clipped") if a[2] == "run2-ahead"] == []
    # when the baseline gets there, the run's next point is compared
    env.write("run3", clipped(every=100)[2:4])  # steps 300 and 400
    env.sync()
    env.write("run2-ahead", [(310, 830_000.0)])
    env.daemon.wait_alert(rule="vs_clipped", run="run2-ahead", step="310", verb="FIRING")
    assert env.daemon.stop() == 0


def test_live_anomaly_fires_on_the_seed_explosion_before_50000(env):
    env.start("live")
    points = exploding(seed=7)
    env.write("spiky", points)
    alert = env.daemon.wait_alert(rule="norm_spike", run="spiky", verb="FIRING")
    assert int(alert["step"]) <= 170 and dict(points)[int(alert["step"])] < 50_000
    assert env.daemon.stop() == 0


def test_a_restart_keeps_the_baseline_history_and_the_anomaly_window(env):
    env.start("first")
    env.write("run3", clipped(every=100))  # the reference, complete
    env.write("run2", [(100, 5_191.0)])
    points = exploding(seed=3)
    env.write("spiky", [p for p in points if p[0] < 100])  # the warm-up: healthy noise only
    env.sync()
    assert env.alerts("vs_clipped") == [] and env.alerts("norm_spike") == []
    assert env.daemon.stop() == 0

    # the files are read on from their saved offsets: run3's points and spiky's healthy history
    # are not read again, so the second daemon must have them from its state
    env.start("second")
    env.write("run2", [(200, 130_486.0)])
    env.daemon.wait_alert(rule="vs_clipped", run="run2", step="200", verb="FIRING")
    env.write("spiky", [p for p in points if 100 <= p[0] <= 200])
    alert = env.daemon.wait_alert(rule="norm_spike", run="spiky", verb="FIRING")
    assert int(alert["step"]) <= 170
    assert env.daemon.stop() == 0
