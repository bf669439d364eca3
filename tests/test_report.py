"""``gradwatch report``: one tag across runs, side by side, with ratios to the baseline."""

import csv
import io
import json
import math
import os

import pytest
from tensorboardX import SummaryWriter

from gradwatch.cli import main
from gradwatch.oneshot.report import build_report, write_csv, write_json, write_text

TAG = "gradients/actor_cnn_norm"
STEPS = [100, 200, 300, 400, 500]
EXPLODING = [5191, 130486, 826256, 2860755, 7475702]
HEALTHY = [5191, 6000, 7000, 8000, 9000]


def write_run(logdir, run, tag, steps, values, suffix=""):
    w = SummaryWriter(os.path.join(str(logdir), run), filename_suffix=suffix)
    for step, value in zip(steps, values):
        w.add_scalar(tag, value, step)
    w.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_run(root, "baseline", TAG, STEPS, HEALTHY)
    write_run(root, "td3", TAG, STEPS, EXPLODING)
    write_run(root, "td3-clipped", TAG, [100, 200, 300], [5191, 5500, math.nan])
    # a second file in the run (same second, same host: tensorboardX needs a suffix)
    write_run(root, "td3", "loss", [1], [0.5], suffix=".loss")
    return str(root)


def render(writer, report) -> str:
    out = io.StringIO()
    writer(report, out)
    return out.getvalue()


def test_side_by_side_text_table(logdir):
    rep = build_report(logdir, TAG, ["baseline", "td3*"])
    assert rep.runs == ["baseline", "td3", "td3-clipped"]
    assert rep.steps == STEPS
    assert render(write_text, rep).splitlines() == [
        "gradients/actor_cnn_norm",
        "step  baseline        td3  td3-clipped  td3 / baseline  td3-clipped / baseline",
        " 100     5,191      5,191        5,191              x1                      x1",
        " 200     6,000    130,486        5,500           x21.7                  x0.917",
        " 300     7,000    826,256          NaN            x118                     NaN",
        " 400     8,000  2,860,755            -            x358                       -",
        " 500     9,000  7,475,702            -            x831                       -",
    ]


def test_chosen_steps_and_default_order(logdir):
    rep = build_report(logdir, TAG, steps=[200, 500, 999])
    assert rep.runs == ["baseline", "td3", "td3-clipped"]  # sorted; the first is the baseline
    assert rep.steps == [200, 500, 999]
    assert rep.value("td3", 999) is None and rep.ratio("td3", 999) is None
    assert rep.ratio("td3", 500) == pytest.approx(7475702 / 9000)


def test_default_rows_are_spread_over_the_whole_run(tmp_path):
    write_run(tmp_path, "r", "x", range(0, 1000), [1.0] * 1000)
    steps = build_report(str(tmp_path), "x").steps
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999


def test_default_rows_are_logged_steps_and_include_the_first_alerts(tmp_path, capsys):
    """Runs logging every 100 and every 7 steps; the explosion is a one-point spike at step 3,507."""
    write_run(tmp_path, "baseline", TAG, range(0, 10001, 100), [100.0] * 101)
    td3_steps = list(range(0, 10001, 7))
    write_run(tmp_path, "td3", TAG, td3_steps, [1e6 if s == 3507 else 100.0 for s in td3_steps])
    assert main(["report", str(tmp_path), "--tag", TAG]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    steps = [int(row.split()[0]) for row in rows]
    assert 3507 in steps
    (spike,) = [row for row in rows if row.split()[0] == "3507"]
    assert spike.split()[1:4] == ["-", "1,000,000", "-"]
    assert spike.endswith("  <- first td3: gradient_explosion critical, gradient_growth warning")
    others = [row for row in rows if row.split()[0] != "3507"]
    assert len(others) == 10
    # every other row is a step both runs logged (multiples of 700), from the first to the last
    assert all("-" not in row.split() for row in others), others
    other_steps = [int(r.split()[0]) for r in others]
    assert (other_steps[0], other_steps[-1]) == (0, 9800)


def test_json(logdir):
    doc = json.loads(render(write_json, build_report(logdir, TAG, ["baseline", "td3-clipped"], [200, 300])))
    assert doc["baseline"] == "baseline"
    assert doc["rows"] == [
        {
            "step": 200,
            "values": {"baseline": 6000.0, "td3-clipped": 5500.0},
            "ratios": {"td3-clipped": pytest.approx(5500 / 6000)},
        },
        {"step": 300, "values": {"baseline": 7000.0, "td3-clipped": "NaN"}, "ratios": {"td3-clipped": "NaN"}},
    ]


def test_csv(logdir):
    text = render(write_csv, build_report(logdir, TAG, ["baseline", "td3*"], [100, 300, 400]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "baseline", "td3", "td3-clipped", "td3/baseline", "td3-clipped/baseline"]
    assert rows[1] == ["100", "5191.0", "5191.0", "5191.0", "1.0", "1.0"]
    assert rows[2][3] == "NaN" and rows[2][5] == "NaN"
    assert rows[3][3] == "" and rows[3][5] == ""
    assert float(rows[2][4]) == pytest.approx(826256 / 7000)


def test_cli_report_formats(logdir, capsys):
    assert (
        main(["report", logdir, "--tag", TAG, "--run", "baseline", "--run", "td3", "--steps", "100,500"]) == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == " 500     9,000  7,475,702            x831"
    assert main(["report", logdir, "--tag", TAG, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == ["baseline", "td3", "td3-clipped"]
    assert main(["report", logdir, "--tag", TAG, "--csv"]) == 0
    assert capsys.readouterr().out.startswith("step,baseline,td3,td3-clipped,")


def test_cli_report_mistakes_are_unknown_with_a_hint(logdir, capsys):
    assert main(["report", logdir, "--tag", "gradients/actor_norm"]) == 3
    hint = "similar tags: gradients/actor_cnn_norm"
    assert (
        capsys.readouterr().err == f"gradwatch: no run in {logdir} has tag 'gradients/actor_norm'; {hint}\n"
    )
    assert main(["report", logdir, "--tag", TAG, "--run", "baseline", "--run", "sac*"]) == 3
    assert capsys.readouterr().err == (
        f"gradwatch: no run matching 'sac*' has tag '{TAG}' (runs with it: baseline, td3, td3-clipped)\n"
    )
    assert main(["report", logdir, "--tag", TAG, "--steps", "1,two"]) == 3
    assert "expected steps like 100,200,300, got '1,two'" in capsys.readouterr().err
    assert main(["report", logdir]) == 3  # --tag is required
    assert "the following arguments are required: --tag" in capsys.readouterr().err
    assert main(["report", logdir, "--tag", TAG, "--json", "--csv"]) == 3
    assert main(["report", os.path.join(logdir, "missing"), "--tag", TAG]) == 3
