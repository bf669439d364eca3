"""Three `gradwatch watch --shard I/3` on one logdir: every run is alerted by exactly one of them.

Runs already there are caught up by their owner only; runs that appear while the daemons
run are picked up by their owner only; each replica keeps its own state directory.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
from daemon_support import Daemon, wait_for, watch_args
from writers import event, file_version, simple, write_events

from gradwatch.events.shard import shard_of

TAG = "gradients/actor_cnn_norm"


def exploding_run(logdir, name: str) -> None:
    """One run whose gradient norm is far over the default critical threshold (50,000)."""
    write_events(
        os.path.join(logdir, name, "events.out.tfevents.1.host"),
        [file_version(), event([simple(TAG, 1e6)], step=100, wall_time=2.0)],
    )


def fired_runs(d: Daemon) -> list[str]:
    return [a["run"] for a in d.alerts() if a["verb"] == "FIRING" and a["rule"] == "gradient_explosion"]


@pytest.mark.slow
def test_three_replicas_split_300_runs_and_each_run_alerts_once(tmp_path):
    logdir = tmp_path / "logs"
    names = [f"run-{i:03d}" for i in range(300)]
    for name in names:
        exploding_run(logdir, name)
    daemons = [
        Daemon(watch_args(logdir, tmp_path / f"state-{i}", "--shard", f"{i}/3"), str(tmp_path), name=f"d{i}")
        for i in range(3)
    ]
    try:
        caught_up = [d.wait_err(r"caught up on .*: (\d+) runs", timeout=120) for d in daemons]
        runs_each = [int(re.search(r"caught up on .*?: (\d+) runs", text).group(1)) for text in caught_up]
        assert runs_each == [sum(shard_of(n, 3) == i for n in names) for i in range(3)]
        assert sum(runs_each) == 300 and min(runs_each) > 50

        # runs created while the replicas are running: each is picked up by its owner alone
        late = [f"late-{i:02d}" for i in range(30)]
        for name in late:
            exploding_run(logdir, name)
        every = names + late

        def all_fired() -> bool:
            return sum(len(set(fired_runs(d))) for d in daemons) >= len(every)

        wait_for(all_fired, "an alert for every run", timeout=120)
        fired = [fired_runs(d) for d in daemons]
        owners = Counter(run for runs in fired for run in set(runs))
        assert sorted(owners) == sorted(every)
        assert set(owners.values()) == {1}, "a run alerted by more than one replica"
        for i, runs in enumerate(fired):
            assert all(shard_of(run, 3) == i for run in runs)
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0, 0]
    assert all(os.listdir(tmp_path / f"state-{i}") for i in range(3))


@pytest.mark.slow
def test_a_reload_keeps_the_shard_the_replica_started_with(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    config = tmp_path / "gradwatch.yaml"
    config.write_text(f"logdir: {logdir}\nstate_dir: {tmp_path / 'state'}\nlisten: ''\nshard: 0/2\n")
    d = Daemon(["--config", str(config)], str(tmp_path))
    d.wait_ready()
    config.write_text(config.read_text().replace("shard: 0/2", "shard: 1/2"))
    d.signal(signal.SIGHUP)
    d.wait_err(r"shard changed to .*takes effect after a restart")
    mine, other = (next(n for n in (f"r{i}" for i in range(100)) if shard_of(n, 2) == s) for s in (0, 1))
    exploding_run(logdir, other)
    exploding_run(logdir, mine)
    d.wait_alert(run=mine, rule="gradient_explosion")
    assert other not in fired_runs(d)
    assert d.stop() == 0
