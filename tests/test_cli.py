"""The command line: version, ``python -m``, usage errors (exit 3), ``rules check``."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch import __version__
from gradwatch.cli import main
from gradwatch.config.rulefiles import default_rules_path

REPO = Path(__file__).resolve().parent.parent


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "gradwatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradwatch"]


def run(*args: str, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(cmd or console_script()), *args], capture_output=True, text=True, timeout=120)


def test_version_from_the_console_script_and_python_m():
    for cmd in (console_script(), [sys.executable, "-m", "gradwatch"]):
        p = run("--version", cmd=cmd)
        assert (p.returncode, p.stdout) == (0, f"gradwatch {__version__}\n")


def test_python_m_runs_commands():
    p = run("rules", "check", cmd=[sys.executable, "-m", "gradwatch"])
    assert p.returncode == 0, p.stderr
    assert "SUCCESS: 3 rules found" in p.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["check"], "the following arguments are required: logdir"),
        (["check", ".", "--bogus"], "unrecognized arguments: --bogus"),
        (["export", ".", "--format", "parquet"], "invalid choice: 'parquet'"),
        (["rules"], "the following arguments are required: COMMAND"),
        (["rules", "test"], "the following arguments are required: FILE"),
    ],
)
def test_usage_errors_exit_3_not_2(argv, message, capsys):
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: gradwatch")


def test_usage_error_from_the_console_script_exits_3():
    p = run("check")
    assert p.returncode == 3
    assert "the following arguments are required: logdir" in p.stderr
    assert "Traceback" not in p.stderr


def test_no_command_prints_help_and_is_unknown(capsys):
    assert main([]) == 3
    assert "usage: gradwatch" in capsys.readouterr().err


def test_help_is_not_an_error(capsys):
    assert main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--rules FILE|DIR" in out and "--json" in out


# -- rules check -------------------------------------------------------------------


def test_rules_check_defaults_to_the_packaged_rules(capsys):
    assert main(["rules", "check"]) == 0
    assert capsys.readouterr().out == f"Checking {default_rules_path()}\n  SUCCESS: 3 rules found\n\n"


def test_rules_check_prints_like_promtool(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(
        "rules:\n  - name: a\n    nonfinite: critical\n  - name: b\n    thresholds: {warning: 1}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - name: c\n    nonfinite: critical\n  - name: d\n    nonfinite: critical\n"
        "  - name: e\n    thresholds:\n      warning: ten thousand\n"
    )
    assert main(["rules", "check", str(good), str(bad)]) == 3
    out, err = capsys.readouterr()
    assert out == f"Checking {good}\n  SUCCESS: 2 rules found\n\nChecking {bad}\n\n"
    assert err == f"  FAILED:\n{bad}:8: rules[2].thresholds.warning: expected a number, got 'ten thousand'\n"


def test_rules_check_directories_and_duplicates_across_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("rules:\n  - name: same\n    nonfinite: critical\n")
    (tmp_path / "b.yml").write_text(
        "rules:\n  - name: other\n    nonfinite: info\n  - name: same\n    nonfinite: info\n"
    )
    assert main(["rules", "check", str(tmp_path)]) == 3
    out, err = capsys.readouterr()
    assert "  SUCCESS: 1 rules found" in out and "  SUCCESS: 2 rules found" in out
    assert err == (
        "FAILED: rule names must be unique across files:\n"
        f"{tmp_path}/b.yml:4: rule name 'same' already used at {tmp_path}/a.yaml:2\n"
    )


def test_rules_check_every_shipped_file_through_the_console_script():
    files = sorted(str(p) for p in (REPO / "rules").rglob("*.yaml") if p.parent.name != "tests")
    p = run("rules", "check", *files)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("SUCCESS") == len(files)


def test_rules_check_bad_file_through_the_console_script(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: t\n    nonfinite: critical\n    thresholds: {warning: 5}\n")
    p = run("rules", "check", str(bad), str(tmp_path / "missing.yaml"))
    assert p.returncode == 3
    assert p.stderr.splitlines() == [
        "  FAILED:",
        f"{bad}:2: rules[0]: a rule has one condition, this one has thresholds and nonfinite: "
        "split it into rules",
        "  FAILED:",
        f"{tmp_path}/missing.yaml: cannot read: No such file or directory",
    ]


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["-q", "rules", "check"], logging.ERROR),
        (["rules", "check", "-q"], logging.ERROR),
        (["rules", "-v", "check"], logging.DEBUG),
        (["-v", "rules", "check"], logging.DEBUG),
        (["rules", "check"], logging.INFO),
        (["config", "check", "--quiet", "/nonexistent.yaml"], logging.ERROR),
    ],
)
def test_quiet_and_verbose_work_before_or_after_the_command(argv, level, capsys):
    main(argv)
    assert logging.getLogger("gradwatch").level == level
    assert "unrecognized arguments" not in capsys.readouterr().err


def test_quiet_after_check_silences_warnings(tmp_path, capsys):
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(tmp_path / "r"))
    w.add_scalar("grad_norm", 1.0, 0)
    w.close()
    (event_file,) = (tmp_path / "r").iterdir()
    with open(event_file, "ab") as f:
        f.write(b"\x00garbage that is not a TFRecord" * 4)
    assert main(["check", str(tmp_path)]) == 0
    assert "gradwatch: WARNING" in capsys.readouterr().err
    assert main(["check", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_one_shot_commands_start_without_importing_the_daemon(tmp_path):
    """check/export/report/rules/alerts leave the daemon (and demo) unimported: ~0.1 s of start-up
    each time CI gates on ``gradwatch check``; ``--help`` and ``watch`` still see every command."""
    probe = (
        "import sys; from gradwatch.cli import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in ('gradwatch.daemon', 'gradwatch.demo') if m in sys.modules))"
    )
    for argv in (["-q", "check", str(tmp_path)], ["export", str(tmp_path)], ["rules", "check"]):
        p = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert p.stdout.splitlines()[-1] == "[]", (argv, p.stdout, p.stderr)
    top = run("--help")
    assert "watch" in top.stdout and "demo" in top.stdout
    assert run("watch", "--help").returncode == 0
