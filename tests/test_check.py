"""``gradwatch check`` on real event files written by tensorboardX."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboardX import SummaryWriter

from gradwatch.cli import main
from gradwatch.config.rulefiles import load_rules
from gradwatch.oneshot.check import CRITICAL, OK, UNKNOWN, WARNING, run_check, write_json, write_text

SEED_STEPS = [100, 200, 300, 400, 500]
SEED_NORMS = [5191, 130486, 826256, 2860755, 7475702]
TAG = "gradients/actor_cnn_norm"


def write_run(logdir, run, series, suffix="", wall_start=1_700_000_000.0, seconds_per_step=1.0):
    """series: {tag: [(step, value), ...]}, written with tensorboardX add_scalar (simple_value)."""
    w = SummaryWriter(os.path.join(str(logdir), run), filename_suffix=suffix)
    for tag, points in series.items():
        for step, value in points:
            w.add_scalar(tag, value, step, walltime=wall_start + step * seconds_per_step)
    w.close()


def gradwatch_command() -> list[str]:
    """The real console script of this environment, or ``python -m gradwatch``."""
    script = Path(sys.executable).parent / "gradwatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradwatch"]


@pytest.fixture(scope="module")
def seed_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("seed")
    write_run(logdir, "td3", {TAG: list(zip(SEED_STEPS, SEED_NORMS)), "loss": [(100, 0.5), (200, 0.4)]})
    write_run(logdir, "baseline", {TAG: list(zip(SEED_STEPS, [5191, 6000, 7000, 8000, 9000]))})
    return str(logdir)


def text_of(result) -> str:
    import io

    out = io.StringIO()
    write_text(result, out)
    return out.getvalue()


def json_of(result) -> dict:
    import io

    out = io.StringIO()
    write_json(result, out)
    return json.loads(out.getvalue())


def test_seed_incident_with_the_default_rules(seed_logdir):
    result = run_check(seed_logdir, load_rules(None))
    assert result.exit_code == CRITICAL
    assert result.runs == ["baseline", "td3"]
    assert result.points == 12
    assert len(result.stats) == 2  # loss matches no default rule
    explosion = result.findings[("gradient_explosion", "td3", TAG)]
    assert explosion.first == {"critical": (200, 130486.0, None), "warning": (200, 130486.0, None)}
    assert explosion.points_at(2) == 4 and explosion.points_at(3) == 4
    assert explosion.final == 3
    assert explosion.annotations["recommendation"].startswith("Stop training, enable gradient clipping")
    growth = result.findings[("gradient_growth", "td3", TAG)]
    (step, value, ratio) = growth.first["warning"]
    assert (step, value, round(ratio, 2)) == (200, 130486.0, 25.14)
    assert growth.points_alerting == 3 and growth.final == 0
    stats = result.stats[("td3", TAG)]
    assert (stats.max, stats.max_step, stats.count) == (7475702.0, 500, 5)
    assert not [f for f in result.findings.values() if f.run == "baseline" and f.worst]


def test_seed_text_report(seed_logdir):
    text = text_of(run_check(seed_logdir, load_rules(None)))
    assert text.startswith(
        f"gradwatch check {seed_logdir}: 3 rules, 2 runs, 2 matching series, 12 points read\n"
    )
    assert "\nrun td3\n  gradients/actor_cnn_norm: 5 points, max 7,475,702 at step 500\n" in text
    assert "    CRITICAL  gradient_explosion: above 10,000 (warning), 50,000 (critical)\n" in text
    assert "              warning  first at step 200: 130,486\n" in text
    assert "              critical first at step 200: 130,486\n" in text
    assert (
        "              4 of 5 points at warning or worse, 4 at critical; still critical at the last point"
        in text
    )
    assert "              3 of 5 points at warning; back to normal at the last point (step 500)\n" in text
    assert "-> Stop training, enable gradient clipping" in text
    assert "    WARNING   gradient_growth: grew x10 (warning) within 200 steps\n" in text
    assert "              warning  first at step 200: 130,486 (x25.14)\n" in text
    assert "baseline" not in text.split("\n", 1)[1]  # runs that stayed healthy are not listed
    assert text.endswith("\nCRITICAL: 1 critical, 1 warning findings on 1 of 2 matching series\n")


def test_seed_json_report(seed_logdir):
    doc = json_of(run_check(seed_logdir, load_rules(None)))
    assert (doc["status"], doc["exit_code"], doc["series"], doc["points"]) == ("CRITICAL", 2, 2, 12)
    first, second = doc["findings"]
    assert first["rule"] == "gradient_explosion" and first["severity"] == "critical"
    assert first["first"] == {
        "critical": {"step": 200, "value": 130486.0},
        "warning": {"step": 200, "value": 130486.0},
    }
    assert first["points_at"] == {"critical": 4, "warning": 4}
    assert first["max"] == {"step": 500, "value": 7475702.0}
    assert first["active_at_end"] == "critical"
    assert first["labels"] == {"category": "gradients"}
    assert second["rule"] == "gradient_growth"
    assert second["first"]["warning"]["ratio"] == pytest.approx(25.137, abs=1e-3)
    assert second["active_at_end"] is None


@pytest.mark.parametrize(
    ("values", "code"),
    [([500, 900, 700], OK), ([500, 20000, 30000], WARNING), ([500, 20000, 60000], CRITICAL)],
)
def test_exit_code_follows_the_worst_severity(tmp_path, values, code):
    write_run(tmp_path, "run", {"grad_norm": list(enumerate(values))})
    assert run_check(str(tmp_path), load_rules(None)).exit_code == code


def test_a_series_that_only_ever_had_nan(tmp_path):
    write_run(tmp_path, "dead", {"grad_norm": [(0, math.nan), (1, math.nan), (2, math.inf)]})
    result = run_check(str(tmp_path), load_rules(None))
    assert result.exit_code == CRITICAL
    assert [f.rule.name for f in result.alerted()] == ["gradient_nonfinite"]
    stats = result.stats[("dead", "grad_norm")]
    assert (stats.count, stats.nonfinite, stats.max_step) == (3, 3, None)
    text = text_of(result)
    assert "grad_norm: 3 points, no finite value, 3 non-finite (first NaN at step 0)" in text
    doc = json_of(result)
    (finding,) = doc["findings"]
    assert finding["max"] is None and finding["min"] is None
    assert finding["nonfinite"] == 3
    assert finding["first"] == {"critical": {"step": 0, "value": "NaN"}}


def test_nan_after_an_explosion_keeps_it_critical_to_the_end(tmp_path):
    write_run(tmp_path, "r", {"grad_norm": [(0, 100), (1, 60000), (2, math.nan), (3, math.nan)]})
    result = run_check(str(tmp_path), load_rules(None))
    assert result.findings[("gradient_explosion", "r", "grad_norm")].final == 3
    assert "max 60,000 at step 1, 2 non-finite (first NaN at step 2)" in text_of(result)


def test_for_and_absent_in_one_shot_mode(tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "rules:\n"
        "  - name: spiky\n    match: {tags: loss}\n    thresholds: {warning: 10}\n    for: 2\n"
        "  - name: stalled\n    match: {tags: loss}\n    absent_for: 10m\n"
    )
    logdir = tmp_path / "logs"
    # steps 0..5 a minute apart, then 20 minutes of silence before step 6
    points = [(0, 1), (1, 50), (2, 1), (3, 50), (4, 50), (5, 50), (6, 1)]
    w = SummaryWriter(str(logdir / "run"))
    for step, value in points:
        w.add_scalar("loss", value, step, walltime=1_700_000_000 + step * 60 + (1200 if step == 6 else 0))
    w.close()
    result = run_check(str(logdir), load_rules([str(rules_file)]))
    spiky = result.findings[("spiky", "run", "loss")]
    assert spiky.first == {"warning": (4, 50.0, None)}
    assert spiky.points_alerting == 2
    stalled = result.findings[("stalled", "run", "loss")]
    assert stalled.first == {"warning": (6, 1.0, None)}
    assert result.exit_code == WARNING


def test_restarted_run_in_two_files_is_not_growth(tmp_path):
    write_run(tmp_path, "r", {"grad_norm": [(0, 50), (100, 80), (200, 90)]}, suffix=".a")
    write_run(tmp_path, "r", {"grad_norm": [(100, 900), (200, 950), (300, 990)]}, suffix=".b")
    result = run_check(str(tmp_path), load_rules(None))
    assert result.points == 6
    assert result.exit_code == OK, text_of(result)


def test_corrupt_bytes_are_counted_not_fatal(tmp_path):
    write_run(tmp_path, "r", {"grad_norm": [(0, 5), (1, 60000)]})
    (event_file,) = (tmp_path / "r").iterdir()
    with open(event_file, "ab") as f:
        f.write(b"\x00garbage that is not a TFRecord" * 4)
    result = run_check(str(tmp_path), load_rules(None))
    assert result.exit_code == CRITICAL
    assert sum(result.problems.values()) >= 1
    assert "problems in event files (see log)" in text_of(result)


def test_nothing_to_check_is_unknown(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_check(str(empty), load_rules(None))
    assert result.exit_code == UNKNOWN
    assert text_of(result).endswith(
        "UNKNOWN: no event files found (a run is a directory holding files named *tfevents*)\n"
    )
    other = tmp_path / "other"
    write_run(other, "r", {"loss": [(0, 1.0)], "accuracy": [(0, 0.5)]})
    result = run_check(str(other), load_rules(None))
    assert result.exit_code == UNKNOWN
    assert "no series matched the rules, nothing was checked (tags seen: accuracy, loss)" in text_of(result)


# -- through the command line -----------------------------------------------------


def test_cli_check_json_and_exit_code(seed_logdir, capsys):
    assert main(["check", seed_logdir, "--json"]) == CRITICAL
    assert json.loads(capsys.readouterr().out)["status"] == "CRITICAL"


def test_cli_check_json_writes_a_finding_to_a_line(seed_logdir, capsys):
    """docs/commands.md: the document is indented, each finding on one line (grep finds a finding)."""
    assert main(["check", seed_logdir, "--json"]) == CRITICAL
    out = capsys.readouterr().out
    doc = json.loads(out)
    lines = [json.loads(line.strip().rstrip(",")) for line in out.splitlines() if '"rule": ' in line]
    assert lines == doc["findings"] and len(lines) == 2
    assert out.startswith('{\n  "status": "CRITICAL",\n')


def test_cli_check_bad_rules_is_unknown_with_the_problem(tmp_path, seed_logdir, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    thresholds: {warning: ten thousand}\n")
    assert main(["check", seed_logdir, "--rules", str(bad)]) == UNKNOWN
    err = capsys.readouterr().err
    assert f"{bad}:3: rules[0].thresholds.warning: expected a number, got 'ten thousand'" in err
    assert "Traceback" not in err
    assert main(["check", seed_logdir, "--rules", str(bad), "--json"]) == UNKNOWN
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "UNKNOWN" and "ten thousand" in doc["errors"][0]


def test_cli_check_with_a_rules_directory(tmp_path, seed_logdir, capsys):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "q.yaml").write_text(
        "rules:\n  - name: big\n    match: {tags: '*norm'}\n    thresholds: {warning: 1e9}\n"
    )
    assert main(["check", seed_logdir, "--rules", str(d)]) == OK
    assert capsys.readouterr().out.endswith("OK: all 2 matching series stayed within the rules\n")


@pytest.mark.parametrize(
    ("values", "code", "last_line"),
    [
        ([1.0, 2.0], 0, "OK: all 1 matching series stayed within the rules"),
        ([9000.0, 20000.0], 1, "WARNING: 0 critical, 1 warning findings on 1 of 1 matching series"),
        ([9000.0, 60000.0], 2, "CRITICAL: 1 critical, 0 warning findings on 1 of 1 matching series"),
    ],
)
def test_console_script_exit_codes(tmp_path, values, code, last_line):
    write_run(tmp_path, "run", {"train/grad_norm": list(enumerate(values))})
    p = subprocess.run(
        [*gradwatch_command(), "check", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == code, p.stdout + p.stderr
    assert p.stdout.rstrip("\n").splitlines()[-1] == last_line


def test_console_script_unknown_for_a_missing_logdir(tmp_path):
    missing = tmp_path / "nope"
    p = subprocess.run(
        [*gradwatch_command(), "check", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 3
    assert p.stderr == f"gradwatch: {missing}: no such directory\n"
    # monitoring plugins read stdout: the status line is there too
    assert p.stdout == f"UNKNOWN: {missing}: no such directory\n"


def test_bad_rules_are_unknown_on_stdout_too(tmp_path, seed_logdir, capsys):
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text("rules:\n  - name: a\n    nonfinite: fatal\n    stop: critcal\n")
    assert main(["check", seed_logdir, "--rules", str(rules_file)]) == UNKNOWN
    out, err = capsys.readouterr()
    first = f"{rules_file}:3: rules[0].nonfinite: expected one of info, warning, critical, got 'fatal'"
    assert out == f"UNKNOWN: {first} (and 1 more problems)\n"
    assert len(err.splitlines()) == 2


def test_a_hostile_128k_tag_is_skipped_and_reported_by_check(tmp_path, capsys, caplog):
    """A trainer logs 'grad'*32768 as a tag: check skips that series (no regex sees it) and says so."""
    attack = "grad" * 32768
    write_run(tmp_path, "td3", {attack: [(0, 1e9)], TAG: list(zip(SEED_STEPS, SEED_NORMS))})
    rules = load_rules(None)
    searched: list[int] = []
    for r in rules:
        real = r.match.tag_regex.search
        r.match.tag_regex.search = lambda name, real=real: searched.append(len(name)) or real(name)
    result = run_check(str(tmp_path), rules)
    assert searched and max(searched) == len(TAG)  # only the real tag, once per rule
    assert result.problems == {"name_too_long": 1}
    assert result.exit_code == CRITICAL  # the real explosion is still found
    assert (("td3", attack) in result.stats) is False
    assert "1 problems in event files (see log)" in text_of(result)
    assert "name too long: over 1,024 bytes" in caplog.text
    # the console script too: same verdict and one warning line, not 128 KiB of tag
    p = subprocess.run(
        [*gradwatch_command(), "check", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == CRITICAL, p.stderr
    (warning,) = [line for line in p.stderr.splitlines() if "name too long" in line]
    assert len(warning) < 400


def test_event_files_without_scalars_are_unknown(tmp_path):
    w = SummaryWriter(str(tmp_path / "r"))
    w.add_histogram("weights", [1.0, 2.0, 3.0], 0)
    w.add_text("notes", "hello", 0)
    w.close()
    result = run_check(str(tmp_path), load_rules(None))
    assert result.exit_code == UNKNOWN
    assert text_of(result).endswith("UNKNOWN: the event files hold no scalar points\n")


def test_info_findings_are_listed_but_ok(tmp_path):
    rules_file = tmp_path / "info.yaml"
    rules_file.write_text("rules:\n  - name: big_loss\n    match: {tags: loss}\n    thresholds: {info: 2}\n")
    write_run(tmp_path / "logs", "r", {"loss": [(0, 1.0), (1, 3.0)]})
    result = run_check(str(tmp_path / "logs"), load_rules([str(rules_file)]))
    assert result.exit_code == OK
    text = text_of(result)
    assert "    INFO      big_loss: above 2 (info)\n" in text
    assert text.endswith("OK: 0 critical, 0 warning, 1 info findings on 1 of 1 matching series\n")


def test_hostile_and_undecodable_names_are_shown_escaped(tmp_path):
    """Run b"run-\\xff\\x1b[2J", a tag with a newline: shown escaped, never a crash or a forged line."""
    from writers import event, file_version, simple, write_events

    # tensorboardX rewrites such a tag; TensorFlow's writer and hand-made writers do not
    run_dir = os.path.join(os.fsencode(tmp_path), b"run-\xff\x1b[2J")
    path = os.fsdecode(os.path.join(run_dir, b"events.out.tfevents.1.host"))
    write_events(path, [file_version(), event([simple("grad_norm\nOK: forged", 60000.0)], step=1)])
    p = subprocess.run(
        [*gradwatch_command(), "check", str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"},
        timeout=120,
    )
    out = p.stdout.decode("utf-8")  # valid UTF-8 on a strict UTF-8 stdout
    assert p.returncode == CRITICAL, p.stderr.decode()
    assert "\nrun run-\\xff\\x1b[2J\n" in out
    assert "  grad_norm\\x0aOK: forged: 1 points" in out
    assert "\x1b" not in out and "\nOK: forged" not in out
    report = subprocess.run(
        [*gradwatch_command(), "report", str(tmp_path), "--tag", "grad_norm\nOK: forged"],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=120,
    )
    assert report.returncode == 0, report.stderr.decode()
    assert report.stdout.decode("utf-8").splitlines()[:2] == [
        "grad_norm\\x0aOK: forged",
        "step  run-\\xff\\x1b[2J",
    ]


def test_the_unknown_status_line_is_escaped(tmp_path, capsys):
    """Review 12: the first line of the error reached stdout raw; a logdir name with an escape
    sequence could clear the operator's terminal or forge a second status line."""
    missing = tmp_path / "nope\x1b[2J\u202e"
    assert main(["check", str(missing)]) == UNKNOWN
    out = capsys.readouterr().out
    assert out == f"UNKNOWN: {tmp_path}/nope\\x1b[2J\\u202e: no such directory\n"


