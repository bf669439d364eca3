"""--shard I/N: which runs of a shared logdir each replica owns (gradwatch/events/shard.py).

The choice is a pure function of the run name and N: each run has exactly one
owner, owners are spread evenly, and they do not change from one process (or
Python hash seed) to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from writers import write_scalars

from gradwatch import cli
from gradwatch.events.logdir import ProblemLog, scan
from gradwatch.events.shard import Shard, parse_shard, shard_of

NAMES = [f"run-{i:04d}" for i in range(3000)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_every_run_has_exactly_one_owner_and_the_runs_are_spread_evenly(count):
    owners = Counter(shard_of(name, count) for name in NAMES)
    assert set(owners) == set(range(count))
    expected = len(NAMES) / count
    for index, n in owners.items():
        # 3000 names: binomial spread is about 1.5 % per shard; 8 % leaves room, catches a skewed hash
        assert abs(n - expected) < 0.08 * expected, f"shard {index}/{count} owns {n} of {len(NAMES)}"
    for name in NAMES[:50]:
        assert [Shard(i, count).owns(name) for i in range(count)].count(True) == 1


def test_owners_do_not_change_between_processes_or_hash_seeds():
    # Python's own hash() of a str changes with PYTHONHASHSEED: a replica restarted with another
    # seed would take other runs. These values are fixed for good (changing them moves runs).
    assert [shard_of(n, 4) for n in ("run-0000", "a/b", ".", "run-\udcff")] == [0, 3, 1, 3]
    code = "from gradwatch.events.shard import shard_of; import json, sys; " + (
        "print(json.dumps([shard_of(n, 3) for n in json.loads(sys.argv[1])]))"
    )
    names = NAMES[:200]
    mine = [shard_of(n, 3) for n in names]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(names)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == mine


def test_names_that_are_not_utf8_have_an_owner():
    # names are bytes on Linux: b"run-\xff" arrives as "run-\udcff" (surrogateescape)
    assert shard_of("run-\udcff", 5) == shard_of(os.fsdecode(b"run-\xff"), 5)
    assert shard_of("run-\udcff", 5) in range(5)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("3/3", "0 to N-1"),
        ("-1/3", "0 to N-1"),
        ("0/0", "0 to N-1"),
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
    ],
)
def test_bad_shard_is_a_usage_error(text, why, tmp_path, capsys):
    with pytest.raises(ValueError, match=why):
        parse_shard(text)
    assert cli.main(["check", str(tmp_path), f"--shard={text}"]) == 3
    assert why in capsys.readouterr().err


def test_parse_shard():
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard("2/3") == Shard(2, 3)
    assert str(Shard(2, 3)) == "2/3"


def test_scans_of_all_shards_are_a_partition_of_the_logdir(tmp_path):
    for i in range(12):
        write_scalars("tensorboardX", str(tmp_path / f"run-{i}"), [("loss", 0, 1.0)])
    whole = scan(str(tmp_path), ProblemLog())
    parts = [scan(str(tmp_path), ProblemLog(), Shard(i, 3)) for i in range(3)]
    assert all(parts), "12 runs over 3 shards: each shard owns some"
    assert sorted(run for part in parts for run in part) == sorted(whole)
    for part in parts:
        for run, paths in part.items():
            assert paths == whole[run]


def test_check_and_export_read_only_their_shard(tmp_path, capsys):
    for i in range(8):
        write_scalars("tensorboardX", str(tmp_path / f"run-{i}"), [("gradients/actor_cnn_norm", 1, 1e6)])
    alerted: list[str] = []
    exported: list[str] = []
    for i in range(2):
        assert cli.main(["check", str(tmp_path), "--json", "--shard", f"{i}/2"]) == 2
        doc = json.loads(capsys.readouterr().out)
        alerted += [f["run"] for f in doc["findings"]]
        assert all(Shard(i, 2).owns(run) for run in doc["runs"])
        assert cli.main(["export", str(tmp_path), "--shard", f"{i}/2"]) == 0
        exported += [json.loads(line)["run"] for line in capsys.readouterr().out.splitlines()]
    every = sorted(f"run-{i}" for i in range(8))
    assert sorted(exported) == every
    assert sorted(set(alerted)) == every


def test_shard_in_the_daemon_config_and_its_own_state_dir(tmp_path):
    from gradwatch.config import Config, load_config
    from gradwatch.config.yaml import ConfigError

    good = tmp_path / "good.yaml"
    good.write_text("logdir: runs\nshard: 1/3\n")
    cfg = load_config(str(good))
    assert cfg.shard == Shard(1, 3)
    # replicas on one logdir never share a state directory (nor its lock)
    dirs = {Config(logdir="/runs", shard=Shard(i, 3)).resolved_state_dir() for i in range(3)}
    assert len(dirs | {Config(logdir="/runs").resolved_state_dir()}) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("logdir: runs\nshard: 3/3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: .*0 to N-1"):
        load_config(str(bad))


def test_watch_refuses_a_bad_shard_flag(tmp_path):
    from daemon_support import run_gradwatch

    done = run_gradwatch("watch", str(tmp_path), "--shard", "3/3", "--listen", "")
    assert done.returncode == 3
    assert "--shard: '3/3': the index must be 0 to N-1" in done.stderr
