"""One-shot commands leave out of their start-up the modules they do not use: PyYAML when no
rule file is read (``export``) or only the packaged rules (``check``), difflib until there is a
suggestion to make, importlib.resources (and the zipfile, tempfile and shutil it brings) to
find the packaged rules."""

from __future__ import annotations

import subprocess
import sys

from writers import event, simple, write_events

SCRIPT = """
import sys
from gradwatch.cli import main
code = main(sys.argv[1:])
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


def imported_by(*argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout, out.stderr
    return set(out.stderr.splitlines()[-1].split())


def logdir_of(tmp_path) -> str:
    points = [event([simple("gradients/actor_norm", 1.0 + s)], step=s, wall_time=1e9) for s in range(50)]
    write_events(str(tmp_path / "run" / "events.out.tfevents.1.host"), points)
    return str(tmp_path)


def test_export_reads_no_yaml(tmp_path):
    imported = imported_by("export", logdir_of(tmp_path))
    assert "gradwatch.events.logdir" in imported
    assert not imported & {"yaml", "difflib"}


def test_check_with_the_packaged_rules_imports_no_yaml_difflib_or_importlib_resources(tmp_path):
    imported = imported_by("check", "--json", logdir_of(tmp_path))
    assert "gradwatch.config.rulefiles" in imported
    assert not imported & {"yaml", "difflib", "importlib.resources", "zipfile"}  # packaged_rules.py
