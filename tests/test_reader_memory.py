"""The reader's memory depends on series and files, never on the bytes it reads.

A sidecar reads for weeks beside jobs that log images and histograms. Here
tensorboardX (in a subprocess, as a trainer would) writes over 200 MB of images,
histograms and text with scalars in between, and another subprocess reads them with
the reader the daemon and ``gradwatch check`` use, measuring its own peak RSS
before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

MiB = 1 << 20

# Steps 1..STEPS: at each, a scalar and 2 histograms of 4,096 samples in 10,000
# bins (about 160 KB each: most of the bytes, and quick to write); every 20th step
# a 512x512 RGB image of noise (PNG cannot shrink it), a text, and one Event
# holding an image value and a scalar value together.
STEPS = 600
WRITE = textwrap.dedent(
    """
    import sys
    import google_crc32c
    import numpy as np
    import tensorboardX.record_writer
    from tensorboardX import SummaryWriter, summary

    # tensorboardX checksums in pure Python unless the `crc32c` package is installed
    # (then it uses that C code); the same function from google-crc32c, so that 200 MB
    # take seconds. The reader checks every checksum: a wrong one would show.
    tensorboardX.record_writer.crc32c = google_crc32c.value

    steps = int(sys.argv[2])
    rng = np.random.default_rng(7)
    w = SummaryWriter(sys.argv[1], flush_secs=3600, max_queue=100)
    for step in range(1, steps + 1):
        for k in range(2):
            w.add_histogram(f"weights/layer_{k}", rng.standard_normal(4096), step, bins=10_000)
        w.add_scalar("loss", step / 4, step)
        if step % 20 == 0:
            w.add_image("obs", rng.integers(0, 256, (3, 512, 512), dtype=np.uint8), step)
            w.add_text("notes", f"step {step}", step)
            mixed = summary.image("mixed/frame", rng.integers(0, 256, (3, 512, 512), dtype=np.uint8))
            mixed.value.extend(summary.scalar("mixed/value", step / 8).value)
            w._get_file_writer().add_summary(mixed, step)
    w.close()
    """
)
READ = textwrap.dedent(
    """
    import json, sys
    import numpy  # the reader's fixed cost, loaded at its first long batch
    from gradwatch.events.logdir import LogdirReader, ProblemLog

    def peak_rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    problems = ProblemLog()
    reader = LogdirReader(sys.argv[1], problems=problems)
    reader.refresh()
    before = peak_rss()
    points = {}
    for run, tag, step, wall_time, value in reader.read_all(final=True):
        points.setdefault(tag, []).append((step, value))
    after = peak_rss()
    print(json.dumps({"before": before, "after": after, "points": points,
                      "offsets": reader.offsets(), "problems": problems.counts}))
    """
)


@pytest.fixture(scope="module")
def image_logdir(tmp_path_factory) -> str:
    logdir = str(tmp_path_factory.mktemp("images") / "run")
    subprocess.run([sys.executable, "-c", WRITE, logdir, str(STEPS)], check=True)
    return logdir


def test_reading_200_mb_of_images_and_histograms_grows_rss_under_20_mib(image_logdir):
    files = [os.path.join(image_logdir, n) for n in os.listdir(image_logdir)]
    assert sum(map(os.path.getsize, files)) >= 200e6  # the test reads what it claims to

    out = subprocess.run(
        [sys.executable, "-c", READ, image_logdir], check=True, capture_output=True, text=True
    ).stdout
    got = json.loads(out)

    growth = got["after"] - got["before"]
    assert growth < 20 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB while reading"
    # and nothing was lost on the way: every scalar, every byte accounted for
    assert got["points"]["loss"] == [[s, s / 4] for s in range(1, STEPS + 1)]
    assert got["points"]["mixed/value"] == [[s, s / 8] for s in range(20, STEPS + 1, 20)]
    assert sorted(got["points"]) == ["loss", "mixed/value"]
    assert got["offsets"] == {p: os.path.getsize(p) for p in files}
    assert got["problems"] == {}
