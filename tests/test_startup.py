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


def test_check_leaves_the_daemons_config_model_out(tmp_path):
    """gradwatch.config re-exports the config model lazily: check reads rule files only."""
    write_events(str(tmp_path / "run" / "events.out.tfevents.1.host"), [event([simple("loss", 1.0)], step=1)])
    imported = imported_by_check(str(tmp_path))
    assert "gradwatch.config.rulefiles" in imported
    assert not imported & {"gradwatch.config.model", "gradwatch.config.channels", "gradwatch.trainer"}


def test_the_config_package_still_re_exports_its_names():
    import gradwatch.config as config
    from gradwatch.config import model, yaml

    for name in config.__all__:
        assert getattr(config, name) is getattr(model if hasattr(model, name) else yaml, name)
