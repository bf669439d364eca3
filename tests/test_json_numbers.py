"""NaN and infinities have one spelling in every JSON output (issue 11).

`watch --log-format json` printed "inf" where `check --json` and `export` print "Infinity".
Here the same non-finite point goes through the real daemon and through check and export.
"""

from __future__ import annotations

import json

from daemon_support import Daemon, Writer, run_gradwatch, wait_for, watch_args

TAG = "gradients/actor_cnn_norm"


def test_watch_check_and_export_spell_infinity_alike(tmp_path):
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    writer = Writer()
    daemon = Daemon(watch_args(logdir, tmp_path / "state", "--log-format", "json"), str(tmp_path))
    try:
        daemon.wait_ready()
        writer.write(str(logdir / "diverged"), 300, {TAG: float("inf")})

        def nonfinite_alert():
            return [a for a in daemon.json_alerts() if a["rule"] == "gradient_nonfinite"]

        watched = wait_for(nonfinite_alert, "the nonfinite alert on the console")[0]
    finally:
        writer.stop()
        daemon.stop()
    checked = json.loads(run_gradwatch("check", "--json", str(logdir)).stdout)
    exported = [json.loads(line) for line in run_gradwatch("export", str(logdir)).stdout.splitlines()]

    assert watched["value"] == "Infinity"
    assert [p["value"] for p in exported if p["tag"] == TAG] == ["Infinity"]
    firsts = [f["first"] for f in checked["findings"] if f["rule"] == "gradient_nonfinite"]
    assert [v["value"] for first in firsts for v in first.values()] == ["Infinity"]
