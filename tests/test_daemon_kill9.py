"""A small run of bench/bench_kill9.py: the real daemon killed with SIGKILL while 4 writers cross a
threshold and recover; no FIRING and no RESOLVED may be lost, and a duplicate only inside the
documented at-least-once window (a kill between the receiver's answer and the outbox's mark).
The full run (20 kills) and its numbers are in bench/README.md.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow


def _bench():
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_kill9.py")
    spec = importlib.util.spec_from_file_location("bench_kill9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_kill_9_lose_no_firing_and_no_resolved(tmp_path):
    # dead for 2-4 s each time: a writer completes a cycle meanwhile (one every 2.1 s), so a
    # restart queues "resolved" and "firing again" of one alert in one commit
    result = _bench().run(
        kills=3, writers=4, cycles=6, pace=0.3, delay=0.3, down=4.0, seed=3, keep=str(tmp_path)
    )
    assert result["kills"] == 3
    assert (result["lost_firing"], result["lost_resolved"]) == (0, 0), result
    assert result["duplicates_unexplained"] == 0, result
    # every transition was queued exactly once, across all the restarts
    assert result["outbox_rows"] == 2 * 4 * 6, result


def test_the_count_notices_a_lost_and_a_duplicated_notification():
    # the bench's own arithmetic, on a receiver log made by hand: it must be able to fail
    count = _bench().count

    def doc(status: str, step: int) -> dict:
        return {"alerts": [{"status": status, "labels": {"run": "r"}, "annotations": {"step": str(step)}}]}

    got = [(0.0, doc("firing", 110)), (1.0, doc("firing", 110)), (2.0, doc("resolved", 150))]
    got += [(3.0, doc("firing", 210))]  # cycle 2 never resolves
    result = count(got, ["r"], 2, kills=[])
    assert (result["lost_firing"], result["lost_resolved"]) == (0, 1)
    assert result["lost_resolved_by_alert"] == {"r": [2]}
    assert result["duplicates_unexplained"] == 1  # no kill between the two copies
    explained = count(got, ["r"], 2, kills=[0.5])
    assert (explained["duplicates_in_at_least_once_window"], explained["duplicates_unexplained"]) == (1, 0)
    assert count(got[2:], ["r"], 2, kills=[])["lost_firing_by_alert"] == {"r": [1]}