def test_an_unforeseen_failure_is_unknown_with_a_status_line(seed_logdir, monkeypatch, capsys):
    """Review 11: an unexpected exception exited 1 (WARNING to a monitoring system) with a
    traceback and no status line; now 3 with `UNKNOWN: ...`, one escaped log line, and the
    traceback only with -v. (No real trigger is known; a bug is what a catch-all is for.)"""
    import gradwatch.oneshot.check

    def broken(*args, **kwargs):
        raise RuntimeError("the bug\x1b[2J")

    monkeypatch.setattr(gradwatch.oneshot.check, "run_check", broken)
    assert main(["check", seed_logdir]) == UNKNOWN
    out, err = capsys.readouterr()
    assert out == "UNKNOWN: check could not run: RuntimeError: the bug\\x1b[2J\n"
    assert len(err.splitlines()) == 1 and "check could not run: RuntimeError: the bug\\x1b[2J" in err
    assert main(["check", seed_logdir, "--json"]) == UNKNOWN
    assert json.loads(capsys.readouterr().out)["status"] == "UNKNOWN"
    assert main(["check", seed_logdir, "-v"]) == UNKNOWN
    assert "Traceback" in capsys.readouterr().err


def test_an_unforeseen_failure_of_export_is_unknown(tmp_path, monkeypatch, capsys):
    import gradwatch.oneshot.export

    def broken(*args, **kwargs):
        raise RuntimeError("the bug")

    monkeypatch.setattr(gradwatch.oneshot.export, "export", broken)
    assert main(["export", str(tmp_path)]) == UNKNOWN
    assert "export could not run: RuntimeError: the bug" in capsys.readouterr().err
