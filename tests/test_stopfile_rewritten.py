"""A stop-file deleted while its alert still fires is written again when the run goes on diverging.

The trainer docs tell operators to delete a stale stop-file before restarting a run. If the
restarted run explodes again, the alert never left "critical" (no new transition), and the
run must still be stopped.
"""

import json
import threading

from receivers import wait_until
from writers import write_scalars

from gradwatch.config import Config
from gradwatch.daemon import Daemon

TAG = "gradients/actor_cnn_norm"


def test_deleted_stop_file_comes_back_while_the_restarted_run_still_explodes(tmp_path):
    logdir = tmp_path / "logdir"
    write_scalars("tensorboardX", str(logdir / "run"), [(TAG, 100, 99999.0)])
    stop = logdir / "run" / "gradwatch-stop.json"
    out = open(tmp_path / "console.txt", "w")  # noqa: SIM115 - closed below
    daemon = Daemon(Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None), out=out)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(20)
        wait_until(stop.exists, timeout=20, what="the first stop-file")
        assert json.loads(stop.read_text())["step"] == 100

        stop.unlink()  # the operator clears it and restarts the trainer: a second event file
        write_scalars("tensorboardX", str(logdir / "run"), [(TAG, 5, 88888.0)], filename_suffix=".restart")
        wait_until(stop.exists, timeout=20, what="the stop-file written again")
        reason = json.loads(stop.read_text())
        assert (reason["alert"], reason["severity"], reason["step"]) == ("gradient_explosion", "critical", 5)

        # a healthy restart does not bring it back
        stop.unlink()
        write_scalars("tensorboardX", str(logdir / "run"), [(TAG, 1, 12.0)], filename_suffix=".healthy")
        wait_until(
            lambda: not [a for a in daemon.book.firing() if a.rule == "gradient_explosion"],
            timeout=20,
            what="the alert resolved by the healthy point",
        )
        assert not stop.exists()
    finally:
        daemon.stop()
        thread.join(20)
        out.close()
