"""What ``gradwatch check`` imports: its start-up is part of every run's time (bench/README.md,
"Many small files"), so modules it never uses stay out of it."""

from __future__ import annotations

import subprocess
import sys

from writers import event, simple, write_events

SCRIPT = """
import sys
from gradwatch.cli import main
code = main(["check", sys.argv[1]])
print(" ".join(sorted(m for m in sys.modules if m.startswith(("numpy.ma", "gradwatch")))))
"""


def imported_by_check(logdir: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, logdir], capture_output=True, text=True, timeout=120, check=False
    )
    assert "points read" in out.stdout, out.stderr
    return set(out.stdout.splitlines()[-1].split())


def test_check_never_imports_numpy_ma(tmp_path):
    """np.unique imports numpy.ma at its first call (about 28 ms, in each forked reader)."""
    for run in ("a", "b"):
        points = [event([simple("gradients/actor_norm", s / 8)], step=s, wall_time=1e9) for s in range(300)]
        write_events(str(tmp_path / run / "events.out.tfevents.1.host"), points)
    assert "numpy.ma" not in imported_by_check(str(tmp_path))
